"""rewards.code_judge, pure parts: stdout comparison, strict JSON equality, the result channel, and
assert conversion (with ast, never exec). No sandbox needed."""

import json

import pytest

from rewards.code_judge import (
    DRIVER_SOURCE,
    AssertConversionError,
    FunctionTest,
    HiddenTests,
    OutputMatch,
    StdioTest,
    apps_function_tests,
    compare_stdout,
    convert_assert_list,
    convert_check_function,
    json_equal,
    judge_function,
    judge_stdio,
    parse_channel,
    plan_jobs,
)
from rewards.sandbox import ExecResult, SandboxConfig

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


# -- strict JSON equality --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actual", "expected", "equal"),
    [
        (1, 1, True),
        (1, 1.0, True),  # as Python's ==
        (True, 1, False),  # bool is not int
        (1, True, False),
        (0, False, False),
        (None, 0, False),
        ("1", 1, False),
        ([1, 2], [1, 2], True),
        ([1, 2], [2, 1], False),
        ([1, [True]], [1, [1]], False),  # nested bool/int
        ({"a": 1}, {"a": 1}, True),
        ({"a": 1, "b": 2}, {"a": 1}, False),
        ({"a": True}, {"a": 1}, False),
        (0.1 + 0.2, 0.3, False),  # exact without a tolerance
        ([], {}, False),
    ],
)
def test_json_equal(actual, expected, equal):
    assert json_equal(actual, expected) is equal


def test_json_equal_tolerances():
    assert json_equal(0.1 + 0.2, 0.3, rel_tol=1e-9)
    assert json_equal(3.1416, 3.14159, abs_tol=1e-4)
    assert not json_equal(3.15, 3.14159, abs_tol=1e-4)
    assert not json_equal(True, 1.0, rel_tol=1.0)  # tolerance never makes a bool a number


def test_json_equal_rejects_non_json_objects_even_with_a_rigged_eq():
    class AlwaysEqual:
        def __eq__(self, other):
            return True

    class RiggedInt(int):
        def __eq__(self, other):
            return True

    assert not json_equal(AlwaysEqual(), 5)
    assert not json_equal(RiggedInt(4), 5)  # type(actual) is not int: only parsed JSON passes
    assert not json_equal([AlwaysEqual()], [5])
    assert not json_equal({"a": AlwaysEqual()}, {"a": 5})


# -- the result channel ----------------------------------------------------------------------------


def channel(*records):
    return "".join(json.dumps(r) + "\n" for r in records)


def test_parse_channel_reads_results_and_events():
    text = channel(
        {"event": "loaded"}, {"i": 0, "ok": True, "value": 3}, {"i": 1, "ok": False, "error": "E"}, {"event": "done"}
    )
    values, problem = parse_channel(text, 2)
    assert problem is None
    assert values == {0: (True, 3), 1: (False, "E")}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (channel({"i": 0, "ok": True, "value": 1}, {"i": 0, "ok": True, "value": 2}), "reported twice"),
        (channel({"i": 5, "ok": True, "value": 1}), "not a result the driver writes"),  # out of range
        (channel({"i": True, "ok": True, "value": 1}), "not a result the driver writes"),  # bool index
        (channel({"i": 0, "ok": True, "value": 1, "passed": True}), "unexpected fields"),
        ('{"i": 0, "ok": true, "value": NaN}\n', "not plain JSON"),
        ("garbage\n", "not plain JSON"),
        ("[1]\n", "not a JSON object"),
        (channel({"event": "load_error", "error": "SystemExit: 0"}), "failed to load: SystemExit: 0"),
    ],
)
def test_parse_channel_refuses_what_the_driver_never_writes(text, reason):
    values, problem = parse_channel(text, 2)
    assert values == {}
    assert reason in problem


def result(**fields):
    return ExecResult(**{"exit_code": 0, **fields})


