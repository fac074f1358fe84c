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

from cli.report_cmd import report_command
from grpopp_trainer.report import (
    ReportError,
    moving_average,
    read_jsonl,
    rows_to_series,
    smoothing_window,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
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
    "tis/weight_max, tis/weight_mean was logged (TIS metrics are logged only when algorithm.loss.tis is not off)",
    "kl": "none of kl_loss, kl_mean was logged (KL is logged only with a reference model, i.e. when "
    "algorithm.loss.kl_coef > 0)",
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


def _checkpoint(step: int, value: float) -> dict:
    metric = {"value": value, "ci95": [value - 0.1, value + 0.1]}
    metrics = {"avg@4": metric, "pass@1": metric, "pass@4": {"value": value + 0.2, "ci95": [value, 0.95]}}
    env = {"tasks": 40, "samples_per_task": 4, "metrics": metrics, "length_mean": 3.2, "truncated": 0.0}
    env["statuses"] = {"correct": 80, "incorrect": 70, "timeout": 0, "error": 0, "unparseable": 10}
    return {
        "checkpoint": f"checkpoints/step-{step:06d}",
        "step": step,
        "envs": {"arithmetic": env, "countdown": env},
        "overall": {"metrics": metrics},
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
    app.command("other")(lambda: None)  # two commands: "report" stays a subcommand, as in cli.main
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
    assert result.exit_code == 1
    assert "has no metrics.jsonl" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback


def test_report_command_without_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    run_dir = make_run_dir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    result = CliRunner().invoke(_app(), ["report", str(run_dir)], env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert "pip install -e '.[report]'" in result.output
    assert not (run_dir / "report").exists()
