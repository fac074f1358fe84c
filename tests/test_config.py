"""Training config resolution: YAML's `off`, evaluation switched off, presets chosen from the command line
with the optimizer settings they carry, --env on top of a config file (shared with `grpopp eval`), and
the format reward that needs a rule."""

import re
from pathlib import Path

import pytest
import yaml

from grpopp.config_tools import ConfigError
from grpopp.envs.base import prompt_text
from grpopp.envs.mixture import build_mixture
from grpopp.evaluation.evaluate import EvalSettings
from grpopp.jobs.eval_job import resolve_job
from grpopp.objective.losses import CISPO, GSPO, ConstantNorm, NoTIS, SequenceMask
from grpopp.recipes.tiny import TINY_ARITHMETIC_ENV
from grpopp.rewards.shaping import FormatRules, RewardConfig, format_reward
from grpopp.rollout.hf import HFEngineConfig
from grpopp.rollout.vllm_engine import VLLMEngineConfig
from grpopp.training.config import (
    EvalConfig,
    LoggingConfig,
    OptimConfig,
    load_train_config,
    recipe_path,
    resolve_train_config,
)

RECIPE = yaml.safe_load(recipe_path("tiny-arithmetic").read_text())
"""The shipped recipe as YAML reads it, independently of the config code."""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- YAML's `off` and evaluation off


def test_yaml_off_is_read_as_false_and_accepted_as_tis_off(tmp_path):
    assert yaml.safe_load("tis: off") == {"tis": False}  # YAML 1.1: the reason for the validator
    config = load_train_config(write(tmp_path, "algorithm:\n  preset: grpopp\n  loss: {tis: off}\n"))
    assert config.algorithm.loss.tis == NoTIS()
    config = load_train_config(write(tmp_path, "algorithm: {preset: grpopp, tis: off}\n"))  # short name
    assert config.algorithm.loss.tis == NoTIS()
    config = load_train_config(write(tmp_path, "algorithm: {preset: grpopp, loss: {tis: {type: off}}}\n"))
    assert config.algorithm.loss.tis == NoTIS()
    assert load_train_config(overrides=["algorithm.tis=false"]).algorithm.loss.tis == NoTIS()
    with pytest.raises(ConfigError, match=r"algorithm.loss.tis.type: unknown True; choose one of off, token_truncate"):
        load_train_config(write(tmp_path, "algorithm: {preset: grpopp, tis: on}\n"))


def test_eval_tasks_per_env_zero_turns_evaluation_off(tmp_path):
    config = load_train_config(write(tmp_path, "eval: {tasks_per_env: 0}\n"))
    assert config.eval.tasks_per_env == 0 and config.eval.enabled is False
    assert EvalConfig().enabled is True  # default: 200 tasks per environment
    message = "eval: every=5 asks for evaluations during training but tasks_per_env=0 turns evaluation off: set every=0"
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_train_config(write(tmp_path, "eval: {tasks_per_env: 0, every: 5}\n"))
    with pytest.raises(ConfigError, match="eval.tasks_per_env: Input should be greater than or equal to 0"):
        load_train_config(overrides=["eval.tasks_per_env=-1"])


def test_logging_print_every():
    assert LoggingConfig().print_every == 10
    assert LoggingConfig(print_every=0).print_every == 0
    with pytest.raises(ValueError, match="greater than or equal to 0"):
        LoggingConfig(print_every=-1)


# ---------------------------------------------------------------- presets and their optimizer settings

TRL_OPTIM = {"betas": (0.9, 0.999), "schedule": "linear", "min_lr_ratio": 0.0, "weight_decay": 0.0, "warmup_steps": 0}
"""transformers' TrainingArguments defaults that TRL's GRPOTrainer trains with (adam_beta1/2,
lr_scheduler_type, weight_decay, warmup_steps); see tests/test_algorithms.py for the check against
the installed transformers."""


def _optim(config):
    return {key: getattr(config.optim, key) for key in TRL_OPTIM}


def test_trl_dapo_in_one_line_of_a_config_file_brings_trls_optimizer(tmp_path):
    config = load_train_config(write(tmp_path, "algorithm: {preset: trl_dapo}\nenvs: [{name: arithmetic}]\n"))
    assert config.algorithm.name == "trl_dapo"
    assert _optim(config) == TRL_OPTIM
    assert config.optim.lr == 1e-6  # GRPOConfig.learning_rate
    assert OptimConfig().betas == (0.9, 0.99)  # what grpopp's own presets keep


def test_the_files_own_optim_values_win_over_the_presets(tmp_path):
    text = "algorithm: trl_dapo\noptim: {lr: 3.0e-6, betas: [0.9, 0.95]}\n"
    config = load_train_config(write(tmp_path, text))
    assert config.optim.lr == 3e-6 and config.optim.betas == (0.9, 0.95)
    assert config.optim.schedule == "linear"  # not set in the file: the preset's


