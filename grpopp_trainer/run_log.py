"""A run's records: metrics.jsonl (one line per step), samples.jsonl, eval.jsonl, and optional
TensorBoard and Weights & Biases writers. Only numbers go to the writers; every line of the JSONL
files is self-contained, so a run killed at any point leaves readable files."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from grpopp_trainer.config import LoggingConfig


class RunLog:
    def __init__(self, run_dir: Path, config: LoggingConfig, run_config: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self._tensorboard: Any = None
        self._wandb: Any = None
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        if config.wandb:
            import wandb

            self._wandb = wandb.init(project=config.wandb_project, dir=str(run_dir), config=run_config)

    def metrics(self, step: int, values: dict[str, float]) -> None:
        self._append("metrics.jsonl", {"step": step, **{k: _clean(v) for k, v in values.items()}})
        for key, value in values.items():
            if self._tensorboard is not None and math.isfinite(value):
                self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in values.items() if math.isfinite(v)}, step=step)

    def samples(self, step: int, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._append("samples.jsonl", {"step": step, **record})

    def eval(self, step: int, values: dict[str, float]) -> None:
        self._append("eval.jsonl", {"step": step, **values})
        self.metrics(step, {f"eval/{k}": v for k, v in values.items()})

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()

    def _append(self, name: str, record: dict[str, Any]) -> None:
        with (self.run_dir / name).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def _clean(value: float) -> float | None:
    """JSON has no NaN or inf: write null."""
    return value if math.isfinite(value) else None


def truncate_log(run_dir: Path, name: str, after_step: int) -> None:
    """Drop the lines of a JSONL log written after ``after_step`` (a resumed run rewrites them)."""
    path = run_dir / name
    if not path.is_file():
        return
    kept = [line for line in path.read_text(encoding="utf-8").splitlines() if _step_of(line) <= after_step]
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _step_of(line: str) -> float:
    """The step of a log line; a line cut short by a kill counts as after every step (dropped)."""
    try:
        return float(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf
