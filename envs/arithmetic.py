"""``arithmetic``: procedurally generated integer arithmetic, e.g. "What is 37 + 58 - 12?".

No data needed; every task is drawn from its own seeded generator, so the stream is unbounded and
reproducible. Difficulty knobs: number of operands, operand range, operators. The answer is an
exact integer, checked exactly (no tolerance, no symbolic math).

Splits: the problem is the expression; it is a test problem when its hash falls in the test class
(``grpopp.envs.base.in_test_class``, share ``test_fraction``), and each task draws until it gets one of its
split's class, so no test expression is ever a train expression. A space of expressions too small
to give each split ``MIN_SPLIT_PROBLEMS`` of them is refused when the config is built (counted
exactly when it is small).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from fractions import Fraction
from typing import Literal

from pydantic import Field, model_validator

from grpopp.envs.base import MIN_SPLIT_PROBLEMS, Environment, ProceduralConfig, Split, Task, in_test_class
from grpopp.envs.registry import register_env
from grpopp.rewards.extract import ExtractionMethod, extract_answer, strip_thinking
from grpopp.rewards.types import VerifyResult

Operator = Literal["+", "-", "*"]

_COUNT_BELOW = 100
"""Count the split classes exactly when the smaller one expects fewer problems than this; above it,
falling short of ``MIN_SPLIT_PROBLEMS`` has a probability below e^-50."""


class ArithmeticConfig(ProceduralConfig):
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
        self._check_space()
        return self

    def space_size(self) -> int:
        """How many distinct expressions the options allow."""
        operands = self.max_operand - self.min_operand + 1
        return int(operands**self.num_operands * len(set(self.operators)) ** (self.num_operands - 1))

    def _check_space(self) -> None:
        size = self.space_size()
        if min(self.test_fraction, 1 - self.test_fraction) * size >= _COUNT_BELOW:
            return
        operand_range = range(self.min_operand, self.max_operand + 1)
        test = sum(
            in_test_class(expression(operands, operators), self.test_fraction)
            for operands in itertools.product(operand_range, repeat=self.num_operands)
            for operators in itertools.product(sorted(set(self.operators)), repeat=self.num_operands - 1)
        )
        if min(test, size - test) < MIN_SPLIT_PROBLEMS:
            raise ValueError(
                f"the problem space is too small to split into train and test: {size} distinct expressions "
                f"({self.num_operands} operands in {self.min_operand}..{self.max_operand}, operators "
                f"{' '.join(sorted(set(self.operators)))}), {test} of them test problems and {size - test} train "
                f"problems with test_fraction={self.test_fraction}; each split needs {MIN_SPLIT_PROBLEMS}: raise "
                "max_operand or num_operands, or add operators"
                + (", or raise test_fraction" if test < MIN_SPLIT_PROBLEMS else ", or lower test_fraction")
            )


@register_env("arithmetic")
class ArithmeticEnv(Environment[ArithmeticConfig]):
    """Integer arithmetic with exact answers; procedural, unbounded, no data needed."""

    config_class = ArithmeticConfig

    def num_tasks(self, split: Split = "train") -> int | None:
        return None

    def task(self, index: int, split: Split = "train") -> Task:
        if index < 0:
            raise IndexError(f"task index must be >= 0, got {index}")
        text, operands, operators = self.draw_in_split(index, split, self._draw, key=lambda drawn: drawn[0])
        return Task(
            id=self.task_id(index, split),
            env=self.name,
            split=split,
            index=index,
            prompt=self.make_prompt(self.config.prompt_template.format(expression=text)),
            answer=str(evaluate(operands, operators)),
            metadata={"expression": text},
        )

    def _draw(self, rng: random.Random) -> tuple[str, list[int], list[Operator]]:
        cfg = self.config
        operands = [rng.randint(cfg.min_operand, cfg.max_operand) for _ in range(cfg.num_operands)]
        operators = [rng.choice(cfg.operators) for _ in range(cfg.num_operands - 1)]
        return expression(operands, operators), operands, operators

    def instance_key(self, task: Task) -> str:
        """The expression, e.g. "37 + 58": the problem, whatever the prompt template."""
        return str(task.metadata["expression"])

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


def expression(operands: Sequence[int], operators: Sequence[str]) -> str:
    """The expression's text, e.g. "37 + 58 - 12"."""
    return " ".join(part for pair in zip(map(str, operands), [*operators, ""], strict=True) for part in pair if part)


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
