"""A run's records: metrics.jsonl (exactly one line per training step), samples.jsonl, eval.jsonl
(one line per evaluation), and optional TensorBoard and Weights & Biases writers, which get both the
step metrics and the evaluations (as ``eval/...``). Only numbers go to the writers; every line of
the JSONL files is self-contained strict JSON (NaN and inf are written as null), so a run killed at
any point leaves readable files.

metrics.jsonl's ``time`` is the run's wall-clock seconds at the end of the step (from the start of
``grpopp train``, summed over the processes of a resumed run), and ``completions_generated`` the
completions sampled for the step (all dynamic-sampling rounds). Evaluations go to eval.jsonl only:
runs of earlier versions also wrote them into metrics.jsonl as a second line of the same step.

On resume the JSONL files are cut back to the checkpoint's step (``truncate_log``). The writers are
opened at the first step logged, which is then known:

- TensorBoard gets ``purge_step`` = that step, so events the killed run wrote from there on are
  dropped when the logs are read (``SummaryWriter``'s documented use for restarts).
- W&B continues the same run: its id is kept in ``wandb_run_id`` in the run directory and passed
  back with ``resume="allow"``. W&B ignores steps at or below the last one it has; for the same seed
  those values are the ones the resumed run computes again (its metrics repeat the uninterrupted
  run's, timings aside).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from grpopp.training.config import LoggingConfig

WANDB_ID_FILE = "wandb_run_id"


class RunLog:
    def __init__(self, run_dir: Path, config: LoggingConfig, run_config: dict[str, Any], enabled: bool = True) -> None:
        """``enabled=False`` writes nothing (ranks other than 0 of a multi-process run)."""
        self.enabled = enabled
        self.run_dir = run_dir
        self.config = config
        self.run_config = run_config
        self._tensorboard: Any = None
        self._wandb: Any = None
        self._writers_open = False

    def _open_writers(self, first_step: int) -> None:
        """Open the optional writers once the first step to log is known (see the module docstring)."""
        self._writers_open = True
        if self.config.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise ImportError(
                    "logging.tensorboard=true needs the tensorboard package: pip install tensorboard"
                ) from exc
            self._tensorboard = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=first_step)
        if self.config.wandb:
            try:
                import wandb
            except ImportError as exc:
                raise ImportError("logging.wandb=true needs the wandb package: pip install wandb") from exc
            id_file = self.run_dir / WANDB_ID_FILE
            run_id = id_file.read_text().strip() if id_file.is_file() else wandb.util.generate_id()
            id_file.write_text(run_id + "\n")
            self._wandb = wandb.init(
                project=self.config.wandb_project,
                dir=str(self.run_dir),
                config=self.run_config,
                id=run_id,
                resume="allow",
            )

    def metrics(self, step: int, values: dict[str, float]) -> None:
        """The one line of training step ``step``."""
        if not self.enabled:
            return
        self._append("metrics.jsonl", {"step": step, **values})
        self._write_scalars(step, values)

    def _write_scalars(self, step: int, values: dict[str, float]) -> None:
        """The finite values to TensorBoard and W&B, when on."""
        if not self._writers_open:
            self._open_writers(step)
        for key, value in values.items():
            if self._tensorboard is not None and math.isfinite(value):
                self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in values.items() if math.isfinite(v)}, step=step)

    def samples(self, step: int, records: list[dict[str, Any]]) -> None:
        if not self.enabled:
            return
        for record in records:
            self._append("samples.jsonl", {"step": step, **record})

    def eval(self, step: int, values: dict[str, float]) -> None:
        """An evaluation at step ``step``: a line of eval.jsonl, and ``eval/...`` for the writers."""
        if not self.enabled:
            return
        self._append("eval.jsonl", {"step": step, **values})
        self._write_scalars(step, {f"eval/{k}": v for k, v in values.items()})

    def close(self) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()

    def _append(self, name: str, record: dict[str, Any]) -> None:
        with (self.run_dir / name).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(_clean(record), allow_nan=False) + "\n")


def _clean(value: Any) -> Any:
    """JSON has no NaN or inf: null in their place, in nested dicts and lists too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _clean(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    return value


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
