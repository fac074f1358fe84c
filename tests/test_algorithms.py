"""Presets carry the settings of the papers they name; overrides are validated and named."""

import pytest

from grpopp.config_tools import ConfigError, apply_overrides, parse_value
from grpopp.objective.algorithms import PRESETS, AlgorithmConfig, OverlongConfig, get_preset

# Settings read from each source (the papers and TRL's source), written out independently of the code:
# (objective, eps_low, eps_high, aggregation, advantage scale, kl_coef, tis, dynamic sampling, soft overlong)
EXPECTED = {
    "grpo": ("ppo_clip", 0.2, 0.2, "seq_mean_token_mean", "group", 0.04, "off", False, False),  # DeepSeekMath
    "dapo": ("ppo_clip", 0.2, 0.28, "token_mean", "group", 0.0, "off", True, True),  # DAPO
    "dr_grpo": ("ppo_clip", 0.2, 0.2, "constant_norm", "none", 0.0, "off", False, False),  # Dr. GRPO
    "gspo": ("gspo", 3e-4, 4e-4, "seq_mean_token_mean", "group", 0.0, "off", False, False),  # GSPO sec. 5.1
    "cispo": ("cispo", 1.0, 4.0, "token_mean", "group", 0.0, "off", False, False),  # MiniMax-M1
    "grpopp": ("ppo_clip", 0.2, 0.28, "token_mean", "none", 0.0, "token_truncate", True, True),
    "trl_dapo": ("ppo_clip", 0.2, 0.2, "token_mean", "group", 0.0, "sequence_mask", False, False),  # TRL 1.16.0
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_follows_its_source(name):
    cfg = get_preset(name)
    got = (
        cfg.loss.objective.type,
        cfg.loss.objective.eps_low,
        cfg.loss.objective.eps_high,
        cfg.loss.aggregation.type,
        cfg.advantage_scale,
        cfg.loss.kl_coef,
        cfg.loss.tis.type,
        cfg.dynamic_sampling.enabled,
        cfg.overlong.soft_punishment,
    )
    assert got == EXPECTED[name]
    assert cfg.name == name
    assert PRESETS[name].source and PRESETS[name].summary


def test_every_preset_is_listed_and_round_trips():
    assert set(PRESETS) == set(EXPECTED)
    for preset in PRESETS.values():
        assert AlgorithmConfig.model_validate_json(preset.config.model_dump_json()) == preset.config


def test_grpo_uses_k3_and_dr_grpo_a_constant_length():
    assert get_preset("grpo").loss.kl_estimator == "k3"
    assert get_preset("dr_grpo").loss.aggregation.norm_length == 3000  # Oat-Zero's maximum generation length
    assert get_preset("dapo").dynamic_sampling.max_generation_rounds == 10  # verl max_num_gen_batches


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'dapo'"):
        get_preset("dpo")


def test_overrides_apply_and_revalidate():
    cfg = apply_overrides(get_preset("dapo"), ["loss.objective.eps_high=0.3", "dynamic_sampling.enabled=false"])
    assert cfg.loss.objective.eps_high == 0.3 and cfg.dynamic_sampling.enabled is False
    assert get_preset("dapo").loss.objective.eps_high == 0.28  # the preset itself is untouched
    cfg = apply_overrides(
        get_preset("grpo"), ["loss.aggregation.type=constant_norm", "loss.aggregation.norm_length=512"]
    )
    assert cfg.loss.aggregation.norm_length == 512


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("loss.eps_hihg=0.3", "loss has no field 'eps_hihg'"),
        ("loss.objective.eps_hihg=0.3", "Did you mean loss.objective.eps_high"),
        ("los.objective=ppo_clip", "Did you mean 'loss'"),
        ("loss.aggregation.type=constant_norm", "loss.aggregation.norm_length is required"),
        ("loss.objective.eps_low=-1", "loss.objective.eps_low: Input should be greater than or equal to 0"),
        ("advantage_scale.x=1", "'advantage_scale' has no sub-keys"),
        ("loss.eps_high", "is not KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key(assignment, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(get_preset("dapo"), [assignment])


def test_overlong_buffer_must_fit():
    with pytest.raises(ValueError, match="lower cache_length"):
        OverlongConfig(max_length=100, cache_length=200)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.28", 0.28), ("3", 3), ("true", True), ("none", None), ("null", None), ("k3", "k3")],
)
def test_parse_value(text, value):
    assert parse_value(text) == value


# TRL 1.16.0's GRPOConfig defaults, read from its source (pip download --no-binary :all: trl==1.16.0;
# trl/trainer/grpo_config.py and grpo_trainer.py, line numbers of that release), each with the
# grpopp field that carries it. TRL is no dependency here, so the values are written out.
TRL_1_16_0_DEFAULTS = {
    "loss.objective.type": "ppo_clip",  # importance_sampling_level="token" (grpo_config.py:760)
    "loss.objective.eps_low": 0.2,  # epsilon=0.2 (grpo_config.py:693)
    "loss.objective.eps_high": 0.2,  # epsilon_high=None -> epsilon (grpo_config.py:705; grpo_trainer.py:946)
    "loss.objective.dual_clip": None,  # delta=None (grpo_config.py:697)
    "loss.aggregation.type": "token_mean",  # loss_type="dapo": sum / tokens of the batch (grpo_config.py:801)
    "loss.kl_coef": 0.0,  # beta=0.0 (grpo_config.py:681)
    "loss.tis.type": "sequence_mask",  # vllm_importance_sampling_correction=True, _mode="sequence_mask" (:925, :934)
    "loss.tis.cap": 3.0,  # vllm_importance_sampling_clip_max=3.0 (grpo_config.py:947)
    "advantage_scale": "group",  # scale_rewards="group" (grpo_config.py:789)
    "advantage_eps": 1e-4,  # advantages / (std_rewards + 1e-4) (grpo_trainer.py:2787)
    "dynamic_sampling.enabled": False,  # TRL has no dynamic sampling
    "overlong.filter_truncated": False,  # mask_truncated_completions=False (grpo_config.py:836)
    "overlong.soft_punishment": False,  # TRL's overlong punishment is an opt-in reward function
}


def _field(config, dotted):
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


@pytest.mark.parametrize("key", list(TRL_1_16_0_DEFAULTS))
def test_trl_dapo_is_trl_grpo_config_defaults(key):
    assert _field(get_preset("trl_dapo"), key) == TRL_1_16_0_DEFAULTS[key]


def test_trl_dapo_optimizer_is_transformers_training_arguments():
    """The optimizer half of TRL's defaults comes from transformers' TrainingArguments (installed here),
    except the learning rate, which GRPOConfig sets to 1e-6 (grpo_config.py:423)."""
    import dataclasses

    from transformers import TrainingArguments

    hf = {field.name: field.default for field in dataclasses.fields(TrainingArguments)}
    optim = PRESETS["trl_dapo"].optim
    assert optim["betas"] == (hf["adam_beta1"], hf["adam_beta2"]) == (0.9, 0.999)
    assert optim["weight_decay"] == hf["weight_decay"]
    assert optim["max_grad_norm"] == hf["max_grad_norm"]
    assert optim["warmup_steps"] == hf["warmup_steps"] == 0
    assert optim["schedule"] == str(hf["lr_scheduler_type"]).removeprefix("SchedulerType.").lower() == "linear"
    assert optim["min_lr_ratio"] == 0.0  # transformers' linear schedule ends at 0
    assert optim["lr"] == 1e-6
    assert set(optim) <= {"lr", "betas", "weight_decay", "max_grad_norm", "warmup_steps", "schedule", "min_lr_ratio"}
    assert all(not preset.optim for name, preset in PRESETS.items() if name != "trl_dapo")  # papers fix no optimizer


def test_trl_dapo_optimizer_and_schedule_match_transformers_step_by_step():
    """grpopp's AdamW and schedule under trl_dapo's optim against transformers' own linear scheduler:
    the same betas and epsilon (TrainingArguments.adam_epsilon), the same lr at every optimizer step."""
    import dataclasses

    import torch
    from transformers import TrainingArguments, get_scheduler

    from grpopp.learner.optim import OptimConfig
    from grpopp.learner.policy import Policy

    hf = {field.name: field.default for field in dataclasses.fields(TrainingArguments)}
    total = 7
    policy = Policy(torch.nn.Linear(2, 2), None, OptimConfig(**PRESETS["trl_dapo"].optim), total, torch.device("cpu"))
    group = policy.optimizer.param_groups[0]
    assert group["betas"] == (hf["adam_beta1"], hf["adam_beta2"])
    assert group["eps"] == hf["adam_epsilon"] == 1e-8
    assert group["weight_decay"] == hf["weight_decay"]
    reference = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-6)
    scheduler = get_scheduler("linear", reference, num_warmup_steps=0, num_training_steps=total)
    for step in range(total):
        policy.set_schedule_position(step)
        assert policy.lr == pytest.approx(scheduler.get_last_lr()[0], rel=1e-12), step
        reference.step()
        scheduler.step()
    # by hand: lr x (7 - step) / 7, e.g. 1e-6 x 4/7 at step 3
    policy.set_schedule_position(3)
    assert policy.lr == pytest.approx(1e-6 * 4 / 7, rel=1e-12)


@pytest.mark.parametrize(("given", "read"), [(False, "none"), (True, "group"), ("batch", "batch")])
def test_advantage_scale_reads_booleans_as_trl_scale_rewards(given, read):
    assert AlgorithmConfig(advantage_scale=given).advantage_scale == read
