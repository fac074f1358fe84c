"""The ``code`` environment: the shipped sample (every reference solution passes in the sandbox),
program extraction, reward modes, loaders for APPS/TACO, MBPP and HumanEval rows, and errors."""

import gzip
import json

import pytest

from grpopp.envs import code as code_module
from grpopp.envs.check import check_env
from grpopp.envs.code import extract_program
from grpopp.envs.data_files import DataFileError
from grpopp.envs.registry import list_envs, make_env
from grpopp.rewards.code_judge import Outcome
from grpopp.rewards.sandbox import SandboxConfig, SandboxUnavailable, unavailable_reason
from grpopp.rewards.shaping import LengthLimits

FAST = {"sandbox": {"wall_timeout_s": 3.0, "cpu_time_s": 2, "workers": 2}}


BWRAP_PROBLEM = unavailable_reason(SandboxConfig(**FAST["sandbox"]))
needs_bwrap = pytest.mark.skipif(BWRAP_PROBLEM is not None, reason=f"bwrap sandbox unavailable: {BWRAP_PROBLEM}")


def write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def block(code, tag="python"):
    return f"Here it is.\n```{tag}\n{code}\n```\n"


# -- the shipped sample ----------------------------------------------------------------------------


def test_registered_and_sample_split_is_disjoint():
    assert "code" in list_envs()
    env = make_env("code", **FAST)
    train, test = env.num_tasks("train"), env.num_tasks("test")
    assert train + test == 31 and train > 0 and test > 0
    prompts = {
        split: {str(env.task(i, split).prompt) for i in range(env.num_tasks(split))} for split in ("train", "test")
    }
    assert not prompts["train"] & prompts["test"]
    kinds = {(env.task(i).metadata["kind"], env.task(i).metadata["style"]) for i in range(train)}
    assert {("stdio", "apps"), ("function", "apps"), ("function", "mbpp"), ("function", "humaneval")} <= kinds


def test_prompts_never_show_expected_values_or_reference_solutions():
    env = make_env("code", **FAST)
    for split in ("train", "test"):
        for index in range(env.num_tasks(split)):
            task = env.task(index, split)
            prompt = str(task.prompt)
            solution = env._problem(index, split).solution
            assert solution is not None and solution.strip() not in prompt
            if task.metadata["kind"] == "stdio":
                long_outputs = [t["output"].strip() for t in task.tests if len(t["output"].strip()) >= 6]
                assert not [output for output in long_outputs if output in prompt]
            else:
                assert "```python" in prompt and task.metadata["fn_name"] in prompt


@needs_bwrap
def test_every_reference_solution_passes_and_wrong_ones_do_not():
    """The contract check on all 31 problems: gold (reference) completions score correct in the
    sandbox, wrong and empty ones do not, and every verdict is a verdict (no timeout or error)."""
    report = check_env(make_env("code", **FAST), num_tasks=31)
    assert report.ok, [r for r in report.results if not r.passed]
    details = {r.name: r.detail for r in report.results}
    assert details["gold answers score correct"] == "31/31 ok"  # all 31 checked
    assert details["wrong answers do not score correct"] == "31/31 ok"


# -- extraction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completion", "program"),
    [
        ("```python\nprint(1)\n```", "print(1)\n"),
        ("```py\nprint(1)\n```", "print(1)\n"),
        ("```\nprint(2)\n```", "print(2)\n"),  # untagged
        ("```python\nprint(1)\n```\ntext\n```python\nprint(3)\n```", "print(3)\n"),  # the last python block
        ("```python\nprint(1)\n```\n```bash\nls\n```", "print(1)\n"),  # a python tag beats a later bash block
        ("```\nprint(1)\n```\n```python\nprint(4)\n```\n```\nx\n```", "print(4)\n"),  # tagged preferred
        ("<think>```python\nprint(0)\n```</think>```python\nprint(5)\n```", "print(5)\n"),  # not from reasoning
        ("```bash\nls\n```", None),  # only another language
        ("print(1)", None),  # no block
        ("```python\nprint(1)\n", None),  # truncated: the block never closes
        ("```python\n\n```", None),  # empty
    ],
)
def test_extract_program(completion, program):
    assert extract_program(completion) == program


# -- verification ----------------------------------------------------------------------------------


