"""``countdown``: reach a target number by combining given numbers with + - * / (each used once).

The TinyZero / "Countdown" task: e.g. numbers [3, 7, 25], target 46 -> "25 + 3 * 7". Procedural, no
data needed; each task is generated from a random expression over its numbers, so it is always
solvable. Any correct expression scores, not only the generating one: the verifier parses the
answer with ``ast`` (numbers, + - * /, parentheses only; never ``eval``), checks the numbers used,
and evaluates exactly with fractions.

Splits: the problem is the multiset of numbers with the target (``problem_key``: "3,7,25->46"; the
same numbers in another order with the same target are the same problem); it is a test problem when
its hash falls in the test class (``grpopp.envs.base.in_test_class``, share ``test_fraction``), so no test
problem is ever a train problem. Options that allow fewer than 2 x ``MIN_SPLIT_PROBLEMS`` problems
(counted generously: every multiset of numbers with every target) are refused when the config is
built; ``make_env`` probes the rest (``Environment.check_split_space``).
"""

from __future__ import annotations

import ast
import math
import random
from collections import Counter
from collections.abc import Sequence
from fractions import Fraction

from pydantic import Field, model_validator

from grpopp.envs.base import MIN_SPLIT_PROBLEMS, Environment, ProceduralConfig, Split, Task
from grpopp.envs.registry import register_env
from grpopp.rewards.extract import ExtractionMethod, extract_answer, strip_thinking
from grpopp.rewards.types import VerifyResult

_MAX_EXPRESSION_CHARS = 300


class CountdownConfig(ProceduralConfig):
    """Options of the ``countdown`` environment."""

    num_numbers: int = Field(3, ge=2, le=6)
    """How many numbers are given."""

    min_number: int = Field(1, ge=1)
    """Smallest given number."""

    max_number: int = Field(25, ge=1)
    """Largest given number."""

    max_target: int = Field(1000, ge=1)
    """Targets are kept in [1, max_target]."""

    use_all_numbers: bool = True
    """Each given number must be used exactly once (else at most once)."""

    extraction: tuple[ExtractionMethod, ...] = ("answer_tag", "boxed", "answer_line")
    """Where to look for the equation in a completion, in order ("answer_tag" = <answer>...</answer>)."""

    @model_validator(mode="after")
    def _check(self) -> CountdownConfig:
        if self.min_number > self.max_number:
            raise ValueError(f"min_number={self.min_number} is above max_number={self.max_number}; swap them")
        bound = self.space_bound()
        if bound < 2 * MIN_SPLIT_PROBLEMS:
            raise ValueError(
                f"the problem space is too small to split into train and test: at most {bound} distinct problems "
                f"({self.num_numbers} numbers in {self.min_number}..{self.max_number}, targets up to "
                f"{self.max_target}), and each split needs {MIN_SPLIT_PROBLEMS}: raise max_number, num_numbers or "
                "max_target"
            )
        return self

    def space_bound(self) -> int:
        """At least the number of distinct problems: every multiset of numbers with every target up to
        the largest reachable one (+ and * of numbers up to m never exceed max(m, 2)^n)."""
        multisets = math.comb(self.max_number - self.min_number + self.num_numbers, self.num_numbers)
        return multisets * min(self.max_target, int(max(self.max_number, 2) ** self.num_numbers))


@register_env("countdown")
class CountdownEnv(Environment[CountdownConfig]):
    """Combine the given numbers with + - * / to reach the target; procedural, unbounded."""

    config_class = CountdownConfig

    def num_tasks(self, split: Split = "train") -> int | None:
        return None

    def task(self, index: int, split: Split = "train") -> Task:
        if index < 0:
            raise IndexError(f"task index must be >= 0, got {index}")
        numbers, solution, target = self.draw_in_split(
            index, split, self._generate, key=lambda drawn: problem_key(drawn[0], drawn[2])
        )
        prompt = (
            f"Using the numbers {numbers}, create an equation that equals {target}. You can use +, -, * and /, "
            f"and each number {'exactly' if self.config.use_all_numbers else 'at most'} once. "
            "Give the equation as <answer>...</answer>, e.g. <answer>(1 + 2) * 3</answer>."
        )
        return Task(
            id=self.task_id(index, split),
            env=self.name,
            split=split,
            index=index,
            prompt=self.make_prompt(prompt),
            answer=str(target),
            metadata={"numbers": list(numbers), "target": target, "solution": solution},
        )

    def _generate(self, rng: random.Random) -> tuple[list[int], str, int]:
        """Draw numbers and combine them left to right with random operators, keeping every
        intermediate value a positive integer; retry until the target is in range."""
        cfg = self.config
        for _ in range(1000):
            numbers = [rng.randint(cfg.min_number, cfg.max_number) for _ in range(cfg.num_numbers)]
            order = rng.sample(numbers, len(numbers))
            value, expression = order[0], str(order[0])
            for number in order[1:]:
                choices = ["+", "*"] + (["-"] if value > number else []) + (["/"] if value % number == 0 else [])
                operator = rng.choice(choices)
                value = {"+": value + number, "-": value - number, "*": value * number, "/": value // number}[operator]
                expression = f"({expression} {operator} {number})"
            if 1 <= value <= cfg.max_target:
                return numbers, expression[1:-1] if expression.startswith("(") else expression, value
        raise RuntimeError(f"could not generate a countdown task with target <= {cfg.max_target}; raise max_target")

    def instance_key(self, task: Task) -> str:
        """The multiset of numbers with the target (``problem_key``), whatever their order."""
        numbers, target = task.metadata["numbers"], task.metadata["target"]
        if not isinstance(numbers, list) or not isinstance(target, int):
            raise ValueError(f"task {task.id} lacks integer 'numbers' and 'target' metadata")
        return problem_key([int(n) for n in numbers if isinstance(n, int)], target)

    def verify(self, task: Task, completion: str) -> VerifyResult:
        found = extract_answer(strip_thinking(completion), self.config.extraction)
        if found is None:
            return VerifyResult(status="unparseable", score=0.0, reason="no answer found", decided_by="extract")
        text = found[0]
        expression = text.split("=")[0].strip()  # "25 + 3 * 7 = 46" -> "25 + 3 * 7"
        try:
            value, used = evaluate_expression(expression)
        except (SyntaxError, ValueError) as exc:
            return VerifyResult(status="unparseable", score=0.0, reason=str(exc), decided_by="ast", extracted=text)
        except ZeroDivisionError:
            return VerifyResult(status="incorrect", score=0.0, reason="division by zero", extracted=text)
        numbers, target = task.metadata.get("numbers"), task.metadata.get("target")
        if not isinstance(numbers, list) or not isinstance(target, int):
            return VerifyResult.error(f"task {task.id} lacks integer 'numbers' and 'target' metadata", "countdown")
        given = Counter(n for n in numbers if isinstance(n, int))
        used_counts = Counter(used)
        if self.config.use_all_numbers and used_counts != given:
            reason = f"numbers used {sorted(used)} are not the given {sorted(given.elements())}"
        elif not self.config.use_all_numbers and used_counts - given:
            reason = f"numbers used {sorted(used)} are not among the given {sorted(given.elements())}"
        elif value != target:
            reason = f"{expression} = {value}, not {target}"
        else:
            return VerifyResult(
                status="correct", score=1.0, reason=f"{expression} = {target}", decided_by="ast", extracted=text
            )
        return VerifyResult(status="incorrect", score=0.0, reason=reason, decided_by="ast", extracted=text)

    def gold_completion(self, task: Task) -> str:
        return f"<answer>{task.metadata['solution']}</answer>"

    def wrong_completion(self, task: Task) -> str:
        return f"<answer>{task.metadata['solution']} + 1</answer>"


def problem_key(numbers: Sequence[int], target: int) -> str:
    """The canonical form of a countdown problem: sorted numbers and the target, e.g. "3,7,25->46"."""
    return f"{','.join(map(str, sorted(numbers)))}->{target}"


def evaluate_expression(expression: str) -> tuple[Fraction, list[int]]:
    """Exact value of an arithmetic expression and the numbers it uses.

    Only integer literals, + - * /, unary minus and parentheses are accepted; anything else
    (names, calls, powers, floats) raises ValueError, so no code is ever executed.
    """
    if len(expression) > _MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression longer than {_MAX_EXPRESSION_CHARS} characters")
    tree = ast.parse(expression.replace("×", "*").replace("÷", "/"), mode="eval")
    used: list[int] = []

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            used.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Add):
                return left + right
            if isinstance(node.op, ast.Sub):
                return left - right
            if isinstance(node.op, ast.Mult):
                return left * right
            return left / right  # ZeroDivisionError propagates: an incorrect answer
        raise ValueError(f"only integers, + - * / and parentheses are allowed, found {type(node).__name__}")

    return walk(tree), used
