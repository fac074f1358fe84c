"""README "Extend grpopp": the loss variant and the rollout engine written there, run as written.

Each example is read out of the README and executed; it is then added to its union the way the
README says (here in a subclass of the config, as the test cannot edit grpopp's files), and used:

- the ``reinforce`` objective against values worked out by hand on the shared example of
  tests/test_losses.py, and in a training step, where the trainer needs nothing else;
- the ``stale_hf`` engine in a 3-step run: its copy of the policy is refreshed after every second
  optimizer step, so the sampler/learner log-prob gap that TIS logs is 0 (up to rounding) at steps
  1 and 3, when the copy equals the policy, and clearly not at step 2, when it lags one update.
"""

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Union

import pytest
import torch
from pydantic import BaseModel, Field, create_model
from random_model import save_random_model

from grpopp.config_tools import apply_overrides
from grpopp.envs.registry import load_plugin, registered_envs
from grpopp.jobs.run import train
from grpopp.objective.algorithms import PRESETS, AlgorithmConfig
from grpopp.objective.losses import CISPO, GSPO, LossConfig, PPOClip, policy_loss
from grpopp.rollout.config import RolloutConfig
from grpopp.rollout.hf import HFEngineConfig
from grpopp.rollout.vllm_engine import VLLMEngineConfig
from grpopp.training.config import TrainConfig

README = Path(__file__).resolve().parent.parent / "README.md"
PLUGIN = str(Path(__file__).parent / "plugins" / "coin_env.py")


def readme_example(heading: str) -> dict[str, Any]:
    """Execute the first python block under ``### heading`` of the README; return its names."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"### {heading}\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, f"README: no python block under '### {heading}'"
    namespace: dict[str, Any] = {"__name__": f"readme_{heading.replace(' ', '_')}"}
    exec(compile(code.group(1), f"README.md ({heading})", "exec"), namespace)
    return namespace


def variant_union(*members: type[BaseModel]) -> Any:
    return Annotated[Union[members], Field(discriminator="type")]  # noqa: UP007 (a tuple of classes)


def extended_loss(objective: type[BaseModel]) -> type[LossConfig]:
    """LossConfig with ``objective`` added to its Objective union: the README's edit of losses.py."""
    union = variant_union(PPOClip, GSPO, CISPO, objective)
    return create_model("ExtendedLoss", __base__=LossConfig, objective=(union, PPOClip()))


def extended_train_config(
    objective: type[BaseModel] | None = None, engine: type[BaseModel] | None = None
) -> type[TrainConfig]:
    """TrainConfig with ``objective`` added to the loss's Objective union and ``engine`` to EngineConfig:
    what the README's one-line edit of losses.py / rollout/config.py does."""
    loss = LossConfig if objective is None else extended_loss(objective)
    rollout = RolloutConfig
    if engine is not None:
        union = variant_union(HFEngineConfig, VLLMEngineConfig, engine)
        rollout = create_model("ExtendedRollout", __base__=RolloutConfig, engine=(union, HFEngineConfig()))
    algorithm = create_model("ExtendedAlgorithm", __base__=AlgorithmConfig, loss=(loss, loss()))
    return create_model(
        "ExtendedTrainConfig", __base__=TrainConfig, algorithm=(algorithm, algorithm()), rollout=(rollout, rollout())
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A small random model (no warm start: the coin environment needs none)."""
    if "coin" not in registered_envs():
        load_plugin(PLUGIN)
    return save_random_model(tmp_path_factory.mktemp("random-model"))


def run_config(model: type[TrainConfig], model_dir: Path, run_dir: Path, steps: int, **sections: Any) -> TrainConfig:
    data: dict[str, Any] = {
        "model": {"name_or_path": str(model_dir)},
        "rollout": {"completions_per_prompt": 4, "max_new_tokens": 3},
        "algorithm": PRESETS["grpopp"].config.model_dump(),  # with token TIS, whose metrics the engine test reads
        "envs": [{"name": "coin"}],
        "batch": {"prompts_per_step": 4, "micro_batch_size": 16},
        "optim": {"lr": 5e-2},
        "steps": steps,
        "eval": {"tasks_per_env": 0},
        "logging": {"run_dir": str(run_dir), "progress": False},
        "seed": 0,
    }
    for section, values in sections.items():
        data[section] = merged(data.get(section, {}), values)
    return model.model_validate(data)


def merged(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` over ``base``, mapping by mapping; a variant (a mapping with a type) is replaced whole."""
    return {
        **base,
        **{k: merged(base.get(k, {}), v) if isinstance(v, dict) and "type" not in v else v for k, v in update.items()},
    }


def step_metrics(run_dir: Path) -> list[dict[str, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "reward" in record]


# -- the loss variant ----------------------------------------------------------------------------


def test_readme_loss_variant_against_hand_values() -> None:
    reinforce = readme_example("Add a loss variant")["Reinforce"]
    cfg = apply_overrides(extended_loss(reinforce)(), ["objective.type=reinforce"])  # --set reaches it
    assert cfg.objective.type == "reinforce"
    # tests/test_losses.py's example: ratios [[1.5, 0.7, 1.1], [0.5, 1.3, pad]], A = [1, -2], token mean.
    # Per token -A r: -1.5, -0.7, -1.1 and 1.0, 2.6; sum 0.3 over 5 tokens = 0.06. No clipping, so
    # d loss / d log pi_t = -A r_t / 5.
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.5, -0.3, -9.0]], dtype=torch.float64)
    ratio = torch.tensor([[1.5, 0.7, 1.1], [0.5, 1.3, 1.0]], dtype=torch.float64)
    logprobs = (old + ratio.log()).requires_grad_(True)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.float64)
    out = policy_loss(logprobs, old, torch.tensor([1.0, -2.0], dtype=torch.float64), mask, cfg)
    out.loss.backward()
    assert math.isclose(out.loss.item(), 0.06, abs_tol=1e-12)
    expected = torch.tensor([[-1.5, -0.7, -1.1], [1.0, 2.6, 0.0]], dtype=torch.float64) / 5
    assert torch.allclose(logprobs.grad, expected, rtol=0, atol=1e-12)
    assert out.metrics["clip_frac_low"] == out.metrics["clip_frac_high"] == 0.0
    assert "dual_clip_frac" not in out.metrics


