"""The training loop on CPU with a small random model and the coin environments (tests/plugins).

Tier 2 and 3 of the house style: a step changes the parameters, rewards rise on a learnable task,
dynamic sampling refills and stops, masked samples give no gradient, a non-finite loss is skipped,
non-finite rewards are masked as errors, a run killed with SIGKILL resumes with the same metrics as
an uninterrupted one, a damaged checkpoint is skipped on resume, ``--steps`` extends a finished run
as if it had been planned longer, and a run whose output is a file prints one line per step.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from random_model import save_random_model
from rich.console import Console
from safetensors.torch import load_file

from grpopp.config_tools import ConfigError
from grpopp.envs.registry import load_plugin, registered_envs
from grpopp.jobs.run import load_model, train
from grpopp.learner.policy import Policy
from grpopp.objective.losses import LossOutput
from grpopp.rollout.hf import HFEngine
from grpopp.training import trainer as trainer_module
from grpopp.training.batch import TrainTensors, token_budget_micro_batches
from grpopp.training.config import TrainConfig, load_train_config
from grpopp.training.trainer import Trainer

PLUGIN = str(Path(__file__).parent / "plugins" / "coin_env.py")
NAN_PLUGIN = str(Path(__file__).parent / "plugins" / "nan_env.py")
GRPOPP = str(Path(sys.executable).with_name("grpopp"))
TIMING_KEYS = ("time/", "tokens_per_second/")


@pytest.fixture(scope="module", autouse=True)
def coin_envs():
    if "coin" not in registered_envs():
        load_plugin(PLUGIN)
    if "coin_nan" not in registered_envs():
        load_plugin(NAN_PLUGIN)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_random_model(tmp_path_factory.mktemp("random-model"))


def write_config(tmp_path: Path, model_dir: Path, run_dir: Path, **sections) -> Path:
    data = {
        "model": {"name_or_path": str(model_dir)},
        "rollout": {"completions_per_prompt": 4, "max_new_tokens": 3, "engine": {"type": "hf", "batch_size": 64}},
        "algorithm": {"preset": "grpopp"},
        "envs": [{"name": "coin"}],
        "batch": {"prompts_per_step": 4, "micro_batch_size": 8},
        "optim": {"lr": 1e-2},
        "steps": 2,
        "eval": {"tasks_per_env": 8},
        "checkpoint": {"every": 1, "keep_last": 10},
        "logging": {"run_dir": str(run_dir), "progress": False},
        "seed": 0,
    }
    for section, values in sections.items():
        data[section] = {**data[section], **values} if isinstance(values, dict) else values
    path = tmp_path / f"config-{run_dir.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def config_for(tmp_path, model_dir, name="run", **sections) -> TrainConfig:
    return load_train_config(write_config(tmp_path, model_dir, tmp_path / name, **sections))


def metrics(run_dir: Path) -> list[dict]:
    """Every line of metrics.jsonl: one per training step."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_metrics(run_dir: Path) -> list[dict]:
    return [m for m in metrics(run_dir) if "reward" in m]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def test_one_step_changes_the_parameters(tmp_path, model_dir):
    summary = train(config_for(tmp_path, model_dir, steps=1), stop_after=None)
    after = weights(summary.run_dir / "checkpoints" / "step-000001")
    before = weights(model_dir)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before)  # every tensor of the model received a gradient step
    assert step_metrics(summary.run_dir)[0]["skipped_update"] == 0.0


def test_rewards_rise_on_a_learnable_task(tmp_path, model_dir):
    config = config_for(
        tmp_path,
        model_dir,
        steps=12,
        rollout={"completions_per_prompt": 8, "max_new_tokens": 2},
        batch={"prompts_per_step": 8},
        optim={"lr": 3e-2},
        checkpoint={"every": 0},
        eval={"tasks_per_env": 64},
    )
    summary = train(config)
    accuracy = [m["accuracy"] for m in step_metrics(summary.run_dir)]
    assert sum(accuracy[-3:]) / 3 > sum(accuracy[:3]) / 3 + 0.25, accuracy
    assert summary.accuracy_after > summary.accuracy_before + 0.25


def test_dynamic_sampling_refills_the_batch(tmp_path, model_dir):
    # Even task indices are always correct (no signal): round 1 keeps about half the groups.
    config = config_for(
        tmp_path,
        model_dir,
        envs=[{"name": "coin_half_flat"}],
        steps=1,
        algorithm={"preset": "grpopp", "dynamic_sampling": {"oversample_factor": 1.0, "max_generation_rounds": 10}},
    )
    summary = train(config)
    (m,) = step_metrics(summary.run_dir)
    assert m["groups"] == 4
    assert m["dynamic_sampling/rounds"] >= 2
    assert m["dynamic_sampling/zero_variance_fraction"] >= 0.4
    # Round 1 asks for 4 prompts (x 4 completions), every later round for at least 1 more.
    assert m["completions_generated"] >= 4 * (4 + 1) and m["completions_generated"] % 4 == 0


