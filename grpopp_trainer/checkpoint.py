"""Atomic checkpoints: a Hugging Face model folder plus the trainer state needed to resume.

``runs/NAME/checkpoints/step-000010/`` holds ``model.safetensors`` (and config, tokenizer), loadable
by ``AutoModelForCausalLM.from_pretrained``, and ``trainer_state.pt`` (optimizer, scheduler, data
position, RNG states, step). A checkpoint is written into a temporary folder beside its final place
and renamed when complete, so a run killed mid-save (even by SIGKILL) never leaves a half-written
checkpoint that a resume would load; leftovers of such a save are removed on the next save.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

PREFIX = "step-"
STATE_FILE = "trainer_state.pt"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def save_checkpoint(run_dir: Path, step: int, save_model: Any, state: dict[str, Any], keep_last: int) -> Path:
    """Write checkpoint ``step`` atomically (``save_model(path)`` writes the model) and keep the newest."""
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob(".tmp-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    final = root / f"{PREFIX}{step:06d}"
    temporary = root / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    save_model(temporary)
    torch.save({**state, "rng": rng_state()}, temporary / STATE_FILE)
    _fsync_dir(temporary)
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix(PREFIX)))


def latest_checkpoint(run_dir: Path) -> Path | None:
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


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