def test_readme_loss_variant_trains_with_nothing_else_changed(tmp_path, model_dir) -> None:
    reinforce = readme_example("Add a loss variant")["Reinforce"]
    model = extended_train_config(objective=reinforce)
    config = run_config(model, model_dir, tmp_path / "run", 1, algorithm={"loss": {"objective": {"type": "reinforce"}}})
    summary = train(config)
    (metrics,) = step_metrics(summary.run_dir)
    assert metrics["clip_frac_low"] == metrics["clip_frac_high"] == 0.0
    assert math.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0


# -- the rollout engine --------------------------------------------------------------------------


def test_readme_engine_lags_the_policy_by_its_refresh_period(tmp_path, model_dir) -> None:
    stale = readme_example("Add a rollout engine")["StaleHFEngineConfig"]
    model = extended_train_config(engine=stale)
    config = run_config(model, model_dir, tmp_path / "run", 3, rollout={"engine": {"type": "stale_hf"}})
    assert config.rollout.engine == stale(refresh_every=2)
    summary = train(config)
    gaps = [record["tis/logprob_gap_max"] for record in step_metrics(summary.run_dir)]
    assert len(gaps) == 3
    assert gaps[0] < 1e-4 and gaps[2] < 1e-4  # the copy is the policy: only rounding separates them
    assert gaps[1] > 1e-3  # sampled by the weights of before step 1's update


# -- the multi-turn environment ------------------------------------------------------------------


def test_readme_multi_turn_environment_checks_and_trains_through_plugin(tmp_path, model_dir, clean_registry) -> None:
    """The README's count_up, saved as a user's file and loaded with --plugin as the README says:
    `grpopp envs check` plays its gold and wrong episodes, and `grpopp train` runs it for 2 steps."""
    from typer.testing import CliRunner

    from grpopp.cli.main import app

    text = README.read_text(encoding="utf-8").split("### Write a multi-turn environment\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.S)
    assert code is not None
    plugin = tmp_path / "count_up.py"
    plugin.write_text(code.group(1))
    assert len([line for line in code.group(1).splitlines() if line.strip()]) <= 45  # "about 40 lines"
    runner = CliRunner()
    checked = runner.invoke(app, ["envs", "check", "count_up", "--plugin", str(plugin), "-n", "5"])
    assert checked.exit_code == 0, checked.output
    assert "gold episodes score correct" in checked.output
    config = tmp_path / "run.yaml"
    config.write_text(
        json.dumps(
            {
                "model": {"name_or_path": str(model_dir)},
                "rollout": {"completions_per_prompt": 4, "max_new_tokens": 4},
                "envs": [{"name": "count_up", "config": {"steps": 2}}],
                "algorithm": {"preset": "dapo", "dynamic_sampling": {"enabled": False}},  # a random model: no signal
                "batch": {"prompts_per_step": 2, "micro_batch_size": 16},
                "steps": 2,
                "eval": {"tasks_per_env": 2},
                "logging": {"run_dir": str(tmp_path / "run"), "progress": False},
            }
        )
    )
    clean_registry()  # a second CLI process
    trained = runner.invoke(app, ["train", "--config", str(config), "--plugin", str(plugin)])
    assert trained.exit_code == 0, trained.output
    metrics = step_metrics(tmp_path / "run")
    assert len(metrics) == 2
    assert all(1.0 <= m["count_up/turns"] <= 2.0 for m in metrics)  # a wrong first number ends an episode
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    episode = samples[0]
    assert episode["messages"][0]["role"] == "assistant" and episode["episode"]["turns"] >= 1
    assert episode["trained_spans"][0][0] == 0
