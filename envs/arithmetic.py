"""``arithmetic``: procedurally generated integer arithmetic, e.g. "What is 37 + 58 - 12?".

No data needed; every task is drawn from its own seeded generator, so the stream is unbounded and
reproducible. Difficulty knobs: number of operands, operand range, operators. The answer is an
exact integer, checked exactly (no tolerance, no symbolic math).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

from pydantic import Field, model_validator

from envs.base import EnvConfig, Environment, Split, Task
from envs.registry import register_env
from rewards.extract import ExtractionMethod, extract_answer, strip_thinking
from rewards.types import VerifyResult

Operator = Literal["+", "-", "*"]


class ArithmeticConfig(EnvConfig):
    """Options of the ``arithmetic`` environment."""

    num_operands: int = Field(2, ge=2, le=8)
    """How many numbers each expression combines."""

    min_operand: int = Field(0, ge=0)
    """Smallest operand."""

    max_operand: int = Field(99, ge=1)
    """Largest operand."""

    operators: tuple[Operator, ...] = ("+", "-")
    """Operators to draw from; "*" binds tighter than "+" and "-" as usual."""

    prompt_template: str = "What is {expression}? End with 'Answer: <number>'."
    """The prompt; ``{expression}`` is replaced by the expression, e.g. "37 + 58"."""

    extraction: tuple[ExtractionMethod, ...] = ("boxed", "answer_line", "last_number")
    """Where to look for the answer in a completion, in order."""

    answer_style: Literal["answer_line", "boxed"] = "answer_line"
    """How gold completions (for ``envs check`` and warm-start data) state the answer."""

    @model_validator(mode="after")
    def _check(self) -> ArithmeticConfig:
        if self.min_operand > self.max_operand:
            raise ValueError(f"min_operand={self.min_operand} is above max_operand={self.max_operand}; swap them")
        if not self.operators:
            raise ValueError("operators is empty: give at least one of '+', '-', '*'")
        if "{expression}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{expression}'")
        return self


@register_env("arithmetic")
class ArithmeticEnv(Environment[ArithmeticConfig]):
    """Integer arithmetic with exact answers; procedural, unbounded, no data needed."""

    config_class = ArithmeticConfig

    def num_tasks(self, split: Split = "train") -> int | None:
        return None

    def task(self, index: int, split: Split = "train") -> Task:
        if index < 0:
            raise IndexError(f"task index must be >= 0, got {index}")
        cfg = self.config
        rng = self.rng(index, split)
        operands = [rng.randint(cfg.min_operand, cfg.max_operand) for _ in range(cfg.num_operands)]
        operators = [rng.choice(cfg.operators) for _ in range(cfg.num_operands - 1)]
        expression = " ".join(
            part for pair in zip(map(str, operands), [*operators, ""], strict=True) for part in pair if part
        )
        answer = evaluate(operands, operators)
        return Task(
            id=self.task_id(index, split),
            env=self.name,
            split=split,
            index=index,
            prompt=self.make_prompt(cfg.prompt_template.format(expression=expression)),
            answer=str(answer),
            metadata={"expression": expression},
        )

    def verify(self, task: Task, completion: str) -> VerifyResult:
        found = extract_answer(strip_thinking(completion), self.config.extraction)
        if found is None:
            return VerifyResult(status="unparseable", score=0.0, reason="no answer found", decided_by="extract")
        text, method = found
        try:
            value = Fraction(text.replace(",", "").strip())
        except (ValueError, ZeroDivisionError):
            return VerifyResult(
                status="unparseable", score=0.0, reason=f"{method} answer {text!r} is not a number", extracted=text
            )
        correct = value == int(task.answer or "0")
        return VerifyResult(
            status="correct" if correct else "incorrect",
            score=1.0 if correct else 0.0,
            reason=f"{value} {'==' if correct else '!='} {task.answer} ({method})",
            decided_by="exact_int",
            extracted=text,
        )

    def gold_completion(self, task: Task) -> str:
        return _state(task.answer or "", self.config.answer_style)

    def wrong_completion(self, task: Task) -> str:
        return _state(str(int(task.answer or "0") + 1), self.config.answer_style)


def evaluate(operands: list[int], operators: list[Operator]) -> int:
    """Value of ``operands[0] op operands[1] op ...`` with "*" before "+" and "-"."""
    terms, signs = [operands[0]], [1]
    for operator, operand in zip(operators, operands[1:], strict=True):
        if operator == "*":
            terms[-1] *= operand
        else:
            terms.append(operand)
            signs.append(1 if operator == "+" else -1)
    return sum(sign * term for sign, term in zip(signs, terms, strict=True))


def _state(answer: str, style: str) -> str:
    return f"\\boxed{{{answer}}}" if style == "boxed" else f"Answer: {answer}"
