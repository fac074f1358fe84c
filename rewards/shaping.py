"""Reward shaping: format reward, DAPO's soft overlong punishment, a length penalty, and their
weighted composition with correctness into a ``Reward``.

Each environment declares its shaping in a ``RewardConfig``; ``compose_reward`` is the single
function that turns a ``VerifyResult`` and the completion into a reward, called identically by the
trainer and by evaluation. A component that raises makes the reward invalid (status "error", the
exception recorded), never a silent 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field

from rewards.extract import boxed_contents
from rewards.types import Reward, RewardComponent, VerifyResult


class FormatRules(BaseModel):
    """What the format reward checks. The value is 1 when every enabled rule holds, else 0."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    think: bool = False
    """Require one ``<think>...</think>`` block at the start, followed by a non-empty answer."""

    boxed: bool = False
    """Require a ``\\boxed{...}`` answer (after the thinking block when ``think`` is on)."""

    answer_line: bool = False
    """Require an "Answer: ..." line (after the thinking block when ``think`` is on)."""


class RewardConfig(BaseModel):
    """The reward of one environment: weights of its components and their parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    correctness: float = 1.0
    """Weight of the verifier's score (1 correct, 0 wrong, or a fraction for partial credit)."""

    format: float = Field(0.0, ge=0.0)
    """Weight of the format reward (value 0 or 1, see ``format_rules``)."""

    format_rules: FormatRules = FormatRules()
    """The rules the format reward checks."""

    overlong: float | None = Field(None, ge=0.0)
    """Weight of DAPO's soft overlong punishment (value in [-1, 0]): its penalty factor. None: the
    algorithm's (``algorithm.overlong.penalty_factor`` when its soft punishment is on, else 0)."""

    length: float = Field(0.0, ge=0.0)
    """Weight of a linear length penalty, value -min(tokens / max_length, 1); 0 disables it."""


class LengthLimits(BaseModel):
    """Length parameters resolved once per run from the rollout and algorithm configs."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_length: int = Field(ge=1)
    """L_max: the maximum number of generated tokens (DAPO's hard limit)."""

    cache_length: int = Field(ge=0)
    """L_cache: the buffer before L_max in which the soft punishment ramps from 0 to -1."""

    overlong_factor: float = Field(0.0, ge=0.0)
    """The overlong weight used by environments whose ``RewardConfig.overlong`` is None."""


def soft_overlong_punishment(length: int, max_length: int, cache_length: int) -> float:
    """DAPO eq. 13 (arXiv 2503.14476, sec. 3.4): 0 up to L_max - L_cache, then a linear ramp to -1
    at L_max, and -1 beyond.

        R = 0                                  if |y| <= L_max - L_cache
        R = ((L_max - L_cache) - |y|) / L_cache if L_max - L_cache < |y| <= L_max
        R = -1                                 if |y| > L_max
    """
    if length < 0 or max_length < 1 or not 0 <= cache_length <= max_length:
        raise ValueError(
            f"need length >= 0, max_length >= 1 and 0 <= cache_length <= max_length; got length={length}, "
            f"max_length={max_length}, cache_length={cache_length}"
        )
    start = max_length - cache_length
    if length <= start:
        return 0.0
    if length <= max_length:
        return (start - length) / cache_length
    return -1.0


def length_penalty(length: int, max_length: int) -> float:
    """-min(length / max_length, 1): a linear pressure towards short answers, in [-1, 0]."""
    return -min(length / max_length, 1.0)


_THINK_THEN_ANSWER = re.compile(r"^\s*<think>(.+?)</think>(.*)$", re.DOTALL)
_ANSWER_LINE = re.compile(r"^\s*(?:final\s+)?answer\s*:", re.IGNORECASE | re.MULTILINE)


def format_reward(completion: str, rules: FormatRules) -> float:
    """1.0 when the completion follows every enabled rule, else 0.0 (1.0 when no rule is on)."""
    answer_part = completion
    if rules.think:
        match = _THINK_THEN_ANSWER.match(completion)
        if match is None or "<think>" in match.group(2) or not match.group(2).strip():
            return 0.0
        answer_part = match.group(2)
    if rules.boxed and not boxed_contents(answer_part):
        return 0.0
    if rules.answer_line and not _ANSWER_LINE.search(answer_part):
        return 0.0
    return 1.0


def compose_reward(
    verification: VerifyResult,
    completion: str,
    num_tokens: int,
    config: RewardConfig,
    limits: LengthLimits,
) -> Reward:
    """Combine the verifier's verdict and the shaping components into one ``Reward``.

    ``num_tokens`` is the completion's length in tokens (what the length terms measure). When the
    verifier could not judge, the reward is invalid (the sample will be masked) but its shaping
    components are still computed for the logs.
    """
    overlong_weight = limits.overlong_factor if config.overlong is None else config.overlong
    terms: dict[str, tuple[float, Callable[[], float]]] = {
        "correctness": (config.correctness, lambda: verification.score),
        "format": (config.format, lambda: format_reward(completion, config.format_rules)),
        "overlong": (
            overlong_weight,
            lambda: soft_overlong_punishment(num_tokens, limits.max_length, limits.cache_length),
        ),
        "length": (config.length, lambda: length_penalty(num_tokens, limits.max_length)),
    }
    components: dict[str, RewardComponent] = {}
    errors: list[str] = []
    for name, (weight, compute) in terms.items():
        try:
            components[name] = RewardComponent(value=float(compute()), weight=weight)
        except Exception as exc:  # a broken component invalidates the sample; it is not a 0
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
    status = "error" if errors else verification.status
    valid = verification.judged and not errors
    total = sum(c.weighted for c in components.values()) if valid else 0.0
    return Reward(
        total=total,
        components=components,
        status=status,
        valid=valid,
        errors=errors,
        verification=verification,
    )
