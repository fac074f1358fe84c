"""What a run shows while it works, in a terminal and in a log file alike.

A live bar is for a terminal; a file (``> log``, nohup, SLURM) keeps only what is printed as lines,
so every display here has two forms:

- ``StepDisplay`` (the training loop): in a terminal a rich progress bar with the step's reward,
  accuracy, length and entropy, plus a kept line every ``print_every`` steps (0: none); without a
  terminal one plain line per step (``step_line``): step, reward, accuracy, length, entropy,
  seconds per step and ETA.
- ``Ticker`` (a counted job: the tiny model's warm start, an evaluation): in a terminal a bar with
  elapsed time and ETA, inside the training bar when one is live; without a terminal a plain line
  at most every ``every_seconds``.

``quiet_transformers_bars`` silences transformers' own tqdm bars ("Writing model shards", "Loading
weights") around grpopp's saves and loads, which would otherwise interleave with these displays.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


@contextmanager
def quiet_transformers_bars() -> Iterator[None]:
    """Turn off transformers' (and huggingface_hub's) progress bars inside the block, then restore them."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def format_duration(seconds: float) -> str:
    """``H:MM:SS`` (``M:SS`` under an hour); "?" when unknown (NaN or inf)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def step_line(step: int, total: int, metrics: dict[str, float], step_seconds: float, eta_seconds: float) -> str:
    """One plain line for a training step, e.g.
    ``step 3/10  reward 0.500  acc 0.500  len 2.0  entropy 1.234  1.52 s/step  ETA 0:11``."""
    masked = metrics.get("masked/error", 0.0) + metrics.get("masked/timeout", 0.0)
    parts = [
        f"step {step}/{total}",
        f"reward {metrics.get('reward', math.nan):.3f}",
        f"acc {metrics.get('accuracy', math.nan):.3f}",
        f"len {metrics.get('length/mean', math.nan):.1f}",
        f"entropy {metrics.get('entropy', math.nan):.3f}",
        *([f"masked {masked:.3f}"] if masked > 0 else []),
        f"{step_seconds:.2f} s/step",
        f"ETA {format_duration(eta_seconds)}",
    ]
    return "  ".join(parts)


def _plain_writer(console: Console) -> Callable[[str], None]:
    """Print one unwrapped line (a log file is not 80 columns wide) with no markup read into it."""
    return lambda text: console.print(text, soft_wrap=True, highlight=False, markup=False)


class Ticker:
    """Progress of a job of ``total`` units (see the module docstring). Use as a context manager and
    call ``advance`` as units finish. ``bound``: ``total`` is an upper bound (the job may stop
    early), so the remaining time is shown as "at most"."""

    def __init__(
        self,
        description: str,
        total: int,
        *,
        console: Console | None = None,
        log: Callable[[str], None] | None = None,
        every_seconds: float = 30.0,
        bound: bool = False,
        live: Progress | None = None,
    ) -> None:
        """``console``: a terminal gets a bar; otherwise lines go to ``log`` (default: the console's
        plain printer, else ``print``). ``live``: a bar already on screen to add this job to."""
        self.description = description
        self.total = total
        self.every_seconds = every_seconds
        self.bound = bound
        self.done = 0
        self.note = ""
        self._log = log or (_plain_writer(console) if console is not None else print)
        self._bar = live
        self._own_bar = live is None and console is not None and console.is_terminal
        if self._own_bar:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[note]}"),
                TimeElapsedColumn(),
                TextColumn("at most" if bound else "ETA"),
                TimeRemainingColumn(),
                console=console,
            )
        self._task: TaskID | None = None
        self._started = self._last_line = 0.0

    def __enter__(self) -> Ticker:
        self._started = self._last_line = time.monotonic()
        if self._bar is not None:
            if self._own_bar:
                self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, note="")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._bar is None or self._task is None:
            return
        if self._own_bar:
            self._bar.stop()
        else:
            self._bar.remove_task(self._task)

    def advance(self, count: int = 1, note: str = "") -> None:
        """``count`` more units done; ``note`` (e.g. the current loss) is shown beside the count."""
        self.update(self.done + count, note=note)

    def update(self, done: int, total: int | None = None, note: str = "") -> None:
        """``done`` units of ``total`` (when it is known only now) are finished."""
        self.done = done
        self.total = self.total if total is None else total
        self.note = note or self.note
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=self.done, total=self.total, note=self.note)
            return
        now = time.monotonic()
        if now - self._last_line >= self.every_seconds:
            self._last_line = now
            self._log(self.line())

    def line(self) -> str:
        """The plain line: ``warm start: 250/1500 (loss 0.91), 1:02 elapsed, at most 4:10 left``."""
        elapsed = time.monotonic() - self._started
        remaining = (self.total - self.done) * elapsed / self.done if self.done else math.nan
        note = f" ({self.note})" if self.note else ""
        left = f"at most {format_duration(remaining)} left" if self.bound else f"ETA {format_duration(remaining)}"
        return f"{self.description}: {self.done}/{self.total}{note}, {format_duration(elapsed)} elapsed, {left}"


class StepDisplay:
    """The training loop's display (see the module docstring). ``bar``: show the live bar in a
    terminal (``logging.progress``); lines are printed either way."""

    def __init__(self, console: Console, total_steps: int, first_step: int, print_every: int, bar: bool) -> None:
        self.console = console
        self.total_steps = total_steps
        self.first_step = first_step
        self.print_every = print_every
        self.terminal = console.is_terminal
        self._print = _plain_writer(console)
        self._bar: Progress | None = None
        if self.terminal and bar:
            self._bar = Progress(
                TextColumn("[bold]step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
            )
        self._task: TaskID | None = None
        self._started = 0.0

    def __enter__(self) -> StepDisplay:
        self._started = time.monotonic()
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total_steps, completed=self.first_step)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def step(self, step: int, metrics: dict[str, float], step_seconds: float) -> None:
        """Show step ``step`` (1-based, just finished): the bar, and its line when one is due."""
        done = step - self.first_step
        average = (time.monotonic() - self._started) / done if done > 0 else math.nan
        eta = average * (self.total_steps - step)
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task,
                completed=step,
                description=f"reward {metrics.get('reward', math.nan):.3f} acc {metrics.get('accuracy', math.nan):.3f} "
                f"len {metrics.get('length/mean', math.nan):.1f} entropy {metrics.get('entropy', math.nan):.3f}",
            )
        if not self.terminal or (self.print_every and step % self.print_every == 0):
            self.print(step_line(step, self.total_steps, metrics, step_seconds, eta))

    def print(self, text: str) -> None:
        """A kept line: above the live bar in a terminal, a plain line in a file."""
        self._print(text)

    def ticker(self, description: str, total: int) -> Ticker:
        """A job shown inside this display: a second row of the live bar, or plain lines."""
        return Ticker(description, total, console=self.console, log=self._print, live=self._bar)