def test_dynamic_sampling_stops_at_its_limit(tmp_path, model_dir):
    # arithmetic with a random model: every completion wrong, every group without signal.
    config = config_for(
        tmp_path,
        model_dir,
        envs=[{"name": "arithmetic", "config": {"prompt_template": "{expression}="}}],
        steps=1,
        algorithm={"preset": "grpopp", "dynamic_sampling": {"max_generation_rounds": 3}},
    )
    summary = train(config)
    (m,) = step_metrics(summary.run_dir)
    assert m["dynamic_sampling/rounds"] == 3
    assert m["groups"] == 0 and m["skipped_updates_total"] == 1
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            weights(model_dir).values(), weights(summary.run_dir / "checkpoints" / "step-000001").values(), strict=True
        )
    )


def build_trainer(config: TrainConfig, run_dir: Path) -> Trainer:
    model, tokenizer = load_model(config.model)
    policy = Policy(model, tokenizer, config.optim, config.steps, torch.device("cpu"))
    run_dir.mkdir(parents=True, exist_ok=True)
    return Trainer(config, policy, HFEngine(policy.model, tokenizer), run_dir)


def test_masked_samples_contribute_no_gradient(tmp_path, model_dir):
    """Two batches that differ only in the completions of invalid samples give the same update."""
    config = config_for(tmp_path, model_dir, algorithm={"preset": "grpopp", "loss": {"tis": "off"}})
    results = []
    for garbage in ([5, 6, 7], [40, 41]):
        trainer = build_trainer(config, tmp_path / f"masked-{garbage[0]}")
        valid = torch.tensor([True, False, True, True, True, True, False, True])
        completions = [[10, 11], garbage, [12], [13, 14, 15], [16], [17, 18], garbage, [19]]
        tensors = TrainTensors(
            prompts=[[20, 21, 22]] * 8,
            completions=completions,
            sampler_logprobs=[[-1.0] * len(c) for c in completions],
            rewards=torch.tensor([1.0, float("nan"), 0.0, 1.0, 0.0, 1.0, float("nan"), 0.0], dtype=torch.float64),
            valid=valid,
            trained=valid,
        )
        advantages = torch.tensor([1.0, 0.0, -1.0, 1.0, -1.0, 1.0, 0.0, -1.0])
        trainer.update(tensors, advantages)
        results.append({k: v.detach().clone() for k, v in trainer.policy.model.state_dict().items()})
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])
    assert any(not torch.equal(results[0][k], v) for k, v in weights(model_dir).items() if k in results[0])


@pytest.mark.parametrize(
    ("algorithm", "advantages"),
    [
        ({"preset": "grpopp"}, [0.5, 0.0, -1.5, 0.0, 0.0, 0.0, 1.0, 0.0]),  # TIS on, two groups half zero
        ({"preset": "cispo"}, [0.5, 0.0, -1.5, 0.0, 0.0, 0.0, 1.0, 0.0]),
        ({"preset": "gspo"}, [0.5, 0.0, -1.5, 0.0, 0.0, 0.0, 1.0, 0.0]),
        ({"preset": "grpopp", "optim": None}, [0.0] * 8),  # nothing carries gradient: AdamW still steps
    ],
)
def test_skipping_zero_advantage_rows_leaves_the_update_unchanged(tmp_path, model_dir, algorithm, advantages):
    """Two mini-batches (mini_batches=2, so the second step has momentum), with and without the skip:
    the same gradients at each step (the normaliser included; AdamW alone would hide a scale error)
    and the same parameters after both. Counting the rows the learner embeds shows the skip."""
    results, embedded, grads = [], [], []
    for skip in (False, True):
        config = config_for(
            tmp_path,
            model_dir,
            name=f"skip-{skip}",
            algorithm={k: v for k, v in algorithm.items() if k != "optim"},
            batch={"prompts_per_step": 4, "micro_batch_size": 3, "mini_batches": 2, "skip_zero_advantage": skip},
            rollout={"completions_per_prompt": 2, "max_new_tokens": 3},
            optim={"lr": 1e-2, "weight_decay": 0.1},
        )
        trainer = build_trainer(config, tmp_path / f"skip-{skip}")
        rows: list[int] = []
        trainer.policy.model.get_input_embeddings().register_forward_hook(
            lambda _m, args, _o, rows=rows: rows.append(int(args[0].shape[0]))
        )
        step_grads: list[list[torch.Tensor]] = []
        original_step = trainer.policy.step

        def recording_step(original_step=original_step, step_grads=step_grads, model=trainer.policy.model):
            step_grads.append([p.grad.clone() for p in model.parameters()])
            return original_step()

        trainer.policy.step = recording_step
        completions = [[10, 11], [5, 6, 7], [12], [13, 14, 15], [16], [17, 18], [40, 41], [19]]
        tensors = TrainTensors(
            prompts=[[20, 21, 22], [20, 21, 22], [23, 24], [23, 24], [25], [25], [26, 27], [26, 27]],
            completions=completions,
            sampler_logprobs=[[-1.0] * len(c) for c in completions],
            rewards=torch.zeros(8, dtype=torch.float64),
            valid=torch.ones(8, dtype=torch.bool),
            trained=torch.ones(8, dtype=torch.bool),
        )
        metrics = trainer.update(tensors, torch.tensor(advantages))
        assert metrics["skipped_update"] == 0.0
        results.append({k: v.detach().clone() for k, v in trainer.policy.model.state_dict().items()})
        embedded.append(rows)
        grads.append(step_grads)
    assert len(grads[0]) == len(grads[1]) == 2
    for step_without, step_with in zip(grads[0], grads[1], strict=True):
        for without, with_skip in zip(step_without, step_with, strict=True):
            torch.testing.assert_close(with_skip, without, rtol=1e-5, atol=1e-7)
    for key, value in results[0].items():  # AdamW amplifies rounding of near-zero gradients a little
        torch.testing.assert_close(results[1][key], value, rtol=0, atol=2e-5)
    assert any(not torch.equal(results[0][k], v) for k, v in weights(model_dir).items() if k in results[0])
    assert sum(embedded[0]) > sum(embedded[1])  # the skip left rows out of the learner's passes


