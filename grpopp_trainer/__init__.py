"""grpopp_trainer: the GRPO++ objective and (later) the trainer that optimises it.

Usable on its own by people who write their own training loop:

    from grpopp_trainer import compute_advantages, policy_loss, get_preset

    cfg = get_preset("grpopp")
    advantages = compute_advantages(rewards, group_size=8, scale=cfg.advantage_scale)   # [B]
    out = policy_loss(logprobs, old_logprobs, advantages, mask, cfg.loss,
                      sampler_logprobs=sampler_logprobs)                                 # [B, T] inputs
    out.loss.backward()
"""

from grpopp_trainer.advantages import compute_advantages, zero_variance_groups
from grpopp_trainer.algorithms import (
    PRESETS,
    AlgorithmConfig,
    DynamicSamplingConfig,
    OverlongConfig,
    Preset,
    get_preset,
)
from grpopp_trainer.config_tools import ConfigError, apply_overrides
from grpopp_trainer.losses import LossConfig, LossOutput, policy_loss

__all__ = [
    "PRESETS",
    "AlgorithmConfig",
    "ConfigError",
    "DynamicSamplingConfig",
    "LossConfig",
    "LossOutput",
    "OverlongConfig",
    "Preset",
    "apply_overrides",
    "compute_advantages",
    "get_preset",
    "policy_loss",
    "zero_variance_groups",
]
