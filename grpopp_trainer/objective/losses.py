"""The GRPO++ policy loss: one pure function over per-token log-probabilities.

``policy_loss`` turns the log-probabilities of sampled completions under the current policy into a
scalar to minimise. Each variant is a member of a config union chosen by its ``type`` key, carrying
only its own fields and its own math (as prime-rl's loss config): the objective (``PPOClip``,
``GSPO``, ``CISPO``), the aggregation (``TokenMean``, ``SeqMeanTokenMean``, ``SeqMeanTokenSum``,
``ConstantNorm``) and truncated importance sampling (``NoTIS``, ``TokenTruncate``, ``TokenMask``,
``SequenceTruncate``, ``SequenceMask``). ``policy_loss`` and the trainer call the members and never
read which one they hold; a new variant is a class here and one more member of its union (README
"Extend grpopp"). Departures from vanilla GRPO (DeepSeekMath, arXiv 2402.03300) and where each
comes from:

1. Clip-higher: the token ratio is clipped to [1 - eps_low, 1 + eps_high] with eps_high > eps_low,
   so unlikely tokens can grow and entropy does not collapse (DAPO, arXiv 2503.14476, sec. 3.1).
2. Dual clip: the loss of a negative-advantage token is bounded by dual_clip * |A|, so one token
   with a huge ratio cannot dominate the batch (Ye et al. 2020, arXiv 1912.09729; verl clip_ratio_c).
3. Token-level aggregation: per-token losses summed over the whole mini-batch and divided by its
   token count, so long answers are not under-weighted (DAPO sec. 3.3). Gradient accumulation stays
   exact because the denominator (``num_items``, counted by the aggregation's ``items``) is that of
   the whole mini-batch.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, TypeAlias

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

KLEstimator: TypeAlias = Literal["k1", "k2", "k3"]

_VARIANT = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


# -- objectives ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Surrogate:
    """Per-token output of an objective, before importance weights, KL and aggregation."""

    pg_loss: torch.Tensor  # [B, T] policy-gradient loss per token (0 on padding)
    ratio: torch.Tensor  # [B, T] importance ratio pi / pi_old used by the objective (detached)
    clipped_low: torch.Tensor  # [B, T] bool: lower clip active on this token
    clipped_high: torch.Tensor  # [B, T] bool: upper clip active on this token
    dual_clipped: torch.Tensor | None = None  # [B, T] bool: dual clip active; None without dual clip


class _ClipRange(BaseModel):
    """The clip range of the token or sequence ratio, shared by every objective."""

    model_config = _VARIANT

    type: str
    """The variant's name, its tag in the union (each member narrows it to its own literal)."""

    eps_low: float = Field(0.2, ge=0.0)
    """Lower clip range: the ratio is bounded below by 1 - eps_low. TRL `epsilon`, verl
    `clip_ratio_low`. Values >= 1 remove the lower bound (ratios are positive)."""

    eps_high: float = Field(0.28, ge=0.0)
    """Upper clip range: the ratio is bounded above by 1 + eps_high. DAPO's clip-higher uses 0.28
    with eps_low = 0.2. TRL `epsilon_high`, verl `clip_ratio_high`."""


class _PessimisticClip(_ClipRange):
    """PPO's pessimistic clipped surrogate over some ratio, with an optional dual clip."""

    dual_clip: float | None = Field(None, gt=1.0)
    """Dual-clip constant c > 1: the loss of a negative-advantage token is at most c * |A|
    (verl `clip_ratio_c`, 3 by default there). None disables it."""

    def clipped(self, ratio: torch.Tensor, advantages: torch.Tensor) -> Surrogate:
        """The clipped surrogate as a loss; ratio [B, T] (carries the gradient), advantages [B, 1]."""
        pg_loss1 = -advantages * ratio  # [B, T]
        pg_loss2 = -advantages * torch.clamp(ratio, 1.0 - self.eps_low, 1.0 + self.eps_high)  # [B, T]
        pg_loss = torch.maximum(pg_loss1, pg_loss2)  # [B, T] pessimistic bound (PPO eq. 7)
        dual_clipped = None
        if self.dual_clip is not None:
            # Dual-clip PPO (arXiv 1912.09729, eq. 5): for A < 0 the loss is at most c * |A|.
            pg_loss3 = -advantages * self.dual_clip  # [B, 1]
            dual_clipped = (advantages < 0) & (pg_loss > pg_loss3)  # [B, T]
            pg_loss = torch.where(advantages < 0, torch.minimum(pg_loss, pg_loss3), pg_loss)
        # Clipping is "active" where it removes the gradient: ratio past the bound in the direction
        # the advantage pushes it (TRL's low/high clip metrics).
        with torch.no_grad():
            clipped_low = (ratio < 1.0 - self.eps_low) & (advantages < 0)
            clipped_high = (ratio > 1.0 + self.eps_high) & (advantages > 0)
        return Surrogate(pg_loss, ratio.detach(), clipped_low, clipped_high, dual_clipped)