def test_judge_function_per_call_outcomes():
    calls = [FunctionTest(args=[1], expected=2), FunctionTest(args=[2], expected=3), FunctionTest(args=[3], expected=4)]
    text = channel(
        {"i": 0, "ok": True, "value": 2}, {"i": 1, "ok": True, "value": True}, {"i": 2, "ok": False, "error": "timeout"}
    )
    kinds = [o.kind for o in judge_function(result(channel=text), calls)]
    assert kinds == ["passed", "wrong_answer", "timeout"]


def test_judge_function_missing_results_fail_with_the_run_reason():
    calls = [FunctionTest(args=[1], expected=2), FunctionTest(args=[2], expected=3)]
    text = channel({"i": 0, "ok": True, "value": 2})
    killed = result(exit_code=None, signal=9, timed_out=True, limits_hit=["wall"], channel=text)
    assert [o.kind for o in judge_function(killed, calls)] == ["passed", "timeout"]
    exited = result(channel=text)  # os._exit(0) after the first call
    assert [o.kind for o in judge_function(exited, calls)] == ["passed", "missing"]


def test_judge_function_also_accept_and_tolerance():
    (test,) = apps_function_tests([[16]], [[7]], "f.jsonl:1")
    assert test.expected == [7] and test.also_accept == [7]
    for value in (7, [7]):
        assert judge_function(result(channel=channel({"i": 0, "ok": True, "value": value})), [test])[0].passed
    close = FunctionTest(args=[], expected=1.0, abs_tol=1e-6)
    assert judge_function(result(channel=channel({"i": 0, "ok": True, "value": 1.0000001})), [close])[0].passed


def test_infrastructure_error_is_not_a_verdict():
    failed = result(exit_code=None, error="bwrap could not set up the container")
    assert judge_stdio(failed, StdioTest(input="", output="")).kind == "error"
    assert judge_function(failed, [FunctionTest(args=[], expected=1)])[0].kind == "error"


def test_stdio_pass_needs_exit_zero_and_no_limit():
    test = StdioTest(input="", output="5\n")
    assert judge_stdio(result(stdout="5\n"), test).passed
    assert judge_stdio(result(stdout="5\n", exit_code=1), test).kind == "runtime_error"  # printed, then crashed
    assert judge_stdio(result(stdout="5\n", exit_code=None, signal=9, limits_hit=["cpu"]), test).kind == "limit"
    timed_out = result(stdout="5\n", exit_code=None, signal=9, timed_out=True, limits_hit=["wall"])
    assert judge_stdio(timed_out, test).kind == "timeout"


def test_expected_values_never_enter_the_sandbox():
    secret_out, secret_value = "SECRET-OUTPUT-12345", "SECRET-VALUE-67890"
    config = SandboxConfig()
    stdio = HiddenTests(kind="stdio", stdio=[StdioTest(input="1\n", output=secret_out)])
    function = HiddenTests(kind="function", fn_name="f", calls=[FunctionTest(args=[1], expected=secret_value)])
    for suite in (stdio, function):
        for job in plan_jobs("print(1)", suite, config):
            shipped = [job.program, str(job.stdin), *map(str, job.files.values())]
            assert not any(secret_out in text or secret_value in text for text in shipped)


def test_function_jobs_scale_the_budget_by_the_number_of_calls():
    config = SandboxConfig(wall_timeout_s=2.0, cpu_time_s=1)
    suite = HiddenTests(kind="function", fn_name="f", calls=[FunctionTest(args=[i], expected=i) for i in range(3)])
    (job,) = plan_jobs("def f(x): return x", suite, config)
    assert job.wall_timeout_s == 7.0 and job.cpu_time_s == 3  # 3 x 2 s + 1 s slack; 3 x 1 s
    assert json.loads(job.files["calls.json"]) == {"fn_name": "f", "args": [[0], [1], [2]], "timeout_s": 2.0}


def test_driver_source_compiles():
    compile(DRIVER_SOURCE, "driver.py", "exec")


# -- assert conversion ---------------------------------------------------------------------------