def stdio_env(tmp_path, **config):
    rows = [
        {
            "question": "Double n.",
            "input_output": {"inputs": ["1\n", "2\n", "3\n", "4\n"], "outputs": ["2\n", "4\n", "6\n", "8\n"]},
        }
    ]
    return make_env("code", path=str(write_jsonl(tmp_path / "d.jsonl", rows)), test_fraction=0.0, **{**FAST, **config})


@needs_bwrap
def test_reward_modes_all_pass_and_fraction(tmp_path):
    partly = block("n = int(input())\nprint(n * 2 if n < 3 else 0)")
    strict, lenient = stdio_env(tmp_path), stdio_env(tmp_path, reward_mode="fraction")
    task = strict.task(0)
    result = strict.verify(task, partly)
    assert (result.status, result.score) == ("incorrect", 0.0)
    assert result.reason.startswith("2/4 tests passed; test 2: wrong answer: line 1: expected '6', got '0'")
    result = lenient.verify(task, partly)
    assert (result.status, result.score) == ("incorrect", 0.5)
    result = lenient.verify(task, block("print(int(input()) * 2)"))
    assert (result.status, result.score, result.decided_by) == ("correct", 1.0, "sandbox:bwrap")


@needs_bwrap
def test_crash_and_timeout_count_as_failed_not_as_errors(tmp_path):
    env = stdio_env(tmp_path, reward_mode="fraction", sandbox={"wall_timeout_s": 1.0, "cpu_time_s": 1, "workers": 2})
    task = env.task(0)
    crash = env.verify(task, block("n = int(input())\nprint(n * 2)\nif n == 4:\n    raise ValueError"))
    assert (crash.status, crash.score) == ("incorrect", 0.75) and "runtime error" in crash.reason
    slow = env.verify(task, block("import time\nn = int(input())\nif n > 2:\n    time.sleep(5)\nprint(n * 2)"))
    assert (slow.status, slow.score) == ("incorrect", 0.5) and "timeout" in slow.reason


def test_unparseable_without_a_code_block(tmp_path):
    env = stdio_env(tmp_path)
    result = env.verify(env.task(0), "The answer is to double it.")
    assert (result.status, result.score, result.decided_by) == ("unparseable", 0.0, "extract")


def test_sandbox_that_cannot_start_is_an_error_and_the_sample_is_masked(tmp_path, monkeypatch):
    env = stdio_env(tmp_path)

    def unavailable(config):
        raise SandboxUnavailable(
            "bwrap (bubblewrap) is not installed; install bubblewrap: apt-get install -y bubblewrap"
        )

    monkeypatch.setattr(code_module, "shared_sandbox", unavailable)
    task = env.task(0)
    results = env.verify_batch([task, task], [block("print(1)"), "no code"])
    assert results[0].status == "error" and "apt-get install -y bubblewrap" in results[0].reason
    assert results[1].status == "unparseable"  # judged without running anything
    (reward,) = env.score_batch([task], [block("print(1)")], [10], LengthLimits(max_length=100, cache_length=10))
    assert not reward.valid and reward.status == "error"


def test_infrastructure_outcome_makes_the_verdict_an_error(tmp_path):
    env = stdio_env(tmp_path)
    result = env.score([Outcome("passed"), Outcome("error", "bwrap could not set up the container")])
    assert result.status == "error" and result.score == 0.0 and "bwrap could not set up" in result.reason


# -- loaders ---------------------------------------------------------------------------------------

APPS_STDIO = {
    "question": "Print the sum of the numbers on each line.",
    "input_output": json.dumps({"inputs": [["1 2", "3 4"]], "outputs": [["3", "7"]]}),  # TACO: lists of lines
    "solutions": json.dumps(["import sys\nfor line in sys.stdin:\n    print(sum(map(int, line.split())))\n"]),
}
APPS_CALL = {
    "question": "Return the square.",
    "input_output": {"fn_name": "square", "inputs": [[3], [4]], "outputs": [[9], [16]]},
    "starter_code": "def square(x):\n    ",
    "solutions": ["def square(x):\n    return x * x\n"],
}
MBPP = {
    "text": "Write a function to add two numbers.",
    "code": "def add(a, b):\n    return a + b\n",
    "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
    "test_setup_code": "",
}
HUMANEVAL = {
    "task_id": "X/0",
    "prompt": 'def inc(x: int) -> int:\n    """Return x + 1."""\n',
    "canonical_solution": "    return x + 1\n",
    "test": "def check(candidate):\n    assert candidate(1) == 2\n    assert candidate(-1) == 0\n",
    "entry_point": "inc",
}


