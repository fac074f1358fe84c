"""The GRPO++ policy loss: one pure function over per-token log-probabilities.

``policy_loss`` turns the log-probabilities of sampled completions under the current policy into a
scalar to minimise. Every variant is a field of ``LossConfig``; the math of each lives in a small
function below, picked from a table (no if-chains in the trainer). Departures from vanilla GRPO
(DeepSeekMath, arXiv 2402.03300) and where each comes from:

1. Clip-higher: the token ratio is clipped to [1 - eps_low, 1 + eps_high] with eps_high > eps_low,
   so unlikely tokens can grow and entropy does not collapse (DAPO, arXiv 2503.14476, sec. 3.1).
2. Dual clip: the loss of a negative-advantage token is bounded by dual_clip * |A|, so one token
   with a huge ratio cannot dominate the batch (Ye et al. 2020, arXiv 1912.09729; verl clip_ratio_c).
3. Token-level aggregation: per-token losses summed over the whole mini-batch and divided by its
   token count, so long answers are not under-weighted (DAPO sec. 3.3). Gradient accumulation stays
   exact because the denominator (``num_items``) is that of the whole mini-batch.
4. Constant normalisation: sum over tokens / (sequences x norm_length), with no 1/|o_i| length
   bias (Dr. GRPO, arXiv 2503.20783, sec. 3.1).
5. No KL by default (DAPO sec. 2.3); when used, the k1/k2/k3 estimators of Schulman (2020),
   "Approximating KL divergence", k3 being the one GRPO uses.
6. Truncated importance sampling: each token's policy-gradient term is multiplied by the detached
   weight min(pi_old / pi_sampler, C), correcting for the gap between the sampler (vLLM) and the
   learner (Yao, Liu et al. 2025, "Your efficient RL framework secretly brings you off-policy RL
   training"); masking and sequence-level variants as TRL's ``vllm_importance_sampling_mode``.
7. GSPO (arXiv 2507.18071): the ratio is the length-normalised sequence likelihood ratio, in its
   GSPO-token form s_it = sg(s_i) * pi(o_it) / sg(pi(o_it)), clipped with tiny ranges.
8. CISPO (MiniMax-M1, arXiv 2506.13585, sec. 3.1): loss = -sg(clip(ratio)) * A * log pi; the ratio
   only weighs a token, so no token's gradient is ever dropped by clipping.

Shapes: B completions, T completion tokens (padded). logprobs, old_logprobs, sampler_logprobs,
ref_logprobs and mask are [B, T]; advantages are [B], one per completion, broadcast over tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Objective: TypeAlias = Literal["ppo_clip", "gspo", "cispo"]
Aggregation: TypeAlias = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "constant_norm"]
KLEstimator: TypeAlias = Literal["k1", "k2", "k3"]
TISMode: TypeAlias = Literal["off", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


class LossConfig(BaseModel):
    """How the policy loss is computed. Every field is documented; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    objective: Objective = "ppo_clip"
    """Policy-gradient surrogate. "ppo_clip": token ratio clipped to [1-eps_low, 1+eps_high] (PPO,
    GRPO, DAPO). "gspo": length-normalised sequence ratio in the GSPO-token form. "cispo": the
    clipped ratio, detached, weighs A * log pi; no token is dropped from the gradient."""

    eps_low: float = Field(0.2, ge=0.0)
    """Lower clip range: the ratio is bounded below by 1 - eps_low. TRL `epsilon`, verl
    `clip_ratio_low`. Values >= 1 remove the lower bound (ratios are positive)."""

    eps_high: float = Field(0.28, ge=0.0)
    """Upper clip range: the ratio is bounded above by 1 + eps_high. DAPO's clip-higher uses 0.28
    with eps_low = 0.2. TRL `epsilon_high`, verl `clip_ratio_high`."""

    dual_clip: float | None = Field(None, gt=1.0)
    """Dual-clip constant c > 1: the loss of a negative-advantage token is at most c * |A|
    (verl `clip_ratio_c`, 3 by default there). None disables it. Not used by "cispo"."""

    aggregation: Aggregation = "token_mean"
    """How per-token losses become one number. "token_mean": sum / tokens of the mini-batch (DAPO).
    "seq_mean_token_mean": mean over sequences of each sequence's token mean (original GRPO).
    "seq_mean_token_sum": mean over sequences of each sequence's token sum. "constant_norm":
    sum / (sequences x norm_length) (Dr. GRPO). Sequences with no completion token are not counted."""

    norm_length: int | None = Field(None, ge=1)
    """The constant length L of "constant_norm", usually the maximum number of generated tokens.
    Required by, and only read by, aggregation="constant_norm"."""

    kl_coef: float = Field(0.0, ge=0.0)
    """Weight beta of the per-token KL penalty to the reference policy, added to the loss. 0
    disables it, and then no reference model is needed (DAPO, Dr. GRPO). GRPO used 0.04."""

    kl_estimator: KLEstimator = "k3"
    """KL estimator with d = log pi_ref - log pi: "k1" = -d, "k2" = d^2 / 2, "k3" = exp(d) - d - 1
    (unbiased and >= 0; the one GRPO uses)."""

    tis: TISMode = "off"
    """Truncated importance sampling between the sampler's and the learner's old log-probs, with
    weight w = exp(old - sampler), detached. "token_truncate": min(w, tis_cap) per token;
    "token_mask": w, or 0 where w > tis_cap; "sequence_*": the same with the sequence weight
    exp(sum_t (old - sampler)). Needs `sampler_logprobs`. "off" when the learner also sampled.
    false (what YAML 1.1 reads `tis: off` as) means "off"."""

    tis_cap: float = Field(2.0, ge=1.0)
    """The cap C of truncated importance sampling (2 in the TIS blog post and verl)."""

    @field_validator("tis", mode="before")
    @classmethod
    def _off_from_false(cls, value: object) -> object:
        return "off" if value is False else value

    @model_validator(mode="after")
    def _check_combinations(self) -> LossConfig:
        if self.aggregation == "constant_norm" and self.norm_length is None:
            raise ValueError(
                "aggregation='constant_norm' needs norm_length: set norm_length to the maximum number "
                "of generated tokens (Dr. GRPO's constant L), or choose another aggregation"
            )
        if self.aggregation != "constant_norm" and self.norm_length is not None:
            raise ValueError(
                f"norm_length={self.norm_length} is only read by aggregation='constant_norm' but "
                f"aggregation={self.aggregation!r}: remove norm_length or set aggregation='constant_norm'"
            )
        if self.objective == "cispo" and self.dual_clip is not None:
            raise ValueError(
                "dual_clip bounds the clipped PPO surrogate and has no meaning for objective='cispo', "
                "whose clipped ratio is already a bounded weight: set dual_clip=None"
            )
        return self


