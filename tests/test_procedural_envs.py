"""The arithmetic and countdown environments: determinism, exact answers, verification."""

import ast
import operator

import pytest

from envs.arithmetic import ArithmeticConfig, ArithmeticEnv
from envs.countdown import CountdownConfig, CountdownEnv, evaluate_expression


def arithmetic(**options):
    return ArithmeticEnv(ArithmeticConfig(**options))


def countdown(**options):
    return CountdownEnv(CountdownConfig(**options))


def python_value(expression: str) -> int:
    """Second method for the expected answer: Python's own parser and operator precedence."""
    ops = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}

    def walk(node):
        if isinstance(node, ast.BinOp):
            return ops[type(node.op)](walk(node.left), walk(node.right))
        return node.value

    return walk(ast.parse(expression, mode="eval").body)


@pytest.mark.parametrize("options", [{}, {"operators": ("+", "-", "*"), "num_operands": 4, "max_operand": 999}])
def test_arithmetic_answers_are_exact(options):
    env = arithmetic(**options)
    for index in range(200):
        task = env.task(index)
        assert int(task.answer) == python_value(task.metadata["expression"])
        assert task.id == f"arithmetic/train/{index}"


def test_arithmetic_knobs():
    env = arithmetic(operators=("*",), num_operands=3, min_operand=2, max_operand=5)
    for index in range(50):
        expression = env.task(index).metadata["expression"]
        numbers = [int(x) for x in expression.split(" * ")]
        assert len(numbers) == 3 and all(2 <= n <= 5 for n in numbers)


def test_tasks_are_deterministic_and_splits_differ():
    first, second = arithmetic(), arithmetic()
    assert [first.task(i) for i in range(20)] == [second.task(i) for i in range(20)]
    assert second.task(7) == first.task(7)  # random access, in any order
    train = [first.task(i).prompt for i in range(50)]
    test = [first.task(i, "test").prompt for i in range(50)]
    assert train != test
    assert arithmetic(seed=1).task(0) != first.task(0)


@pytest.mark.parametrize(
    ("completion", "status"),
    [
        ("Answer: {a}", "correct"),
        ("so the result is \\boxed{{{a}}}", "correct"),
        ("I computed it: {a}", "correct"),  # last number fallback
        ("Answer: {a}.0", "correct"),  # same number
        ("<think>Answer: {a}</think> Answer: {wrong}", "incorrect"),  # the reasoning is not the answer
        ("Answer: {wrong}", "incorrect"),
        ("Answer: forty", "unparseable"),
        ("no idea", "unparseable"),
    ],
)
def test_arithmetic_verify(completion, status):
    env = arithmetic()
    task = env.task(3)
    answer = int(task.answer)
    result = env.verify(task, completion.format(a=answer, wrong=answer + 1))
    assert result.status == status, result


def test_arithmetic_bad_config_names_the_field():
    with pytest.raises(ValueError, match="min_operand=10 is above max_operand=5"):
        ArithmeticConfig(min_operand=10, max_operand=5)
    with pytest.raises(ValueError, match="num_operands"):
        ArithmeticConfig(num_operands=1)
    with pytest.raises(ValueError, match="operators"):
        ArithmeticConfig(operators=("/",))


def test_countdown_tasks_are_solvable_by_their_solution():
    env = countdown(num_numbers=4, max_number=50)
    for index in range(100):
        task = env.task(index)
        numbers, target = task.metadata["numbers"], task.metadata["target"]
        value, used = evaluate_expression(task.metadata["solution"])
        assert value == target and sorted(used) == sorted(numbers)
        assert 1 <= target <= 1000
        assert env.verify(task, env.gold_completion(task)).status == "correct"
        assert env.verify(task, env.wrong_completion(task)).status == "incorrect"


def make_task(numbers, target):
    env = countdown(num_numbers=len(numbers))
    task = env.task(0)
    return env, task.model_copy(update={"metadata": {"numbers": numbers, "target": target, "solution": ""}})


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ("<answer>25 + 3 * 7</answer>", "correct"),  # 25 + 21 = 46
        ("<answer>3 * 7 + 25 = 46</answer>", "correct"),  # any correct expression, "= target" allowed
        ("<answer>(25 + 3) * 7</answer>", "incorrect"),  # 196
        ("<answer>25 + 21</answer>", "incorrect"),  # 21 is not a given number
        ("<answer>25 + 3 * 7 + 3</answer>", "incorrect"),  # 3 used twice
        ("<answer>25 + 7 / (3 - 3) * 3</answer>", "incorrect"),  # division by zero
        ("<answer>__import__('os').system('true')</answer>", "unparseable"),  # never executed
        ("<answer>25 + 3 ** 7</answer>", "unparseable"),  # powers are not allowed
        ("<answer>25 + 3 * 7.0</answer>", "unparseable"),  # floats are not given numbers
        ("<think><answer>25 + 3 * 7</answer></think>", "unparseable"),  # only inside the reasoning
        ("46", "unparseable"),
    ],
)
def test_countdown_verify(answer, status):
    env, task = make_task([25, 3, 7], 46)
    assert env.verify(task, answer).status == status


def test_countdown_fractions_are_exact():
    env, task = make_task([1, 3, 3], 1)
    assert env.verify(task, "<answer>(1 / 3) * 3</answer>").status == "correct"  # exact, not 0.999...


def test_countdown_at_most_once_mode():
    env = countdown(use_all_numbers=False)
    task = env.task(0).model_copy(update={"metadata": {"numbers": [25, 3, 7], "target": 28, "solution": ""}})
    assert env.verify(task, "<answer>25 + 3</answer>").status == "correct"