def test_loaders_for_each_format(tmp_path):
    env = make_env(
        "code", path=str(write_jsonl(tmp_path / "d.jsonl", [APPS_STDIO, APPS_CALL, MBPP, HUMANEVAL])), test_fraction=0.0
    )
    tasks = [env.task(i) for i in range(4)]
    assert tasks[0].metadata["kind"] == "stdio" and tasks[0].tests == [{"input": "1 2\n3 4\n", "output": "3\n7\n"}]
    assert tasks[1].metadata["fn_name"] == "square"
    assert tasks[1].tests[0] == {
        "type": "call",
        "args": [3],
        "expected": [9],
        "source": f"{tmp_path}/d.jsonl:2 input_output[0]",
    }
    assert "def square(x):" in str(tasks[1].prompt)  # starter code shown
    assert tasks[2].metadata["fn_name"] == "add" and [t["code"] for t in tasks[2].tests] == MBPP["test_list"]
    assert "`add(1, 2)`" in str(tasks[2].prompt) and "== 3" not in str(tasks[2].prompt)  # arguments only
    assert tasks[3].metadata["fn_name"] == "inc" and [t["code"] for t in tasks[3].tests] == ["check(inc)\n"]
    assert tasks[3].metadata["setup"] == HUMANEVAL["prompt"] + "\n" + HUMANEVAL["test"]
    assert "def inc(x: int)" in str(tasks[3].prompt) and "candidate(1)" not in str(tasks[3].prompt)
    assert env.gold_completion(tasks[3]).count("return x + 1") == 1


@needs_bwrap
def test_loaded_reference_solutions_pass(tmp_path):
    env = make_env(
        "code",
        path=str(write_jsonl(tmp_path / "d.jsonl", [APPS_STDIO, APPS_CALL, MBPP, HUMANEVAL])),
        test_fraction=0.0,
        **FAST,
    )
    tasks = [env.task(i) for i in range(4)]
    results = env.verify_batch(tasks, [env.gold_completion(t) for t in tasks])
    assert [r.status for r in results] == ["correct"] * 4, [r.reason for r in results]


@needs_bwrap
def test_any_test_code_runs_loops_setup_code_helpers_and_tuples(tmp_path):
    """Rows the old assert-to-pairs conversion refused: a loop over random inputs and a helper of
    the prompt (HumanEval), test_setup_code, a tuple() of the result, a float expression (MBPP)."""
    humaneval = {
        **HUMANEVAL,
        "prompt": "def helper(x):\n    return x + 1\n\n\n" + HUMANEVAL["prompt"],
        "test": "import random\n\n\ndef check(candidate):\n    rng = random.Random(0)\n    for _ in range(50):\n"
        "        x = rng.randint(-9, 9)\n        assert candidate(x) == helper(x)\n",
    }
    mbpp = {
        **MBPP,
        "code": "def add(a, b):\n    return a + b\n",
        "test_setup_code": "PAIRS = [(1, 2), (2.0, 3.0)]",
        "test_list": ["assert tuple(add((1,), (2,))) == (1, 2)", "assert add(*PAIRS[1]) == 2.0 / 3.0 + 4 + 1 / 3"],
    }
    env = make_env("code", path=str(write_jsonl(tmp_path / "d.jsonl", [humaneval, mbpp])), test_fraction=0.0, **FAST)
    tasks = [env.task(0), env.task(1)]
    results = env.verify_batch(tasks, [env.gold_completion(t) for t in tasks])
    assert [r.status for r in results] == ["correct", "correct"], [r.reason for r in results]
    wrong = env.verify_batch(tasks, [block("def inc(x):\n    return x"), block("def add(a, b):\n    return [a, b]")])
    assert [r.status for r in wrong] == ["incorrect", "incorrect"]
    assert "assertion failed at <setup> line 15: `assert candidate(x) == helper(x)`" in wrong[0].reason
    assert "last call inc(" in wrong[0].reason
    assert wrong[1].reason.startswith("0/2 tests passed; test 0: wrong answer: assertion failed at <test 0> line 1")


