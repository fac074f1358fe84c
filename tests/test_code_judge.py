"""grpopp.rewards.code_judge, pure parts: stdout comparison, the plain-data codec of the harness and runner
(run here in-process), the harness's records on the result channel, job planning, and the load-time
reading of test code (ast only, never executed). No sandbox needed."""

import collections
import enum
import json
import math

import pytest

from grpopp.rewards.code_judge import (
    _CODEC_SOURCE,
    HARNESS_SOURCE,
    RUNNER_SOURCE,
    AssertTest,
    CallTest,
    HiddenTests,
    InvalidTestsError,
    OutputMatch,
    StdioTest,
    apps_call_suite,
    compare_stdout,
    example_call,
    humaneval_suite,
    judge_function,
    judge_stdio,
    mbpp_suite,
    parse_channel,
    plan_jobs,
)
from grpopp.rewards.sandbox import ExecResult, SandboxConfig

# -- stdout comparison ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actual", "expected", "rules", "match"),
    [
        ("5\n", "5", OutputMatch(), True),  # trailing newline
        ("5\n\n\n", "5\n", OutputMatch(), True),  # trailing blank lines dropped
        ("1  2\t3 \n", "1 2 3\n", OutputMatch(), True),  # tokens: runs of whitespace are one separator
        ("1 2 3\n", "1 23\n", OutputMatch(), False),  # but token boundaries count
        ("5\n6\n", "5\n", OutputMatch(), False),  # line count must match
        ("5 6\n", "5\n6\n", OutputMatch(), False),  # same tokens, other lines
        ("", "5\n", OutputMatch(), False),  # sys.exit(0) before printing
        ("  ab  \n", "ab\n", OutputMatch(whitespace="strip"), True),
        ("a  b\n", "a b\n", OutputMatch(whitespace="strip"), False),  # inner whitespace matters
        ("ab  \n", "ab\n", OutputMatch(whitespace="rstrip"), True),
        ("  ab\n", "ab\n", OutputMatch(whitespace="rstrip"), False),
        ("5\n", "5", OutputMatch(whitespace="exact"), False),
        ("3.1415927\n", "3.141593\n", OutputMatch(), False),  # no tolerance: tokens compare as text
        ("3.1415927\n", "3.141593\n", OutputMatch(float_tolerance=1e-6), True),  # |diff| = 3e-7
        ("3.1416\n", "3.141593\n", OutputMatch(float_tolerance=1e-6), False),  # |diff| = 7e-6
        ("1e9\n", "1000000001\n", OutputMatch(float_tolerance=1e-6), True),  # relative: 1e-9 < 1e-6
        ("nan\n", "nan\n", OutputMatch(float_tolerance=1e-6), True),  # identical text still matches
        ("nan\n", "1.0\n", OutputMatch(float_tolerance=1e-6), False),
        ("YES\n", "yes\n", OutputMatch(), False),  # case matters
    ],
)
def test_compare_stdout(actual, expected, rules, match):
    assert (compare_stdout(actual, expected, rules) is None) is match


def test_compare_stdout_says_where_it_differs():
    assert compare_stdout("1\n2\n", "1\n3\n") == "line 2: expected '3', got '2'"
    assert compare_stdout("1\n", "1\n2\n") == "1 output lines, expected 2"


# -- the plain-data codec (the same source runs in the harness and in the runner) ------------------


@pytest.fixture(scope="module")
def codec():
    namespace: dict = {}
    exec(compile(_CODEC_SOURCE, "codec", "exec"), namespace)
    return namespace


def crossed(codec, value):
    """What the other side rebuilds: encode, JSON text, decode."""
    return codec["decode"](json.loads(json.dumps(codec["encode"](value))))