def test_failed_verifications_are_masked_and_counted(tmp_path, model_dir):
    config = config_for(tmp_path, model_dir, envs=[{"name": "coin_flaky"}], steps=2, rollout={"max_new_tokens": 3})
    summary = train(config)
    rows = step_metrics(summary.run_dir)
    assert all(0.0 <= m["masked/error"] <= 1.0 for m in rows)
    samples = [json.loads(line) for line in (summary.run_dir / "samples.jsonl").read_text().splitlines()]
    for record in samples:
        starts_with_digit = record["completion"][:1].isdigit()
        assert (record["reward"]["status"] == "error") == starts_with_digit
        assert record["reward"]["valid"] is (not starts_with_digit)


def test_non_finite_loss_skips_the_update(tmp_path, model_dir, monkeypatch):
    def nan_loss(logprobs, *args, **kwargs):
        return LossOutput(loss=logprobs.sum() * float("nan"), metrics={})

    monkeypatch.setattr(trainer_module, "policy_loss", nan_loss)
    summary = train(config_for(tmp_path, model_dir, steps=1))
    (m,) = step_metrics(summary.run_dir)
    assert m["skipped_update"] == 1.0 and m["skipped_updates_total"] == 1.0
    after = weights(summary.run_dir / "checkpoints" / "step-000001")
    assert all(torch.equal(after[k], v) for k, v in weights(model_dir).items())


def test_off_policy_updates_and_kl(tmp_path, model_dir):
    config = config_for(
        tmp_path,
        model_dir,
        steps=1,
        batch={"prompts_per_step": 4, "mini_batches": 2, "epochs": 2, "micro_batch_size": 4},
        algorithm={"preset": "grpo"},
    )
    summary = train(config)
    (m,) = step_metrics(summary.run_dir)
    assert m["kl_mean"] >= 0.0 and "kl_loss" in m  # k3 KL against the reference model
    assert 0.0 <= m["clip_frac_high"] <= 1.0