@needs_bwrap
def test_test_code_that_fails_by_itself_is_no_verdict(tmp_path):
    """A setup that raises, or a test that passes a function to the program (which cannot cross),
    is a problem of the data: status "error" (the sample is masked), never a wrong answer."""
    broken = {**HUMANEVAL, "test": "import no_such_module\n\n\n" + HUMANEVAL["test"]}
    lambda_arg = {**MBPP, "test_list": ["assert add(lambda: 1, 2) == 3"]}
    env = make_env("code", path=str(write_jsonl(tmp_path / "d.jsonl", [broken, lambda_arg])), test_fraction=0.0, **FAST)
    tasks = [env.task(0), env.task(1)]
    results = env.verify_batch(tasks, [env.gold_completion(t) for t in tasks])
    assert [r.status for r in results] == ["error", "error"]
    assert results[0].reason == (
        "no verdict: the test setup raised ModuleNotFoundError: No module named 'no_such_module' at <setup> "
        "line 4: `import no_such_module` (a problem of the data, not of the program)"
    )
    assert "the test passes a function to add: only plain data can cross to the program" in results[1].reason


def test_gzip_jsonl_loads_like_jsonl(tmp_path):
    plain = write_jsonl(tmp_path / "d.jsonl", [MBPP, HUMANEVAL])
    packed = tmp_path / "d.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    one, other = (
        make_env("code", path=str(plain), test_fraction=0.0),
        make_env("code", path=str(packed), test_fraction=0.0),
    )
    for index in range(2):
        got, want = other.task(index), one.task(index)
        assert [{**t, "source": ""} for t in got.tests] == [{**t, "source": ""} for t in want.tests]
        assert {**got.metadata, "source": ""} == {**want.metadata, "source": ""}
    assert other.task(1).metadata["source"] == f"{packed}:2"
    (tmp_path / "bad.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(DataFileError, match="bad.jsonl.gz: cannot read it as gzip"):
        make_env("code", path=str(tmp_path / "bad.jsonl.gz"))
    (tmp_path / "d.csv").write_text("x")
    with pytest.raises(DataFileError, match="unsupported file type '.csv'"):
        make_env("code", path=str(tmp_path / "d.csv"))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ('{"question": "x", "input_output": "{not json"}', "field 'input_output' is a string but not valid JSON"),
        ({"question": "x", "input_output": {"inputs": ["1"], "outputs": []}}, "1 inputs and 0 outputs"),
        ({"question": "x", "input_output": {"inputs": "1"}}, "needs lists 'inputs' and 'outputs'"),
        ({"prompt": "x"}, "unknown row format"),
        ({"test_list": ["assert f(1) == 1"]}, "missing text field 'text' or 'prompt'"),
        (
            {**MBPP, "test_list": ["assert add(1, 2) == 3", "assert add(1 2) == 3"]},
            "test_list[1], line 1: the test code",
        ),
        ({**MBPP, "test_setup_code": "x ="}, "test_setup_code, line 1: the test code does not parse"),
        ({**MBPP, "test_list": "assert add(1, 2) == 3"}, "test_list must be a list of strings"),
        ({**MBPP, "test_list": ["assert len('ab') == 2"]}, "test_list calls no function of the solution"),
        ({k: v for k, v in HUMANEVAL.items() if k != "entry_point"}, "a HumanEval row needs 'entry_point'"),
        ({**HUMANEVAL, "test": "def check(candidate):\n    assert candidate(1) = 2\n"}, "test, line 2: the test code"),
        ({**HUMANEVAL, "test": "assert inc(1) == 2\n"}, "the test code defines no `def check(candidate):`"),
        ("[1, 2]", "expected a JSON object per line"),
    ],
)
def test_bad_rows_name_the_file_and_line(tmp_path, row, message):
    path = write_jsonl(tmp_path / "d.jsonl", [MBPP, row])
    with pytest.raises(DataFileError, match=rf"{path}:2") as error:
        make_env("code", path=str(path))
    assert message in str(error.value)


def test_max_tests_and_test_path(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [MBPP])
    held_out = write_jsonl(tmp_path / "test.jsonl", [HUMANEVAL])
    env = make_env("code", path=str(train), test_path=str(held_out), max_tests=1)
    assert len(env.task(0).tests) == 1 and env.task(0, "test").metadata["fn_name"] == "inc"
    with pytest.raises(Exception, match="no such file"):
        make_env("code", path=str(tmp_path / "missing.jsonl"))
