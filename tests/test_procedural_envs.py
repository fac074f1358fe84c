"""The arithmetic and countdown environments: determinism, exact answers, verification, and train and
test splits disjoint by content (hash classes recomputed here with hashlib)."""

import ast
import hashlib
import itertools
import operator

import pytest

from grpopp.config_tools import ConfigError
from grpopp.envs.arithmetic import ArithmeticConfig, ArithmeticEnv
from grpopp.envs.countdown import CountdownConfig, CountdownEnv, evaluate_expression, problem_key
from grpopp.recipes.tiny import TINY_ARITHMETIC_ENV


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
    env = arithmetic(operators=("*",), num_operands=3, min_operand=2, max_operand=9)
    for index in range(50):
        expression = env.task(index).metadata["expression"]
        numbers = [int(x) for x in expression.split(" * ")]
        assert len(numbers) == 3 and all(2 <= n <= 9 for n in numbers)


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


# -- content-disjoint splits ------------------------------------------------------------------------


def in_class_by_hand(key: str, fraction: float) -> bool:
    """Second method for the hash class: hashlib's hex digest, its first 16 hex digits over 16^16."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:16], 16) / 16**16 < fraction


@pytest.mark.parametrize(
    ("name", "options", "key"),
    [
        ("arithmetic", {}, lambda task: task.metadata["expression"]),
        ("arithmetic", TINY_ARITHMETIC_ENV, lambda task: task.metadata["expression"]),
        (
            "countdown",
            {},
            lambda task: ",".join(map(str, sorted(task.metadata["numbers"]))) + f"->{task.metadata['target']}",
        ),
    ],
)
def test_test_problems_never_occur_among_5000_train_tasks(name, options, key):
    # Before the split by content, 45 (arithmetic), 122 (tiny options) and 35 (countdown, as a
    # multiset of numbers with the target) of these 200 test problems were train problems too.
    env = {"arithmetic": arithmetic, "countdown": countdown}[name](**options)
    train = [env.task(i, "train") for i in range(5000)]
    test = [env.task(i, "test") for i in range(200)]
    train_prompts, train_keys = {t.prompt for t in train}, {key(t) for t in train}
    assert not [t.id for t in test if t.prompt in train_prompts or key(t) in train_keys]
    assert all(in_class_by_hand(key(t), 0.1) for t in test)
    assert not any(in_class_by_hand(key(t), 0.1) for t in train)
    assert all(env.instance_key(t) == key(t) for t in test[:50] + train[:50])


def test_countdown_problem_is_the_multiset_of_numbers_with_the_target():
    assert problem_key([25, 3, 7], 46) == problem_key([3, 7, 25], 46) == "3,7,25->46"
    assert problem_key([3, 7, 25], 47) != problem_key([3, 7, 25], 46)
    assert problem_key([3, 3, 7], 46) != problem_key([3, 7, 7], 46)


def test_test_fraction_sets_the_share_of_the_space_held_out():
    # max_operand=9, "+" and "-": 10 * 10 * 2 = 200 expressions; the test class counted by hand.
    expressions = [f"{a} {op} {b}" for a, op, b in itertools.product(range(10), "+-", range(10))]
    for fraction in (0.1, 0.5):
        held_out = {e for e in expressions if in_class_by_hand(e, fraction)}
        env = arithmetic(max_operand=9, test_fraction=fraction)
        drawn = {env.task(i, "test").metadata["expression"] for i in range(600)}
        assert drawn <= held_out and len(drawn) >= 0.9 * len(held_out)  # 600 draws from <= 120 cover almost all
        assert not {env.task(i, "train").metadata["expression"] for i in range(600)} & held_out
    with pytest.raises(ValueError, match="test_fraction"):
        ArithmeticConfig(test_fraction=0.6)
    with pytest.raises(ValueError, match="test_fraction"):
        ArithmeticConfig(test_fraction=0.0)


def test_arithmetic_space_too_small_to_split_is_refused_with_the_counts():
    # 0..3 with + and -: 4 * 4 * 2 = 32 expressions, of which these fall in the test class at 0.1:
    expressions = [f"{a} {op} {b}" for a, op, b in itertools.product(range(4), "+-", range(4))]
    test = sum(in_class_by_hand(e, 0.1) for e in expressions)
    assert test < 8
    message = f"32 distinct expressions \\(2 operands in 0..3, operators \\+ -\\), {test} of them test problems"
    with pytest.raises(ValueError, match=message) as error:
        ArithmeticConfig(max_operand=3)
    assert "raise max_operand or num_operands, or add operators, or raise test_fraction" in str(error.value)
    arithmetic(max_operand=9)  # 200 expressions, about 20 of them test problems: enough


def test_countdown_space_too_small_to_split_is_refused():
    # numbers 1..2, two of them: multisets {1,1}, {1,2}, {2,2}; targets at most 2^2 = 4: <= 12 problems
    with pytest.raises(ValueError, match="at most 12 distinct problems .*raise max_number, num_numbers or max_target"):
        CountdownConfig(num_numbers=2, max_number=2)
    small = countdown(num_numbers=2, max_number=3, max_target=5)  # passes the bound, not the probe make_env runs
    with pytest.raises(ConfigError, match="countdown: the (train|test) split holds only .* too small to split"):
        small.check_split_space()
