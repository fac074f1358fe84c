"""Typed records of verification and reward: what a verifier decided and what a sample earned.

A verifier that cannot judge (timeout, crash, unparseable gold answer) says so with its status; it
never becomes a silent 0. A score or reward component that is not a finite number is an error too.
The trainer masks samples whose reward is not ``valid`` instead of training on them as wrong
answers, and counts them by status.
"""

from __future__ import annotations

from typing import Literal, TypeAlias, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

VerifyStatus: TypeAlias = Literal["correct", "incorrect", "unparseable", "timeout", "error"]
VERIFY_STATUSES: tuple[VerifyStatus, ...] = get_args(VerifyStatus)
"""Every status a verifier reports, in ``VerifyStatus``' order (the order summaries list them)."""
JUDGED_STATUSES: frozenset[str] = frozenset({"correct", "incorrect", "unparseable"})
"""Statuses that are a verdict on the completion; "timeout" and "error" mean no verdict."""


class VerifyResult(BaseModel):
    """The verdict of one verifier on one completion."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    status: VerifyStatus
    """correct / incorrect: judged. unparseable: no answer could be found in the completion (a
    judged failure). timeout / error: the verifier could not judge (the sample is masked)."""

    score: float = Field(ge=0.0, le=1.0, allow_inf_nan=False)
    """Correctness in [0, 1]: 1 or 0 for exact checks, a fraction for partial credit (tests passed).
    Always 0 when the status is not a verdict; read ``judged`` before using it."""

    reason: str = ""
    """Why: the extracted answer against the gold one, the exception, the limit that was hit."""

    decided_by: str = ""
    """Which check decided, e.g. "math_verify", "exact_int", "expression_eval", "gold_unparseable"."""

    extracted: str | None = None
    """The answer extracted from the completion, when one was."""

    @property
    def judged(self) -> bool:
        """True when the verifier reached a verdict (correct, incorrect or unparseable)."""
        return self.status in JUDGED_STATUSES

    @model_validator(mode="after")
    def _check_score(self) -> VerifyResult:
        if self.status == "correct" and self.score <= 0.0:
            raise ValueError("a 'correct' result needs a score > 0")
        if self.status in ("unparseable", "timeout", "error") and self.score != 0.0:
            raise ValueError(f"a {self.status!r} result must have score 0 (got {self.score})")
        return self

    @classmethod
    def error(cls, reason: str, decided_by: str = "") -> VerifyResult:
        return cls(status="error", score=0.0, reason=reason, decided_by=decided_by)

    @classmethod
    def timeout(cls, reason: str, decided_by: str = "") -> VerifyResult:
        return cls(status="timeout", score=0.0, reason=reason, decided_by=decided_by)


class RewardComponent(BaseModel):
    """One term of a reward: its raw value and the weight it enters the total with."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    value: float
    """The component's own value (e.g. correctness 1.0, overlong punishment -0.25)."""

    weight: float
    """Its weight in the total; components with weight 0 are still computed and logged."""

    @property
    def weighted(self) -> float:
        return self.value * self.weight


class Reward(BaseModel):
    """A sample's reward with every component kept beside the total (``total = sum w_i v_i``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    total: float
    """Sum of weight x value over the components; 0 when not ``valid`` (never used then)."""

    components: dict[str, RewardComponent]
    """Each component by name: "correctness", "format", "overlong", "length", ..."""

    status: VerifyStatus
    """The verifier's status; "error" also when a reward component raised or was not a finite number."""

    valid: bool
    """False when the sample must be masked: the verifier could not judge, or a component raised or
    was not a finite number (NaN, inf)."""

    errors: list[str] = []
    """What went wrong, one line per failure (component name and exception)."""

    verification: VerifyResult | None = None
    """The verifier's full result."""