def test_set_algorithm_preset_on_the_recipe(tmp_path):
    config = load_train_config(overrides=["algorithm.preset=trl_dapo"])
    assert config.algorithm.name == "trl_dapo"
    assert config.algorithm.loss.tis == SequenceMask(cap=3.0) and config.algorithm.loss.objective.eps_high == 0.2
    assert not config.algorithm.dynamic_sampling.enabled and not config.algorithm.overlong.soft_punishment
    assert _optim(config) == TRL_OPTIM
    assert config.optim.lr == RECIPE["optim"]["lr"] == 1e-4  # the recipe sets its lr: it stays
    # the file's algorithm overrides apply to the preset chosen on the command line
    path = write(tmp_path, "algorithm: {preset: grpopp, loss: {eps_high: 0.3}}\n")
    config = load_train_config(path, overrides=["algorithm.preset=trl_dapo"])
    assert (config.algorithm.name, config.algorithm.loss.objective.eps_high) == ("trl_dapo + overrides", 0.3)
    assert config.algorithm.loss.tis == SequenceMask(cap=3.0)
    config = load_train_config(overrides=["algorithm.preset=trl_dapo", "algorithm.eps_high=0.28"])
    assert (config.algorithm.name, config.algorithm.loss.objective.eps_high) == ("trl_dapo + overrides", 0.28)
    with pytest.raises(ConfigError, match="unknown preset 'trl'; known: grpo, dapo"):
        load_train_config(overrides=["algorithm.preset=trl"])


# ---------------------------------------------------------------- --env on top of a config file


def test_env_flags_keep_the_files_options_and_set_only_the_weight():
    resolved = resolve_train_config(envs=["arithmetic:0.5", "countdown:0.5"])
    arithmetic, countdown = resolved.config.envs
    assert (arithmetic.name, arithmetic.weight) == ("arithmetic", 0.5)
    assert arithmetic.config == RECIPE["envs"][0]["config"] == TINY_ARITHMETIC_ENV  # what the warm start taught
    assert (countdown.name, countdown.weight, countdown.config) == ("countdown", 0.5, {})
    assert resolved.notes == ["--env countdown: not in the config file: using its default options"]
    # the prompt format is the recipe's ("37 + 18="), not the environment's default
    mixture = build_mixture(resolved.config.envs)
    task = mixture.envs[0].task(0)
    assert re.fullmatch(r"\d+ [+-] \d+=", prompt_text(task)), prompt_text(task)


def test_env_flags_choose_the_environments_of_a_mixture(tmp_path):
    text = (
        "envs:\n  - {name: arithmetic, weight: 0.7, config: {max_operand: 99}}\n"
        "  - {name: countdown, weight: 0.3, config: {num_numbers: 4}}\n"
    )
    resolved = resolve_train_config(write(tmp_path, text), envs=["countdown"])
    assert [(e.name, e.weight, e.config) for e in resolved.config.envs] == [("countdown", 1.0, {"num_numbers": 4})]
    assert resolved.notes == []
    assert load_train_config(write(tmp_path, text)).envs[1].weight == 0.3  # without --env: the file's list


def test_train_and_eval_resolve_an_env_flag_the_same_way():
    train = resolve_train_config(envs=["arithmetic:2"]).config
    base = load_train_config()  # what `grpopp eval tiny` starts from
    job = resolve_job(base, ["arithmetic:4"], 100, EvalSettings(), True, None, None)
    assert (job.envs[0].name, job.envs[0].tasks) == ("arithmetic", 4)
    assert job.envs[0].config == train.envs[0].config == TINY_ARITHMETIC_ENV
    job = resolve_job(base, ["countdown:3"], 100, EvalSettings(), True, None, None)
    assert job.envs[0].config == resolve_train_config(envs=["countdown"]).config.envs[0].config == {}


# ---------------------------------------------------------------- the format reward needs a rule


def test_a_format_weight_without_a_rule_is_refused_with_the_fix(tmp_path):
    assert format_reward("banana", FormatRules()) == 1.0  # the trap: no rule on, any text "follows" them
    with pytest.raises(
        ValueError, match=r"format=0.1 with no format rule rewards any text.*format_rules: \{answer_line"
    ):
        RewardConfig(format=0.1)
    config = load_train_config(write(tmp_path, "envs: [{name: countdown, config: {reward: {format: 0.1}}}]\n"))
    with pytest.raises(ConfigError, match="env countdown: reward: format=0.1 with no format rule"):
        build_mixture(config.envs)
    fixed = RewardConfig(format=0.1, format_rules=FormatRules(answer_line=True))
    assert format_reward("banana", fixed.format_rules) == 0.0
    assert format_reward("work\nAnswer: 7", fixed.format_rules) == 1.0
    assert RewardConfig(format=0.0).format == 0.0  # no weight, no rule needed
    for rule in ("think", "boxed", "answer_line"):  # any one rule is enough
        assert RewardConfig(format=0.2, format_rules=FormatRules(**{rule: True})).format == 0.2


