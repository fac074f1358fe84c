"""Algorithm configuration and the named presets (grpo, dapo, dr_grpo, gspo, cispo, grpopp, trl_dapo).

An ``AlgorithmConfig`` gathers every knob that makes one RL algorithm differ from another: the
policy loss (``LossConfig``), how advantages are scaled, DAPO's dynamic sampling and overlong
handling. Presets are complete configs, each following one paper; ``grpopp`` is the recommended
default. The module docstring of ``grpopp.objective.losses`` gives the formulas and their papers.

``trl_dapo`` is not a paper but a reference implementation: TRL's ``GRPOTrainer`` with its defaults
(``loss_type="dapo"``). Its source also fixes the optimizer (Adam betas, schedule), so a preset may
carry optimizer settings (``Preset.optim``); the training config applies them under its own
``optim`` values.

Dynamic sampling and overlong handling are read by the trainer and the reward shaping; they live
here because they are part of what an algorithm is (DAPO = loss + these two).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from grpopp.config_tools import ConfigError
from grpopp.objective.advantages import AdvantageScale
from grpopp.objective.losses import (
    CISPO,
    GSPO,
    ConstantNorm,
    LossConfig,
    PPOClip,
    SeqMeanTokenMean,
    SequenceMask,
    TokenMean,
    TokenTruncate,
)
from grpopp.rewards.shaping import LengthLimits


class DynamicSamplingConfig(BaseModel):
    """DAPO's dynamic sampling (arXiv 2503.14476, sec. 3.2; verl `filter_groups`), without its waste:
    each round generates what is expected to fill the batch, and groups with signal beyond it are
    carried to the next step instead of thrown away (``grpopp.training.dynamic_sampling``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    enabled: bool = False
    """Drop groups whose rewards are all equal (they give no gradient) and keep generating until
    the batch is full of groups with signal."""

    max_generation_rounds: int = Field(10, ge=1)
    """Give up filling the batch after this many generation rounds and train on what was kept
    (verl `max_num_gen_batches`, 10 there)."""

    oversample_factor: float = Field(1.0, ge=1.0)
    """The most prompts a round generates, as a multiple of the prompts still missing (verl's DAPO
    recipe always generates 3x). With ``adaptive`` it is only an upper bound."""

    adaptive: bool = True
    """Each round asks an environment for ceil(missing / (1 - p)) prompts, p being its running
    estimate of the zero-variance fraction, at most ``oversample_factor`` x missing: exactly what is
    missing while p = 0. False: always ``oversample_factor`` x missing (DAPO's recipe, verl)."""

    fill_probability: float = Field(0.9, ge=0.0, lt=1.0)
    """With ``adaptive``, a round asks for at least what makes it fill the batch with this probability
    (each group without signal with probability p, independently), as the groups beyond the batch are
    carried, not lost: one round then mostly suffices, and the carried groups shorten the next step's.
    0: just the expectation, ceil(missing / (1 - p))."""

    estimate_weight: float = Field(0.3, gt=0.0, le=1.0)
    """Weight of the newest round in the running estimate p (an exponential average over rounds)."""

    max_estimate: float = Field(0.9, ge=0.0, lt=1.0)
    """p is clamped to [0, max_estimate], so one round never asks for more than 1 / (1 - max_estimate)
    times what is missing (also bounded by ``oversample_factor``)."""

    max_staleness: int = Field(1, ge=0)
    """Groups with signal beyond the batch are carried to the next steps and fill their batches first,
    trained with their own pi_old and sampler log-probs; this many steps old at most (older ones are
    dropped and counted). 0: surplus groups are dropped, as DAPO's recipe does."""


class OverlongConfig(BaseModel):
    """DAPO's overlong handling (arXiv 2503.14476, sec. 3.4)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    filter_truncated: bool = False
    """Overlong filtering: mask the loss of completions cut by the length limit, so sound but
    unfinished reasoning is not punished (TRL `mask_truncated_completions`)."""

    soft_punishment: bool = False
    """Soft overlong punishment added to the reward: 0 up to max_length - cache_length, then
    linearly down to -penalty_factor at max_length, and -penalty_factor beyond."""

    max_length: int | None = Field(None, ge=1)
    """L_max of the soft punishment, in tokens. None: the rollout's maximum number of new tokens."""

    cache_length: int | None = Field(None, ge=1)
    """L_cache, the buffer before L_max where the punishment ramps up. None: a fifth of L_max,
    DAPO's ratio (4096 of 20480)."""

    penalty_factor: float = Field(1.0, ge=0.0)
    """Scale of the punishment; DAPO used 1 (verl `overlong_buffer.penalty_factor`)."""

    @model_validator(mode="after")
    def _check_lengths(self) -> OverlongConfig:
        if self.max_length is not None and self.cache_length is not None and self.cache_length > self.max_length:
            raise ValueError(
                f"cache_length={self.cache_length} is larger than max_length={self.max_length}: the buffer "
                "must fit inside the length limit; lower cache_length"
            )
        return self


class AlgorithmConfig(BaseModel):
    """Everything that defines the RL algorithm, independent of model, data and hardware."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str = "custom"
    """The preset this config came from, or "custom"."""

    loss: LossConfig = LossConfig()
    """The policy loss: objective, clipping, aggregation, KL and truncated importance sampling."""

    advantage_scale: AdvantageScale = "group"
    """Advantage normalisation: "group" (divide by the group's std, GRPO), "batch" (std of the whole
    batch) or "none" (Dr. GRPO's unbiased r - mean). true and false are read as "group" and "none",
    as TRL reads its ``scale_rewards``."""

    advantage_eps: float = Field(1e-6, ge=0.0)
    """Added to the std before dividing (scale "group" or "batch")."""

    dynamic_sampling: DynamicSamplingConfig = DynamicSamplingConfig()
    """DAPO dynamic sampling: filter zero-variance groups and refill the batch."""

    overlong: OverlongConfig = OverlongConfig()
    """DAPO overlong filtering and soft overlong punishment."""

    @field_validator("advantage_scale", mode="before")
    @classmethod
    def _scale_from_bool(cls, value: object) -> object:
        return {True: "group", False: "none"}.get(value, value) if isinstance(value, bool) else value

    def length_limits(self, max_new_tokens: int) -> LengthLimits:
        """The length parameters of reward shaping for a rollout limited to ``max_new_tokens``:
        L_max defaults to it, L_cache to a fifth of L_max (DAPO: 4096 of 20480), and the overlong
        weight is the penalty factor when the soft punishment is on, else 0."""
        overlong = self.overlong
        max_length = overlong.max_length or max_new_tokens
        cache_length = overlong.cache_length if overlong.cache_length is not None else max_length // 5
        if cache_length > max_length:
            raise ConfigError(
                f"algorithm.overlong.cache_length={cache_length} is larger than the length limit {max_length}; lower it"
            )
        factor = overlong.penalty_factor if overlong.soft_punishment else 0.0
        return LengthLimits(max_length=max_length, cache_length=cache_length, overlong_factor=factor)


@dataclass(frozen=True)
class Preset:
    """A named, complete algorithm configuration and where it comes from."""

    config: AlgorithmConfig
    summary: str
    source: str
    optim: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """``optim`` values of the training config (``config.OptimConfig`` fields) that the source also
    fixes; a config that picks the preset gets them unless its own ``optim`` section sets them."""


PRESETS: dict[str, Preset] = {
    "grpo": Preset(
        AlgorithmConfig(
            name="grpo",
            loss=LossConfig(
                objective=PPOClip(eps_low=0.2, eps_high=0.2),
                aggregation=SeqMeanTokenMean(),
                kl_coef=0.04,
                kl_estimator="k3",
            ),
            advantage_scale="group",
        ),
        summary="Vanilla GRPO: symmetric clip 0.2, per-sequence token mean, group-std advantages, k3 KL 0.04.",
        source="DeepSeekMath, arXiv 2402.03300 (sec. 4.1, eq. 3; beta = 0.04 in sec. 4.2)",
    ),
    "dapo": Preset(
        AlgorithmConfig(
            name="dapo",
            loss=LossConfig(objective=PPOClip(eps_low=0.2, eps_high=0.28), aggregation=TokenMean()),
            advantage_scale="group",
            dynamic_sampling=DynamicSamplingConfig(enabled=True, max_generation_rounds=10, oversample_factor=3.0),
            overlong=OverlongConfig(soft_punishment=True, penalty_factor=1.0),
        ),
        summary="DAPO: clip-higher 0.2/0.28, token-level loss, dynamic sampling, soft overlong punishment, no KL.",
        source="DAPO, arXiv 2503.14476 (sec. 3.1-3.4; L_cache/L_max = 4096/20480); verl DAPO recipe",
    ),
    "dr_grpo": Preset(
        AlgorithmConfig(
            name="dr_grpo",
            loss=LossConfig(objective=PPOClip(eps_low=0.2, eps_high=0.2), aggregation=ConstantNorm(norm_length=3000)),
            advantage_scale="none",
        ),
        summary="Dr. GRPO: r - mean advantages (no std), sum over tokens / (B x 3000), no KL. "
        "Set loss.aggregation.norm_length to your maximum generation length.",
        source="Dr. GRPO, arXiv 2503.20783 (sec. 3.1; Oat-Zero max length 3000, beta = 0)",
    ),
    "gspo": Preset(
        AlgorithmConfig(
            name="gspo",
            loss=LossConfig(objective=GSPO(eps_low=3e-4, eps_high=4e-4), aggregation=SeqMeanTokenMean()),
            advantage_scale="group",
        ),
        summary="GSPO: length-normalised sequence ratio (GSPO-token form) clipped to [1-3e-4, 1+4e-4], no KL.",
        source="GSPO, arXiv 2507.18071 (eq. 5-7, 13; clip ranges from sec. 5.1)",
    ),
    "cispo": Preset(
        AlgorithmConfig(
            name="cispo",
            loss=LossConfig(objective=CISPO(eps_low=1.0, eps_high=4.0), aggregation=TokenMean()),
            advantage_scale="group",
        ),
        summary="CISPO: detached clipped ratio (no lower bound, cap 5) weighs A x log pi; token mean, no KL.",
        source="MiniMax-M1, arXiv 2506.13585 (sec. 3.1, eq. 4-5); cap 5 as TRL's CISPO default",
    ),
    "grpopp": Preset(
        AlgorithmConfig(
            name="grpopp",
            loss=LossConfig(
                objective=PPOClip(eps_low=0.2, eps_high=0.28, dual_clip=3.0),
                aggregation=TokenMean(),
                tis=TokenTruncate(cap=2.0),
            ),
            advantage_scale="none",
            # With adaptive requests the factor is only a bound; 4 lets one round fill the batch while most
            # groups lack signal (late in training), as a second round costs a whole generation.
            dynamic_sampling=DynamicSamplingConfig(enabled=True, max_generation_rounds=10, oversample_factor=4.0),
            overlong=OverlongConfig(soft_punishment=True, penalty_factor=1.0),
        ),
        summary="Recommended: DAPO (clip-higher, token mean, dynamic sampling, soft overlong, no KL) "
        "+ Dr. GRPO's unbiased advantage + token TIS (cap 2) + dual clip 3.",
        source="DAPO arXiv 2503.14476; Dr. GRPO arXiv 2503.20783; TIS (Yao, Liu et al. 2025); "
        "dual clip arXiv 1912.09729 (c = 3 as verl)",
    ),
    "trl_dapo": Preset(
        AlgorithmConfig(
            name="trl_dapo",
            loss=LossConfig(
                objective=PPOClip(  # importance_sampling_level="token"
                    eps_low=0.2,  # epsilon
                    eps_high=0.2,  # epsilon_high=None: the same as epsilon
                    dual_clip=None,  # delta=None
                ),
                aggregation=TokenMean(),  # loss_type="dapo": token sum / tokens of the whole batch
                kl_coef=0.0,  # beta
                # vllm_importance_sampling_correction=True, _mode="sequence_mask", _clip_max=3.0
                tis=SequenceMask(cap=3.0),
            ),
            advantage_scale="group",  # scale_rewards="group"
            advantage_eps=1e-4,  # (r - mean) / (std + 1e-4)
            dynamic_sampling=DynamicSamplingConfig(enabled=False),  # TRL has none
            overlong=OverlongConfig(filter_truncated=False, soft_punishment=False),  # mask_truncated_completions
        ),
        summary="TRL GRPOTrainer defaults (loss_type='dapo'): clip 0.2/0.2, token mean, group-std advantages "
        "(+1e-4), no KL, sequence-mask TIS (cap 3), no dynamic sampling or overlong shaping; AdamW betas "
        "(0.9, 0.999), lr 1e-6 decayed linearly to 0.",
        source="TRL 1.16.0 trl/trainer/grpo_config.py and grpo_trainer.py (GRPOConfig defaults); "
        "transformers TrainingArguments defaults (adam_beta1/2, lr_scheduler_type='linear')",
        optim=MappingProxyType(
            {
                "lr": 1e-6,  # GRPOConfig.learning_rate
                "betas": (0.9, 0.999),  # TrainingArguments.adam_beta1, adam_beta2 (adam_epsilon 1e-8 = torch's)
                "weight_decay": 0.0,
                "max_grad_norm": 1.0,
                "warmup_steps": 0,
                "schedule": "linear",  # lr_scheduler_type="linear": from lr down to 0 at the last step
                "min_lr_ratio": 0.0,
            }
        ),
    ),
}


def get_preset(name: str) -> AlgorithmConfig:
    """Return the ``AlgorithmConfig`` of preset ``name``; an unknown name suggests the closest one."""
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown algorithm preset {name!r}.{hint} Known presets: {', '.join(PRESETS)}")
    return PRESETS[name].config