class PPOClip(_PessimisticClip):
    """The token ratio clipped to [1 - eps_low, 1 + eps_high] (PPO, GRPO, DAPO)."""

    type: Literal["ppo_clip"] = "ppo_clip"

    def surrogate(
        self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
    ) -> Surrogate:
        ratio = torch.exp(logprobs - old_logprobs)  # [B, T] r_t = pi / pi_old per token
        return self.clipped(ratio, advantages)


class GSPO(_PessimisticClip):
    """The length-normalised sequence ratio in the GSPO-token form, clipped (GSPO, arXiv 2507.18071)."""

    type: Literal["gspo"] = "gspo"

    def surrogate(
        self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
    ) -> Surrogate:
        lengths = mask.sum(dim=1, keepdim=True).clamp(min=1.0)  # [B, 1] |o_i|
        # GSPO eq. 7: s_i = exp((1/|o_i|) sum_t log r_it), the geometric mean of the token ratios.
        seq_log_ratio = ((logprobs - old_logprobs) * mask).sum(dim=1, keepdim=True) / lengths  # [B, 1]
        # GSPO-token (eq. 13): s_it = sg(s_i) * pi(o_it) / sg(pi(o_it)); its value is s_i for every
        # token and its gradient s_i * grad log pi(o_it), which equals GSPO's for a shared advantage.
        ratio = torch.exp(seq_log_ratio.detach() + logprobs - logprobs.detach())  # [B, T]
        return self.clipped(ratio, advantages)


class CISPO(_ClipRange):
    """The clipped ratio, detached, weighs A * log pi; no token is dropped from the gradient
    (MiniMax-M1, arXiv 2506.13585, sec. 3.1). It has no dual clip: its weight is already bounded."""

    type: Literal["cispo"] = "cispo"

    def surrogate(
        self, logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor
    ) -> Surrogate:
        ratio = torch.exp(logprobs - old_logprobs).detach()  # [B, T]
        # MiniMax-M1 eq. 4: the clipped ratio is a constant weight on the REINFORCE term.
        weight = torch.clamp(ratio, 1.0 - self.eps_low, 1.0 + self.eps_high)  # [B, T], no gradient
        pg_loss = -weight * advantages * logprobs  # [B, T]
        # Here "clipped" means the weight was bounded; the token still has a gradient.
        return Surrogate(pg_loss, ratio, ratio < 1.0 - self.eps_low, ratio > 1.0 + self.eps_high)


Objective: TypeAlias = Annotated[PPOClip | GSPO | CISPO, Field(discriminator="type")]


# -- aggregations --------------------------------------------------------------------------------


