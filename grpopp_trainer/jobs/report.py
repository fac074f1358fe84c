"""``grpopp report RUN_DIR``: PNG figures of a run's training curves and evaluations, and a report.md
that shows them.

What a run directory holds (see ``run_log``) and how the report reads it:

1. ``metrics.jsonl``: one JSON object per training step (``Trainer._step_metrics`` and the loss
   metrics of ``losses.policy_loss``); null where a value was not finite. Rows whose keys start with
   ``eval/`` are evaluations logged into the metrics too: they feed the evaluation figure when
   ``eval.jsonl`` is missing and are left out of the training curves. A line that is not JSON (the
   last line of a run killed mid-write) is skipped and counted. A step logged twice keeps its last row.
2. ``eval.jsonl``: one line per evaluation during training (``accuracy``, ``<env>/accuracy``).
3. ``evals/<name>/results.json``: the checkpoints ``grpopp eval`` scored, each metric with its 95%
   confidence interval; one figure per file. Read with the model ``grpopp eval`` writes it from
   (``grpopp.evaluation.results.EvalResults``); a file that is not one is skipped, and report.md
   names it and its bad keys.
4. ``config.yaml``: the resolved config, for a few lines of context at the top of report.md.

Every training figure is one ``FigureSpec`` of ``FIGURES``: a concern (reward, length, clipping, ...)
drawn as a grid of panels, each panel a few curves named by metric key. A figure none of whose
metrics were logged (KL without a reference model, TIS when it is off) is not drawn; report.md
names it and says why. Noisy curves are drawn faint with a trailing moving average on top, and the
legend says so. matplotlib (the ``report`` extra) is imported only inside ``write_report``, so grpopp
imports without it; figures are rendered by the Agg canvas at a fixed size and DPI, without pyplot.

Axes: each panel knows the range its quantity can take (``Panel.bounds``: a fraction lies in [0, 1],
a length or a learning rate is never negative) and ``y_limits`` sets the vertical axis from the
values drawn, within those bounds; a constant series gets an axis from 0 to twice its value instead
of matplotlib's +-4% around it (a constant lr 1e-4 once read 0.000096-0.000104). The horizontal
axis of an evaluation figure has its ticks at the steps evaluated (the checkpoints). Reward
components logged with weight 0 (``<env>/reward_inactive/<name>``, beside the active
``<env>/reward/<name>``) are labelled as such.

report.md opens with the held-out numbers: a table per ``grpopp eval`` result (each checkpoint,
environment and metric with its 95% interval) and the evaluations run during training.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

from grpopp.config_tools import UserError
from grpopp.evaluation.results import CheckpointResult, EvalResults, MetricValue, Summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 100
"""Dots per inch of every PNG: a figure of W x H inches is 100 W x 100 H pixels."""
FIGURE_WIDTH = 12.0
"""Width of every figure in inches (1200 pixels)."""
PANEL_HEIGHT = 4.0
"""Height of one row of panels in inches (400 pixels); a figure has ceil(panels / 2) rows."""
SMOOTH_MIN_WINDOW = 3
"""Curves marked noisy get a moving average once its window (a tenth of the points, at most
``SMOOTH_MAX_WINDOW``) reaches this many steps, i.e. from 30 logged steps on."""
SMOOTH_MAX_WINDOW = 25
"""Longest moving-average window, in steps."""
STEP_LABEL = "training step"
INSTALL_HINT = "grpopp report needs matplotlib: pip install -e '.[report]' (or pip install matplotlib)"

Series = dict[str, dict[int, float]]
"""Metric key -> step -> value (NaN where the log had null)."""


class ReportError(UserError):
    """The report cannot be written: no metrics.jsonl, nothing readable in it, or no matplotlib."""


# ---------------------------------------------------------------- reading the logs


@dataclass(frozen=True)
class JsonlFile:
    rows: list[dict[str, Any]]
    unreadable_lines: int
    """Lines that were not a JSON object with a step (a line cut short by a kill)."""


def read_jsonl(path: Path) -> JsonlFile:
    """The JSON objects with an integer-valued ``step`` of a JSONL file; blank lines are ignored."""
    rows, unreadable = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            int(row["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            unreadable += 1
            continue
        rows.append(row)
    return JsonlFile(rows, unreadable)


def rows_to_series(rows: Sequence[dict[str, Any]], prefix: str = "") -> Series:
    """Numbers of the keys that start with ``prefix`` (stripped), by step; null becomes NaN; later rows win."""
    series: Series = {}
    for row in rows:
        step = int(row["step"])
        for key, value in row.items():
            if key == "step" or not key.startswith(prefix):
                continue
            if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
                series.setdefault(key[len(prefix) :], {})[step] = math.nan if value is None else float(value)
    return series


def is_eval_row(row: dict[str, Any]) -> bool:
    return any(key.startswith("eval/") for key in row)


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)


@dataclass(frozen=True)
class RunLogs:
    train: Series
    """Training curves from metrics.jsonl."""
    evaluations: Series
    """Evaluations during training (eval.jsonl, else the eval/ rows of metrics.jsonl)."""
    eval_results: dict[str, EvalResults]
    """``grpopp eval`` results by name (folder under evals/)."""
    problems: list[str]
    """What could not be read, for report.md."""
    config: dict[str, Any]
    """config.yaml, or {} when absent or unreadable."""


def read_run(run_dir: Path) -> RunLogs:
    """Everything the report draws from ``run_dir``; ReportError if metrics.jsonl is missing or empty."""
    metrics_path = run_dir / "metrics.jsonl"
    if not metrics_path.is_file():
        raise ReportError(f"{run_dir} has no metrics.jsonl: is it the run directory of a `grpopp train` run?")
    metrics = read_jsonl(metrics_path)
    if not metrics.rows:
        raise ReportError(f"{metrics_path} holds no readable line: nothing to report")
    problems = _unreadable_note("metrics.jsonl", metrics.unreadable_lines)
    training_rows = [row for row in metrics.rows if not is_eval_row(row)]
    evaluations = rows_to_series([row for row in metrics.rows if is_eval_row(row)], prefix="eval/")
    if (run_dir / "eval.jsonl").is_file():
        eval_file = read_jsonl(run_dir / "eval.jsonl")
        problems += _unreadable_note("eval.jsonl", eval_file.unreadable_lines)
        evaluations = rows_to_series(eval_file.rows)
    eval_results: dict[str, EvalResults] = {}
    for path in sorted((run_dir / "evals").glob("*/results.json")):
        try:
            eval_results[path.parent.name] = EvalResults.read(path, shown_as=str(path.relative_to(run_dir)))
        except UserError as error:
            problems.append(f"{error} (skipped)")
    return RunLogs(
        train=rows_to_series(training_rows),
        evaluations=evaluations,
        eval_results=eval_results,
        problems=problems,
        config=_read_config(run_dir / "config.yaml", problems),
    )


def _unreadable_note(name: str, count: int) -> list[str]:
    if not count:
        return []
    return [f"{count} line(s) of {name} could not be read (a run killed mid-write cuts its last line short); skipped"]


def _read_config(path: Path, problems: list[str]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        problems.append("config.yaml could not be parsed; run details left out")
        return {}
    return config if isinstance(config, dict) else {}


def has_values(series: Series, key: str) -> bool:
    """Whether ``key`` was logged with at least one finite value."""
    return any(math.isfinite(value) for value in series.get(key, {}).values())


def moving_average(values: Sequence[float], window: int) -> list[float]:
    """Trailing mean of the finite values among the last ``window`` (NaN where there are none)."""
    averages = []
    for end in range(1, len(values) + 1):
        finite = [v for v in values[max(0, end - window) : end] if math.isfinite(v)]
        averages.append(sum(finite) / len(finite) if finite else math.nan)
    return averages


def smoothing_window(points: int) -> int:
    """Moving-average window for a noisy curve of ``points`` steps; 1 means drawn as logged."""
    window = min(SMOOTH_MAX_WINDOW, points // 10)
    return window if window >= SMOOTH_MIN_WINDOW else 1


# ---------------------------------------------------------------- the figures


@dataclass(frozen=True)
class Curve:
    key: str
    """Metric key in the log."""
    label: str
    """Legend text."""
    noisy: bool = False
    """Draw faint, with a moving average on top."""


Bounds = tuple[float | None, float | None]
"""The lowest and highest value a quantity can take (None: unbounded on that side)."""
FRACTION: Bounds = (0.0, 1.0)
NON_NEGATIVE: Bounds = (0.0, None)
CONSTANT_TOLERANCE = 1e-9
"""A series whose values differ by at most this fraction of their magnitude is drawn as constant."""
MAX_STEP_TICKS = 12
"""At most this many ticks at evaluated steps; with more steps, every k-th one, ending at the last."""


@dataclass(frozen=True)
class Panel:
    title: str
    ylabel: str
    """Quantity and unit."""
    curves: tuple[Curve, ...]
    bounds: Bounds = (None, None)
    """The range of the quantity: the vertical axis never leaves it (see ``y_limits``)."""


@dataclass(frozen=True)
class FigureSpec:
    name: str
    """File name without .png."""
    title: str
    description: str
    """One sentence for report.md."""
    panels: Callable[[Series], list[Panel]]
    """The panels, given the logged series (per-environment figures depend on them)."""
    absent_hint: str = ""
    """Why its metrics may be missing, for report.md."""
    source: Literal["train", "evaluations"] = "train"


def _fixed(*panels: Panel) -> Callable[[Series], list[Panel]]:
    return lambda _series: list(panels)


def env_names(series: Series) -> list[str]:
    """Environments with per-environment metrics (``<env>/accuracy``), sorted."""
    return sorted(key.removesuffix("/accuracy") for key in series if key.endswith("/accuracy") and "/" in key)


def _total_and_envs(envs: list[str]) -> tuple[str, list[str]]:
    """Legend label of the all-environment curve, and the environments drawn beside it: none when
    there is only one (its curve is the total)."""
    return (envs[0], []) if len(envs) == 1 else ("all environments", envs)


def _reward_panels(series: Series) -> list[Panel]:
    envs = env_names(series)
    total, beside = _total_and_envs(envs)
    panels = [
        Panel(
            "Mean reward",
            "reward (valid completions)",
            (
                Curve("reward", total, noisy=True),
                *(Curve(f"{env}/reward", env, noisy=True) for env in beside),
            ),
        ),
        Panel(
            "Accuracy",
            "fraction correct",
            (
                Curve("accuracy", total, noisy=True),
                *(Curve(f"{env}/accuracy", env, noisy=True) for env in beside),
            ),
            FRACTION,
        ),
    ]
    for env in envs:
        active, inactive = f"{env}/reward/", f"{env}/reward_inactive/"
        curves = tuple(
            Curve(key, key.removeprefix(active), noisy=True) for key in sorted(series) if key.startswith(active)
        ) + tuple(
            Curve(key, f"{key.removeprefix(inactive)} (weight 0: not in the reward)", noisy=True)
            for key in sorted(series)
            if key.startswith(inactive)
        )
        panels.append(Panel(f"{env}: reward components", "component value (unweighted)", curves))
    return panels


def _episode_panels(series: Series) -> list[Panel]:
    """Multi-turn environments (those logging ``<env>/turns``): turns, tool calls and how episodes ended."""
    envs = sorted(key.removesuffix("/turns") for key in series if key.endswith("/turns"))
    if not envs:
        return []
    panels = [
        Panel("Assistant turns per episode", "turns", tuple(Curve(f"{env}/turns", env, noisy=True) for env in envs)),
        Panel(
            "Tool calls per episode",
            "calls",
            tuple(
                curve
                for env in envs
                for curve in (
                    Curve(f"{env}/tool_calls", f"{env}: calls", noisy=True),
                    Curve(f"{env}/tool_errors", f"{env}: failed", noisy=True),
                )
            ),
            NON_NEGATIVE,
        ),
        Panel(
            "Episodes ended by a limit or an environment error",
            "fraction of episodes",
            tuple(
                Curve(f"{env}/ended_{end}", f"{env}: {label}")
                for env in envs
                for end, label in (
                    ("max_turns", "turn limit"),
                    ("max_tokens", "token limit"),
                    ("env_error", "env error"),
                )
            ),
            FRACTION,
        ),
        Panel("Environment time", "seconds per step (summed over episodes)", (Curve("time/environment", "respond"),)),
    ]
    return panels


def _evaluation_panels(series: Series) -> list[Panel]:
    total, beside = _total_and_envs(env_names(series))
    curves = (Curve("accuracy", total), *(Curve(f"{env}/accuracy", env) for env in beside))
    return [Panel("Accuracy on the test split", "fraction correct", curves, FRACTION)]


FIGURES: tuple[FigureSpec, ...] = (
    FigureSpec(
        "reward_accuracy",
        "Reward and accuracy",
        "Mean reward and accuracy over every completion generated, overall and per environment, and each "
        "environment's reward components.",
        _reward_panels,
    ),
    FigureSpec(
        "length_truncation",
        "Response length and truncation",
        "Completion length in tokens and the fraction cut off at the generation limit.",
        _fixed(
            Panel(
                "Completion length",
                "tokens",
                (Curve("length/mean", "mean", noisy=True), Curve("length/max", "max")),
                NON_NEGATIVE,
            ),
            Panel(
                "Truncated completions",
                "fraction of completions",
                (Curve("truncated", "truncated", noisy=True),),
                FRACTION,
            ),
        ),
    ),
    FigureSpec(
        "entropy",
        "Policy entropy",
        "Mean per-token entropy of the policy over the completions trained on; a collapse to 0 ends exploration.",
        _fixed(Panel("Entropy", "nats per token", (Curve("entropy", "entropy", noisy=True),), NON_NEGATIVE)),
        "entropy is logged by every update step",
    ),
    FigureSpec(
        "clipping",
        "Clipping and policy ratio",
        "Fraction of tokens whose ratio pi/pi_old was clipped below 1-eps_low, above 1+eps_high or by the "
        "dual clip, and the ratio's range.",
        _fixed(
            Panel(
                "Clipped tokens",
                "fraction of tokens",
                (
                    Curve("clip_frac_low", "low (ratio < 1 - eps_low)", noisy=True),
                    Curve("clip_frac_high", "high (ratio > 1 + eps_high)", noisy=True),
                    Curve("dual_clip_frac", "dual clip", noisy=True),
                ),
                FRACTION,
            ),
            Panel(
                "Policy ratio pi / pi_old",
                "ratio",
                (Curve("ratio_min", "min"), Curve("ratio_mean", "mean"), Curve("ratio_max", "max")),
                NON_NEGATIVE,
            ),
        ),
        "the loss metrics are logged by every update step",
    ),
    FigureSpec(
        "dynamic_sampling",
        "Zero-variance groups and dynamic sampling",
        "Fraction of generated groups whose rewards were all equal (no learning signal), the generation "
        "rounds, and the groups trained per step, carried in from earlier steps and out to later ones, and "
        "dropped (too old, or thrown away without carry-over).",
        _fixed(
            Panel(
                "Groups without signal",
                "fraction of groups",
                (Curve("dynamic_sampling/zero_variance_fraction", "zero-variance groups", noisy=True),),
                FRACTION,
            ),
            Panel("Generation rounds", "rounds per step", (Curve("dynamic_sampling/rounds", "rounds"),), NON_NEGATIVE),
            Panel(
                "Groups trained on",
                "groups per step",
                (
                    Curve("groups", "trained"),
                    Curve("dynamic_sampling/groups_carried_in", "carried in"),
                    Curve("dynamic_sampling/groups_carried_out", "carried out"),
                    Curve("dynamic_sampling/groups_dropped_stale", "dropped (too old)"),
                    Curve("dynamic_sampling/groups_wasted", "thrown away"),
                ),
                NON_NEGATIVE,
            ),
        ),
    ),
    FigureSpec(
        "episodes",
        "Multi-turn episodes",
        "Per multi-turn environment: assistant turns and tool calls per episode, failed tool calls, the "
        "episodes ended by the turn or token limit or by an environment error, and the time in the environments.",
        _episode_panels,
        "only multi-turn environments log these",
    ),
    FigureSpec(
        "masked_samples",
        "Masked samples and skipped updates",
        "Completions masked out of the loss because scoring timed out or failed, completions with no "
        "parseable answer, and optimizer updates skipped (non-finite gradients).",
        _fixed(
            Panel(
                "Completions by status",
                "fraction of completions",
                (
                    Curve("masked/timeout", "timeout (masked)"),
                    Curve("masked/error", "error (masked)"),
                    Curve("unparseable", "unparseable"),
                ),
                FRACTION,
            ),
            Panel(
                "Skipped optimizer updates",
                "updates (cumulative)",
                (Curve("skipped_updates_total", "skipped updates"),),
                NON_NEGATIVE,
            ),
        ),
    ),
    FigureSpec(
        "importance_sampling",
        "Truncated importance sampling",
        "Importance weights between trainer and sampler log-probs, their log-prob gap, and the fraction of "
        "tokens whose weight was truncated or masked at the cap.",
        _fixed(
            Panel(
                "Importance weight",
                "weight exp(logp_old - logp_sampler)",
                (Curve("tis/weight_mean", "mean"), Curve("tis/weight_max", "max")),
                NON_NEGATIVE,
            ),
            Panel(
                "Log-prob gap trainer vs sampler",
                "|logp_old - logp_sampler| (nats)",
                (Curve("tis/logprob_gap_mean", "mean"), Curve("tis/logprob_gap_max", "max")),
                NON_NEGATIVE,
            ),
            Panel(
                "Weights at the cap",
                "fraction of tokens",
                (Curve("tis/frac_truncated", "truncated"), Curve("tis/frac_masked", "masked")),
                FRACTION,
            ),
        ),
        "TIS metrics are logged only when algorithm.loss.tis.type is not off",
    ),
    FigureSpec(
        "kl",
        "KL divergence to the reference model",
        "Per-token KL estimate between the policy and the reference model, and the KL term of the loss.",
        _fixed(
            Panel("KL to the reference", "nats per token", (Curve("kl_mean", "KL estimate", noisy=True),)),
            Panel("KL loss term", "loss (before kl_coef)", (Curve("kl_loss", "KL loss", noisy=True),)),
        ),
        "KL is logged only with a reference model, i.e. when algorithm.loss.kl_coef > 0",
    ),
    FigureSpec(
        "optimization",
        "Gradient norm, learning rate and loss",
        "Gradient L2 norm before clipping, the learning-rate schedule and the loss.",
        _fixed(
            Panel(
                "Gradient norm",
                "L2 norm (before clipping)",
                (Curve("grad_norm", "grad norm", noisy=True),),
                NON_NEGATIVE,
            ),
            Panel("Learning rate", "learning rate", (Curve("lr", "lr"),), NON_NEGATIVE),
            Panel(
                "Loss",
                "loss",
                (Curve("loss", "total loss", noisy=True), Curve("pg_loss", "policy-gradient loss", noisy=True)),
            ),
        ),
        "the optimizer metrics are logged by every update step",
    ),
    FigureSpec(
        "throughput",
        "Throughput and time per phase",
        "Tokens per second of generation and training, and the wall-clock seconds each phase of a step took.",
        _fixed(
            Panel(
                "Throughput",
                "tokens / s",
                (
                    Curve("tokens_per_second/generation", "generation", noisy=True),
                    Curve("tokens_per_second/training", "training", noisy=True),
                ),
                NON_NEGATIVE,
            ),
            Panel(
                "Time per phase",
                "seconds per step",
                (
                    Curve("time/generation", "generation"),
                    Curve("time/scoring", "scoring"),
                    Curve("time/training", "training"),
                ),
                NON_NEGATIVE,
            ),
        ),
    ),
    FigureSpec(
        "eval_during_training",
        "Evaluation during training",
        "Accuracy on each environment's test split at the evaluations run during training (eval.jsonl).",
        _evaluation_panels,
        "evaluations are run during training only when eval.every > 0",
        source="evaluations",
    ),
)
"""The training figures, in report order."""


class DrawnFigure(_Record):
    file: str
    """PNG file name in the report folder."""
    title: str
    metrics: list[str]
    """Keys drawn (for an evaluation figure: environment/metric)."""
    description: str = ""


class SkippedFigure(_Record):
    name: str
    """The figure's file name without .png."""
    reason: str