def comparable(rows: list[dict]) -> list[dict]:
    """Metrics lines without wall-clock measurements (``time``, ``time/...``, ``tokens_per_second/...``)."""
    return [{k: v for k, v in row.items() if k != "time" and not k.startswith(TIMING_KEYS)} for row in rows]


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path, model_dir):
    # Killed at its second checkpoint: six more steps and the final evaluation keep the run going far
    # longer than the 50 ms between polls, so the kill always lands mid-run.
    steps = {"steps": 8}
    straight = tmp_path / "straight"
    subprocess.run(
        [GRPOPP, "train", "--plugin", PLUGIN, "--config", str(write_config(tmp_path, model_dir, straight, **steps))],
        check=True,
        capture_output=True,
        timeout=300,
    )
    killed = tmp_path / "killed"
    config = write_config(tmp_path, model_dir, killed, **steps)
    process = subprocess.Popen(
        [GRPOPP, "train", "--plugin", PLUGIN, "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while not (killed / "checkpoints" / "step-000002" / "trainer_state.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    resumed = subprocess.run(
        [GRPOPP, "train", "--plugin", PLUGIN, "--resume", str(killed)], capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert comparable(metrics(killed)) == comparable(metrics(straight))
    assert len(step_metrics(killed)) == 8
    final = "checkpoints/step-000008"
    assert all(
        torch.equal(a, b)
        for a, b in zip(weights(killed / final).values(), weights(straight / final).values(), strict=True)
    )


def test_config_errors_name_the_key(tmp_path, model_dir):
    with pytest.raises(ConfigError, match="not divisible by batch.mini_batches"):
        config_for(tmp_path, model_dir, batch={"prompts_per_step": 5, "mini_batches": 2})
    with pytest.raises(ConfigError, match="Did you mean 'optim.lr'"):
        load_train_config(write_config(tmp_path, model_dir, tmp_path / "x"), overrides=["optim.lrr=1"])
    with pytest.raises(ConfigError, match="algorithm.preset: unknown preset 'dapoo'"):
        config_for(tmp_path, model_dir, algorithm={"preset": "dapoo"})
    config = load_train_config(write_config(tmp_path, model_dir, tmp_path / "y"), overrides=["algorithm.eps_high=0.31"])
    assert config.algorithm.loss.objective.eps_high == 0.31  # short form of algorithm.loss.objective.eps_high


def test_dry_run_prints_the_resolved_config_without_loading_a_model(tmp_path):
    cache = tmp_path / "cache"
    result = subprocess.run(
        [GRPOPP, "train", "--dry-run", "--set", "algorithm.eps_high=0.3", "--env", "countdown:2"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "GRPOPP_CACHE": str(cache), "COLUMNS": "200"},
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout.split("derived values")[0].rsplit("\n", 2)[0])
    assert resolved["algorithm"]["loss"]["objective"]["eps_high"] == 0.3
    assert resolved["envs"] == [{"name": "countdown", "weight": 2.0, "config": {}}]
    assert "completions per step" in result.stdout
    assert not cache.exists() and not (tmp_path / "runs").exists()  # no model built, no run started


def test_train_cli_reports_config_errors(tmp_path):
    result = subprocess.run(
        [GRPOPP, "train", "--dry-run", "--set", "batch.prompts_per_step=0"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "batch.prompts_per_step: Input should be greater than or equal to 1" in result.stderr


def test_default_recipe_trains_what_the_warm_start_taught():
    from grpopp.recipes.tiny import TINY_ARITHMETIC_ENV

    config = load_train_config()  # the tiny-arithmetic recipe, what `grpopp train` runs
    assert config.model.name_or_path == "tiny"
    assert [(e.name, e.config) for e in config.envs] == [("arithmetic", TINY_ARITHMETIC_ENV)]


def test_a_new_run_refuses_a_used_run_dir(tmp_path, model_dir):
    config = config_for(tmp_path, model_dir, name="used")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(ConfigError, match="already holds a run: resume it with --resume"):
        train(config)
    assert (tmp_path / "used" / "metrics.jsonl").read_text() == '{"step": 1}\n'  # nothing lost


def fixed_tensors() -> tuple[TrainTensors, torch.Tensor]:
    completions = [[10, 11], [30, 31, 32], [12], [13, 14, 15], [16], [17, 18], [33], [19]]
    valid = torch.tensor([True, True, True, True, True, True, True, False])
    tensors = TrainTensors(
        prompts=[[20, 21, 22], [23, 24], [20, 21, 22], [23, 24], [25], [25], [26, 27], [26, 27]],
        completions=completions,
        sampler_logprobs=[[-1.0] * len(c) for c in completions],
        rewards=torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 1.0, float("nan")], dtype=torch.float64),
        valid=valid,
        trained=valid,
    )
    return tensors, torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0, 1.0, 0.5, 0.0])


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean"])
def test_micro_batch_size_changes_neither_the_update_nor_the_logged_loss(tmp_path, model_dir, aggregation):
    """Fixed micro-batches of 8, 3 and 1 rows, token budgets of 12 and 1 padded positions (1: a pass
    per row, sorted by length), and packed passes (padding-free, of 8 rows and by a budget of 12 real
    tokens) give the same gradient and loss: the normaliser is the mini-batch's."""
    results = []
    for micro in (8, 3, 1, "budget-12", "budget-1", "packed-8", "packed-budget-12"):
        size = {"micro_batch_size": micro} if isinstance(micro, int) else {}
        if isinstance(micro, str):
            size = {"packing": micro.startswith("packed"), "micro_batch_size": 8}
            size |= {"max_tokens_per_micro_batch": int(micro.split("-")[-1])} if "budget" in micro else {}
        config = config_for(
            tmp_path,
            model_dir,
            name=f"micro-{micro}-{aggregation}",
            batch={"prompts_per_step": 4, **size},
            algorithm={"preset": "grpopp", "loss": {"aggregation": aggregation, "tis": "off"}},
            rollout={"completions_per_prompt": 2},
        )
        trainer = build_trainer(config, tmp_path / f"micro-{micro}-{aggregation}")
        grads: dict[str, torch.Tensor] = {}
        original_step = trainer.policy.step

        def capture_then_step(original=original_step, grads=grads, model=trainer.policy.model):
            grads.update({name: p.grad.detach().clone() for name, p in model.named_parameters()})
            return original()

        trainer.policy.step = capture_then_step  # the accumulated gradient, just before the optimizer uses it
        tensors, advantages = fixed_tensors()
        results.append((trainer.update(tensors, advantages), grads))
    (full_log, full_grads), *others = results
    for logged, grads in others:
        assert logged["loss"] == pytest.approx(full_log["loss"], abs=1e-6)
        assert logged["train_tokens"] == full_log["train_tokens"] == 13  # trained rows: 2+3+1+3+1+2+1
        assert all(torch.allclose(grads[k], full_grads[k], rtol=1e-4, atol=1e-7) for k in grads)
    assert any(g.abs().sum() > 0 for g in full_grads.values())


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ({"micro_batch_size": 8}, 15 / 42),
        ({"micro_batch_size": 1}, 0.0),
        ({"max_tokens_per_micro_batch": 12}, 5 / 32),
        ({"micro_batch_size": 8, "packing": True}, 0.0),
    ],
)
def test_padding_fraction_is_the_share_of_padded_positions_in_the_passes(tmp_path, model_dir, batch, expected):
    """fixed_tensors' trained rows 0-6 (prompt lengths 3 2 3 2 1 1 2, completion lengths 2 3 1 3 1 2 1),
    by hand: one pass of [7, 3 + 3] holds 42 positions, 27 of them tokens; single rows never pad. A
    budget of 12 positions: rows sorted by length 4 (2 tokens), 5, 6 (3), 2 (4), 0, 1, 3 (5) make passes
    [4, 5, 6] of 3 x (2 + 2) = 12 positions with 8 tokens, [2, 0] of 2 x (3 + 2) = 10 with 9, [1, 3] of
    2 x (2 + 3) = 10 with 10: 32 positions, 5 of them padding."""
    config = config_for(
        tmp_path,
        model_dir,
        name=f"padding-{len(str(batch))}-{expected:.3f}",
        batch={"prompts_per_step": 4, **batch},
        algorithm={"preset": "grpopp", "loss": {"tis": "off"}},
        rollout={"completions_per_prompt": 2},
    )
    trainer = build_trainer(config, tmp_path / f"padding-{len(str(batch))}-{expected:.3f}")
    assert trainer.update(*fixed_tensors())["padding_fraction"] == pytest.approx(expected, abs=1e-12)


