"""Presets carry the settings of the papers they name; overrides are validated and named."""

import pytest

from grpopp_trainer.algorithms import PRESETS, AlgorithmConfig, OverlongConfig, get_preset
from grpopp_trainer.config_tools import ConfigError, apply_overrides, parse_value

# Settings read from each source (see SPEC.md and the papers), written out independently of the code:
# (objective, eps_low, eps_high, aggregation, advantage scale, kl_coef, tis, dynamic sampling, soft overlong)
EXPECTED = {
    "grpo": ("ppo_clip", 0.2, 0.2, "seq_mean_token_mean", "group", 0.04, "off", False, False),  # DeepSeekMath
    "dapo": ("ppo_clip", 0.2, 0.28, "token_mean", "group", 0.0, "off", True, True),  # DAPO
    "dr_grpo": ("ppo_clip", 0.2, 0.2, "constant_norm", "none", 0.0, "off", False, False),  # Dr. GRPO
    "gspo": ("gspo", 3e-4, 4e-4, "seq_mean_token_mean", "group", 0.0, "off", False, False),  # GSPO sec. 5.1
    "cispo": ("cispo", 1.0, 4.0, "token_mean", "group", 0.0, "off", False, False),  # MiniMax-M1
    "grpopp": ("ppo_clip", 0.2, 0.28, "token_mean", "none", 0.0, "token_truncate", True, True),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_follows_its_source(name):
    cfg = get_preset(name)
    got = (
        cfg.loss.objective,
        cfg.loss.eps_low,
        cfg.loss.eps_high,
        cfg.loss.aggregation,
        cfg.advantage_scale,
        cfg.loss.kl_coef,
        cfg.loss.tis,
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
    assert get_preset("dr_grpo").loss.norm_length == 3000  # Oat-Zero's maximum generation length
    assert get_preset("dapo").dynamic_sampling.max_generation_rounds == 10  # verl max_num_gen_batches


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ConfigError, match="Did you mean 'dapo'"):
        get_preset("dpo")


def test_overrides_apply_and_revalidate():
    cfg = apply_overrides(get_preset("dapo"), ["loss.eps_high=0.3", "dynamic_sampling.enabled=false"])
    assert cfg.loss.eps_high == 0.3 and cfg.dynamic_sampling.enabled is False
    assert get_preset("dapo").loss.eps_high == 0.28  # the preset itself is untouched
    cfg = apply_overrides(get_preset("grpo"), ["loss.aggregation=constant_norm", "loss.norm_length=512"])
    assert cfg.loss.norm_length == 512


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("loss.eps_hihg=0.3", "loss has no field 'eps_hihg'. Did you mean 'loss.eps_high'"),
        ("los.eps_high=0.3", "Did you mean 'loss'"),
        ("loss.aggregation=constant_norm", "loss: aggregation='constant_norm' needs norm_length"),
        ("loss.eps_low=-1", "loss.eps_low: Input should be greater than or equal to 0"),
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
