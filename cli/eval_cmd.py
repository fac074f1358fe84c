"""``grpopp eval``: evaluate checkpoints with the training verifiers; ``grpopp eval reverify FILE``.

A run directory brings the plugins it was made with (``grpopp.cli.plugins``); the evaluation folder records
the plugins it used, so ``reverify`` loads them too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from grpopp.cli.errors import fail, user_errors
from grpopp.cli.plugins import (
    PLUGINS_FILE,
    PluginOption,
    PluginRecord,
    load_plugins,
    load_recorded_plugins,
    read_records,
    records_json,
)
from grpopp.config_tools import UserError, validate_config
from grpopp.envs.registry import env_class
from grpopp.evaluation.evaluate import EvalSettings
from grpopp.evaluation.results import CheckpointResult, MetricValue
from grpopp.jobs.eval_job import EvalJob, resolve_job, reverify, run_eval
from grpopp.rewards.types import VERIFY_STATUSES
from grpopp.training.config import TrainConfig, is_run_dir

console = Console()


@user_errors
def eval_command(
    targets: Annotated[
        list[str],
        typer.Argument(
            help="Run directories (their checkpoints), model folders, hub ids or 'tiny'. "
            "'reverify SAMPLES.jsonl' re-scores stored samples instead.",
            show_default=False,
        ),
    ],
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="Environment NAME[:N], N held-out tasks (default: the run's environments)."),
    ] = None,
    tasks: Annotated[int, typer.Option(min=1, help="Held-out tasks per environment when --env gives no N.")] = 100,
    samples: Annotated[int, typer.Option(min=1, help="K: completions per task.")] = 1,
    k: Annotated[
        list[int] | None, typer.Option("--k", help="k of pass@k / maj@k, repeatable (default 1, 2, 4, .., K).")
    ] = None,
    checkpoints: Annotated[str, typer.Option(help="Of a run directory: all, last or every:N steps.")] = "last",
    greedy: Annotated[bool, typer.Option(help="Greedy decoding (one sample per task).")] = False,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (default: the run's).")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="Generation limit (default: the run's).")] = None,
    bootstrap: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% intervals.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of sampling and bootstrap.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default RUN_DIR/evals/<time> or evals/<time>).")
    ] = None,
    plugin: PluginOption = None,
) -> None:
    """Evaluate checkpoints on held-out tasks with the verifiers and shaping that trained them:
    avg@K, unbiased pass@k, maj@k, 95% bootstrap intervals, lengths, verifier statuses."""
    plugins = load_plugins(plugin)
    if targets[0] == "reverify":
        if len(targets) != 2:
            raise fail("usage: grpopp eval reverify SAMPLES.jsonl")
        _reverify(Path(targets[1]), plugins)
        return
    options = {"samples": samples, "ks": tuple(k or ()), "bootstrap": bootstrap, "seed": seed}
    settings = validate_config(EvalSettings, options, prefix="eval options")
    for target in targets:
        if is_run_dir(Path(target)):
            plugins = load_recorded_plugins(Path(target), plugins)

    said: set[str] = set()

    def job_for(config: TrainConfig) -> EvalJob:
        job = resolve_job(config, list(env or []), tasks, settings, greedy, temperature, max_new_tokens)
        for chosen in job.envs:
            env_class(chosen.name)  # an unknown name is the error to report, not a note about it
        for note in job.notes:  # e.g. an --env the run's config does not hold; once per evaluation
            if note not in said:
                said.add(note)
                typer.echo(f"note: {note}", err=True)
        return job

    record = {PLUGINS_FILE: records_json(plugins)} if plugins else {}
    folder, results = run_eval(targets, checkpoints, job_for, out, extra_files=record)
    for point in results.checkpoints:
        console.print(checkpoint_table(point))
    console.print(f"wrote {folder / 'results.json'} and {folder / 'samples.jsonl'}")


def _cell(metric: MetricValue | None, tasks: int) -> str:
    """A metric's value and 95% interval; "(n=...)" when it covers fewer tasks than its column; "-"
    when no task gives it."""
    if metric is None or not math.isfinite(metric.value):
        return "-"
    low, high = metric.ci95
    interval = "" if math.isclose(low, high) else f" [{low:.3f}, {high:.3f}]"
    count = "" if metric.tasks == tasks else f" (n={metric.tasks})"
    return f"{metric.value:.3f}{interval}{count}"


def checkpoint_table(point: CheckpointResult) -> Table:
    """A checkpoint's table: a row per metric, a column per environment and overall; then lengths,
    truncation and the samples of each status other than correct and incorrect (which the metrics count)."""
    columns = {**point.envs, "overall": point.overall}
    names = sorted({name for column in columns.values() for name in column.metrics}, key=_metric_order)
    title = point.checkpoint + (f" (step {point.step})" if point.step is not None else "")
    table = Table(title=title, caption="value [95% bootstrap interval over tasks]")
    table.add_column("metric")
    for name in columns:
        table.add_column(name)
    table.add_row("tasks", *(str(c.tasks) for c in columns.values()))
    for metric in names:
        table.add_row(metric, *(_cell(c.metrics.get(metric), c.tasks) for c in columns.values()))
    table.add_row("mean length", *(_number(c.length_mean, ".1f") for c in columns.values()))
    table.add_row("truncated", *(_number(c.truncated, ".3f") for c in columns.values()))
    if any(c.episodes is not None for c in columns.values()):  # multi-turn environments
        for label, field, spec in _EPISODE_ROWS:
            table.add_row(
                label,
                *("-" if c.episodes is None else _number(getattr(c.episodes, field), spec) for c in columns.values()),
            )
    for status in (s for s in VERIFY_STATUSES if s not in ("correct", "incorrect")):
        table.add_row(f"{status} (samples)", *(str(c.statuses.get(status, 0)) for c in columns.values()))
    return table


_EPISODE_ROWS = (
    ("turns (mean)", "turns_mean", ".2f"),
    ("tool calls (mean)", "tool_calls_mean", ".2f"),
    ("tool errors (mean)", "tool_errors_mean", ".2f"),
    ("ended by turn limit", "ended_by_turn_limit", ".3f"),
    ("ended by token limit", "ended_by_token_limit", ".3f"),
    ("ended by env error", "ended_by_env_error", ".3f"),
)


def _number(value: float, spec: str) -> str:
    return format(value, spec) if math.isfinite(value) else "-"


def _metric_order(name: str) -> tuple[int, int]:
    kind, _, k = name.partition("@")
    return ({"avg": 0, "pass": 1, "maj": 2}.get(kind, 3), int(k) if k.isdigit() else 0)


def _reverify(samples_file: Path, plugins: list[PluginRecord]) -> None:
    if not samples_file.is_file():
        what = "a folder" if samples_file.is_dir() else "no such file"
        raise UserError(f"reverify {samples_file}: {what}; give the samples.jsonl that grpopp eval wrote")
    folder = samples_file.parent
    run_dir = folder.parent.parent
    if not read_records(folder) and folder.parent.name == "evals" and is_run_dir(run_dir):
        folder = run_dir  # an evaluation folder of a run, written before evaluations recorded plugins
    load_recorded_plugins(folder, plugins)
    report = reverify(samples_file)
    table = Table(title=f"re-verified {report.samples} samples: {len(report.changes)} changed")
    for column in ("stored status", "status now", "samples"):
        table.add_column(column)
    for (before, after), count in sorted(report.transitions.items()):
        table.add_row(before, after, str(count))
    console.print(table)
    for change in report.changes[:20]:
        console.print(
            f"line {change.line}: {change.task_id} sample {change.sample}: {change.before} -> {change.after} "
            f"(reward {change.total_before:g} -> {change.total_after:g})"
        )
    if len(report.changes) > 20:
        console.print(f"... and {len(report.changes) - 20} more")