# ---------------------------------------------------------------- the flat form of before the unions

FLAT_RUN_CONFIG = """
rollout: {engine: vllm, completions_per_prompt: 4, max_new_tokens: 8, batch_size: 64,
          vllm: {max_model_len: 64, enforce_eager: true, sleep_level: null}}
algorithm:
  name: grpopp
  loss: {objective: cispo, eps_low: 1.0, eps_high: 4.0, dual_clip: null, aggregation: constant_norm,
         norm_length: 8, kl_coef: 0.0, kl_estimator: k3, tis: sequence_mask, tis_cap: 3.0}
"""
"""A run's config.yaml as grpopp wrote it before loss variants and engines were unions (every key
written, nulls included; batch_size was ignored under vllm)."""


def test_a_run_config_in_the_flat_form_loads_as_the_nested_one(tmp_path):
    config = load_train_config(write(tmp_path, FLAT_RUN_CONFIG))
    assert config.rollout.engine == VLLMEngineConfig(max_model_len=64, enforce_eager=True)
    loss = config.algorithm.loss
    assert loss.objective == CISPO(eps_low=1.0, eps_high=4.0)
    assert loss.aggregation == ConstantNorm(norm_length=8)
    assert loss.tis == SequenceMask(cap=3.0)
    assert load_train_config(write(tmp_path, "rollout: {engine: hf, batch_size: 8}\n")).rollout.engine == (
        HFEngineConfig(batch_size=8)
    )


def test_set_takes_the_flat_keys_and_the_short_names():
    flat = load_train_config(
        overrides=[
            "algorithm.loss.objective=gspo",  # a flat key: the variant's type
            "algorithm.eps_low=3e-4",  # a short name
            "algorithm.loss.tis_cap=3",
            "rollout.engine=vllm",
            "rollout.vllm.max_model_len=64",
        ]
    )
    nested = load_train_config(
        overrides=[
            "algorithm.loss.objective.type=gspo",
            "algorithm.loss.objective.eps_low=3e-4",
            "algorithm.loss.tis.cap=3",
            "rollout.engine.type=vllm",
            "rollout.engine.max_model_len=64",
        ]
    )
    assert flat == nested
    # From the grpopp preset's ppo_clip: the clip range and dual clip are kept, as gspo has them too.
    assert nested.algorithm.loss.objective == GSPO(eps_low=3e-4, eps_high=0.28, dual_clip=3.0)
    assert nested.rollout.engine == VLLMEngineConfig(max_model_len=64)
    hf = load_train_config(overrides=["rollout.batch_size=8"]).rollout.engine
    assert hf == HFEngineConfig(batch_size=8)


def test_switching_variant_drops_the_fields_the_new_one_lacks(tmp_path):
    # grpopp's ppo_clip has dual_clip=3; cispo has no dual clip, so it goes; eps_low/eps_high stay.
    config = load_train_config(overrides=["algorithm.objective.type=cispo"])
    assert config.algorithm.loss.objective == CISPO(eps_low=0.2, eps_high=0.28)
    path = write(tmp_path, "algorithm: {preset: grpopp, loss: {objective: {type: cispo, eps_high: 4.0}}}\n")
    assert load_train_config(path).algorithm.loss.objective == CISPO(eps_low=0.2, eps_high=4.0)
    with pytest.raises(ConfigError, match="the 'cispo' variant has no field 'dual_clip' \\(ppo_clip, gspo have it\\)"):
        load_train_config(overrides=["algorithm.objective.type=cispo", "algorithm.objective.dual_clip=2"])
    with pytest.raises(ConfigError, match="the 'hf' variant has no field 'max_model_len' \\(vllm has it\\)"):
        load_train_config(overrides=["rollout.engine.max_model_len=64"])


def test_the_tiny_guess_recipe_trains_the_game_its_warm_start_taught():
    """`--config tiny-guess` loads; its model is the guess warm start and its env options are those the
    warm start's demonstrations used (a mismatch would train on another prompt format)."""
    from grpopp.recipes.tiny import TINY_GUESS_ENV

    config = resolve_train_config(config_file="tiny-guess").config
    assert config.model.name_or_path == "tiny-guess"
    (env,) = config.envs
    assert (env.name, env.config) == ("guess", TINY_GUESS_ENV)
    assert config.rollout.max_new_tokens == TINY_GUESS_ENV["max_tokens_per_turn"]