def shape(value):
    """Type and value, recursively; floats by their exact hex form (nan, -0.0 included)."""
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, list | tuple):
        return (type(value).__name__, [shape(item) for item in value])
    if isinstance(value, set | frozenset):
        return (type(value).__name__, sorted(repr(shape(item)) for item in value))
    if isinstance(value, dict):
        return ("dict", [(shape(k), shape(v)) for k, v in value.items()])
    return (type(value).__name__, value)


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -(2**62) + 1,
        2**62,  # the first int sent as hex
        pytest.param(-(10**5000), id="5001-digit-int"),  # past int's 4300-digit str limit; hex has none
        0.1,
        -0.0,
        math.inf,
        -math.inf,
        math.nan,
        5e-324,
        "",
        "naïve \u2603 \ud800",  # a lone surrogate too
        b"\x00\xff",
        [1, [2.0, [True, None]]],
        (1,),
        (),
        {1, (2, 3), frozenset({"a"})},
        frozenset(),
        {"a": 1, 2: [3], (4, 5): {6: None}, None: b"", 1.5: True},
        [[]] * 3,
    ],
)
def test_codec_keeps_exact_types_and_values(codec, value):
    assert shape(crossed(codec, value)) == shape(value)


def test_codec_keeps_bool_and_int_apart_and_list_and_tuple_apart(codec):
    assert shape(crossed(codec, [True, 1, 1.0, (1,), [1]])) == (
        "list",
        [
            ("bool", True),
            ("int", 1),
            ("float", "0x1.0000000000000p+0"),
            ("tuple", [("int", 1)]),
            ("list", [("int", 1)]),
        ],
    )


def test_a_subclass_crosses_as_its_base_type_and_leaves_its_methods_behind(codec):
    class Rigged(int):
        def __eq__(self, other):
            return True

        __hash__ = int.__hash__

    class RiggedList(list):
        def __eq__(self, other):
            return True

    class Colour(enum.IntEnum):
        RED = 3

    got = crossed(codec, [Rigged(4), RiggedList([1]), Colour.RED, collections.Counter("aab")])
    assert shape(got) == shape([4, [1], 3, {"a": 2, "b": 1}])
    assert got[0] != 5 and got[1] != [2]  # rebuilt as plain int and list: their own __eq__


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ((x for x in []), "a generator"),
        (object(), "an object"),
        ([1, {"k": iter([])}], "a value holding a list_iterator"),
        (complex(1, 2), "a complex"),
        (bytearray(b"x"), "a bytearray"),
        (range(3), "a range"),
    ],
)
def test_values_that_are_not_plain_data_cannot_cross(codec, value, reason):
    with pytest.raises(codec["NotPlain"]) as error:
        codec["encode"](value)
    assert str(error.value) == reason


def test_nesting_is_bounded(codec):
    deep: list = []
    for _ in range(100):
        deep = [deep]
    assert shape(crossed(codec, deep)) == shape(deep)  # the innermost list at depth 100: fine
    with pytest.raises(codec["NotPlain"], match="nested deeper than 100 levels"):
        codec["encode"]([deep])
    looped: list = []
    looped.append(looped)  # a cycle is infinitely deep
    with pytest.raises(codec["NotPlain"], match="nested deeper than 100 levels"):
        codec["encode"](looped)


@pytest.mark.parametrize(
    "tree",
    [
        1.5,  # a float must be tagged
        {"a": 1},  # JSON objects are never sent
        [],
        ["x", 1],  # unknown tag
        ["i", 12],  # the hex must be a string
        ["i", "zz"],
        ["f", "0x1p+99999"],  # overflows
        ["y", "abc"],  # odd hex
        ["s", ["l"]],  # a list in a set: unhashable
        ["d", "k"],  # a key without a value
        ["d", ["l"], 1],  # an unhashable key
        ["l", ["t", 1.5]],
    ],
)
def test_decode_refuses_trees_encode_never_makes(codec, tree):
    with pytest.raises(codec["NotPlain"], match="malformed data"):
        codec["decode"](tree)


def test_harness_and_runner_sources_compile():
    compile(HARNESS_SOURCE, "main.py", "exec")
    compile(RUNNER_SOURCE, "runner.py", "exec")