def test_token_budget_micro_batches_by_hand():
    """Sorted by length (ties in order), each pass within rows x (longest prompt + longest completion):
    lengths 9, 3, 3, 30 (over the budget of 10: alone), 4 -> [1, 2] (2 x (2 + 2) = 8; adding 4 gives
    3 x 4 = 12), [4] (4; adding 0 gives 2 x 9 = 18), [0] (9), [3] (30)."""
    lengths = [(4, 5), (1, 2), (2, 1), (10, 20), (2, 2)]
    assert token_budget_micro_batches(lengths, 10) == [[1, 2], [4], [0], [3]]
    assert token_budget_micro_batches(lengths, 1000) == [[1, 2, 4, 0, 3]]
    assert token_budget_micro_batches([], 10) == []
    # Packed passes cost the sum of their rows' lengths: 3 + 3 + 4 = 10 fits, then 9, then 30 alone.
    assert token_budget_micro_batches(lengths, 10, packed=True) == [[1, 2, 4], [0], [3]]


def test_tis_with_filtered_sampling_is_refused(tmp_path, model_dir):
    with pytest.raises(
        ConfigError, match="algorithm.loss.tis.type='token_truncate' with rollout.top_p/top_k filtering"
    ):
        config_for(tmp_path, model_dir, rollout={"top_p": 0.9})
    assert config_for(tmp_path, model_dir, rollout={"top_p": 0.9}, algorithm={"preset": "dapo"}).rollout.top_p == 0.9


def test_short_batches_still_get_the_planned_mini_batches(tmp_path, model_dir):
    # 3 groups (dynamic sampling came back short of 4) over mini_batches=2: two optimizer steps, not three.
    config = config_for(
        tmp_path, model_dir, batch={"prompts_per_step": 4, "mini_batches": 2}, rollout={"completions_per_prompt": 2}
    )
    trainer = build_trainer(config, tmp_path / "short")
    steps = []
    trainer.policy.step = lambda original=trainer.policy.step: steps.append(1) or original()  # count optimizer steps
    tensors, advantages = fixed_tensors()
    keep = list(range(6))
    short = TrainTensors(
        prompts=[tensors.prompts[i] for i in keep],
        completions=[tensors.completions[i] for i in keep],
        sampler_logprobs=[tensors.sampler_logprobs[i] for i in keep],
        rewards=tensors.rewards[keep],
        valid=tensors.valid[keep],
        trained=tensors.trained[keep],
    )
    trainer.update(short, advantages[keep])
    assert len(steps) == 2


@pytest.mark.parametrize("kernel", ["eager", "sdpa"])
def test_model_attention_kernel_is_configurable(tmp_path, model_dir, kernel):
    config = config_for(tmp_path, model_dir, model={"name_or_path": str(model_dir), "attn_implementation": kernel})
    model, _ = load_model(config.model)
    assert model.config._attn_implementation == kernel


