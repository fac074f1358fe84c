"""Reward shaping: format reward, DAPO's soft overlong punishment, a length penalty, and their
weighted composition with correctness into a ``Reward``.

Each environment declares its shaping in a ``RewardConfig``; ``compose_reward`` is the single
function that turns a ``VerifyResult`` and the completion into a reward, called identically by the
trainer and by evaluation. A component that raises, or whose value or weighted total is not a
finite number (NaN, inf), makes the reward invalid (status "error", the reason recorded): the sample
is masked, never a silent 0 and never a NaN in the advantages. ``finite_or_error`` applies the same
rule to a ``Reward`` built elsewhere (an environment that overrides ``score_batch``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from grpopp.rewards.extract import boxed_contents
from grpopp.rewards.types import Reward, RewardComponent, VerifyResult


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

    correctness: float = Field(1.0, allow_inf_nan=False)
    """Weight of the verifier's score (1 correct, 0 wrong, or a fraction for partial credit). Every
    weight must be a finite number: NaN or inf would make every reward NaN or inf."""

    format: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    """Weight of the format reward (value 0 or 1, see ``format_rules``)."""

    format_rules: FormatRules = FormatRules()
    """The rules the format reward checks."""

    length: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    """Weight of a linear length penalty, value -min(tokens / max_length, 1); 0 disables it."""

    @model_validator(mode="before")
    @classmethod
    def _overlong_is_the_algorithms(cls, data: object) -> object:
        if isinstance(data, dict) and "overlong" in data:
            raise ValueError(
                f"overlong={data['overlong']!r}: the weight of the soft overlong punishment is set in one place, for "
                "every environment: algorithm.overlong (soft_punishment: true, penalty_factor: <weight>); remove "
                "overlong from this environment's reward"
            )
        return data

    @field_validator("correctness", "format", "length", mode="before")
    @classmethod
    def _finite_weight(cls, value: object) -> object:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
            raise ValueError(
                f"a reward weight must be a finite number, got {value}: a NaN or infinite weight makes every "
                "reward NaN or infinite; give a number such as 1.0, or 0 to turn the component off"
            )
        return value

    @model_validator(mode="after")
    def _format_needs_a_rule(self) -> RewardConfig:
        rules = self.format_rules
        if self.format > 0 and not (rules.think or rules.boxed or rules.answer_line):
            raise ValueError(
                f"format={self.format:g} with no format rule rewards any text (the format value is 1 when every "
                "enabled rule holds, and none is enabled): turn a rule on, e.g. format_rules: {answer_line: true} "
                "(or think, boxed), or set format: 0"
            )
        return self


class LengthLimits(BaseModel):
    """Length parameters resolved once per run from the rollout and algorithm configs."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    max_length: int = Field(ge=1)
    """L_max: the maximum number of generated tokens (DAPO's hard limit)."""

    cache_length: int = Field(ge=0)
    """L_cache: the buffer before L_max in which the soft punishment ramps from 0 to -1."""

    overlong_factor: float = Field(0.0, ge=0.0, allow_inf_nan=False)
    """Weight of the soft overlong punishment, the same for every environment: the algorithm's
    ``overlong.penalty_factor`` when its soft punishment is on, else 0 (``AlgorithmConfig.length_limits``)."""


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
    components are still computed for the logs. A verdict that breaks ``VerifyResult``'s own rules
    (one built without validation, e.g. a NaN score) counts as the verifier's error.
    """
    verification, problem = _checked_verdict(verification)
    terms: dict[str, tuple[float, Callable[[], float]]] = {
        "correctness": (config.correctness, lambda: verification.score),
        "format": (config.format, lambda: format_reward(completion, config.format_rules)),
        "overlong": (
            limits.overlong_factor,
            lambda: soft_overlong_punishment(num_tokens, limits.max_length, limits.cache_length),
        ),
        "length": (config.length, lambda: length_penalty(num_tokens, limits.max_length)),
    }
    components: dict[str, RewardComponent] = {}
    errors: list[str] = [problem] if problem else []
    for name, (weight, compute) in terms.items():
        try:
            value = float(compute())
        except Exception as exc:  # a broken component invalidates the sample; it is not a 0
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if math.isfinite(value):
            components[name] = RewardComponent(value=value, weight=weight)
        else:  # NaN or inf would poison the group's advantages: the sample is masked instead
            errors.append(f"{name}: the value {value} is not a finite number")
    status = "error" if errors else verification.status
    valid = verification.judged and not errors
    total = sum(c.weighted for c in components.values()) if valid else 0.0
    reward = Reward(
        total=total,
        components=components,
        status=status,
        valid=valid,
        errors=errors,
        verification=verification,
    )
    return finite_or_error(reward)


def _checked_verdict(verification: VerifyResult) -> tuple[VerifyResult, str | None]:
    """``verification`` and None when it keeps ``VerifyResult``'s rules; else an "error" verdict that
    says what was wrong, and that reason."""
    try:
        VerifyResult.model_validate(verification.model_dump())
    except ValidationError as exc:
        details = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'result'}: {e['msg']}" for e in exc.errors())
        reason = f"verifier: invalid result (status {verification.status!r}, score {verification.score}): {details}"
        return VerifyResult.error(reason, verification.decided_by), reason
    return verification, None


def finite_or_error(reward: Reward) -> Reward:
    """``reward`` itself when it is invalid or its total and every component are finite numbers; else
    the same reward marked invalid with status "error" and the reason in ``errors`` (total 0, never
    used). Finite components can still sum to inf (weights near the float limit)."""
    if not reward.valid:
        return reward
    problems = [
        f"{name}: the value {component.value} is not a finite number"
        for name, component in reward.components.items()
        if not math.isfinite(component.value)
    ]
    if not math.isfinite(reward.total):
        problems.append(f"total: {reward.total} is not a finite number")
    if not problems:
        return reward
    return reward.model_copy(
        update={"status": "error", "valid": False, "total": 0.0, "errors": [*reward.errors, *problems]}
    )