# -- the harness's records -------------------------------------------------------------------------

NONCE = "f" * 32


def channel(*records, nonce=NONCE):
    return "".join(json.dumps({**r, "nonce": nonce}) + "\n" for r in records)


def result(**fields):
    return ExecResult(**{"exit_code": 0, **fields})


def test_verdicts_count_after_the_done_record_and_a_clean_exit():
    text = channel(
        {"i": 0, "kind": "passed", "reason": ""},
        {"i": 1, "kind": "wrong_answer", "reason": "assertion failed"},
        {"i": 2, "kind": "timeout", "reason": "the test ran past its 2 s budget"},
        {"event": "done"},
    )
    outcomes = judge_function(result(channel=text), 3, NONCE)
    assert [(o.kind, o.reason) for o in outcomes] == [
        ("passed", ""),
        ("wrong_answer", "assertion failed"),
        ("timeout", "the test ran past its 2 s budget"),
    ]


def test_without_done_or_a_clean_exit_no_test_passes():
    text = channel({"i": 0, "kind": "passed", "reason": ""}, {"i": 1, "kind": "wrong_answer", "reason": "x"})
    killed = result(exit_code=None, signal=9, timed_out=True, limits_hit=["wall"], channel=text)
    assert [o.kind for o in judge_function(killed, 3, NONCE)] == ["timeout", "wrong_answer", "timeout"]
    exited = result(channel=text)  # exit status 0 but no "done": the harness did not get through
    outcomes = judge_function(exited, 3, NONCE)
    assert [o.kind for o in outcomes] == ["missing", "wrong_answer", "missing"]
    assert outcomes[0].reason == "the harness ended without its final record"
    crashed = result(exit_code=1, stderr="Traceback\nMemoryError\n", channel=text + channel({"event": "done"}))
    outcomes = judge_function(crashed, 3, NONCE)  # "done", then a crash on the way out
    assert [o.kind for o in outcomes] == ["runtime_error", "wrong_answer", "runtime_error"]
    assert outcomes[0].reason == "exit status 1 MemoryError"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (channel({"i": 0, "kind": "passed", "reason": ""}, nonce="0" * 32), "not from this run's harness"),
        (channel({"i": 0, "kind": "passed", "reason": ""}, {"i": 0, "kind": "passed", "reason": ""}), "not a verdict"),
        (channel({"i": 5, "kind": "passed", "reason": ""}), "not a verdict"),  # out of range
        (channel({"i": True, "kind": "passed", "reason": ""}), "not a verdict"),  # bool index
        (channel({"i": 0, "kind": "missing", "reason": ""}), "not a verdict"),  # only the parent says "missing"
        (channel({"i": 0, "kind": "passed", "reason": "", "ok": True}), "unexpected fields"),
        (channel({"event": "done"}, {"i": 0, "kind": "passed", "reason": ""}), "not from this run's harness"),
        ('{"nonce": "' + NONCE + '", "i": NaN}\n', "not JSON"),
        ("garbage\n", "not JSON"),
        ("[1]\n", "not from this run's harness"),
    ],
)
def test_any_record_the_harness_never_writes_fails_every_test(text, reason):
    report, problem = parse_channel(text + channel({"event": "done"}), 2, NONCE)
    assert report.verdicts == {} and reason in problem
    outcomes = judge_function(result(channel=text + channel({"event": "done"})), 2, NONCE)
    assert [o.kind for o in outcomes] == ["runtime_error"] * 2 and "tampered" in outcomes[0].reason


def test_a_fatal_record_and_an_infrastructure_error_are_no_verdict():
    fatal = channel({"event": "fatal", "reason": "the test setup raised NameError (a problem of the data)"})
    assert [o.kind for o in judge_function(result(channel=fatal), 2, NONCE)] == ["error", "error"]
    failed = result(exit_code=None, error="bwrap could not set up the container")
    assert judge_stdio(failed, StdioTest(input="", output="")).kind == "error"
    assert judge_function(failed, 1, NONCE)[0].kind == "error"