class _Aggregation(BaseModel):
    """How per-token losses become one number: a sum over the batch's items divided by their count
    (``items``), the count being that of the whole mini-batch under gradient accumulation."""

    model_config = _VARIANT

    type: str
    """The variant's name, its tag in the union (each member narrows it to its own literal)."""

    unit: ClassVar[str] = "non-empty sequences"
    """What ``items`` counts, for messages."""

    def items(self, lengths: torch.Tensor) -> float:
        """The normaliser ``num_items`` of sequences with ``lengths`` [B] completion tokens each:
        here the number of non-empty sequences."""
        return float((lengths > 0).sum().item())

    def total(self, token_loss: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Sum over items of a per-token loss [B, T] (0 on padding); lengths [B]. Here the sum of
        each sequence's token sum."""
        return token_loss.sum()

    def scale(self) -> float:
        """A constant the normaliser is multiplied by (Dr. GRPO's L); 1 for the others."""
        return 1.0


class TokenMean(_Aggregation):
    """Sum over every token of the mini-batch / its number of tokens (DAPO)."""

    type: Literal["token_mean"] = "token_mean"
    unit: ClassVar[str] = "completion tokens"

    def items(self, lengths: torch.Tensor) -> float:
        return float(lengths.sum().item())


class SeqMeanTokenMean(_Aggregation):
    """Mean over sequences of each sequence's token mean (original GRPO; its 1/|o_i| is the length
    bias Dr. GRPO removes)."""

    type: Literal["seq_mean_token_mean"] = "seq_mean_token_mean"

    def total(self, token_loss: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return (token_loss.sum(dim=1) / lengths.clamp(min=1.0)).sum()  # sum over b of 1/|o_b| sum_t


class SeqMeanTokenSum(_Aggregation):
    """Mean over sequences of each sequence's token sum."""

    type: Literal["seq_mean_token_sum"] = "seq_mean_token_sum"


class ConstantNorm(_Aggregation):
    """Sum over tokens / (sequences x norm_length), with no length bias (Dr. GRPO, sec. 3.1)."""

    type: Literal["constant_norm"] = "constant_norm"

    norm_length: int = Field(ge=1)
    """The constant length L, usually the maximum number of generated tokens (Oat-Zero: 3000)."""

    def scale(self) -> float:
        return float(self.norm_length)


Aggregation: TypeAlias = Annotated[
    TokenMean | SeqMeanTokenMean | SeqMeanTokenSum | ConstantNorm, Field(discriminator="type")
]


# -- truncated importance sampling ---------------------------------------------------------------


class NoTIS(BaseModel):
    """No importance weights: the learner's old log-probs are the sampler's (it sampled itself)."""

    model_config = _VARIANT

    type: Literal["off"] = "off"
    uses_sampler: ClassVar[bool] = False
    """Whether the weights read the rollout engine's log-probs (``sampler_logprobs``)."""

    def weights(
        self, old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        return None, {}


class _Truncated(BaseModel):
    """Truncated importance sampling with weight w = exp(old - sampler), detached, capped at ``cap``:
    per token or for the whole sequence (exp of the summed log gap), truncated to the cap or masked
    (0) above it (TRL's ``vllm_importance_sampling_mode``)."""

    model_config = _VARIANT

    type: str
    """The variant's name, its tag in the union (each member narrows it to its own literal)."""

    cap: float = Field(2.0, ge=1.0)
    """The cap C (2 in the TIS blog post and verl; TRL's default is 3)."""

    uses_sampler: ClassVar[bool] = True
    sequence_level: ClassVar[bool] = False
    """One weight per sequence, exp(sum_t (old - sampler)), instead of one per token."""
    masks: ClassVar[bool] = False
    """Weights above the cap become 0 instead of the cap."""

    def weights(
        self, old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Detached weights [B, T] (1 on padding) and their statistics."""
        log_weight = (old_logprobs - sampler_logprobs) * mask  # [B, T] log pi_old - log pi_sampler
        if self.sequence_level:
            log_weight = log_weight.sum(dim=1, keepdim=True)  # [B, 1] log of the sequence weight
            counted = mask.sum(dim=1, keepdim=True) > 0  # [B, 1] sequences with a completion token
        else:
            counted = mask > 0  # [B, T]
        log_cap = math.log(self.cap)
        over_cap = (log_weight > log_cap) & counted
        weight = torch.exp(torch.clamp(log_weight, max=log_cap))
        if self.masks:  # weights above the cap become 0 (TRL's token_mask / sequence_mask)
            weight = torch.where(over_cap, torch.zeros_like(log_weight), weight)
        weight = weight.expand_as(mask)  # [B, T]
        token_weights = weight[mask > 0]
        gap = (old_logprobs - sampler_logprobs).abs()[mask > 0]
        metrics = {
            "tis/weight_mean": _mean_or_nan(token_weights),
            "tis/weight_max": _max_or_nan(token_weights),
            f"tis/frac_{'masked' if self.masks else 'truncated'}": over_cap.sum().item()
            / max(int(counted.sum().item()), 1),
            "tis/logprob_gap_mean": _mean_or_nan(gap),
            "tis/logprob_gap_max": _max_or_nan(gap),
        }
        return weight, metrics


class TokenTruncate(_Truncated):
    """min(w_t, cap) per token (the TIS blog post; verl)."""

    type: Literal["token_truncate"] = "token_truncate"


class TokenMask(_Truncated):
    """w_t per token, or 0 where w_t > cap."""

    type: Literal["token_mask"] = "token_mask"
    masks: ClassVar[bool] = True


class SequenceTruncate(_Truncated):
    """min(w, cap) with the sequence weight w = exp(sum_t (old - sampler))."""

    type: Literal["sequence_truncate"] = "sequence_truncate"
    sequence_level: ClassVar[bool] = True


class SequenceMask(_Truncated):
    """The sequence weight, or 0 where it exceeds the cap (TRL's default mode)."""

    type: Literal["sequence_mask"] = "sequence_mask"
    sequence_level: ClassVar[bool] = True
    masks: ClassVar[bool] = True


TIS: TypeAlias = Annotated[
    NoTIS | TokenTruncate | TokenMask | SequenceTruncate | SequenceMask, Field(discriminator="type")
]


# -- the config ----------------------------------------------------------------------------------

FLAT_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "objective": "objective.type",
        "eps_low": "objective.eps_low",
        "eps_high": "objective.eps_high",
        "dual_clip": "objective.dual_clip",
        "aggregation": "aggregation.type",
        "norm_length": "aggregation.norm_length",
        "tis": "tis.type",
        "tis_cap": "tis.cap",
    }
)
"""The loss config's flat keys from before its variants were unions (``objective: gspo``,
``eps_high: 0.28``, ``tis_cap: 3``) -> their key now. Config files in that form load
(``LossConfig`` folds them), and the short ``--set`` names use them too (``grpopp.training.config``)."""


class LossConfig(BaseModel):
    """How the policy loss is computed. Every field is documented; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    objective: Objective = PPOClip()
    """Policy-gradient surrogate, by ``type``: "ppo_clip" (PPO, GRPO, DAPO), "gspo" (sequence ratio)
    or "cispo" (clipped ratio as a detached weight), each with its clip range."""

    aggregation: Aggregation = TokenMean()
    """How per-token losses become one number, by ``type``: "token_mean" (DAPO),
    "seq_mean_token_mean" (original GRPO), "seq_mean_token_sum", or "constant_norm" with its
    ``norm_length`` (Dr. GRPO). Sequences with no completion token are not counted."""

    kl_coef: float = Field(0.0, ge=0.0)
    """Weight beta of the per-token KL penalty to the reference policy, added to the loss. 0
    disables it, and then no reference model is needed (DAPO, Dr. GRPO). GRPO used 0.04."""

    kl_estimator: KLEstimator = "k3"
    """KL estimator with d = log pi_ref - log pi: "k1" = -d, "k2" = d^2 / 2, "k3" = exp(d) - d - 1
    (unbiased and >= 0; the one GRPO uses)."""

    tis: TIS = NoTIS()
    """Truncated importance sampling between the sampler's and the learner's old log-probs, by
    ``type``: "off" (the learner also sampled), "token_truncate", "token_mask", "sequence_truncate"
    or "sequence_mask", each with its ``cap``. Needs ``sampler_logprobs``."""

    @model_validator(mode="before")
    @classmethod
    def _fold_flat_keys(cls, data: Any) -> Any:
        return fold_flat_keys(data) if isinstance(data, dict) else data


def fold_flat_keys(data: dict[str, Any], complete: bool = True) -> dict[str, Any]:
    """A loss config's data with its ``FLAT_KEYS`` moved into their union members: ``{"objective":
    "gspo", "eps_high": 4e-4}`` -> ``{"objective": {"type": "gspo", "eps_high": 4e-4}}``. A null
    ``dual_clip`` or ``norm_length`` meant unset and is dropped, as is ``tis_cap`` when TIS is off
    (it was never read then). ``complete``: a member given without its type gets the default's (the
    data is a whole config); False leaves it out (the data goes over a preset's values)."""
    data = dict(data)
    moved: dict[str, dict[str, Any]] = {}
    for key, new_key in FLAT_KEYS.items():
        field, member_key = new_key.split(".")
        value = data.get(key)
        if key not in data or (key == field and not isinstance(value, (str, bool))):
            continue  # absent, or already a member: {"type": ..., ...} or a model
        del data[key]
        if value is not None:
            moved.setdefault(field, {})[member_key] = value
    for field, values in moved.items():
        current = data.get(field)
        member = current.model_dump() if isinstance(current, BaseModel) else dict(current or {})
        member.update(values)
        if complete:
            member.setdefault("type", LossConfig.model_fields[field].default.type)
        if field == "tis" and member.get("type") in ("off", False):
            member.pop("cap", None)
        data[field] = member
    tis = data.get("tis")
    if isinstance(tis, dict) and tis.get("type") is False:
        data["tis"] = {**tis, "type": "off"}  # YAML 1.1 reads `off` as false
    return data


@dataclass(frozen=True)
class LossOutput:
    """The loss to back-propagate and what to log about it."""

    loss: torch.Tensor
    """Scalar; already divided by ``num_items``, so micro-batch losses are summed, not averaged."""

    metrics: dict[str, float]
    """Statistics of this call (token means over its completion tokens), detached floats."""


# -- the loss ------------------------------------------------------------------------------------


def _kl_k1(log_ratio_ref: torch.Tensor) -> torch.Tensor:
    return -log_ratio_ref  # log pi - log pi_ref


def _kl_k2(log_ratio_ref: torch.Tensor) -> torch.Tensor:
    return 0.5 * log_ratio_ref.square()


def _kl_k3(log_ratio_ref: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_ratio_ref) - log_ratio_ref - 1.0  # pi_ref/pi - log(pi_ref/pi) - 1 >= 0


# Each takes d = log pi_ref - log pi, [B, T], and returns the per-token estimate, [B, T].
_KL_ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"k1": _kl_k1, "k2": _kl_k2, "k3": _kl_k3}


def _aggregate(
    token_loss: torch.Tensor, mask: torch.Tensor, aggregation: Aggregation, num_items: float | None
) -> tuple[torch.Tensor, float]:
    """Reduce a per-token loss [B, T] (0 on padding) to a scalar; also return the denominator."""
    lengths = mask.sum(dim=1)  # [B]
    local_items = aggregation.items(lengths)
    denominator = local_items if num_items is None else float(num_items)
    if num_items is not None and denominator < local_items:
        unit = aggregation.unit
        raise ValueError(
            f"num_items={num_items} is smaller than the {local_items:g} {unit} in this batch; pass the "
            f"number of {unit} of the whole mini-batch (aggregation={aggregation.type!r})"
        )
    return aggregation.total(token_loss, lengths) / (max(denominator, 1.0) * aggregation.scale()), denominator


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
    if cfg.tis.uses_sampler and sampler_logprobs is None:
        raise ValueError(
            f"tis.type={cfg.tis.type!r} needs sampler_logprobs (the rollout engine's per-token log-probs); "
            "pass them, or set tis.type='off' when the learner itself generated the rollouts"
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
        num_items: denominator of the whole mini-batch, ``cfg.aggregation.items(lengths)`` over its
            completion lengths: its completion-token count for "token_mean", its number of non-empty
            sequences otherwise ("constant_norm" then also divides by norm_length). Pass it when a
            mini-batch is split into micro-batches for gradient accumulation: the summed micro-batch
            gradients then equal the unsplit one. None: computed from this batch.

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
    surrogate = cfg.objective.surrogate(logprobs, old_logprobs, advantages, token_mask)
    pg_token_loss = surrogate.pg_loss  # [B, T]
    metrics: dict[str, float] = {}

    # 3. Truncated importance sampling: a detached weight on each token's policy-gradient term.
    if sampler_logprobs is not None:
        sampler = sampler_logprobs.detach().masked_fill(~is_token, 0.0)  # [B, T]
        tis_weight, tis_metrics = cfg.tis.weights(old_logprobs, sampler, token_mask)
        if tis_weight is not None:
            pg_token_loss = pg_token_loss * tis_weight  # [B, T]
        metrics.update(tis_metrics)

    # 4. Aggregate the policy-gradient term over tokens and sequences.
    pg_loss, denominator = _aggregate(pg_token_loss * token_mask, token_mask, cfg.aggregation, num_items)
    loss = pg_loss

    # 5. KL penalty to the reference policy, aggregated the same way (not importance-weighted).
    if ref_logprobs is not None:
        log_ratio_ref = ref_logprobs.detach().masked_fill(~is_token, 0.0) - logprobs  # [B, T]
        kl = _KL_ESTIMATORS[cfg.kl_estimator](log_ratio_ref) * token_mask  # [B, T]
        metrics["kl_mean"] = _mean_or_nan(kl.detach()[is_token])
        if cfg.kl_coef > 0:
            kl_loss, _ = _aggregate(kl, token_mask, cfg.aggregation, num_items)
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
    if surrogate.dual_clipped is not None:
        metrics["dual_clip_frac"] = surrogate.dual_clipped[is_token].float().sum().item() / max(num_tokens, 1)
    return LossOutput(loss=loss, metrics=metrics)
