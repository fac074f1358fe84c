"""Checkpoints that can be trusted: the manifest written last, the checks that read it, the fallback
to the newest complete checkpoint, and checkpoints of older runs without a manifest.

The files here are small byte strings whose sizes and sha256 are known (sha256 of b"abc" is the
FIPS 180-2 test vector), so the manifest is checked against values computed outside the code.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from grpopp.learner import checkpoint as ckpt

SHA256_ABC = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
SHA256_EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def fake_model(folder: Path) -> None:
    """What ``save_pretrained`` would write, in miniature: a weights file and a config."""
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"abc")
    (folder / "config.json").write_bytes(b"")


def save(run: Path, step: int, keep_last: int = 10) -> Path:
    return ckpt.save_checkpoint(run, step, fake_model, {"step": step}, keep_last)


def test_the_manifest_records_every_file_and_is_written_last(tmp_path):
    path = save(tmp_path, 3)
    assert path == tmp_path / "checkpoints" / "step-000003"
    manifest = json.loads((path / "manifest.json").read_text())
    state_size = (path / "trainer_state.pt").stat().st_size
    assert manifest["format"] == "grpopp-checkpoint/1" and manifest["step"] == 3
    assert set(manifest["files"]) == {"model.safetensors", "config.json", "trainer_state.pt"}
    assert manifest["files"]["model.safetensors"] == {"size": 3, "sha256": SHA256_ABC}
    assert manifest["files"]["config.json"] == {"size": 0, "sha256": SHA256_EMPTY}
    assert manifest["files"]["trainer_state.pt"]["size"] == state_size
    assert sorted(p.name for p in path.iterdir()) == [
        "config.json",
        "manifest.json",
        "model.safetensors",
        "trainer_state.pt",
    ]
    assert ckpt.checkpoint_problem(path) is None
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # the temporary folder was renamed


def test_each_kind_of_damage_is_named(tmp_path):
    path = save(tmp_path, 1)
    (path / "model.safetensors").write_bytes(b"ab")
    assert ckpt.checkpoint_problem(path) == (
        "model.safetensors has 2 bytes where the manifest records 3 (cut short or overwritten)"
    )
    (path / "model.safetensors").write_bytes(b"abd")  # same size, other bytes
    assert (
        ckpt.checkpoint_problem(path) == "model.safetensors does not match the sha256 the manifest records (corrupted)"
    )
    (path / "model.safetensors").unlink()
    assert ckpt.checkpoint_problem(path) == "model.safetensors is missing"
    (path / "manifest.json").write_text('{"files": ')
    assert ckpt.checkpoint_problem(path).startswith("manifest.json cannot be read (JSONDecodeError")


def test_resume_takes_the_newest_complete_checkpoint_and_names_what_it_skipped(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step)
    root = tmp_path / "checkpoints"
    (root / "step-000004" / "trainer_state.pt").write_bytes(b"")
    (root / "step-000003" / "config.json").write_bytes(b"{}")
    (root / ".tmp-step-000005-123").mkdir()  # a save killed before its rename: never a candidate
    point = ckpt.find_resume_checkpoint(tmp_path)
    assert point.checkpoint == root / "step-000002" and not point.legacy
    state_size = (root / "step-000002" / "trainer_state.pt").stat().st_size  # the same size at every step
    assert point.skipped == [
        (
            root / "step-000004",
            f"trainer_state.pt has 0 bytes where the manifest records {state_size} (cut short or overwritten)",
        ),
        (root / "step-000003", "config.json has 2 bytes where the manifest records 0 (cut short or overwritten)"),
    ]
    assert ckpt.list_checkpoints(tmp_path) == [root / f"step-00000{s}" for s in (1, 2, 3, 4)]  # cheap: no reads


def test_no_complete_checkpoint_gives_none_with_every_reason(tmp_path):
    assert ckpt.find_resume_checkpoint(tmp_path) == ckpt.ResumePoint(None, [])
    path = save(tmp_path, 1)
    (path / "model.safetensors").write_bytes(b"")
    point = ckpt.find_resume_checkpoint(tmp_path)
    assert point.checkpoint is None
    assert point.skipped == [
        (path, "model.safetensors has 0 bytes where the manifest records 3 (cut short or overwritten)")
    ]


def test_keep_last_prunes_the_oldest(tmp_path):
    for step in (1, 2, 3):
        save(tmp_path, step, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000002", "step-000003"]


def legacy_checkpoint(run: Path, step: int) -> Path:
    """A checkpoint as grpopp wrote it before manifests: weights, config, trainer state."""
    path = ckpt.checkpoint_dir(run) / f"step-{step:06d}"
    path.mkdir(parents=True)
    save_file({"w": torch.arange(6, dtype=torch.float32)}, str(path / "model.safetensors"))
    torch.save({"step": step}, path / "trainer_state.pt")
    return path


def test_legacy_checkpoints_are_checked_by_structure(tmp_path):
    path = legacy_checkpoint(tmp_path, 2)
    assert ckpt.is_legacy(path) and ckpt.checkpoint_problem(path) is None
    point = ckpt.find_resume_checkpoint(tmp_path)
    assert point.checkpoint == path and point.legacy
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # the last 2 of 6 float32 values lost
    assert ckpt.checkpoint_problem(path).startswith("model.safetensors cannot be read (")
    state = path / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:40])
    assert ckpt.checkpoint_problem(path).startswith("trainer_state.pt is not a whole archive (")
    state.unlink()
    assert ckpt.checkpoint_problem(path) == "no manifest.json and no trainer_state.pt: the save never finished"


def test_a_legacy_state_with_a_flipped_byte_fails_its_crc(tmp_path):
    path = legacy_checkpoint(tmp_path, 1)
    state = path / "trainer_state.pt"
    with zipfile.ZipFile(state) as archive:
        member = next(info for info in archive.infolist() if info.file_size > 0 and info.compress_type == 0)
    data = bytearray(state.read_bytes())
    header = member.header_offset  # the local header: 30 bytes, then the name and extra field (lengths at 26, 28)
    start = header + 30 + int.from_bytes(data[header + 26 : header + 28], "little")
    start += int.from_bytes(data[header + 28 : header + 30], "little")
    data[start] ^= 0xFF  # inside the stored member's bytes: only the CRC can tell
    state.write_bytes(bytes(data))
    assert (
        ckpt.checkpoint_problem(path) == f"trainer_state.pt is corrupted (member {member.filename} fails its CRC check)"
    )