def test_stdio_pass_needs_exit_zero_and_no_limit():
    test = StdioTest(input="", output="5\n")
    assert judge_stdio(result(stdout="5\n"), test).passed
    assert judge_stdio(result(stdout="5\n", exit_code=1), test).kind == "runtime_error"  # printed, then crashed
    assert judge_stdio(result(stdout="5\n", exit_code=None, signal=9, limits_hit=["cpu"]), test).kind == "limit"
    timed_out = result(stdout="5\n", exit_code=None, signal=9, timed_out=True, limits_hit=["wall"])
    assert judge_stdio(timed_out, test).kind == "timeout"


# -- planning -------------------------------------------------------------------------------------


def test_the_program_sees_neither_expected_values_nor_test_code():
    """Files of /sandbox are readable by the program; the spec (test code, expected values, nonce)
    crosses on the harness's stdin only, and stdio outputs never enter the container."""
    secret_out, secret_value, secret_code = "SECRET-OUTPUT-12345", "SECRET-VALUE-67890", "SECRET_HELPER_31415"
    config = SandboxConfig()
    stdio = HiddenTests(kind="stdio", stdio=[StdioTest(input="1\n", output=secret_out)])
    calls = HiddenTests(kind="function", fn_name="f", checks=[CallTest(args=[1], expected=secret_value)])
    asserts = mbpp_suite([f"assert f(1) == {secret_value!r}"], "x:1", setup=f"{secret_code} = 1")
    for suite in (stdio, calls, asserts):
        plan = plan_jobs("print(1)", suite, config)
        for job in plan.jobs:
            readable = [job.program, *map(str, job.files.values())]
            assert not any(secret in text for text in readable for secret in (secret_out, secret_value, secret_code))
            assert plan.nonce == "" or plan.nonce not in "".join(readable)
    spec = json.loads(plan_jobs("print(1)", asserts, config).jobs[0].stdin)
    assert secret_value in spec["tests"][0]["code"] and spec["setup"].endswith(f"{secret_code} = 1")


def test_function_jobs_scale_the_budget_by_the_number_of_tests_and_draw_a_nonce():
    config = SandboxConfig(wall_timeout_s=2.0, cpu_time_s=1)
    suite = mbpp_suite([f"assert f({i}) == {i}" for i in range(3)], "x:1")
    first, second = plan_jobs("def f(x): return x", suite, config), plan_jobs("def f(x): return x", suite, config)
    (job,) = first.jobs
    assert job.wall_timeout_s == 8.0 and job.cpu_time_s == 4  # 3 x 2 s + 2 s start-up; 3 x 1 s + 1 s
    assert job.channel and set(job.files) == {"runner.py", "solution.py"}
    spec = json.loads(job.stdin)
    assert spec["functions"] == ["f"] and spec["timeout_s"] == 2.0 and spec["nonce"] == first.nonce
    assert len(first.nonce) == 32 and first.nonce != second.nonce


# -- test code of data sets --------------------------------------------------------------------------


def test_mbpp_functions_are_the_names_the_asserts_call_that_nothing_else_defines():
    suite = mbpp_suite(
        [
            "assert set(similar((3, 4), (5, 4))) == {4}",  # set: a builtin
            "assert math.isclose(area(helper(2)), 12.56, rel_tol=0.01)",  # math: never imported by the test
            "assert all(similar(x, x) for x in Pair(1))",  # x: bound by the comprehension
        ],
        "mbpp.jsonl:7",
        setup="def helper(r):\n    return r",
        imports=["import re"],
    )
    assert (suite.fn_name, suite.other_functions) == ("similar", ["area", "Pair"])
    assert suite.setup == "import math\nimport re\ndef helper(r):\n    return r"
    assert [t.source for t in suite.checks] == [f"mbpp.jsonl:7 test_list[{i}]" for i in range(3)]
    assert example_call(suite) == "similar((3, 4), (5, 4))"


