"""The run's records and its optional writers, across a resume.

TensorBoard is real (the dev extra installs it): events are read back with TensorBoard's own reader,
which applies ``purge_step`` as TensorBoard would. W&B is replaced by a stand-in module that records
its calls, to isolate RunLog's use of it (the wandb package is optional and not installed by tests).
"""

from __future__ import annotations

import json
import math
import sys
import types
from pathlib import Path

import pytest

from grpopp.training.config import LoggingConfig
from grpopp.training.run_log import WANDB_ID_FILE, RunLog, truncate_log


def test_metrics_jsonl_writes_null_for_non_finite_values(tmp_path):
    log = RunLog(tmp_path, LoggingConfig(), {})
    log.metrics(1, {"reward": 0.5, "kl": math.nan, "ratio/max": math.inf})
    log.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {
        "step": 1,
        "reward": 0.5,
        "kl": None,
        "ratio/max": None,
    }


def test_truncate_log_drops_later_steps_and_a_line_cut_by_a_kill(tmp_path):
    lines = [json.dumps({"step": s, "x": s}) for s in (1, 2, 3, 4)] + ['{"step": 5, "x"']
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    truncate_log(tmp_path, "metrics.jsonl", 2)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return [(event.step, round(event.value, 6)) for event in accumulator.Scalars(tag)]


def test_tensorboard_resume_replaces_the_steps_after_the_checkpoint(tmp_path):
    pytest.importorskip("tensorboard")
    config = LoggingConfig(tensorboard=True)
    first = RunLog(tmp_path, config, {})
    for step in (1, 2, 3, 4):  # killed after step 4; the checkpoint was at step 2
        first.metrics(step, {"reward": step / 10, "kl": math.nan})
    first.close()
    resumed = RunLog(tmp_path, config, {})
    for step in (3, 4, 5):
        resumed.metrics(step, {"reward": step / 100})
    resumed.close()
    assert scalars(tmp_path / "tensorboard", "reward") == [(1, 0.1), (2, 0.2), (3, 0.03), (4, 0.04), (5, 0.05)]


class FakeWandb(types.ModuleType):
    """Records ``wandb.init`` / ``log`` / ``finish`` calls."""

    def __init__(self) -> None:
        super().__init__("wandb")
        self.inits: list[dict] = []
        self.logged: list[tuple[int, dict]] = []
        self.util = types.SimpleNamespace(generate_id=lambda: f"run{len(self.inits)}")

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(log=lambda values, step: self.logged.append((step, values)), finish=lambda: None)


def test_wandb_resume_continues_the_same_run(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    config = LoggingConfig(wandb=True, wandb_project="proj")
    first = RunLog(tmp_path, config, {"seed": 3})
    first.metrics(1, {"reward": 0.5, "kl": math.nan})
    first.close()
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == "run0"
    resumed = RunLog(tmp_path, config, {"seed": 3})
    resumed.metrics(2, {"reward": 0.25})
    resumed.close()
    common = {"project": "proj", "dir": str(tmp_path), "config": {"seed": 3}, "resume": "allow"}
    assert fake.inits == [{**common, "id": "run0"}, {**common, "id": "run0"}]  # the same run, continued
    assert fake.logged == [(1, {"reward": 0.5}), (2, {"reward": 0.25})]  # NaN is not sent


def test_missing_writer_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    log = RunLog(tmp_path, LoggingConfig(wandb=True), {})
    with pytest.raises(ImportError, match="pip install wandb"):
        log.metrics(1, {"reward": 1.0})


def test_an_evaluation_adds_no_line_to_metrics_jsonl_but_reaches_the_writers(tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log = RunLog(tmp_path, LoggingConfig(wandb=True), {})
    log.eval(0, {"accuracy": 0.25})
    log.metrics(1, {"reward": 0.5})
    log.eval(1, {"accuracy": 0.5, "coin/accuracy": 0.5})
    log.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"step": 1, "reward": 0.5}]  # one line per step, no eval line
    evals = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert evals == [{"step": 0, "accuracy": 0.25}, {"step": 1, "accuracy": 0.5, "coin/accuracy": 0.5}]
    assert fake.logged == [
        (0, {"eval/accuracy": 0.25}),
        (1, {"reward": 0.5}),
        (1, {"eval/accuracy": 0.5, "eval/coin/accuracy": 0.5}),
    ]


def test_samples_with_nested_non_finite_values_are_strict_json(tmp_path):
    log = RunLog(tmp_path, LoggingConfig(), {})
    log.samples(2, [{"reward": {"total": math.nan, "components": [math.inf, 1.5]}, "text": "NaN"}])
    line = (tmp_path / "samples.jsonl").read_text()

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(line, parse_constant=refuse) == {
        "step": 2,
        "reward": {"total": None, "components": [None, 1.5]},
        "text": "NaN",
    }
