"""``grpopp eval``: pass@k, maj@k and intervals against hand-computed values; whole evaluations of
the built-in tiny model (a quick build) and of a run directory, checked against an independent
recount of samples.jsonl; ``reverify``."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grpopp.config_tools import ConfigError, UserError
from grpopp.envs.base import Task
from grpopp.evaluation.evaluate import (
    EvalSettings,
    TaskOutcome,
    bootstrap_ci,
    generate_in_chunks,
    majority_correct,
    pass_at_k,
    summarise,
)
from grpopp.evaluation.results import CheckpointResult, EvalResults, MetricValue
from grpopp.jobs.eval_job import parse_eval_env, resolve_targets, reverify, summarise_samples
from grpopp.recipes.tiny import TinyModelConfig, load_or_create_tiny_model
from grpopp.rollout.base import Completion, SamplingParams
from grpopp.rollout.hf import HFEngine

GRPOPP = str(Path(sys.executable).with_name("grpopp"))
PLUGIN = str(Path(__file__).parent / "plugins" / "coin_env.py")
QUICK = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, sft_steps=3, eval_tasks=4)


# ----------------------------------------------------------------------------- pass@k, maj@k, intervals


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 0, 1, 0.0),  # c = 0: never
        (5, 0, 5, 0.0),
        (5, 5, 1, 1.0),  # c = n: always
        (5, 5, 5, 1.0),
        (4, 1, 4, 1.0),  # k = n: the one correct sample is always drawn
        (4, 1, 1, 0.25),  # pass@1 = c / n
        (4, 1, 2, 0.5),  # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (5, 2, 3, 0.9),  # 1 - C(3,3)/C(5,3) = 1 - 1/10
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7,5)/C(10,5)
        (10, 3, 8, 1.0),  # n - c = 7 < 8
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_equals_the_binomial_formula_everywhere():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                binomial = 1.0 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(binomial, abs=1e-12), (n, c, k)


@pytest.mark.parametrize(("n", "c", "k"), [(3, 1, 0), (3, 1, 4), (3, 4, 1), (3, -1, 1)])
def test_pass_at_k_refuses_impossible_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass@k needs"):
        pass_at_k(n, c, k)


def test_majority_vote_ties_go_to_the_first_answer_and_no_answer_is_wrong():
    assert majority_correct([("3", False), ("4", True), ("4", True)])
    assert not majority_correct([("3", False), ("4", True)])  # tie: "3" was first
    assert majority_correct([("4", True), ("3", False)])
    assert not majority_correct([(None, False), (None, False), ("4", True)])
    assert not majority_correct([(None, False), ("4", True)])  # tie: "no answer" was first
    assert majority_correct([("4", True), (None, False)])
    assert not majority_correct([(None, False)] * 3)  # no answer at all: wrong
    assert not majority_correct([])
    # the tie goes to the answer whose FIRST occurrence is first, not to the last vote counted
    assert majority_correct([("4", True), ("3", False), ("3", False), ("4", True)])


def outcome(correct: list[bool | None], answers: list[str | None] | None = None, env: str = "e") -> TaskOutcome:
    """None in ``correct`` is a sample the verifier could not judge (timeout)."""
    answers = answers or [None if c is None else str(int(c)) for c in correct]
    statuses = ["timeout" if c is None else "correct" if c else "incorrect" for c in correct]
    return TaskOutcome(
        env=env,
        task_id=f"{env}/test/{id(correct)}",
        statuses=statuses,
        answers=[(a, c) for a, c in zip(answers, correct, strict=True) if c is not None],
        lengths=[2] * len(correct),
        truncated=[False] * len(correct),
        has_answers=True,
    )


def test_summary_of_hand_made_tasks():
    tasks = [
        outcome([True, True, False, False]),  # c=2 of 4
        outcome([False, False, False, False]),  # c=0
        outcome([True, None, None, True]),  # two timeouts: n=2, c=2; no pass@4
        outcome([True, False, True, True]),  # c=3
    ]
    summary = summarise(tasks, EvalSettings(samples=4, bootstrap=200))
    metrics = {name: m.value for name, m in summary.metrics.items()}
    assert metrics["avg@4"] == pytest.approx((0.5 + 0 + 1 + 0.75) / 4)
    assert metrics["pass@1"] == pytest.approx((0.5 + 0 + 1 + 0.75) / 4)
    # pass@2: 1 - C(2,2)/C(4,2) = 5/6; 0; n=2,c=2 -> 1; 1 - C(1,2)/C(4,2) = 1
    assert metrics["pass@2"] == pytest.approx((5 / 6 + 0 + 1 + 1) / 4)
    assert metrics["pass@4"] == pytest.approx((1 + 0 + 1) / 3)  # the task with 2 judged samples is left out
    assert summary.metrics["pass@4"].tasks == 3
    # maj@2 over the first two judged answers: "1","1" -> right; "0","0" -> wrong; "1","1"; "1","0" -> tie, "1"
    assert metrics["maj@2"] == pytest.approx(3 / 4)
    assert summary.statuses == {"correct": 7, "incorrect": 7, "unparseable": 0, "timeout": 2, "error": 0}
    assert summary.unjudged == 2
    assert summary.tasks_without_enough_judged_samples == {"k=1": 0, "k=2": 0, "k=4": 1}
    for metric in summary.metrics.values():
        low, high = metric.ci95
        assert low <= metric.value <= high


def test_tasks_without_any_answer_count_wrong_for_maj_at_k():
    with_answer = outcome([True, True], answers=["4", "4"])
    silent = outcome([False, False], answers=[None, None])  # e.g. two unparseable samples
    silent.has_answers = False
    summary = summarise([with_answer, silent], EvalSettings(samples=2, bootstrap=0))
    metrics = summary.metrics
    assert metrics["maj@2"].value == 0.5 and metrics["maj@2"].tasks == 2  # not 1.0 over one task
    assert metrics["pass@2"].value == 0.5 and metrics["pass@2"].tasks == 2


def test_timeouts_are_never_counted_as_wrong():
    judged_only = summarise([outcome([True, False])], EvalSettings(samples=2, bootstrap=0))
    with_timeouts = summarise([outcome([True, None, False, None])], EvalSettings(samples=4, bootstrap=0))
    assert with_timeouts.avg.value == judged_only.avg.value == 0.5
    assert with_timeouts.metrics["avg@4"].value == judged_only.metrics["avg@2"].value


def test_bootstrap_interval_brackets_the_mean_and_is_reproducible():
    values = [float(i % 3 == 0) for i in range(60)]
    low, high = bootstrap_ci(values, 2000, seed=1)
    mean = sum(values) / len(values)
    assert low < mean < high
    # The normal approximation of the same interval: mean +- 1.96 sqrt(p(1-p)/n) = 0.333 +- 0.119.
    assert low == pytest.approx(mean - 0.119, abs=0.03) and high == pytest.approx(mean + 0.119, abs=0.03)
    assert bootstrap_ci(values, 2000, seed=1) == (low, high)
    assert bootstrap_ci([0.5] * 10, 100, seed=0) == (0.5, 0.5)
    assert math.isnan(bootstrap_ci([], 100, seed=0)[0])


def test_default_ks_and_bad_ks():
    assert EvalSettings(samples=1).resolved_ks() == [1]
    assert EvalSettings(samples=6).resolved_ks() == [1, 2, 4, 6]
    assert EvalSettings(samples=8, ks=(8, 3)).resolved_ks() == [3, 8]
    with pytest.raises(ValueError, match="ask for k <= --samples"):
        EvalSettings(samples=4, ks=(5,))


def test_env_arguments_and_checkpoint_choice_errors(tmp_path):
    assert parse_eval_env("arithmetic:40", 100) == ("arithmetic", 40)
    assert parse_eval_env("reasoning_gym:chain_sum", 100) == ("reasoning_gym:chain_sum", 100)
    assert parse_eval_env("reasoning_gym:chain_sum:7", 100) == ("reasoning_gym:chain_sum", 7)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"steps": 1}))
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        resolve_targets([str(run)], "last")
    (run / "config.yaml").write_text(yaml.safe_dump({"steps": -3}))
    with pytest.raises(ConfigError, match=r"run/config\.yaml: steps: Input should be greater than or equal to 1"):
        resolve_targets([str(run)], "last")


# ----------------------------------------------------------------------------- a samples.jsonl by hand


def record(env: str, task: int, sample: int, status: str, extracted: str | None = None, **extra) -> dict:
    """One line of samples.jsonl as ``grpopp eval`` writes it (``eval_job._append_samples``)."""
    correct = float(status == "correct")
    verification = {"status": status, "score": correct, "reason": "", "decided_by": "hand", "extracted": extracted}
    line = {
        "checkpoint": "ckpt",
        "step": None,
        "env": env,
        "task_id": f"{env}/test/{task}",
        "split": "test",
        "index": task,
        "sample": sample,
        "prompt": f"task {task}",
        "completion": "...",
        "finish_reason": "stop",
        "num_tokens": 10,
        "reward": {
            "total": correct,
            "components": {"correctness": {"value": correct, "weight": 1.0}},
            "status": status,
            "valid": status not in ("timeout", "error"),
            "errors": [],
            "verification": verification,
        },
    }
    return {**line, **extra}


# K = 4 samples per task. "arith" reports extracted answers; "coin" never does (extracted None).
HAND_SAMPLES = [
    # arith/test/0: "5" ok, "5" ok, "7" wrong, unparseable -> n=4, c=2
    record("arith", 0, 0, "correct", "5"),
    record("arith", 0, 1, "correct", " 5 "),  # the same answer once whitespace is normalised
    record("arith", 0, 2, "incorrect", "7"),
    record("arith", 0, 3, "unparseable"),
    # arith/test/1: four unparseable samples, all truncated at 32 tokens -> n=4, c=0, no answer at all
    *[record("arith", 1, i, "unparseable", finish_reason="length", num_tokens=32) for i in range(4)],
    # arith/test/2: "3" wrong, "4" ok, a timeout, "4" ok -> n=3 judged, c=2 (written in reverse order)
    *reversed(
        [
            record("arith", 2, 0, "incorrect", "3"),
            record("arith", 2, 1, "correct", "4"),
            record("arith", 2, 2, "timeout"),
            record("arith", 2, 3, "correct", "4"),
        ]
    ),
    # coin/test/0: ok, wrong, ok, ok -> n=4, c=3; coin/test/1: four wrong -> n=4, c=0
    *[record("coin", 0, i, status) for i, status in enumerate(["correct", "incorrect", "correct", "correct"])],
    *[record("coin", 1, i, "incorrect") for i in range(4)],
]


def test_summary_of_a_hand_built_samples_file(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in HAND_SAMPLES))
    (point,) = summarise_samples(path, EvalSettings(samples=4, bootstrap=0)).values()
    assert (point.checkpoint, point.step, point.config) == ("ckpt", None, None)
    arith, coin, overall = point.envs["arith"], point.envs["coin"], point.overall

    def value(summary, metric):
        return summary.metrics[metric].value

    # arith. per task (c/n): 2/4, 0/4, 2/3
    assert value(arith, "avg@4") == pytest.approx((1 / 2 + 0 + 2 / 3) / 3, abs=1e-12)
    assert value(arith, "pass@1") == pytest.approx((1 / 2 + 0 + 2 / 3) / 3, abs=1e-12)
    # pass@2: 1 - C(2,2)/C(4,2) = 5/6; 0; n - c = 1 < 2 -> 1
    assert value(arith, "pass@2") == pytest.approx((5 / 6 + 0 + 1) / 3, abs=1e-12)
    # pass@4: 1 (n - c = 2 < 4); 0; task 2 has only 3 judged samples: left out
    assert value(arith, "pass@4") == 0.5 and arith.metrics["pass@4"].tasks == 2
    # maj@1: first judged answer "5" right, "no answer" wrong, "3" wrong
    assert value(arith, "maj@1") == pytest.approx(1 / 3, abs=1e-12)
    # maj@2: "5","5" right; none, none wrong; "3","4" a tie that goes to "3", seen first: wrong
    assert value(arith, "maj@2") == pytest.approx(1 / 3, abs=1e-12)
    # maj@4 over pass@4's two tasks: "5" twice beats "7" and none: right; no answer at all: wrong.
    # (The old summary dropped task 1, having no answer, and gave maj@4 = 1.0, above pass@4 = 0.5.)
    assert value(arith, "maj@4") == 0.5 and arith.metrics["maj@4"].tasks == 2
    assert value(arith, "maj@4") <= value(arith, "pass@4")
    assert arith.statuses == {"correct": 4, "incorrect": 2, "unparseable": 5, "timeout": 1, "error": 0}
    assert arith.truncated == pytest.approx(4 / 12, abs=1e-12)
    assert arith.length_mean == pytest.approx((8 * 10 + 4 * 32) / 12, abs=1e-12)

    # coin: per task 3/4 and 0/4; no answers, so no maj@k
    assert value(coin, "avg@4") == pytest.approx(3 / 8, abs=1e-12)
    assert value(coin, "pass@2") == 0.5  # 1 - C(1,2)/C(4,2) = 1; 0
    assert not [name for name in coin.metrics if name.startswith("maj@")]

    # overall: avg and pass@k over all 5 tasks (pass@4 over the 4 with 4 judged samples) ...
    assert value(overall, "avg@4") == pytest.approx((1 / 2 + 0 + 2 / 3 + 3 / 4 + 0) / 5, abs=1e-12)
    assert value(overall, "pass@2") == pytest.approx((5 / 6 + 0 + 1 + 1 + 0) / 5, abs=1e-12)
    assert overall.metrics["pass@4"] == MetricValue(value=0.5, ci95=(0.5, 0.5), tasks=4, envs=["arith", "coin"])
    # ... maj@k over arith's tasks only, with their count: coin reports no answers
    for k, (expected, tasks) in {1: (1 / 3, 3), 2: (1 / 3, 3), 4: (1 / 2, 2)}.items():
        metric = overall.metrics[f"maj@{k}"]
        assert metric.value == pytest.approx(expected, abs=1e-12)
        assert metric.tasks == tasks and metric.envs == ["arith"]


def test_summary_of_samples_refuses_a_train_split_record(tmp_path):
    path = tmp_path / "samples.jsonl"
    lines = [record("arith", 0, 0, "correct", "5"), record("arith", 3, 0, "correct", "5", split="train")]
    lines[1]["task_id"] = "arith/train/3"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(ConfigError, match=r"samples.jsonl:2: task arith/train/3 is from the 'train' split"):
        summarise_samples(path, EvalSettings(samples=1))


# ----------------------------------------------------------------------------- whole evaluations


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """The built-in tiny model (architecture, tokenizer, warm start), built quickly into a test cache."""
    return load_or_create_tiny_model(tmp_path_factory.mktemp("cache"), QUICK, log=lambda _: None)


def grpopp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([GRPOPP, *args], capture_output=True, text=True, timeout=300)


def recount(samples: list[dict], k: int) -> tuple[float, float]:
    """avg and pass@k from samples.jsonl, with the binomial formula: a second computation."""
    by_task: dict[str, list[bool]] = {}
    for record in samples:
        by_task.setdefault(record["task_id"], []).append(record["reward"]["status"] == "correct")
    avg = sum(sum(v) / len(v) for v in by_task.values()) / len(by_task)
    passk = [1 - math.comb(len(v) - sum(v), k) / math.comb(len(v), k) for v in by_task.values()]
    return avg, sum(passk) / len(passk)


def test_eval_of_the_tiny_model_and_reverify(tiny_model, tmp_path):
    out = tmp_path / "eval"
    done = grpopp("eval", str(tiny_model), "--env", "arithmetic:20", "--samples", "3", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "avg@3" in done.stdout and "pass@2" in done.stdout
    results = json.loads((out / "results.json").read_text())
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 60 and {s["split"] for s in samples} == {"test"}
    assert results["config"]["envs"][0]["config"]["max_operand"] == 49  # the recipe's env options
    (point,) = results["checkpoints"]
    metrics = point["envs"]["arithmetic"]["metrics"]
    assert sorted(metrics) == ["avg@3", "maj@1", "maj@2", "maj@3", "pass@1", "pass@2", "pass@3"]
    avg, pass2 = recount(samples, 2)
    assert metrics["avg@3"]["value"] == pytest.approx(avg, abs=1e-12)
    assert metrics["pass@2"]["value"] == pytest.approx(pass2, abs=1e-12)
    for metric in metrics.values():
        assert metric["ci95"][0] <= metric["value"] <= metric["ci95"][1]
    assert point["overall"]["metrics"]["avg@3"]["value"] == pytest.approx(avg, abs=1e-12)

    same = grpopp("eval", "reverify", str(out / "samples.jsonl"))
    assert same.returncode == 0, same.stderr
    assert "re-verified 60 samples: 0 changed" in same.stdout
    # A stored verdict that the current verifier does not give is reported.
    verdict = samples[0]["reward"]["status"]
    stored = "incorrect" if verdict == "correct" else "correct"
    samples[0]["reward"]["status"] = stored
    (out / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    changed = grpopp("eval", "reverify", str(out / "samples.jsonl"))
    assert changed.returncode == 0, changed.stderr
    assert "re-verified 60 samples: 1 changed" in changed.stdout
    assert f"line 1: {samples[0]['task_id']} sample 0: {stored} -> {verdict}" in changed.stdout


def test_eval_of_a_run_directory_takes_its_checkpoints_and_config(tiny_model, tmp_path):
    run = tmp_path / "run"
    trained = grpopp(
        "train", "--plugin", PLUGIN, "--env", "coin", "--model", str(tiny_model), "--steps", "2",
        "--run-dir", str(run), "--set", "checkpoint.every=1", "--set", "checkpoint.keep_last=5",
        "--set", "batch.prompts_per_step=4", "--set", "rollout.completions_per_prompt=2",
        "--set", "rollout.max_new_tokens=3", "--set", "eval.tasks_per_env=4", "--set", "logging.progress=false",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    done = grpopp("eval", str(run), "--plugin", PLUGIN, "--checkpoints", "all", "--tasks", "6", "--samples", "2")
    assert done.returncode == 0, done.stderr
    (folder,) = (run / "evals").iterdir()
    results = json.loads((folder / "results.json").read_text())
    assert [p["step"] for p in results["checkpoints"]] == [1, 2]
    assert results["config"]["sampling"]["max_new_tokens"] == 3  # the run's rollout settings
    assert [e["name"] for e in results["config"]["envs"]] == ["coin"]
    assert all(p["envs"]["coin"]["tasks"] == 6 for p in results["checkpoints"])


def test_eval_errors_are_named(tiny_model, tmp_path):
    greedy = grpopp("eval", str(tiny_model), "--greedy", "--samples", "2", "--out", str(tmp_path / "a"))
    assert greedy.returncode != 0 and "--greedy gives one answer per task" in greedy.stderr + greedy.stdout
    bad_k = grpopp("eval", str(tiny_model), "--samples", "2", "--k", "3")
    assert bad_k.returncode != 0 and "ask for k <= --samples" in bad_k.stderr + bad_k.stdout
    (tmp_path / "lonely.jsonl").write_text("{}\n")
    lonely = grpopp("eval", "reverify", str(tmp_path / "lonely.jsonl"))
    assert lonely.returncode != 0 and "no results.json beside it" in lonely.stderr + lonely.stdout


# ----------------------------------------------------------------------------- chunked generation, progress


class RecordingEngine:
    """Answers every prompt with empty completions and records each call's prompts and seed."""

    def __init__(self, samples_from_policy: bool) -> None:
        self.samples_from_policy = samples_from_policy
        self.calls: list[tuple[list[str], int | None]] = []

    def generate(self, prompts, params, n=1):
        self.calls.append((list(prompts), params.seed))
        return [[Completion([1], [], "", [], "stop") for _ in range(n)] for _ in prompts]