def test_non_finite_scores_are_masked_as_errors(tmp_path, model_dir):
    """coin_nan scores NaN or inf for completions that start with a digit or an upper-case letter:
    training runs its 2 steps, and exactly those completions are counted as errors, logged with the
    reason, and kept out of the advantages (the loss stays finite, every update is applied)."""
    judged = registered_envs()["coin_nan"].judged
    judged.clear()
    config = config_for(tmp_path, model_dir, envs=[{"name": "coin_nan"}], logging={"samples_per_step": 1000})
    summary = train(config)
    rows = step_metrics(summary.run_dir)
    expected_errors = sum(1 for text in judged if text[:1].isdigit() or text[:1].isupper())
    assert summary.steps == 2 and [m["step"] for m in rows] == [1, 2]
    assert expected_errors > 0  # the test bites: some completions did get a NaN or inf score
    assert sum(m["completions_generated"] for m in rows) == len(judged)
    assert sum(round(m["masked/error"] * m["completions_generated"]) for m in rows) == expected_errors
    assert all(m["skipped_update"] == 0.0 and m["grad_norm"] > 0 and m["loss"] is not None for m in rows)
    samples = [json.loads(line) for line in (summary.run_dir / "samples.jsonl").read_text().splitlines()]
    errors = [r for r in samples if r["reward"]["status"] == "error"]
    assert len(errors) == expected_errors  # every masked sample is on record, with its reason
    for record in errors:
        score = "nan" if record["completion"][:1].isdigit() else "inf"
        reason = f"verifier: invalid result (status 'correct', score {score}): score: Input should be a finite number"
        assert record["reward"]["valid"] is False and record["reward"]["errors"] == [reason]
        assert record["verification"] == {
            "status": "error",
            "score": 0.0,
            "reason": reason,
            "decided_by": "coin_nan",
            "extracted": None,
        }
    assert all(r["reward"]["valid"] for r in samples if r not in errors)