class ReportSummary(_Record):
    """What ``write_report`` wrote."""

    out_dir: Path
    markdown: Path
    """report.md."""
    figures: list[DrawnFigure]
    """PNGs written, in report order."""
    skipped: list[SkippedFigure]
    """Figures not drawn, with the reason."""
    training_steps: int
    """Distinct steps of the training rows of metrics.jsonl."""
    problems: list[str]
    """Lines or files that could not be read."""


def _grid(panel_count: int) -> tuple[int, int, tuple[float, float]]:
    """Rows, columns and size in inches: one panel spans the width, more go two to a row."""
    cols = 1 if panel_count == 1 else 2
    rows = math.ceil(panel_count / cols)
    return rows, cols, (FIGURE_WIDTH, PANEL_HEIGHT * rows)


def _new_figure(title: str, panel_count: int) -> tuple[Figure, list[Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols, size = _grid(panel_count)
    figure = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    figure.suptitle(title, fontsize="x-large")
    axes = [figure.add_subplot(rows, cols, index + 1) for index in range(panel_count)]
    return figure, axes


def y_limits(values: Sequence[float], bounds: Bounds = (None, None)) -> tuple[float, float] | None:
    """The vertical axis for ``values`` of a quantity within ``bounds``; None when none is finite.

    Varying values get a 5% margin on each side, cut at the bounds (a fraction's axis never goes
    below 0 or above 1) unless the values themselves leave them. Constant values (equal within
    ``CONSTANT_TOLERANCE`` of their magnitude) get an axis from 0 to twice their value (a negative
    constant: from twice its value to 0), so the line sits mid-height on an axis that shows its size;
    a constant 0 gets [0, 1] for a quantity bounded below by 0, else [-1, 1].
    """
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return None
    smallest, largest = min(finite), max(finite)
    lower, upper = bounds
    if largest - smallest <= CONSTANT_TOLERANCE * max(abs(smallest), abs(largest)):
        if largest > 0:
            low, high = 0.0, 2.0 * largest
        elif smallest < 0:
            low, high = 2.0 * smallest, 0.0
        else:
            low, high = (0.0, 1.0) if lower is not None and lower >= 0 else (-1.0, 1.0)
    else:
        margin = 0.05 * (largest - smallest)
        low, high = smallest - margin, largest + margin
    if lower is not None and smallest >= lower:
        low = max(low, lower)
    if upper is not None and largest <= upper:
        high = min(high, upper)
    return low, high


def step_ticks(steps: Sequence[float], most: int = MAX_STEP_TICKS) -> list[float]:
    """Ticks at the given steps (checkpoints, evaluations): all of them when there are at most ``most``,
    else every k-th one counted back from the last, so the final step always has a tick."""
    ordered = sorted(set(steps))
    stride = max(1, math.ceil(len(ordered) / most))
    return ordered[::-1][::stride][::-1]


def _style_axes(ax: Axes, title: str, ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="y", useOffset=False)  # 1.00001, not "1e-5 + 1"
    ax.legend(loc="best", fontsize="small")


def _set_limits(ax: Axes, values: Sequence[float], bounds: Bounds) -> None:
    limits = y_limits(values, bounds)
    if limits is not None:
        ax.set_ylim(*limits)


def _set_step_ticks(ax: Axes, steps: Sequence[float]) -> None:
    """Put the x ticks at ``steps`` (after ``_style_axes``, whose locator they replace)."""
    ticks = step_ticks(steps)
    ax.set_xticks(ticks, labels=[f"{tick:g}" for tick in ticks])


def _draw_curve(ax: Axes, curve: Curve, points: dict[int, float]) -> int:
    """Plot one curve; return its moving-average window (1: drawn as logged)."""
    steps = sorted(points)
    values = [points[step] for step in steps]
    marker = "o" if len(steps) <= 20 else None
    window = smoothing_window(len(steps)) if curve.noisy else 1
    if window == 1:
        ax.plot(steps, values, label=curve.label, marker=marker, markersize=3)
        return 1
    (raw,) = ax.plot(steps, values, alpha=0.25, linewidth=1)
    ax.plot(steps, moving_average(values, window), color=raw.get_color(), linewidth=2, label=curve.label)
    return window


def spec_figure(spec: FigureSpec, series: Series) -> tuple[Figure, list[Panel]] | SkippedFigure:
    """The figure of ``spec`` over the logged ``series`` and the panels it holds (curves never logged
    left out), or why it is not drawn."""
    panels = [
        Panel(panel.title, panel.ylabel, curves, panel.bounds)
        for panel in spec.panels(series)
        if (curves := tuple(curve for curve in panel.curves if has_values(series, curve.key)))
    ]
    if not panels:
        keys = sorted({curve.key for panel in spec.panels(series) for curve in panel.curves})
        logged = "no environment metrics were logged" if not keys else f"none of {', '.join(keys)} was logged"
        return SkippedFigure(name=spec.name, reason=logged + (f" ({spec.absent_hint})" if spec.absent_hint else ""))
    figure, axes = _new_figure(spec.title, len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        windows = {_draw_curve(ax, curve, series[curve.key]) for curve in panel.curves} - {1}
        _style_axes(ax, panel.title, panel.ylabel)
        _set_limits(ax, [value for curve in panel.curves for value in series[curve.key].values()], panel.bounds)
        if spec.source == "evaluations":  # one tick per evaluation
            _set_step_ticks(ax, [float(step) for curve in panel.curves for step in series[curve.key]])
        if windows:  # the legend says which lines are smoothed
            ax.legend(
                loc="best",
                fontsize="small",
                title_fontsize="small",
                title=f"bold: mean of last {max(windows)} steps; faint: per step",
            )
    return figure, panels


def _draw_spec(spec: FigureSpec, series: Series, path: Path) -> DrawnFigure | SkippedFigure:
    drawn = spec_figure(spec, series)
    if isinstance(drawn, SkippedFigure):
        return drawn
    figure, panels = drawn
    figure.savefig(path, dpi=DPI)
    metrics = [curve.key for panel in panels for curve in panel.curves]
    return DrawnFigure(file=path.name, title=spec.title, metrics=metrics, description=spec.description)


EvalPoints = dict[str, list[tuple[float, MetricValue]]]
"""Metric name -> (checkpoint step, value) of each checkpoint that has it."""


def _checkpoints_by_step(results: EvalResults) -> list[CheckpointResult]:
    return sorted(results.checkpoints, key=lambda c: (c.step is None, c.step or 0))


def _scopes(checkpoints: Sequence[CheckpointResult]) -> list[str]:
    """Environments, sorted, then "overall" unless there is only one environment (it would repeat it)."""
    envs = sorted({env for c in checkpoints for env in c.envs})
    return envs if len(envs) == 1 else [*envs, "overall"]


def _scope_result(checkpoint: CheckpointResult, scope: str) -> Summary | None:
    return checkpoint.overall if scope == "overall" else checkpoint.envs.get(scope)


def _eval_title(name: str) -> str:
    return f"Evaluation '{name}' across checkpoints (error bars: 95% CI)"


def eval_results_figure(name: str, results: EvalResults) -> tuple[Figure, list[str]] | SkippedFigure:
    """One panel per environment (and overall): each metric against checkpoint step, 95% CI as error
    bars, ticks at the checkpoints; with the metrics drawn (scope/metric), or why it is not drawn."""
    checkpoints = _checkpoints_by_step(results)
    panels: list[tuple[str, EvalPoints]] = []
    for scope in _scopes(checkpoints):
        by_metric: EvalPoints = {}
        for index, checkpoint in enumerate(checkpoints):
            result = _scope_result(checkpoint, scope)
            x = float(checkpoint.step if checkpoint.step is not None else index)
            for metric, value in (result.metrics if result is not None else {}).items():
                if math.isfinite(value.value):
                    by_metric.setdefault(metric, []).append((x, value))
        if by_metric:
            panels.append((scope, by_metric))
    if not panels:
        return SkippedFigure(name=_file_stem(name), reason=f"evals/{name}/results.json holds no metric values")
    figure, axes = _new_figure(_eval_title(name), len(panels))
    for ax, (scope, by_metric) in zip(axes, panels, strict=True):
        _draw_eval_panel(ax, by_metric)
        _style_axes(ax, scope, "score (fraction of tasks)")
        ax.set_xlabel("checkpoint step")
        _set_step_ticks(ax, [x for points in by_metric.values() for x, _ in points])
        values = [
            bound
            for points in by_metric.values()
            for _, value in points
            for bound in (value.value, *value.ci95)
            if math.isfinite(bound)
        ]
        _set_limits(ax, values, FRACTION)
    return figure, [f"{scope}/{metric}" for scope, by_metric in panels for metric in sorted(by_metric)]


def _draw_eval_results(name: str, results: EvalResults, path: Path) -> DrawnFigure | SkippedFigure:
    drawn = eval_results_figure(name, results)
    if isinstance(drawn, SkippedFigure):
        return drawn
    figure, metrics = drawn
    figure.savefig(path, dpi=DPI)
    title = _eval_title(name)
    description = f"Metrics of `grpopp eval` ({name}) at each checkpoint, with 95% confidence intervals."
    return DrawnFigure(file=path.name, title=title, metrics=metrics, description=description)


def _draw_eval_panel(ax: Axes, by_metric: EvalPoints) -> None:
    """Each metric against step with its 95% CI; metrics side by side (dodged by 1.5% of the step
    range) so that equal estimates, such as avg@k and pass@1, do not hide each other's bars."""
    steps = sorted({x for points in by_metric.values() for x, _ in points})
    dodge = 0.015 * max(steps[-1] - steps[0], 1.0)
    for index, metric in enumerate(sorted(by_metric)):
        offset = (index - (len(by_metric) - 1) / 2) * dodge
        xs = [x + offset for x, _ in by_metric[metric]]
        ys = [value.value for _, value in by_metric[metric]]  # finite: eval_results_figure keeps those only
        bounds = [value.ci95 for _, value in by_metric[metric]]
        below = [max(0.0, y - low) for y, (low, _) in zip(ys, bounds, strict=True)]
        above = [max(0.0, high - y) for y, (_, high) in zip(ys, bounds, strict=True)]
        ax.errorbar(xs, ys, yerr=[below, above], label=metric, marker="o", markersize=4, capsize=3)


def _file_stem(name: str) -> str:
    return "eval_checkpoints_" + re.sub(r"[^A-Za-z0-9_.-]", "_", name)


# ---------------------------------------------------------------- report.md


def _fmt(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.4g}"


HEADLINE = ("reward", "accuracy", "length/mean", "truncated", "entropy")
"""Metrics summarised in report.md's table."""


def _headline_table(series: Series) -> list[str]:
    lines = ["| metric | first | last | min | max |", "|---|---|---|---|---|"]
    for key in HEADLINE:
        if not has_values(series, key):
            continue
        finite = [(step, value) for step, value in sorted(series[key].items()) if math.isfinite(value)]
        values = [value for _, value in finite]
        lines.append(f"| {key} | {_fmt(values[0])} | {_fmt(values[-1])} | {_fmt(min(values))} | {_fmt(max(values))} |")
    return lines if len(lines) > 2 else []


def _metric_order(name: str) -> tuple[int, int, str]:
    """avg@k, then pass@k, then maj@k, each by k (as ``grpopp eval`` prints them)."""
    kind, _, k = name.partition("@")
    return ({"avg": 0, "pass": 1, "maj": 2}.get(kind, 3), int(k) if k.isdigit() else 0, name)


def _value_cell(value: MetricValue | None) -> str:
    """``0.412 [0.371, 0.455]``: the estimate and its 95% interval (left out when it is one point)."""
    if value is None or not math.isfinite(value.value):
        return "-"
    low, high = value.ci95
    interval = "" if math.isclose(low, high) else f" [{low:.3f}, {high:.3f}]"
    return f"{value.value:.3f}{interval}"


def eval_results_table(results: EvalResults) -> list[str]:
    """A markdown table of ``grpopp eval`` results: a row per checkpoint and environment (and overall),
    a column per metric, each value with its 95% interval."""
    checkpoints = _checkpoints_by_step(results)
    scopes = _scopes(checkpoints)
    rows = [(c, scope, result) for c in checkpoints for scope in scopes if (result := _scope_result(c, scope))]
    metrics = sorted({metric for _, _, result in rows for metric in result.metrics}, key=_metric_order)
    if not metrics:
        return []
    lines = ["| checkpoint | environment | tasks | " + " | ".join(metrics) + " |", "|---" * (3 + len(metrics)) + "|"]
    for checkpoint, scope, result in rows:
        where = f"step {checkpoint.step}" if checkpoint.step is not None else f"`{checkpoint.checkpoint}`"
        cells = " | ".join(_value_cell(result.metrics.get(metric)) for metric in metrics)
        lines.append(f"| {where} | {scope} | {result.tasks} | {cells} |")
    return lines


def training_eval_table(series: Series) -> list[str]:
    """A markdown table of the evaluations run during training: a row per evaluated step, the accuracy
    over all environments and per environment."""
    total, beside = _total_and_envs(env_names(series))
    candidates = [("accuracy", total), *((f"{env}/accuracy", env) for env in beside)]
    columns = [(key, label) for key, label in candidates if has_values(series, key)]
    if not columns:
        return []
    steps = sorted({step for key, _ in columns for step in series[key]})
    lines = ["| step | " + " | ".join(label for _, label in columns) + " |", "|---" * (1 + len(columns)) + "|"]
    for step in steps:
        cells = " | ".join(_fmt3(series[key].get(step, math.nan)) for key, _ in columns)
        lines.append(f"| {step} | {cells} |")
    return lines


def _fmt3(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3f}"


def _held_out_lines(logs: RunLogs) -> list[str]:
    """report.md's opening section: the held-out numbers of every ``grpopp eval`` result and of the
    evaluations during training."""
    lines = ["## Held-out results", ""]
    for name, results in logs.eval_results.items():
        if table := eval_results_table(results):
            lines += [
                f"`grpopp eval` results in `evals/{name}/results.json` (value [95% bootstrap interval over tasks]):",
                "",
                *table,
                "",
            ]
    if table := training_eval_table(logs.evaluations):
        lines += [
            "Accuracy on the test split at the evaluations run during training (step 0: before training):",
            "",
            *table,
            "",
        ]
    if len(lines) == 2:
        lines += [
            "None logged: the run evaluated nothing (eval.tasks_per_env = 0) and no `grpopp eval` results are in "
            "evals/.",
            "",
        ]
    return lines


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _run_lines(run_dir: Path, logs: RunLogs) -> list[str]:
    steps = sorted({step for points in logs.train.values() for step in points})
    lines = [f"- Run directory: `{run_dir}`"]
    config = logs.config
    if config:
        model, algorithm = _mapping(config.get("model")), _mapping(config.get("algorithm"))
        envs = config.get("envs")
        env_list = (
            ", ".join(str(env.get("name")) for env in envs if isinstance(env, dict)) if isinstance(envs, list) else ""
        )
        lines += [f"- Model: `{model.get('name_or_path', '?')}`; algorithm: `{algorithm.get('name', '?')}`"]
        lines += [f"- Environments: {env_list or '?'}; planned steps: {config.get('steps', '?')}"]
    if steps:
        lines.append(f"- Training steps logged: {len(steps)} (steps {steps[0]} to {steps[-1]})")
    return lines


def render_markdown(run_dir: Path, logs: RunLogs, drawn: list[DrawnFigure], skipped: list[SkippedFigure]) -> str:
    """report.md: the held-out numbers, run details, a table of headline metrics, each figure embedded,
    the figures skipped."""
    lines = [f"# Training report: {run_dir.name}", "", *_held_out_lines(logs), "## Run", ""]
    lines += [*_run_lines(run_dir, logs), ""]
    if table := _headline_table(logs.train):
        lines += ["## Summary", "", *table, ""]
    for figure in drawn:
        lines += [f"## {figure.title}", "", figure.description, "", f"![{figure.title}]({figure.file})", ""]
    if skipped:
        lines += ["## Figures not drawn", ""]
        lines += [f"- `{figure.name}`: {figure.reason}" for figure in skipped]
        lines.append("")
    if logs.problems:
        lines += ["## Problems reading the run", "", *(f"- {problem}" for problem in logs.problems), ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- entry point


def write_report(run_dir: Path, out_dir: Path | None = None) -> ReportSummary:
    """Write the figures and report.md of ``run_dir`` into ``out_dir`` (default ``run_dir/report``).

    1. Read the logs (ReportError if there is no metrics.jsonl or nothing readable in it).
    2. Import matplotlib (ReportError with the install command if missing).
    3. Draw each figure of ``FIGURES`` whose metrics were logged; record the others as skipped.
    4. Draw one figure per ``evals/<name>/results.json``.
    5. Write report.md.
    """
    run_dir = Path(run_dir)
    logs = read_run(run_dir)  # 1.
    try:  # 2.
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ReportError(INSTALL_HINT) from error
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[DrawnFigure | SkippedFigure] = []
    for spec in FIGURES:  # 3.
        series = logs.train if spec.source == "train" else logs.evaluations
        results.append(_draw_spec(spec, series, out_dir / f"{spec.name}.png"))
    for name, eval_results in logs.eval_results.items():  # 4.
        results.append(_draw_eval_results(name, eval_results, out_dir / f"{_file_stem(name)}.png"))
    if not logs.eval_results:
        reason = "no evals/<name>/results.json in the run directory (written by `grpopp eval`)"
        results.append(SkippedFigure(name="eval_checkpoints", reason=reason))
    drawn = [result for result in results if isinstance(result, DrawnFigure)]
    skipped = [result for result in results if isinstance(result, SkippedFigure)]
    markdown = out_dir / "report.md"  # 5.
    markdown.write_text(render_markdown(run_dir, logs, drawn, skipped), encoding="utf-8")
    return ReportSummary(
        out_dir=out_dir,
        markdown=markdown,
        figures=drawn,
        skipped=skipped,
        training_steps=len({step for points in logs.train.values() for step in points}),
        problems=logs.problems,
    )