def _tasks_of(prompts):
    """Single-turn tasks with these prompts, and the environment they name."""
    from grpopp.envs.registry import make_env

    env = make_env("arithmetic")
    return [Task(id=f"t{i}", env=env.name, index=i, prompt=p) for i, p in enumerate(prompts)], {env.name: env}


@pytest.mark.parametrize(
    ("samples_from_policy", "calls"), [(True, [(0, 512, 7), (512, 1000, None)]), (False, [(0, 1000, 7)])]
)
def test_generation_is_chunked_for_the_hf_engine_only(samples_from_policy, calls):
    # K = 2: chunks of 1024 // 2 = 512 prompts; only the first sets the seed, the next continue the generator.
    engine = RecordingEngine(samples_from_policy)
    tasks, envs = _tasks_of([f"p{i}" for i in range(1000)])
    reported: list[int] = []
    out = generate_in_chunks(engine, tasks, envs, SamplingParams(seed=7), 2, reported.append)
    assert [(chunk[0], len(chunk), seed) for chunk, seed in engine.calls] == [
        (f"p{start}", end - start, seed) for start, end, seed in calls
    ]
    assert reported == [end - start for start, end, _ in calls]
    assert len(out) == 1000 and all(len(group) == 2 for group in out)


def test_chunked_hf_generation_equals_one_call(monkeypatch, tiny_model):
    """Chunks of whole engine batches (4 rows = 2 prompts x K=2, batch_size 4) draw the very samples of
    a single call: the engine's generator simply continues."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grpopp.evaluation import evaluate

    model, tokenizer = AutoModelForCausalLM.from_pretrained(tiny_model), AutoTokenizer.from_pretrained(tiny_model)
    prompts = [f"{a}+{a + 1}=" for a in range(7)]
    params = SamplingParams(max_new_tokens=4, temperature=1.0, seed=3)
    whole = HFEngine(model, tokenizer, batch_size=4).generate(prompts, params, n=2)
    monkeypatch.setattr(evaluate, "EVAL_CHUNK_ROWS", 4)
    engine, reported = HFEngine(model, tokenizer, batch_size=4), []
    chunked = generate_in_chunks(engine, *_tasks_of(prompts), params, 2, reported.append)
    assert reported == [2, 2, 2, 1]
    assert [[c.token_ids for c in group] for group in chunked] == [[c.token_ids for c in group] for group in whole]


def test_evaluation_reports_progress_over_every_environment(monkeypatch):
    from grpopp.envs.registry import make_env
    from grpopp.evaluation import evaluate
    from grpopp.rewards.shaping import LengthLimits

    monkeypatch.setattr(evaluate, "EVAL_CHUNK_ROWS", 2)  # K = 1: chunks of 2 prompts
    envs = {"arithmetic": make_env("arithmetic"), "countdown": make_env("countdown")}
    seen: list[tuple[int, int]] = []
    evaluate.evaluate_engine(
        RecordingEngine(samples_from_policy=True),
        envs,
        {"arithmetic": 3, "countdown": 2},
        SamplingParams(seed=1),
        LengthLimits(max_length=8, cache_length=0),
        EvalSettings(bootstrap=0),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen == [(2, 5), (3, 5), (5, 5)]  # arithmetic 2 + 1, then countdown 2


# ----------------------------------------------------------------------------- typed results, results.json


def test_summary_of_tasks_nobody_could_judge_is_nan_and_null_in_json():
    # arithmetic by hand: task a has 2 judged samples (1 correct) and lengths 2, 2; task b only timeouts.
    # avg@2 over a alone: 1/2; pass@2: 1 - C(1,2)/C(2,2) = 1; maj@2 over a: "1" then "0" tie -> "1": right.
    judged, lost = outcome([True, False]), outcome([None, None])
    summary = summarise([judged, lost], EvalSettings(samples=2, bootstrap=0))
    assert (summary.avg.value, summary.avg.tasks, summary.avg.ci95) == (0.5, 1, (0.5, 0.5))
    assert summary.metrics["pass@2"].value == 1.0 and summary.metrics["maj@2"].value == 1.0
    assert summary.unjudged == 2 and summary.statuses["timeout"] == 2
    assert summary.tasks_without_enough_judged_samples == {"k=1": 1, "k=2": 1}
    # Only the task nobody judged: no metric has a task, so each is NaN, written null, read back NaN.
    nothing = summarise([lost], EvalSettings(samples=2, bootstrap=0))
    assert math.isnan(nothing.avg.value) and nothing.avg.tasks == 0 and nothing.avg.envs == []
    assert all(math.isnan(bound) for bound in nothing.avg.ci95)
    results = EvalResults(checkpoints=[CheckpointResult(checkpoint="c", envs={"e": nothing}, overall=nothing)])
    written = json.loads(results.to_json())
    assert written["checkpoints"][0]["overall"]["metrics"]["avg@2"] == {
        "value": None, "ci95": [None, None], "tasks": 0, "envs": []
    }  # fmt: skip
    again = EvalResults.model_validate(written).checkpoints[0].overall
    assert math.isnan(again.avg.value) and again.length_mean == 2.0 and again.truncated == 0.0


def _summary_json(tasks: int, metrics: dict, statuses: list[int], length: float | None) -> dict:
    """A summary as results.json holds it, written out by hand."""
    return {
        "tasks": tasks,
        "samples_per_task": 2,
        "metrics": metrics,
        "tasks_without_enough_judged_samples": {"k=1": 0, "k=2": 1},
        "length_mean": length,
        "truncated": 0.25,
        "statuses": dict(zip(["correct", "incorrect", "unparseable", "timeout", "error"], statuses, strict=True)),
    }


def _metric_json(value: float | None, low: float | None, high: float | None, tasks: int, envs: list[str]) -> dict:
    return {"value": value, "ci95": [low, high], "tasks": tasks, "envs": envs}


# A results.json of two environments as `grpopp eval` writes it (json.dumps(indent=2), null for NaN).
ARITH = _summary_json(
    2,
    {
        "avg@2": _metric_json(0.75, 0.5, 1.0, 2, ["arith"]),
        "pass@1": _metric_json(0.75, 0.5, 1.0, 2, ["arith"]),
        "pass@2": _metric_json(1.0, 1.0, 1.0, 1, ["arith"]),
        "maj@1": _metric_json(None, None, None, 0, []),
    },
    [3, 1, 0, 0, 0],
    12.5,
)
COIN = _summary_json(
    2,
    {"avg@2": _metric_json(0.25, 0.0, 0.5, 2, ["coin"]), "pass@1": _metric_json(0.25, 0.0, 0.5, 2, ["coin"])},
    [1, 2, 1, 0, 0],
    None,
)
OVERALL = _summary_json(
    4,
    {
        "avg@2": _metric_json(0.5, 0.25, 0.75, 4, ["arith", "coin"]),
        "pass@1": _metric_json(0.5, 0.25, 0.75, 4, ["arith", "coin"]),
        "pass@2": _metric_json(1.0, 1.0, 1.0, 1, ["arith"]),
    },
    [4, 3, 1, 0, 0],
    12.5,
)
RESULTS_JSON = {
    "versions": {"grpopp": "0.1.0", "torch": "2.5.0"},
    "checkpoints": [
        {
            "checkpoint": "run/checkpoints/step-000007",
            "step": 7,
            "envs": {"arith": ARITH, "coin": COIN},
            "overall": OVERALL,
            "config": {"envs": [{"name": "arith", "tasks": 2, "config": {}}]},
        }
    ],
    "config": {"envs": [{"name": "arith", "tasks": 2, "config": {}}]},
}


def test_a_results_json_reads_into_the_model_and_prints_the_cli_table(tmp_path):
    from rich.console import Console

    from grpopp.cli.eval_cmd import checkpoint_table

    path = tmp_path / "results.json"
    text = json.dumps(RESULTS_JSON, indent=2) + "\n"
    path.write_text(text)
    results = EvalResults.read(path)
    assert results.to_json() == text  # read and written back: the very bytes
    (point,) = results.checkpoints
    assert (point.step, list(point.envs)) == (7, ["arith", "coin"])
    assert point.envs["arith"].avg == MetricValue(value=0.75, ci95=(0.5, 1.0), tasks=2, envs=["arith"])
    assert math.isnan(point.envs["arith"].metrics["maj@1"].value) and math.isnan(point.envs["coin"].length_mean)
    assert point.overall.unjudged == 0

    console = Console(record=True, width=200, file=io.StringIO())
    console.print(checkpoint_table(point))
    rows = {}
    for line in console.export_text().splitlines():
        cells = [cell.strip() for cell in line.strip("│┃").split("│")]
        if len(cells) == 4:
            rows[cells[0]] = cells[1:]
    assert rows["tasks"] == ["2", "2", "4"]
    assert rows["avg@2"] == ["0.750 [0.500, 1.000]", "0.250 [0.000, 0.500]", "0.500 [0.250, 0.750]"]
    # pass@2 covers 1 of each column's tasks: "(n=1)"; one point needs no interval; coin has none
    assert rows["pass@2"] == ["1.000 (n=1)", "-", "1.000 (n=1)"]
    assert rows["maj@1"] == ["-", "-", "-"]  # no task gave it (null), and not reported by coin
    assert rows["mean length"] == ["12.5", "-", "12.5"]
    assert rows["truncated"] == ["0.250", "0.250", "0.250"]
    assert [rows[f"{status} (samples)"] for status in ("unparseable", "timeout", "error")] == [
        ["0", "1", "1"],
        ["0", "0", "0"],
        ["0", "0", "0"],
    ]
    assert list(rows)[:5] == ["tasks", "avg@2", "pass@1", "pass@2", "maj@1"]  # avg, pass@k, maj@k, each by k


def test_a_results_json_of_the_first_versions_reads_and_reverify_says_what_it_lacks(tmp_path):
    old = json.loads(json.dumps(RESULTS_JSON))
    del old["checkpoints"][0]["config"]  # the first results.json files had no per-checkpoint config ...
    for summary in (*old["checkpoints"][0]["envs"].values(), old["checkpoints"][0]["overall"]):
        for metric in summary["metrics"].values():
            del metric["envs"]  # ... nor the environments of each metric
    (tmp_path / "results.json").write_text(json.dumps(old, indent=2))
    (point,) = EvalResults.read(tmp_path / "results.json").checkpoints
    assert point.config is None and point.overall.metrics["pass@2"].envs == []
    assert point.overall.avg.value == 0.5 and point.overall.avg.ci95 == (0.25, 0.75)
    (tmp_path / "samples.jsonl").write_text(json.dumps(record("arith", 0, 0, "correct", "5")) + "\n")
    with pytest.raises(ConfigError, match="checkpoint run/checkpoints/step-000007 has no config"):
        reverify(tmp_path / "samples.jsonl")


def test_a_file_that_is_no_results_json_is_refused_with_its_bad_key(tmp_path):
    broken = json.loads(json.dumps(RESULTS_JSON))
    del broken["checkpoints"][0]["overall"]["statuses"]
    broken["checkpoints"][0]["envs"]["coin"]["metrics"]["avg@2"]["tasks"] = -1
    (tmp_path / "results.json").write_text(json.dumps(broken))
    with pytest.raises(UserError) as refused:
        EvalResults.read(tmp_path / "results.json", shown_as="evals/x/results.json")
    assert str(refused.value) == (
        "evals/x/results.json: not a grpopp eval results.json: checkpoints.0.envs.coin.metrics.avg@2.tasks: "
        "Input should be greater than or equal to 0; checkpoints.0.overall.statuses: Field required; evaluate "
        "again to write a new one"
    )
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(UserError, match=r"results.json: not a grpopp eval results.json \(JSONDecodeError"):
        EvalResults.read(tmp_path / "results.json")