def test_resume_skips_a_truncated_checkpoint_and_matches_the_uninterrupted_run(tmp_path, model_dir):
    summary = train(config_for(tmp_path, model_dir, steps=3))
    run = summary.run_dir
    straight_metrics, straight_eval = metrics(run), (run / "eval.jsonl").read_text()
    straight_weights = {k: v.clone() for k, v in weights(run / "checkpoints" / "step-000003").items()}  # not mmap
    model_file = run / "checkpoints" / "step-000003" / "model.safetensors"
    size = model_file.stat().st_size
    model_file.write_bytes(model_file.read_bytes()[: size // 2])  # a disk that filled up mid-write
    output = io.StringIO()
    resumed = train(None, resume=run, console=Console(file=output, width=100))
    printed = " ".join(output.getvalue().split())
    assert (
        f"warning: skipped checkpoint {run / 'checkpoints' / 'step-000003'}: model.safetensors has {size // 2} "
        f"bytes where the manifest records {size} (cut short or overwritten); resuming from step-000002, the "
        "newest complete one" in printed
    )
    assert f"resumed from {run / 'checkpoints' / 'step-000002'} at step 2" in printed
    assert resumed.steps == 3
    assert comparable(metrics(run)) == comparable(straight_metrics)  # step 3 again, as it was
    assert (run / "eval.jsonl").read_text() == straight_eval
    assert all(torch.equal(a, straight_weights[k]) for k, a in weights(run / "checkpoints" / "step-000003").items())
    times = [m["time"] for m in metrics(run)]
    assert 0 < times[0] < times[1] < times[2]  # the resumed step continues the run's clock


def test_resume_refuses_when_no_checkpoint_is_complete(tmp_path, model_dir):
    run = train(config_for(tmp_path, model_dir, steps=1)).run_dir
    state = run / "checkpoints" / "step-000001" / "trainer_state.pt"
    size = state.stat().st_size
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(ConfigError) as error:
        train(None, resume=run)
    assert str(error.value) == (
        f"--resume {run}: no complete checkpoint to resume from: every checkpoint fails its check (step-000001: "
        f"trainer_state.pt has 100 bytes where the manifest records {size} (cut short or overwritten)). Start a new "
        "run (set checkpoint.every to save during training), or restore an intact copy of a checkpoint folder"
    )


def test_steps_extends_a_finished_run_as_if_it_had_been_planned_longer(tmp_path, model_dir):
    # The constant learning rate (the default) makes 2 steps + 2 more the same run as 4 steps at once.
    short = train(config_for(tmp_path, model_dir, name="short", steps=2)).run_dir
    straight = train(config_for(tmp_path, model_dir, name="straight", steps=4)).run_dir
    extended = train(None, resume=short, steps=4)
    assert extended.steps == 4
    assert yaml.safe_load((short / "config.yaml").read_text())["steps"] == 4
    assert comparable(metrics(short)) == comparable(metrics(straight))
    final = "checkpoints/step-000004"
    assert all(torch.equal(a, weights(straight / final)[k]) for k, a in weights(short / final).items())
    evals = [json.loads(line)["step"] for line in (short / "eval.jsonl").read_text().splitlines()]
    assert evals == [0, 2, 4]  # the evaluation that ended the 2-step run stays on record
    with pytest.raises(ConfigError, match="--steps 3: the run resumes at step 4 .* give at least 4"):
        train(None, resume=short, steps=3)


def test_steps_extension_follows_the_longer_schedule(tmp_path, model_dir):
    """Cosine over 2 optimizer steps, extended to 4: steps 1-2 ran at lr x (1, 0.5), and steps 3-4 take
    the 4-step schedule's factors 0.5 (1 + cos(pi 2/4)) = 0.5 and 0.5 (1 + cos(pi 3/4)) = 0.146447."""
    short = train(config_for(tmp_path, model_dir, steps=2, optim={"lr": 1e-2, "schedule": "cosine"})).run_dir
    train(None, resume=short, steps=4)
    lrs = [m["lr"] for m in metrics(short)]
    assert lrs == pytest.approx([1e-2, 5e-3, 5e-3, 1.4644661e-3], rel=1e-6)


def test_metrics_have_one_line_per_step_with_time_and_completions_generated(tmp_path, model_dir):
    no_dynamic_sampling = {"preset": "grpopp", "dynamic_sampling": {"enabled": False}}
    config = config_for(
        tmp_path, model_dir, steps=3, eval={"every": 1, "tasks_per_env": 8}, algorithm=no_dynamic_sampling
    )
    run = train(config).run_dir
    rows = metrics(run)
    assert [m["step"] for m in rows] == [1, 2, 3]  # evaluations add no line of their own
    assert all(not any(key.startswith("eval/") for key in m) for m in rows)
    assert [m["completions_generated"] for m in rows] == [16, 16, 16]  # 4 prompts x 4 completions, one round
    assert 0 < rows[0]["time"] < rows[1]["time"] < rows[2]["time"]
    for before, row in itertools.pairwise(rows):  # a step's own time is part of the time since the step before
        assert 0 < row["time/step"] <= row["time"] - before["time"]
    evals = [json.loads(line)["step"] for line in (run / "eval.jsonl").read_text().splitlines()]
    assert evals == [0, 1, 2, 3]  # before training, every step, after training


STEP_LINE = re.compile(r"^step (\d+)/(\d+)  reward \S+  acc \S+  len \S+  entropy \S+  \d+\.\d\d s/step  ETA \S+$")


def test_cli_without_a_terminal_prints_a_line_per_step_and_extends_with_steps(tmp_path, model_dir):
    """stdout is a pipe here, as under nohup or SLURM: one plain line per step and per evaluation, no
    transformers progress bars or deprecation warnings; then ``--resume --steps`` adds a step, and a
    run whose checkpoints are all damaged is refused with exit code 2."""
    run = tmp_path / "cli"
    config = write_config(tmp_path, model_dir, run, eval={"every": 1, "tasks_per_env": 8}, logging={"progress": True})
    first = subprocess.run(
        [GRPOPP, "train", "--plugin", PLUGIN, "--config", str(config)], capture_output=True, text=True, timeout=300
    )
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert [STEP_LINE.match(line).groups() for line in lines if line.startswith("step ")] == [("1", "2"), ("2", "2")]
    assert [line.split(":")[0] for line in lines if line.startswith("held-out accuracy ")] == [
        "held-out accuracy before training",
        "held-out accuracy at step 1",
        "held-out accuracy after training",
    ]
    for noise in ("Writing model shards", "Loading weights", "past_key_values", "Traceback"):
        assert noise not in first.stdout + first.stderr
    extended = subprocess.run(
        [GRPOPP, "train", "--resume", str(run), "--steps", "3"], capture_output=True, text=True, timeout=300
    )
    assert extended.returncode == 0, extended.stderr
    step_lines = [line for line in extended.stdout.splitlines() if line.startswith("step ")]
    assert len(step_lines) == 1 and step_lines[0].startswith("step 3/3  reward")
    assert [m["step"] for m in metrics(run)] == [1, 2, 3]
    for folder in (run / "checkpoints").iterdir():
        (folder / "model.safetensors").write_bytes(b"")
    refused = subprocess.run([GRPOPP, "train", "--resume", str(run)], capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert "no complete checkpoint to resume from" in refused.stderr and "Traceback" not in refused.stderr


def test_a_run_from_before_manifests_resumes_with_a_warning(tmp_path, model_dir):
    run = train(config_for(tmp_path, model_dir, steps=2)).run_dir
    for folder in (run / "checkpoints").iterdir():
        (folder / "manifest.json").unlink()  # as grpopp wrote checkpoints before manifests
    output = io.StringIO()
    train(None, resume=run, console=Console(file=output, width=100), steps=3)
    printed = " ".join(output.getvalue().split())
    assert (
        f"warning: {run / 'checkpoints' / 'step-000002'} has no manifest.json (written by an older grpopp): only "
        "checked that trainer_state.pt and the .safetensors files are whole" in printed
    )
    assert [m["step"] for m in metrics(run)] == [1, 2, 3]
    assert (run / "checkpoints" / "step-000003" / "manifest.json").is_file()


def test_evaluation_off_trains_without_held_out_passes(tmp_path, model_dir):
    """eval.tasks_per_env = 0: no evaluation before, during or after training (eval.jsonl stays empty,
    the summary has no accuracy), and the steps still train."""
    summary = train(config_for(tmp_path, model_dir, steps=2, eval={"tasks_per_env": 0}))
    eval_log = summary.run_dir / "eval.jsonl"
    assert not eval_log.exists() or eval_log.read_text() == ""
    assert math.isnan(summary.accuracy_before) and math.isnan(summary.accuracy_after)
    assert [row["step"] for row in step_metrics(summary.run_dir)] == [1, 2]


def test_weight_zero_reward_components_are_logged_apart(tmp_path, model_dir):
    """The grpopp preset's shaping: correctness weight 1, format and length weight 0 by default, the
    overlong term weighted by the preset: weight-0 components go under reward_inactive/."""
    summary = train(config_for(tmp_path, model_dir, steps=1))
    (row,) = step_metrics(summary.run_dir)
    assert "coin/reward/correctness" in row
    assert {"coin/reward_inactive/format", "coin/reward_inactive/length"} <= set(row)
    assert "coin/reward/format" not in row and "coin/reward/length" not in row


def test_a_carried_group_is_trained_with_its_stored_logprobs(tmp_path, model_dir):
    # Two groups of 4; the second was carried from an earlier step with pi_old stored 1.5x below the
    # policy's log-probs now (log pi_old = log pi - log 1.5), so its every token has ratio pi / pi_old
    # = 1.5, while the first, generated this step, has ratio 1. dapo: no TIS, on-policy, clip 0.8-1.28.
    config = config_for(
        tmp_path, model_dir, steps=1, algorithm={"preset": "dapo", "dynamic_sampling": {"enabled": False}}
    )
    trainer = build_trainer(config, tmp_path / "run")
    completions = [[5, 6, 7], [8, 9], [5, 6], [7], [6, 6], [9, 8, 7, 6], [5], [8, 8, 8]]
    tensors = TrainTensors(
        prompts=[[20, 21, 22]] * 4 + [[23, 24]] * 4,
        completions=completions,
        sampler_logprobs=[[-1.0] * len(c) for c in completions],
        rewards=torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64),
        valid=torch.ones(8, dtype=torch.bool),
        trained=torch.ones(8, dtype=torch.bool),
    )
    now = trainer._logprobs_no_grad(trainer.policy.model, tensors)
    tensors.old_logprobs = [None] * 4 + [(row - math.log(1.5)).tolist() for row in now[4:]]
    metrics = trainer.update(tensors, torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, -1.0, 1.0]))
    fresh_tokens, carried_tokens = 3 + 2 + 2 + 1, 2 + 4 + 1 + 3
    assert math.isclose(metrics["ratio_min"], 1.0, abs_tol=1e-5)
    assert math.isclose(metrics["ratio_max"], 1.5, abs_tol=1e-5)
    expected_mean = (fresh_tokens * 1.0 + carried_tokens * 1.5) / (fresh_tokens + carried_tokens)
    assert math.isclose(metrics["ratio_mean"], expected_mean, abs_tol=1e-5)
    # Clipped above 1 + 0.28 where A > 0: the carried group's rows 5 and 7 (4 + 3 of its 18 tokens).
    assert math.isclose(metrics["clip_frac_high"], (4 + 3) / (fresh_tokens + carried_tokens), abs_tol=1e-6)


def test_resume_with_carried_groups_matches_the_uninterrupted_run(tmp_path, model_dir):
    # coin_half_flat: half the groups have no signal; 3x the missing prompts a round (as DAPO's recipe)
    # leaves about 2 of 4 groups with signal over each step, which are carried to the next.
    sections = {
        "envs": [{"name": "coin_half_flat"}],
        "steps": 5,
        "checkpoint": {"every": 1, "keep_last": 10},
        "algorithm": {"preset": "grpopp", "dynamic_sampling": {"adaptive": False, "oversample_factor": 3.0}},
    }
    straight = train(config_for(tmp_path, model_dir, "straight", **sections)).run_dir
    waiting = [row["dynamic_sampling/groups_waiting"] for row in step_metrics(straight)]
    assert waiting[2] > 0  # the checkpoint resumed from holds carried groups
    assert sum(row["dynamic_sampling/groups_carried_in"] for row in step_metrics(straight)) > 0
    stopped = config_for(tmp_path, model_dir, "stopped", **sections)
    train(stopped, stop_after=3)
    train(None, resume=tmp_path / "stopped")
    assert comparable(metrics(tmp_path / "stopped")) == comparable(metrics(straight))
