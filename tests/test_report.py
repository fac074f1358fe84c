"""``grpopp report``: log reading (nulls, eval rows, a line cut short), the figures written as valid PNGs
of the expected size, the figures skipped and why, report.md, and the command's errors."""

import json
import math
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import typer
from typer.testing import CliRunner

from grpopp.cli.report_cmd import report_command
from grpopp.evaluation.results import CheckpointResult
from grpopp.jobs.report import (
    FIGURES,
    ReportError,
    eval_results_figure,
    eval_results_table,
    moving_average,
    read_jsonl,
    read_run,
    rows_to_series,
    smoothing_window,
    spec_figure,
    step_ticks,
    write_report,
    y_limits,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURE_BY_NAME = {spec.name: spec for spec in FIGURES}
STEPS = 35
ENVS = ("arithmetic", "countdown")

# File -> (width, height) in pixels: 1200 wide, 400 per row of panels, panels two to a row.
EXPECTED_FIGURES = {
    "reward_accuracy.png": (1200, 800),  # reward, accuracy, 2 environments' components
    "length_truncation.png": (1200, 400),
    "entropy.png": (1200, 400),
    "clipping.png": (1200, 400),
    "dynamic_sampling.png": (1200, 800),  # zero-variance fraction, rounds, groups
    "masked_samples.png": (1200, 400),
    "optimization.png": (1200, 800),  # grad norm, lr, loss
    "throughput.png": (1200, 400),
    "eval_during_training.png": (1200, 400),
    "eval_checkpoints_final.png": (1200, 800),  # arithmetic, countdown, overall
}
EXPECTED_SKIPPED = {
    "importance_sampling": "none of tis/frac_masked, tis/frac_truncated, tis/logprob_gap_max, tis/logprob_gap_mean, "
    "tis/weight_max, tis/weight_mean was logged (TIS metrics are logged only when algorithm.loss.tis.type is not off)",
    "kl": "none of kl_loss, kl_mean was logged (KL is logged only with a reference model, i.e. when "
    "algorithm.loss.kl_coef > 0)",
    "episodes": "no environment metrics were logged (only multi-turn environments log these)",
}


def _training_row(step: int) -> dict:
    row = {
        "step": step,
        "reward": 0.2 + 0.01 * step,
        "accuracy": 0.1 + 0.01 * step,
        "length/mean": 100.0 - step,
        "length/max": 200.0,
        "truncated": 0.05,
        "dynamic_sampling/rounds": 1.0 + step % 2,
        "dynamic_sampling/zero_variance_fraction": 0.3,
        "groups": 8.0,
        "time/generation": 1.5,
        "time/scoring": 0.1,
        "time/training": 2.0,
        "tokens_per_second/generation": 1000.0 + step,
        "tokens_per_second/training": 500.0,
        "skipped_updates_total": 0.0,
        "masked/timeout": 0.0,
        "masked/error": 0.01,
        "unparseable": 0.02,
        "loss": 0.01,
        "pg_loss": 0.01,
        "clip_frac_low": 0.001,
        "clip_frac_high": 0.002,
        "ratio_mean": 1.0,
        "ratio_min": 0.9,
        "ratio_max": 1.1,
        "dual_clip_frac": 0.0,
        "entropy": 0.7 - 0.01 * step,
        "kl_mean": None,  # logged, but never finite: the KL figure is skipped all the same
        "grad_norm": None if step == 7 else 0.5,  # one non-finite gradient norm
        "skipped_update": 0.0,
        "lr": 1e-6,
    }
    for env in ENVS:
        row |= {f"{env}/accuracy": 0.3, f"{env}/reward": 0.4, f"{env}/reward/correctness": 0.3}
        row |= {f"{env}/reward/format": 1.0}
    return row  # no tis/* keys: the importance-sampling figure is skipped


def _summary(value: float, tasks: int, envs: list[str]) -> dict:
    """A summary as ``grpopp eval`` writes it into results.json (``evaluate.summarise``)."""
    metric = {"value": value, "ci95": [value - 0.1, value + 0.1], "tasks": tasks, "envs": envs}
    pass4 = {"value": value + 0.2, "ci95": [value, 0.95], "tasks": tasks, "envs": envs}
    return {
        "tasks": tasks,
        "samples_per_task": 4,
        "metrics": {"avg@4": metric, "pass@1": metric, "pass@4": pass4},
        "tasks_without_enough_judged_samples": {"k=1": 0, "k=4": 0},
        "length_mean": 3.2,
        "truncated": 0.0,
        "statuses": {"correct": 2 * tasks, "incorrect": tasks, "unparseable": tasks // 4, "timeout": 0, "error": 0},
    }


def _checkpoint(step: int, value: float) -> dict:
    return {
        "checkpoint": f"checkpoints/step-{step:06d}",
        "step": step,
        "envs": {"arithmetic": _summary(value, 40, ["arithmetic"]), "countdown": _summary(value, 40, ["countdown"])},
        "overall": _summary(value, 80, ["arithmetic", "countdown"]),
        "config": {},
    }


def make_run_dir(root: Path, with_eval_jsonl: bool = True) -> Path:
    """A run directory as a killed run leaves it: an eval row in metrics.jsonl, a last line cut short."""
    run_dir = root / "run"
    run_dir.mkdir()
    eval_row = {"step": 0, "eval/arithmetic/accuracy": 0.25, "eval/countdown/accuracy": 0.15, "eval/accuracy": 0.2}
    lines = [json.dumps(eval_row)] + [json.dumps(_training_row(step)) for step in range(1, STEPS + 1)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 36, "reward": 0.')
    if with_eval_jsonl:
        evals = [{"step": 0, "arithmetic/accuracy": 0.25, "countdown/accuracy": 0.15, "accuracy": 0.2}]
        evals += [{"step": 20, "arithmetic/accuracy": 0.45, "countdown/accuracy": 0.35, "accuracy": 0.4}]
        (run_dir / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in evals))
    results = run_dir / "evals" / "final" / "results.json"
    results.parent.mkdir(parents=True)
    checkpoints = [_checkpoint(20, 0.5), _checkpoint(10, 0.4)]  # out of order: drawn by step
    results.write_text(json.dumps({"config": {}, "versions": {}, "checkpoints": checkpoints}))
    (run_dir / "config.yaml").write_text(
        "model:\n  name_or_path: tiny\nalgorithm:\n  name: dapo\nenvs:\n- name: arithmetic\n- name: countdown\n"
        "steps: 50\n"
    )
    return run_dir


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run_dir = make_run_dir(tmp_path_factory.mktemp("report"))
    return run_dir, write_report(run_dir)


# ---------------------------------------------------------------- reading the logs


def test_read_jsonl_skips_a_line_cut_short_and_counts_it(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "reward": 0.5}\n\n{"reward": 1.0}\n{"step": 2, "rew')
    log = read_jsonl(path)
    assert log.rows == [{"step": 1, "reward": 0.5}]
    assert log.unreadable_lines == 2  # no step; cut short (the blank line is not counted)


def test_rows_to_series_nulls_become_nan_and_a_repeated_step_keeps_its_last_row():
    rows = [{"step": 1, "a": 1.0, "b": None}, {"step": 2, "a": 2, "note": "text"}, {"step": 1, "a": 3.0}]
    series = rows_to_series(rows)
    assert series["a"] == {1: 3.0, 2: 2.0}
    assert math.isnan(series["b"][1])
    assert "note" not in series
    evals = rows_to_series([{"step": 0, "eval/accuracy": 0.2, "reward": 1.0}], prefix="eval/")
    assert evals == {"accuracy": {0: 0.2}}


def test_moving_average_by_hand():
    # windows of 3 (finite values only): [1], [1, 2], [1, 2, 3], [2, 3, 4], [3, 4], [4], [] -> NaN
    values = [1.0, 2.0, 3.0, 4.0, math.nan, math.nan, math.nan]
    averages = moving_average(values, 3)
    assert averages[:5] == [1.0, 1.5, 2.0, 3.0, 3.5]
    assert averages[5] == 4.0
    assert math.isnan(averages[6])


def test_smoothing_window_starts_at_thirty_points_and_is_capped():
    assert [smoothing_window(n) for n in (0, 29, 30, 35, 120, 250, 10_000)] == [1, 1, 3, 3, 12, 25, 25]


# ---------------------------------------------------------------- write_report


def test_every_expected_figure_is_a_valid_png_of_the_expected_size(report):
    run_dir, summary = report
    out_dir = run_dir / "report"
    assert summary.out_dir == out_dir
    assert sorted(path.name for path in out_dir.glob("*.png")) == sorted(EXPECTED_FIGURES)
    assert [figure.file for figure in summary.figures] == list(EXPECTED_FIGURES)  # report order
    for name, (width, height) in EXPECTED_FIGURES.items():
        data = (out_dir / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        assert mpimg.imread(out_dir / name).shape == (height, width, 4), name


def test_absent_metrics_skip_their_figures_with_the_reason(report):
    _, summary = report
    skipped = {figure.name: figure.reason for figure in summary.skipped}
    assert skipped == EXPECTED_SKIPPED
    assert summary.training_steps == STEPS
    assert summary.problems == [
        "1 line(s) of metrics.jsonl could not be read (a run killed mid-write cuts its last line short); skipped"
    ]


def test_figures_draw_the_logged_metrics(report):
    _, summary = report
    metrics = {figure.file: figure.metrics for figure in summary.figures}
    assert metrics["reward_accuracy.png"] == [
        "reward",
        "arithmetic/reward",
        "countdown/reward",
        "accuracy",
        "arithmetic/accuracy",
        "countdown/accuracy",
        "arithmetic/reward/correctness",
        "arithmetic/reward/format",
        "countdown/reward/correctness",
        "countdown/reward/format",
    ]
    assert metrics["optimization.png"] == ["grad_norm", "lr", "loss", "pg_loss"]
    assert metrics["clipping.png"] == [
        "clip_frac_low",
        "clip_frac_high",
        "dual_clip_frac",
        "ratio_min",
        "ratio_mean",
        "ratio_max",
    ]
    assert metrics["eval_during_training.png"] == ["accuracy", "arithmetic/accuracy", "countdown/accuracy"]
    for scope in ("arithmetic", "countdown", "overall"):
        assert [m for m in metrics["eval_checkpoints_final.png"] if m.startswith(scope + "/")] == [
            f"{scope}/avg@4",
            f"{scope}/pass@1",
            f"{scope}/pass@4",
        ]


def test_report_md_embeds_each_figure_by_relative_path_and_lists_the_skipped(report):
    run_dir, summary = report
    markdown = summary.markdown.read_text()
    assert summary.markdown == run_dir / "report" / "report.md"
    for figure in summary.figures:
        assert f"![{figure.title}]({figure.file})" in markdown
        assert (summary.markdown.parent / figure.file).is_file()
    for name, reason in EXPECTED_SKIPPED.items():
        assert f"- `{name}`: {reason}" in markdown
    assert "- `eval_checkpoints`" not in markdown  # drawn: results.json exists
    assert "| reward | 0.21 | 0.55 | 0.21 | 0.55 |" in markdown  # first, last, min, max
    assert "algorithm: `dapo`" in markdown
    assert f"Training steps logged: {STEPS} (steps 1 to {STEPS})" in markdown


def test_output_is_deterministic_and_eval_rows_stand_in_for_a_missing_eval_jsonl(tmp_path, report):
    run_dir = make_run_dir(tmp_path, with_eval_jsonl=False)
    (run_dir / "evals" / "final" / "results.json").unlink()
    summary = write_report(run_dir, tmp_path / "elsewhere")
    assert summary.markdown == tmp_path / "elsewhere" / "report.md"
    metrics = {figure.file: figure.metrics for figure in summary.figures}
    assert metrics["eval_during_training.png"] == ["accuracy", "arithmetic/accuracy", "countdown/accuracy"]
    assert "eval_checkpoints_final.png" not in metrics
    assert {figure.name for figure in summary.skipped} == {*EXPECTED_SKIPPED, "eval_checkpoints"}
    first_dir = report[0] / "report"
    for name in ("reward_accuracy.png", "throughput.png"):  # same logs, same bytes
        assert (tmp_path / "elsewhere" / name).read_bytes() == (first_dir / name).read_bytes()


def test_missing_metrics_jsonl_is_a_report_error(tmp_path):
    with pytest.raises(ReportError, match="has no metrics.jsonl"):
        write_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "rew')
    with pytest.raises(ReportError, match="no readable line"):
        write_report(tmp_path)


# ---------------------------------------------------------------- the command


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("report")(report_command)
    app.command("other")(lambda: None)  # two commands: "report" stays a subcommand, as in grpopp.cli.main
    return app


def test_report_command_prints_what_it_wrote(tmp_path):
    run_dir = make_run_dir(tmp_path)
    result = CliRunner().invoke(
        _app(), ["report", str(run_dir), "--out", str(tmp_path / "out")], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    for name in EXPECTED_FIGURES:
        assert name in result.output
        assert (tmp_path / "out" / name).is_file()
    assert "kl (not drawn)" in result.output
    assert f"wrote {len(EXPECTED_FIGURES)} figure(s)" in result.output


def test_report_command_fails_cleanly_without_metrics(tmp_path):
    result = CliRunner().invoke(_app(), ["report", str(tmp_path)], env={"COLUMNS": "200"})
    assert result.exit_code == 2  # a user error (grpopp.cli.errors): one message, exit status 2
    assert "has no metrics.jsonl" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback


def test_report_command_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    run_dir = make_run_dir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    result = CliRunner().invoke(_app(), ["report", str(run_dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "pip install -e '.[report]'" in result.output
    assert not (run_dir / "report").exists()


# ---------------------------------------------------------------- axes, ticks and the held-out tables


@pytest.mark.parametrize(
    ("values", "bounds", "expected"),
    [
        # a constant lr of 1e-4 (matplotlib drew 0.000096-0.000104): from 0 to twice the value
        ([1e-4] * 5, (0.0, None), (0.0, 2e-4)),
        # a constant fraction of 0 (matplotlib drew -0.05-0.05): the whole range of a fraction
        ([0.0, 0.0], (0.0, 1.0), (0.0, 1.0)),
        ([0.0], (None, None), (-1.0, 1.0)),  # unbounded constant 0: symmetric
        ([-0.5, -0.5], (None, None), (-1.0, 0.0)),  # negative constant: from twice it to 0
        ([0.8] * 3, (0.0, 1.0), (0.0, 1.0)),  # 0 to 1.6, cut at 1
        # varying: 5% of the span on each side; 0..0.5 -> -0.025..0.525, cut at 0 for a fraction
        ([0.0, 0.5, math.nan], (0.0, 1.0), (0.0, 0.525)),
        ([0.0, 0.5], (None, None), (-0.025, 0.525)),
        # 0.001..0.002: margin 0.00005 inside the bounds on both sides
        ([0.001, 0.002], (0.0, 1.0), (0.00095, 0.00205)),
        # values outside the bounds are never cut off: -0.2..1.2 with margin 0.07
        ([-0.2, 1.2], (0.0, 1.0), (-0.27, 1.27)),
    ],
)
def test_y_limits_by_hand(values, bounds, expected):
    low, high = y_limits(values, bounds)
    assert low == pytest.approx(expected[0], abs=1e-15)
    assert high == pytest.approx(expected[1], abs=1e-15)


def test_y_limits_of_nothing_finite_is_none():
    assert y_limits([math.nan, math.inf], (0.0, 1.0)) is None


def test_step_ticks_keep_every_step_up_to_twelve_and_always_the_last():
    assert step_ticks([20, 10, 10, 30]) == [10, 20, 30]
    # 26 steps 0..25: stride ceil(26 / 12) = 3 counted back from 25 -> 1, 4, ..., 25 (9 ticks)
    assert step_ticks(list(range(26))) == [1, 4, 7, 10, 13, 16, 19, 22, 25]
    assert step_ticks(list(range(0, 1300, 100))) == [0, 200, 400, 600, 800, 1000, 1200]  # 13 -> stride 2


def _axes_by_title(figure):
    return {ax.get_title(): ax for ax in figure.axes}


def test_constant_and_fraction_series_get_sensible_axes(report):
    run_dir, _ = report
    series = read_run(run_dir).train
    figure, _ = spec_figure(FIGURE_BY_NAME["optimization"], series)
    axes = _axes_by_title(figure)
    assert axes["Learning rate"].get_ylim() == pytest.approx((0.0, 2e-6))  # lr is a constant 1e-6
    assert axes["Gradient norm"].get_ylim() == pytest.approx((0.0, 1.0))  # a constant 0.5 (one null)
    figure, _ = spec_figure(FIGURE_BY_NAME["clipping"], series)
    axes = _axes_by_title(figure)
    # fractions 0 (dual clip), 0.001 (low), 0.002 (high): 5% margin is 0.0001, cut at 0 below
    assert axes["Clipped tokens"].get_ylim() == pytest.approx((0.0, 0.0021))
    figure, _ = spec_figure(FIGURE_BY_NAME["masked_samples"], series)
    axes = _axes_by_title(figure)
    assert axes["Completions by status"].get_ylim() == pytest.approx((0.0, 0.021))  # 0, 0.01, 0.02
    assert axes["Skipped optimizer updates"].get_ylim() == pytest.approx((0.0, 1.0))  # constant 0, never < 0


def test_checkpoint_ticks_sit_at_the_checkpoints(report):
    run_dir, _ = report
    results = read_run(run_dir).eval_results["final"]
    figure, _ = eval_results_figure("final", results)
    for ax in figure.axes:  # arithmetic, countdown, overall: checkpoints at steps 10 and 20
        assert list(ax.get_xticks()) == [10.0, 20.0]
        assert [label.get_text() for label in ax.get_xticklabels()] == ["10", "20"]
        assert ax.get_ylim()[0] >= 0.0 and ax.get_ylim()[1] <= 1.0
    many = results.model_copy(update={"checkpoints": [_checkpoint_result(step) for step in range(50, 1550, 50)]})
    figure, _ = eval_results_figure("many", many)
    # 30 checkpoints 50..1500: stride 3 counted back from 1500 -> 150, 300, ..., 1500
    assert list(figure.axes[0].get_xticks()) == [float(step) for step in range(150, 1550, 150)]
    series = read_run(run_dir).evaluations
    figure, _ = spec_figure(FIGURE_BY_NAME["eval_during_training"], series)
    assert list(figure.axes[0].get_xticks()) == [0.0, 20.0]  # the two evaluations of eval.jsonl


def _checkpoint_result(step):
    return CheckpointResult.model_validate(_checkpoint(step, 0.5))


def test_report_md_opens_with_the_held_out_tables(report):
    _, summary = report
    lines = summary.markdown.read_text().splitlines()
    assert lines[:2] == ["# Training report: run", ""]
    assert lines[2] == "## Held-out results"
    table_start = lines.index("| checkpoint | environment | tasks | avg@4 | pass@1 | pass@4 |")
    # from _checkpoint(): value v with interval [v - 0.1, v + 0.1]; pass@4 = v + 0.2 in [v, 0.95];
    # environments have 40 tasks, the overall row their 80
    assert lines[table_start + 1 : table_start + 8] == [
        "|---|---|---|---|---|---|",
        "| step 10 | arithmetic | 40 | 0.400 [0.300, 0.500] | 0.400 [0.300, 0.500] | 0.600 [0.400, 0.950] |",
        "| step 10 | countdown | 40 | 0.400 [0.300, 0.500] | 0.400 [0.300, 0.500] | 0.600 [0.400, 0.950] |",
        "| step 10 | overall | 80 | 0.400 [0.300, 0.500] | 0.400 [0.300, 0.500] | 0.600 [0.400, 0.950] |",
        "| step 20 | arithmetic | 40 | 0.500 [0.400, 0.600] | 0.500 [0.400, 0.600] | 0.700 [0.500, 0.950] |",
        "| step 20 | countdown | 40 | 0.500 [0.400, 0.600] | 0.500 [0.400, 0.600] | 0.700 [0.500, 0.950] |",
        "| step 20 | overall | 80 | 0.500 [0.400, 0.600] | 0.500 [0.400, 0.600] | 0.700 [0.500, 0.950] |",
    ]
    during = lines.index("| step | all environments | arithmetic | countdown |")
    assert lines[during + 1 : during + 4] == [
        "|---|---|---|---|",
        "| 0 | 0.200 | 0.250 | 0.150 |",
        "| 20 | 0.400 | 0.450 | 0.350 |",
    ]
    assert table_start < during < lines.index("## Run") < lines.index("## Summary")


def test_results_json_of_the_first_versions_reads_and_a_broken_one_is_named(tmp_path):
    run_dir = make_run_dir(tmp_path)
    early = _checkpoint(5, 0.3)
    del early["config"]  # the first results.json files: no per-checkpoint config, no envs per metric
    for summary in (*early["envs"].values(), early["overall"]):
        for metric in summary["metrics"].values():
            metric.pop("envs", None)  # (avg@4 and pass@1 share one dict)
        summary["metrics"]["pass@4"] = {"value": None, "ci95": [None, None], "tasks": 0}  # NaN, written null
    for name, checkpoints in (("early", [early]), ("broken", [{**early, "overall": None}])):
        (run_dir / "evals" / name).mkdir()
        (run_dir / "evals" / name / "results.json").write_text(json.dumps({"versions": {}, "checkpoints": checkpoints}))
    logs = read_run(run_dir)
    assert eval_results_table(logs.eval_results["early"]) == [
        "| checkpoint | environment | tasks | avg@4 | pass@1 | pass@4 |",
        "|---|---|---|---|---|---|",
        "| step 5 | arithmetic | 40 | 0.300 [0.200, 0.400] | 0.300 [0.200, 0.400] | - |",
        "| step 5 | countdown | 40 | 0.300 [0.200, 0.400] | 0.300 [0.200, 0.400] | - |",
        "| step 5 | overall | 80 | 0.300 [0.200, 0.400] | 0.300 [0.200, 0.400] | - |",
    ]
    assert "broken" not in logs.eval_results
    assert logs.problems[-1] == (
        "evals/broken/results.json: not a grpopp eval results.json: checkpoints.0.overall: Input should be a valid "
        "dictionary or instance of Summary; evaluate again to write a new one (skipped)"
    )


def test_report_md_says_when_nothing_was_held_out(tmp_path):
    run_dir = tmp_path / "quiet"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(json.dumps(_training_row(1)) + "\n")
    markdown = write_report(run_dir).markdown.read_text().splitlines()
    assert markdown[2:5] == [
        "## Held-out results",
        "",
        "None logged: the run evaluated nothing (eval.tasks_per_env = 0) and no `grpopp eval` results are in evals/.",
    ]


def test_weight_zero_components_are_labelled_apart(tmp_path):
    rows = []
    for step in (1, 2):
        row = {"step": step, "arithmetic/accuracy": 0.5, "arithmetic/reward/correctness": 0.5}
        rows.append(row | {"arithmetic/reward_inactive/length": -0.1, "arithmetic/reward_inactive/format": 0.0})
    series = rows_to_series(rows)
    figure, panels = spec_figure(FIGURE_BY_NAME["reward_accuracy"], series)
    components = _axes_by_title(figure)["arithmetic: reward components"]
    assert [text.get_text() for text in components.get_legend().get_texts()] == [
        "correctness",
        "format (weight 0: not in the reward)",
        "length (weight 0: not in the reward)",
    ]
    assert [curve.key for curve in panels[-1].curves] == [
        "arithmetic/reward/correctness",
        "arithmetic/reward_inactive/format",
        "arithmetic/reward_inactive/length",
    ]