@pytest.mark.parametrize(
    ("asserts", "setup", "message"),
    [
        (["assert f(1 == 1"], "", "mbpp.jsonl:12 test_list[0], line 1: the test code does not parse"),
        (["assert f(1) == 1", "assert f(2) =="], "", "mbpp.jsonl:12 test_list[1], line 1: the test code does not"),
        (["assert f(1) == 1"], "def g(:", "mbpp.jsonl:12 test_setup_code, line 1: the test code does not parse"),
        (["assert len([1]) == 1"], "", "mbpp.jsonl:12: test_list calls no function of the solution"),
        (["assert f(1) == 1"], "def f(x):\n    return x", "calls no function of the solution"),
        ([], "", "mbpp.jsonl:12: test_list is empty"),
    ],
)
def test_unusable_mbpp_tests_name_the_file_and_line(asserts, setup, message):
    with pytest.raises(InvalidTestsError) as error:
        mbpp_suite(asserts, "mbpp.jsonl:12", setup)
    assert message in str(error.value)


def test_humaneval_is_one_test_that_runs_check_after_the_prompt_and_test_code():
    prompt = 'def helper(x):\n    return x\n\n\ndef inc(x: int) -> int:\n    """Return x + 1."""\n'
    test = "def check(candidate):\n    for x in range(3):\n        assert candidate(x) == helper(x) + 1\n"
    suite = humaneval_suite(prompt, test, "inc", "he.jsonl:3")
    assert suite.fn_name == "inc" and suite.setup == prompt + "\n" + test and suite.other_functions == []
    assert suite.checks == [AssertTest(code="check(inc)\n", source="he.jsonl:3 check(inc)")]


@pytest.mark.parametrize(
    ("prompt", "test", "entry_point", "message"),
    [
        ("def f(:\n", "def check(candidate):\n    pass\n", "f", "he.jsonl:4 prompt, line 1: the test code does not"),
        ("def f(): pass\n", "def check(candidate)\n", "f", "he.jsonl:4 test, line 1: the test code does not parse"),
        ("def f(): pass\n", "def test(candidate):\n    pass\n", "f", "he.jsonl:4: the test code defines no `def check"),
        ("def f(): pass\n", "def check():\n    pass\n", "f", "defines no `def check(candidate):`"),
        ("def f(): pass\n", "def check(candidate):\n    pass\n", "f()", "entry_point 'f()' is not a Python function"),
        ("def f(): pass\n", "def check(candidate):\n    pass\n", "class", "entry_point 'class' is not a Python"),
    ],
)
def test_unusable_humaneval_rows_name_the_file_and_line(prompt, test, entry_point, message):
    with pytest.raises(InvalidTestsError) as error:
        humaneval_suite(prompt, test, entry_point, "he.jsonl:4")
    assert message in str(error.value)


def test_apps_calls_keep_their_json_arguments_and_expected_values():
    suite = apps_call_suite("digital_root", [[16], 942], [[7], [6]], "apps.jsonl:2")
    assert suite.checks == [
        CallTest(args=[16], expected=[7], source="apps.jsonl:2 input_output[0]"),
        CallTest(args=[942], expected=[6], source="apps.jsonl:2 input_output[1]"),  # a bare argument: one argument
    ]
    assert example_call(suite) == "digital_root(16)"
    with pytest.raises(InvalidTestsError, match="apps.jsonl:2: fn_name 'two words' is not a Python function name"):
        apps_call_suite("two words", [[1]], [1], "apps.jsonl:2")


def test_reading_test_code_never_executes_it(tmp_path):
    marker = tmp_path / "pwned"
    code = f"__import__('os').mkdir({str(marker)!r})"
    mbpp_suite([f"assert f({code}) == 1"], "f:1", setup=code)
    humaneval_suite(code + "\n", f"def check(candidate):\n    {code}\n", "f", "f:2")
    assert not marker.exists()
