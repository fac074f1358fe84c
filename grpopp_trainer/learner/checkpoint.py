"""Checkpoints that can be trusted: a Hugging Face model folder, the trainer state to resume from, and
a manifest written last.

``runs/NAME/checkpoints/step-000010/`` holds ``model.safetensors`` (and config, tokenizer), loadable
by ``AutoModelForCausalLM.from_pretrained``, ``trainer_state.pt`` (optimizer, data position, RNG
states, step, elapsed time) and ``manifest.json``: the size and sha256 of every other file. Saving:

1. the model and the trainer state go into a temporary folder beside the final place;
2. the manifest is written last, itself atomically (a temporary file renamed), and flushed;
3. the folder is renamed into place. A run killed mid-save (even by SIGKILL) leaves only a
   temporary folder, removed on the next save.

A checkpoint is complete when every file of its manifest is there with that size and sha256
(``checkpoint_problem``). A file cut short or changed later (a full disk, a partial copy, a bad
sector) is caught on ``--resume``: ``find_resume_checkpoint`` skips such checkpoints, newest first,
and says which and why. Checkpoints written before manifests existed (legacy) count as complete
when their ``trainer_state.pt`` is a whole zip archive and each ``.safetensors`` file is whole
(its header covers the file), with a warning that nothing finer could be checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

PREFIX = "step-"
STATE_FILE = "trainer_state.pt"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "grpopp-checkpoint/1"
_HASH_CHUNK = 1 << 20


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(
    run_dir: Path, step: int, save_model: Callable[[Path], None], state: dict[str, Any], keep_last: int
) -> Path:
    """Write checkpoint ``step`` atomically (``save_model(path)`` writes the model), manifest last, and
    keep the newest ``keep_last``."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    final = root / f"{PREFIX}{step:06d}"
    temporary = root / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    save_model(temporary)
    torch.save({**state, "rng": rng_state()}, temporary / STATE_FILE)
    write_manifest(temporary, step)
    _fsync_dir(temporary)
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def write_manifest(folder: Path, step: int) -> None:
    """Record the size and sha256 of every file under ``folder``, atomically, as its last file."""
    files = {
        path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }
    manifest = {"format": MANIFEST_FORMAT, "step": step, "files": files}
    partial = folder / f"{MANIFEST_FILE}.partial"
    with partial.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, folder / MANIFEST_FILE)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def step_of(checkpoint: Path) -> int:
    """The training step of a checkpoint folder, from its name (``step-000010`` -> 10)."""
    return int(checkpoint.name.removeprefix(PREFIX))


def _step_folders(run_dir: Path) -> list[Path]:
    """Every ``step-N`` folder of a run, oldest first, whatever it holds."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX) :].isdigit()]
    return sorted(found, key=step_of)


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first: those with a manifest, and legacy ones (no manifest)
    with a trainer state. Cheap: no file is read; ``checkpoint_problem`` verifies one."""
    return [p for p in _step_folders(run_dir) if (p / MANIFEST_FILE).is_file() or (p / STATE_FILE).is_file()]


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def is_legacy(checkpoint: Path) -> bool:
    """Written before manifests existed: no manifest, only the trainer state marks it as finished."""
    return not (checkpoint / MANIFEST_FILE).is_file()


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be trusted, or None when it is complete (see the module docstring)."""
    if is_legacy(checkpoint):
        return _legacy_problem(checkpoint)
    try:
        manifest = json.loads((checkpoint / MANIFEST_FILE).read_text(encoding="utf-8"))
        files: dict[str, dict[str, Any]] = manifest["files"]
        expected = {name: (int(entry["size"]), str(entry["sha256"])) for name, entry in files.items()}
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{MANIFEST_FILE} cannot be read ({type(error).__name__}: {error})"
    if STATE_FILE not in expected:
        return f"{MANIFEST_FILE} lists no {STATE_FILE}"
    for name, (size, sha256) in sorted(expected.items()):
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        actual = path.stat().st_size
        if actual != size:
            return f"{name} has {actual} bytes where the manifest records {size} (cut short or overwritten)"
        if file_sha256(path) != sha256:
            return f"{name} does not match the sha256 the manifest records (corrupted)"
    return None


def _legacy_problem(checkpoint: Path) -> str | None:
    """A checkpoint without a manifest: its trainer state must be a whole zip archive (torch.save's
    format; every member's CRC is checked) and each ``.safetensors`` file whole."""
    state = checkpoint / STATE_FILE
    if not state.is_file():
        return f"no {MANIFEST_FILE} and no {STATE_FILE}: the save never finished"
    try:
        with zipfile.ZipFile(state) as archive:
            broken = archive.testzip()
    except (OSError, zipfile.BadZipFile) as error:
        return f"{STATE_FILE} is not a whole archive ({error}); it was cut short"
    if broken is not None:
        return f"{STATE_FILE} is corrupted (member {broken} fails its CRC check)"
    weights = sorted(checkpoint.glob("*.safetensors"))
    if not weights:
        return "no model weights (*.safetensors) in it"
    from safetensors import SafetensorError, safe_open

    for path in weights:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except (OSError, SafetensorError) as error:
            return f"{path.name} cannot be read ({error}); it was cut short"
    return None


@dataclass
class ResumePoint:
    """Where a resumed run starts: the newest complete checkpoint, and the newer ones skipped."""

    checkpoint: Path | None
    """None when no checkpoint of the run is complete."""
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    """(checkpoint, why it cannot be trusted), newest first."""

    @property
    def legacy(self) -> bool:
        return self.checkpoint is not None and is_legacy(self.checkpoint)


def find_resume_checkpoint(run_dir: Path) -> ResumePoint:
    """The newest complete checkpoint of ``run_dir``, checking newest first (each check reads the
    whole checkpoint once, to hash it), with every newer folder skipped and why."""
    point = ResumePoint(None)
    for folder in reversed(_step_folders(run_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            point.checkpoint = folder
            break
        point.skipped.append((folder, problem))
    return point


def load_state(checkpoint: Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    """Flush a folder's entries to disk, so a rename survives a crash."""
    for file in [path, *(p for p in path.iterdir() if p.is_file())] if path.is_dir() else []:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