def test_mbpp_asserts_convert_to_args_and_expected():
    name, tests = convert_assert_list(
        [
            'assert remove_Occ("hello","l") == "heo"',
            "assert remove_Occ('abcda', 'a') == 'bcd'",
            "assert (1, -2) == remove_Occ([1, (2, 3)], {'k': None})",  # reversed, tuple -> list
        ],
        "mbpp.jsonl:7",
    )
    assert name == "remove_Occ"
    assert [(t.args, t.expected) for t in tests] == [
        (["hello", "l"], "heo"),
        (["abcda", "a"], "bcd"),
        ([[1, [2, 3]], {"k": None}], [1, -2]),
    ]
    assert tests[0].source == "mbpp.jsonl:7 test_list[0], line 1"


def test_mbpp_truthiness_is_and_tolerance_forms():
    _, tests = convert_assert_list(
        [
            "assert is_even(4)",
            "assert not is_even(3)",
            "assert is_even(0) is True",
            "assert math.isclose(is_even(2), 6.28, rel_tol=0.001)",
            "assert abs(is_even(1.5) - 0.5) < 1e-6",
        ],
        "f:1",
    )
    assert [t.expected for t in tests] == [True, False, True, 6.28, 0.5]
    assert (tests[3].rel_tol, tests[3].abs_tol) == (0.001, 0.0)
    assert tests[4].abs_tol == 1e-6 and tests[4].rel_tol is None


def test_humaneval_check_converts_candidate_calls():
    code = (
        "\n\nMETADATA = {'author': 'x'}\n\n\ndef check(candidate):\n"
        "    assert candidate([1, 2], 0.5) == False\n"
        "    assert abs(candidate([1.0], 1) - 1.0) < 1e-6\n"
        '    assert True, "This prints if this assert fails"\n'
    )
    tests = convert_check_function(code, "has_close", "he.jsonl:3")
    assert [(t.args, t.expected, t.abs_tol) for t in tests] == [([[1, 2], 0.5], False, None), ([[1.0], 1], 1.0, 1e-6)]


@pytest.mark.parametrize(
    ("asserts", "message"),
    [
        (["assert f(x) == 1"], "`x` is not a literal"),
        (["assert f(1) == g(2)"], "is not a literal"),
        (["assert set(f((1, 2))) == {1, 2}"], "is not a literal"),  # the argument is a call
        (["assert f(1) == {1, 2}"], "set"),  # no JSON form
        (["assert f(1) == {1: 'a'}"], "dict keys must be strings"),
        (["assert f(1) == float('nan')"], "is not a literal"),
        (["assert f(a=1) == 1"], "keyword or starred"),
        (["assert f(1) == 1", "assert g(1) == 1"], "an earlier assert called 'f'"),
        (["assert f(1) > 0"], "unsupported assert form"),
        (["x = f(1)"], "expected one assert statement"),
        (["assert f(1 == 1"], "does not parse"),
    ],
)
def test_unconvertible_asserts_name_the_file_and_line(asserts, message):
    with pytest.raises(AssertConversionError, match="data.jsonl:12") as error:
        convert_assert_list(asserts, "data.jsonl:12")
    assert message in str(error.value)
    if "does not parse" not in message and "expected one" not in message:
        assert "line 1: cannot convert" in str(error.value) and "skip_unconvertible" in str(error.value)


def test_humaneval_loops_are_refused_with_the_line():
    code = "def check(candidate):\n    assert candidate(1) == 2\n    for x in range(3):\n        assert candidate(x)\n"
    with pytest.raises(AssertConversionError, match=r"he.jsonl:4, line 3: cannot convert `for x in range"):
        convert_check_function(code, "f", "he.jsonl:4")


def test_conversion_never_executes_code(tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(AssertConversionError):
        convert_assert_list([f"assert f(__import__('os').mkdir({str(marker)!r})) == 1"], "f:1")
    assert not marker.exists()