@dataclass(frozen=True)
class LossOutput:
    """The loss to back-propagate and what to log about it."""

    loss: torch.Tensor
    """Scalar; already divided by ``num_items``, so micro-batch losses are summed, not averaged."""

    metrics: dict[str, float]
    """Statistics of this call (token means over its completion tokens), detached floats."""


@dataclass(frozen=True)
class _Surrogate:
    """Per-token output of an objective, before importance weights, KL and aggregation."""

    pg_loss: torch.Tensor  # [B, T] policy-gradient loss per token (0 on padding)
    ratio: torch.Tensor  # [B, T] importance ratio pi / pi_old used by the objective (detached)
    clipped_low: torch.Tensor  # [B, T] bool: lower clip active on this token
    clipped_high: torch.Tensor  # [B, T] bool: upper clip active on this token
    dual_clipped: torch.Tensor  # [B, T] bool: dual clip active on this token


def _clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, cfg: LossConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's pessimistic clipped surrogate, as a loss; shared by ppo_clip and gspo.

    ratio [B, T], advantages [B, 1]. Returns the loss [B, T] and the low/high/dual clip masks.
    """
    pg_loss1 = -advantages * ratio  # [B, T]
    pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)  # [B, T]
    pg_loss = torch.maximum(pg_loss1, pg_loss2)  # [B, T] pessimistic bound (PPO eq. 7)
    dual_clipped = torch.zeros_like(ratio, dtype=torch.bool)
    if cfg.dual_clip is not None:
        # Dual-clip PPO (arXiv 1912.09729, eq. 5): for A < 0 the loss is at most c * |A|.
        pg_loss3 = -advantages * cfg.dual_clip  # [B, 1]
        dual_clipped = (advantages < 0) & (pg_loss > pg_loss3)
        pg_loss = torch.where(advantages < 0, torch.minimum(pg_loss, pg_loss3), pg_loss)
    # Clipping is "active" where it removes the gradient: ratio past the bound in the direction
    # the advantage pushes it (TRL's low/high clip metrics).
    with torch.no_grad():
        clipped_low = (ratio < 1.0 - cfg.eps_low) & (advantages < 0)
        clipped_high = (ratio > 1.0 + cfg.eps_high) & (advantages > 0)
    return pg_loss, clipped_low, clipped_high, dual_clipped


def _ppo_clip(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
) -> _Surrogate:
    ratio = torch.exp(logprobs - old_logprobs)  # [B, T] r_t = pi / pi_old per token
    pg_loss, low, high, dual = _clipped_surrogate(ratio, advantages, cfg)
    return _Surrogate(pg_loss, ratio.detach(), low, high, dual)


def _gspo(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
) -> _Surrogate:
    lengths = mask.sum(dim=1, keepdim=True).clamp(min=1.0)  # [B, 1] |o_i|
    # GSPO eq. 7: s_i = exp((1/|o_i|) sum_t log r_it), the geometric mean of the token ratios.
    seq_log_ratio = ((logprobs - old_logprobs) * mask).sum(dim=1, keepdim=True) / lengths  # [B, 1]
    # GSPO-token (eq. 13): s_it = sg(s_i) * pi(o_it) / sg(pi(o_it)); its value is s_i for every
    # token and its gradient s_i * grad log pi(o_it), which equals GSPO's for a shared advantage.
    ratio = torch.exp(seq_log_ratio.detach() + logprobs - logprobs.detach())  # [B, T]
    pg_loss, low, high, dual = _clipped_surrogate(ratio, advantages, cfg)
    return _Surrogate(pg_loss, ratio.detach(), low, high, dual)


def _cispo(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
) -> _Surrogate:
    ratio = torch.exp(logprobs - old_logprobs).detach()  # [B, T]
    # MiniMax-M1 eq. 4: the clipped ratio is a constant weight on the REINFORCE term.
    weight = torch.clamp(ratio, 1.0 - cfg.eps_low, 1.0 + cfg.eps_high)  # [B, T], no gradient
    pg_loss = -weight * advantages * logprobs  # [B, T]
    # Here "clipped" means the weight was bounded; the token still has a gradient.
    clipped_low = ratio < 1.0 - cfg.eps_low
    clipped_high = ratio > 1.0 + cfg.eps_high
    return _Surrogate(pg_loss, ratio, clipped_low, clipped_high, torch.zeros_like(clipped_low))


_OBJECTIVES: dict[str, Callable[..., _Surrogate]] = {"ppo_clip": _ppo_clip, "gspo": _gspo, "cispo": _cispo}


def _kl_k1(log_ratio_ref: torch.Tensor) -> torch.Tensor:
    return -log_ratio_ref  # log pi - log pi_ref


def _kl_k2(log_ratio_ref: torch.Tensor) -> torch.Tensor:
    return 0.5 * log_ratio_ref.square()


def _kl_k3(log_ratio_ref: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_ratio_ref) - log_ratio_ref - 1.0  # pi_ref/pi - log(pi_ref/pi) - 1 >= 0


# Each takes d = log pi_ref - log pi, [B, T], and returns the per-token estimate, [B, T].
_KL_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"k1": _kl_k1, "k2": _kl_k2, "k3": _kl_k3}


def _importance_weights(
    old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor, cfg: LossConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """Detached TIS weights [B, T] (1 on padding) and their statistics."""
    log_weight = (old_logprobs - sampler_logprobs) * mask  # [B, T] log pi_old - log pi_sampler
    sequence_level = cfg.tis.startswith("sequence")
    if sequence_level:
        log_weight = log_weight.sum(dim=1, keepdim=True)  # [B, 1] log of the sequence weight
        counted = mask.sum(dim=1, keepdim=True) > 0  # [B, 1] sequences with a completion token
    else:
        counted = mask > 0  # [B, T]
    log_cap = math.log(cfg.tis_cap)
    over_cap = (log_weight > log_cap) & counted
    if cfg.tis.endswith("truncate"):
        weight = torch.exp(torch.clamp(log_weight, max=log_cap))
    else:  # "mask": weights above the cap become 0 (TRL's token_mask / sequence_mask)
        weight = torch.where(over_cap, torch.zeros_like(log_weight), torch.exp(torch.clamp(log_weight, max=log_cap)))
    weight = weight.expand_as(mask)  # [B, T]
    token_weights = weight[mask > 0]
    num_counted = max(int(counted.sum().item()), 1)
    gap = (old_logprobs - sampler_logprobs).abs()[mask > 0]
    kind = "truncated" if cfg.tis.endswith("truncate") else "masked"
    metrics = {
        "tis/weight_mean": _mean_or_nan(token_weights),
        "tis/weight_max": _max_or_nan(token_weights),
        f"tis/frac_{kind}": over_cap.sum().item() / num_counted,
        "tis/logprob_gap_mean": _mean_or_nan(gap),
        "tis/logprob_gap_max": _max_or_nan(gap),
    }
    return weight, metrics


def _aggregate(
    token_loss: torch.Tensor, mask: torch.Tensor, cfg: LossConfig, num_items: float | None
) -> tuple[torch.Tensor, float]:
    """Reduce a per-token loss [B, T] (0 on padding) to a scalar; also return the denominator."""
    lengths = mask.sum(dim=1)  # [B]
    if cfg.aggregation == "token_mean":
        numerator = token_loss.sum()
        local_items = float(lengths.sum().item())
    else:
        per_sequence = token_loss.sum(dim=1)  # [B]
        if cfg.aggregation == "seq_mean_token_mean":
            per_sequence = per_sequence / lengths.clamp(min=1.0)  # 1/|o_i|, original GRPO
        numerator = per_sequence.sum()
        local_items = float((lengths > 0).sum().item())
    denominator = local_items if num_items is None else float(num_items)
    if num_items is not None and denominator < local_items:
        unit = "completion tokens" if cfg.aggregation == "token_mean" else "non-empty sequences"
        raise ValueError(
            f"num_items={num_items} is smaller than the {local_items:g} {unit} in this batch; pass the "
            f"number of {unit} of the whole mini-batch (aggregation={cfg.aggregation!r})"
        )
    scale = float(cfg.norm_length) if cfg.aggregation == "constant_norm" and cfg.norm_length else 1.0
    return numerator / (max(denominator, 1.0) * scale), denominator


def _mean_or_nan(values: torch.Tensor) -> float:
    return float(values.double().mean().item()) if values.numel() else math.nan


def _max_or_nan(values: torch.Tensor) -> float:
    return float(values.double().max().item()) if values.numel() else math.nan


def _min_or_nan(values: torch.Tensor) -> float:
    return float(values.double().min().item()) if values.numel() else math.nan


def _check_inputs(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    sampler_logprobs: torch.Tensor | None,
    ref_logprobs: torch.Tensor | None,
    num_items: float | None,
) -> None:
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be [B, T], got shape {tuple(logprobs.shape)}")
    named = {"old_logprobs": old_logprobs, "mask": mask}
    if sampler_logprobs is not None:
        named["sampler_logprobs"] = sampler_logprobs
    if ref_logprobs is not None:
        named["ref_logprobs"] = ref_logprobs
    for name, tensor in named.items():
        if tensor.shape != logprobs.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)} but logprobs has {tuple(logprobs.shape)}; "
                "all per-token tensors must be [B, T] on the same padding"
            )
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(
            f"advantages must be [B] = [{logprobs.shape[0]}], one per completion, got shape {tuple(advantages.shape)}"
        )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("mask must hold only 0 and 1 (1 = completion token that counts in the loss)")
    if cfg.tis != "off" and sampler_logprobs is None:
        raise ValueError(
            f"tis={cfg.tis!r} needs sampler_logprobs (the rollout engine's per-token log-probs); pass "
            "them, or set tis='off' when the learner itself generated the rollouts"
        )
    if cfg.kl_coef > 0 and ref_logprobs is None:
        raise ValueError(
            f"kl_coef={cfg.kl_coef} needs ref_logprobs from the reference model; pass them, or set kl_coef=0"
        )
    if num_items is not None and not (num_items > 0 and math.isfinite(num_items)):
        raise ValueError(f"num_items must be a positive finite number or None, got {num_items!r}")


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: LossConfig,
    *,
    sampler_logprobs: torch.Tensor | None = None,
    ref_logprobs: torch.Tensor | None = None,
    num_items: float | None = None,
) -> LossOutput:
    """The GRPO++ loss of a (micro-)batch of completions.

    Args:
        logprobs: [B, T] log pi_theta of each completion token under the policy being trained
            (carries the gradient).
        old_logprobs: [B, T] log pi_old of the same tokens under the learner's weights at rollout
            time (equal to ``logprobs.detach()`` on the first on-policy pass). Detached.
        advantages: [B] one advantage per completion (see ``compute_advantages``).
        mask: [B, T] 1 for completion tokens that count, 0 for prompt, padding and masked tokens.
        cfg: the ``LossConfig``.
        sampler_logprobs: [B, T] log-probs reported by the rollout engine; required when cfg.tis
            is not "off".
        ref_logprobs: [B, T] reference-model log-probs; required when cfg.kl_coef > 0 (also used
            for the ``kl_mean`` metric when given).
        num_items: denominator of the whole mini-batch: its completion-token count for
            "token_mean", its number of non-empty sequences otherwise ("constant_norm" then also
            divides by norm_length). Pass it when a mini-batch is split into micro-batches for
            gradient accumulation: the summed micro-batch gradients then equal the unsplit one.
            None: computed from this batch.

    Values at masked positions are never read, so padding may hold anything (even inf or NaN).
    """
    _check_inputs(logprobs, old_logprobs, advantages, mask, cfg, sampler_logprobs, ref_logprobs, num_items)
    is_token = mask.bool()  # [B, T]
    token_mask = is_token.to(logprobs.dtype)  # [B, T]

    # 1. Clean inputs: padding is replaced by 0 so no inf * 0 = NaN can leak into sums or grads.
    logprobs = logprobs.masked_fill(~is_token, 0.0)  # [B, T]
    old_logprobs = old_logprobs.detach().masked_fill(~is_token, 0.0)  # [B, T]
    advantages = advantages.detach().to(logprobs.dtype).unsqueeze(1)  # [B, 1]

    # 2. Policy-gradient surrogate per token.
    surrogate = _OBJECTIVES[cfg.objective](logprobs, old_logprobs, advantages, token_mask, cfg)
    pg_token_loss = surrogate.pg_loss  # [B, T]
    metrics: dict[str, float] = {}

    # 3. Truncated importance sampling: a detached weight on each token's policy-gradient term.
    if cfg.tis != "off" and sampler_logprobs is not None:
        sampler = sampler_logprobs.detach().masked_fill(~is_token, 0.0)  # [B, T]
        tis_weight, tis_metrics = _importance_weights(old_logprobs, sampler, token_mask, cfg)
        pg_token_loss = pg_token_loss * tis_weight  # [B, T]
        metrics.update(tis_metrics)

    # 4. Aggregate the policy-gradient term over tokens and sequences.
    pg_loss, denominator = _aggregate(pg_token_loss * token_mask, token_mask, cfg, num_items)
    loss = pg_loss

    # 5. KL penalty to the reference policy, aggregated the same way (not importance-weighted).
    if ref_logprobs is not None:
        log_ratio_ref = ref_logprobs.detach().masked_fill(~is_token, 0.0) - logprobs  # [B, T]
        kl = _KL_ESTIMATORS[cfg.kl_estimator](log_ratio_ref) * token_mask  # [B, T]
        metrics["kl_mean"] = _mean_or_nan(kl.detach()[is_token])
        if cfg.kl_coef > 0:
            kl_loss, _ = _aggregate(kl, token_mask, cfg, num_items)
            loss = loss + cfg.kl_coef * kl_loss
            metrics["kl_loss"] = float(kl_loss.detach().item())

    # 6. Statistics of this call, over its completion tokens.
    num_tokens = int(is_token.sum().item())
    ratios = surrogate.ratio[is_token]
    metrics.update(
        {
            "loss": float(loss.detach().item()),
            "pg_loss": float(pg_loss.detach().item()),
            "clip_frac_low": surrogate.clipped_low[is_token].float().sum().item() / max(num_tokens, 1),
            "clip_frac_high": surrogate.clipped_high[is_token].float().sum().item() / max(num_tokens, 1),
            "ratio_mean": _mean_or_nan(ratios),
            "ratio_min": _min_or_nan(ratios),
            "ratio_max": _max_or_nan(ratios),
            "num_tokens": float(num_tokens),
            "num_sequences": float((token_mask.sum(dim=1) > 0).sum().item()),
            "denominator": denominator,
        }
    )
    if cfg.dual_clip is not None:
        metrics["dual_clip_frac"] = surrogate.dual_clipped[is_token].float().sum().item() / max(num_tokens, 1)
    return LossOutput(loss=loss, metrics=metrics)
