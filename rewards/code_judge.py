"""Judging programs against hidden tests, outside the sandbox: the expected outputs never enter it.

Two kinds of test, each judged in the parent from what the sandbox returned:

- **stdio**: the test's input is the program's stdin; its stdout is compared here with the expected
  output (``compare_stdout``). A pass needs matching output AND exit status 0 AND no timeout or
  limit: ``sys.exit(0)`` / ``os._exit(0)`` before printing leaves the output empty, which does not
  match, and printing the right answer then crashing does not pass either. Each test runs in a
  container of its own that holds only that test's input, so a program cannot read other tests.
- **function call**: a trusted driver (``DRIVER_SOURCE``, copied read-only into the container)
  imports the program, calls the function on each test's arguments and writes each return value
  as JSON on a dedicated channel. The parent parses that JSON into plain values (dict, list, str,
  int, float, bool, None) and compares them with its own strict ``json_equal`` (bool is not int,
  no NaN). An object whose ``__eq__`` always returns True cannot pass: it never reaches the
  comparison, only its JSON text does, and a rigged object has no JSON text that equals an
  arbitrary expected value.

Why the channel is a pipe (the sandbox's ``run(channel=True)``) and not stdout or a file: stdout
belongs to the program (prints must not corrupt results); a pipe needs no writable host directory
bound into the container, is read with a cap like stdout, and keeps the results of calls made
before a crash or timeout. The program can find the pipe (``/proc/self/fd``) and write to it, or
monkeypatch ``json`` and the driver, but it gains nothing: the driver only reports values, never
verdicts, and the expected values it would have to forge are not in the container. Lines that do
not parse, or a test reported twice, mark the channel as tampered and every test fails.

Assert-style data sets (MBPP ``test_list``, HumanEval ``check(candidate)``) are converted once, at
load time, into (arguments, expected value) pairs with ``ast``: arguments and expected values must be
literals (``ast.literal_eval``; nothing is ever executed in the parent). A form that cannot be
converted raises ``AssertConversionError`` naming the file, line and statement.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from rewards.sandbox import ExecResult, Job, SandboxConfig

TestKind: TypeAlias = Literal["stdio", "function"]
OutcomeKind: TypeAlias = Literal["passed", "wrong_answer", "runtime_error", "timeout", "limit", "missing", "error"]
WhitespaceRule: TypeAlias = Literal["tokens", "strip", "rstrip", "exact"]


class AssertConversionError(ValueError):
    """An assert could not be turned into an (arguments, expected) pair; names the file and line."""


class OutputMatch(BaseModel):
    """How a stdio program's output is compared with the expected output."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    whitespace: WhitespaceRule = "tokens"
    """Per line: "tokens" compares whitespace-separated tokens, "strip" the line without leading and
    trailing whitespace, "rstrip" without trailing whitespace, "exact" the whole output byte for byte."""

    float_tolerance: float | None = Field(None, gt=0.0)
    """If set, two numeric tokens match when they differ by at most this much (absolute or relative);
    e.g. 1e-6. Needs whitespace "tokens"."""


class StdioTest(BaseModel):
    """One stdin/stdout test."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    input: str
    """Fed to the program's stdin."""

    output: str
    """Expected stdout; never enters the sandbox."""


class FunctionTest(BaseModel):
    """One call of the function under test and the value it must return."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    args: list[JsonValue]
    """Positional arguments, plain JSON (tuples become lists)."""

    expected: JsonValue
    """The return value that passes; never enters the sandbox."""

    also_accept: list[JsonValue] = []
    """Other values that pass, e.g. APPS's [x] also accepts x (see ``apps_function_tests``)."""

    rel_tol: float | None = Field(None, ge=0.0)
    """Relative tolerance for numbers (from ``math.isclose(..., rel_tol=...)``); None: exact."""

    abs_tol: float | None = Field(None, ge=0.0)
    """Absolute tolerance for numbers (from ``abs(f(x) - y) < tol``); None: exact."""

    source: str = ""
    """Where the test came from, "file:line ...", for messages."""


class HiddenTests(BaseModel):
    """The hidden tests of one problem."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    kind: TestKind
    stdio: list[StdioTest] = []
    calls: list[FunctionTest] = []
    fn_name: str | None = None
    """Function under test (kind "function"); a method of ``class Solution`` is found too."""

    def __len__(self) -> int:
        return len(self.stdio) if self.kind == "stdio" else len(self.calls)


@dataclass(frozen=True)
class Outcome:
    """The verdict on one test; ``kind`` "error" means no verdict (the sandbox failed)."""

    kind: OutcomeKind
    reason: str = ""

    @property
    def passed(self) -> bool:
        return self.kind == "passed"


# -- stdio comparison ------------------------------------------------------------------------------


def _lines(text: str) -> list[str]:
    """Lines of an output, trailing blank lines dropped ("5\\n" and "5" are one line)."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _float_token(token: str) -> float | None:
    try:
        value = float(token)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _tokens_match(got: str, want: str, tolerance: float | None) -> bool:
    if got == want:
        return True
    if tolerance is None:
        return False
    got_value, want_value = _float_token(got), _float_token(want)
    if got_value is None or want_value is None:
        return False
    return math.isclose(got_value, want_value, rel_tol=tolerance, abs_tol=tolerance)


def compare_stdout(actual: str, expected: str, rules: OutputMatch | None = None) -> str | None:
    """None when ``actual`` matches ``expected`` under ``rules``, else why not (first difference).

    The line counts must match (after dropping trailing blank lines), then each line is compared
    by the whitespace rule; numeric tokens within ``float_tolerance`` match."""
    rules = rules or OutputMatch()
    if rules.whitespace == "exact":
        return None if actual == expected else "output differs from the expected output (exact match required)"
    got, want = _lines(actual), _lines(expected)
    if len(got) != len(want):
        return f"{len(got)} output lines, expected {len(want)}"
    for number, (got_line, want_line) in enumerate(zip(got, want, strict=True), start=1):
        if rules.whitespace == "tokens" or rules.float_tolerance is not None:
            got_tokens, want_tokens = got_line.split(), want_line.split()
            same = len(got_tokens) == len(want_tokens) and all(
                _tokens_match(g, w, rules.float_tolerance) for g, w in zip(got_tokens, want_tokens, strict=True)
            )
        elif rules.whitespace == "strip":
            same = got_line.strip() == want_line.strip()
        else:
            same = got_line.rstrip() == want_line.rstrip()
        if not same:
            return f"line {number}: expected {_clip(want_line)!r}, got {_clip(got_line)!r}"
    return None


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# -- strict JSON comparison -------------------------------------------------------------------------


def json_equal(actual: Any, expected: Any, rel_tol: float | None = None, abs_tol: float | None = None) -> bool:
    """Strict equality of plain JSON values: bool is not a number, int and float compare by value
    (as Python's ``==`` does: 1 == 1.0), numbers within tolerance when one is given, lists and
    dicts element by element. Anything that is not a plain JSON type never equals anything."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return type(actual) is bool and type(expected) is bool and actual == expected
    if type(expected) in (int, float):
        if type(actual) not in (int, float):
            return False
        if rel_tol is not None or abs_tol is not None:
            return math.isclose(actual, expected, rel_tol=rel_tol or 0.0, abs_tol=abs_tol or 0.0)
        return bool(actual == expected)
    if expected is None or type(expected) is str:
        return type(actual) is type(expected) and actual == expected
    if type(expected) is list:
        return (
            type(actual) is list
            and len(actual) == len(expected)
            and all(json_equal(a, e, rel_tol, abs_tol) for a, e in zip(actual, expected, strict=True))
        )
    if type(expected) is dict:
        return (
            type(actual) is dict
            and actual.keys() == expected.keys()
            and all(json_equal(actual[key], expected[key], rel_tol, abs_tol) for key in expected)
        )
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a plain JSON value")


def parse_plain_json(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity: the result holds plain types only."""
    return json.loads(text, parse_constant=_reject_constant)


# -- the function-call driver (runs inside the container) -----------------------------------------

DRIVER_SOURCE = r'''
"""grpopp's function-call driver: import solution.py, call the function on each test's arguments,
write each return value as one JSON line on the result channel (fd in argv[1]). It reports values
only; the verdicts are made outside the sandbox."""
import json, os, signal, sys

_dumps, _write, _here = json.dumps, os.write, os.path.dirname(os.path.abspath(__file__))
_channel = int(sys.argv[1])


def _emit(record):
    data = (_dumps(record) + "\n").encode()
    while data:
        data = data[_write(_channel, data):]


class _CallTimeout(BaseException):
    pass


def _alarm(signum, frame):
    raise _CallTimeout()


with open(os.path.join(_here, "calls.json")) as handle:
    _spec = json.load(handle)
with open(os.path.join(_here, "solution.py")) as handle:
    _code = handle.read()
sys.argv = [os.path.join(_here, "solution.py")]
_namespace = {"__name__": "solution", "__file__": sys.argv[0], "__builtins__": __builtins__}
try:
    exec(compile(_code, "solution.py", "exec"), _namespace)
except BaseException as exc:  # SystemExit included: leaving before the calls is a failure
    _emit({"event": "load_error", "error": f"{type(exc).__name__}: {exc}"[:500]})
    raise SystemExit(1)
_fn = _namespace.get(_spec["fn_name"])
if not callable(_fn) and isinstance(_namespace.get("Solution"), type):
    _fn = getattr(_namespace["Solution"](), _spec["fn_name"], None)  # LeetCode style (APPS/TACO)
if not callable(_fn):
    _emit({"event": "load_error", "error": f"no function named {_spec['fn_name']!r}"})
    raise SystemExit(1)
_emit({"event": "loaded"})
signal.signal(signal.SIGALRM, _alarm)
for _index, _args in enumerate(_spec["args"]):
    try:
        signal.setitimer(signal.ITIMER_REAL, _spec["timeout_s"])
        try:
            _value = _fn(*_args)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        _text = _dumps(_value, allow_nan=False)
    except _CallTimeout:
        _emit({"i": _index, "ok": False, "error": "timeout"})
        continue
    except BaseException as exc:
        _emit({"i": _index, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
        continue
    _data = ('{"i": %d, "ok": true, "value": %s}\n' % (_index, _text)).encode()
    while _data:
        _data = _data[_write(_channel, _data):]
_emit({"event": "done"})
'''


# -- planning runs and judging their results --------------------------------------------------------


def plan_jobs(program: str, suite: HiddenTests, config: SandboxConfig) -> list[Job]:
    """The sandbox runs that judge ``program``: one per stdio test (each sees only its own input);
    one for all calls of a function suite, with the per-test wall and CPU budgets times the number
    of calls (each call also has its own wall budget inside the driver)."""
    if suite.kind == "stdio":
        return [Job(program=program, stdin=test.input) for test in suite.stdio]
    if not suite.fn_name:
        raise ValueError("a function test suite needs fn_name")
    count = max(len(suite.calls), 1)
    spec = {"fn_name": suite.fn_name, "args": [test.args for test in suite.calls], "timeout_s": config.wall_timeout_s}
    return [
        Job(
            program=DRIVER_SOURCE,
            files={"solution.py": program, "calls.json": json.dumps(spec)},
            channel=True,
            wall_timeout_s=min(config.wall_timeout_s * count + 1.0, 3600.0),
            cpu_time_s=min(config.cpu_time_s * count, 3600),
        )
    ]


def _run_failure(result: ExecResult) -> Outcome | None:
    """The outcome of a run that cannot pass whatever it printed, or None."""
    if result.error is not None:
        return Outcome("error", result.error)
    if result.timed_out:
        return Outcome("timeout", f"wall-clock limit hit after {result.wall_time_s:.1f} s")
    if result.limits_hit:
        return Outcome("limit", f"limit hit: {', '.join(result.limits_hit)}")
    if result.exit_code != 0:
        how = f"killed by signal {result.signal}" if result.exit_code is None else f"exit status {result.exit_code}"
        last = result.stderr.strip().splitlines()[-1:] or [""]
        return Outcome("runtime_error", f"{how} {_clip(last[0])}".strip())
    return None


def judge_stdio(result: ExecResult, test: StdioTest, rules: OutputMatch | None = None) -> Outcome:
    """Pass: exit status 0, no timeout or limit, and the output matches."""
    failure = _run_failure(result)
    if failure is not None:
        return failure
    mismatch = compare_stdout(result.stdout, test.output, rules)
    return Outcome("passed") if mismatch is None else Outcome("wrong_answer", mismatch)


def judge_function(result: ExecResult, calls: Sequence[FunctionTest]) -> list[Outcome]:
    """Per call: passed when the driver reported a plain JSON value equal to the expected one."""
    if result.error is not None:
        return [Outcome("error", result.error)] * len(calls)
    values, problem = parse_channel(result.channel or "", len(calls))
    if problem is not None:
        return [Outcome("runtime_error", problem)] * len(calls)
    ended = _run_failure(result)
    outcomes = []
    for index, test in enumerate(calls):
        entry = values.get(index)
        if entry is None:
            why = ended or Outcome("missing", f"no result: the program ended with status {result.exit_code}")
            outcomes.append(Outcome(why.kind if why.kind != "runtime_error" else "missing", why.reason))
        elif not entry[0]:
            error = str(entry[1])
            outcomes.append(Outcome("timeout" if error == "timeout" else "runtime_error", error))
        elif any(json_equal(entry[1], want, test.rel_tol, test.abs_tol) for want in [test.expected, *test.also_accept]):
            outcomes.append(Outcome("passed"))
        else:
            got = _clip(json.dumps(entry[1]))
            outcomes.append(Outcome("wrong_answer", f"expected {_clip(json.dumps(test.expected))}, got {got}"))
    return outcomes


def parse_channel(text: str, count: int) -> tuple[dict[int, tuple[bool, Any]], str | None]:
    """Read the driver's JSON lines: {index: (ok, value or error)}, or a reason to fail every test
    (the program failed to load, or the channel holds something the driver never writes)."""
    values: dict[int, tuple[bool, Any]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = parse_plain_json(line)
        except ValueError:
            return {}, f"result channel line {number} is not plain JSON: tampered or truncated"
        if not isinstance(record, dict):
            return {}, f"result channel line {number} is not a JSON object: tampered"
        if record.get("event") == "load_error":
            return {}, f"the program failed to load: {record.get('error')}"
        if "event" in record:
            continue
        index, ok = record.get("i"), record.get("ok")
        if type(index) is not int or not 0 <= index < count or type(ok) is not bool or index in values:
            return {}, f"result channel line {number} is not a result the driver writes (test reported twice?)"
        if set(record) != ({"i", "ok", "value"} if ok else {"i", "ok", "error"}):
            return {}, f"result channel line {number} has unexpected fields: tampered"
        values[index] = (ok, record["value"] if ok else record["error"])
    return values, None


def judge(suite: HiddenTests, results: Sequence[ExecResult], rules: OutputMatch | None = None) -> list[Outcome]:
    """Outcomes of every test of ``suite`` from the results of ``plan_jobs``'s runs (same order)."""
    if suite.kind == "stdio":
        return [judge_stdio(result, test, rules) for result, test in zip(results, suite.stdio, strict=True)]
    (result,) = results
    return judge_function(result, suite.calls)


# -- assert conversion (load time, no execution) ---------------------------------------------------


def to_plain_json(value: Any, where: str) -> JsonValue:
    """A literal as plain JSON: tuples become lists; sets, bytes, complex numbers, NaN and dicts
    with non-string keys cannot be represented and raise."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AssertConversionError(f"{where}: {value!r} has no plain JSON form")
        return value
    if isinstance(value, list | tuple):
        return [to_plain_json(item, where) for item in value]
    if isinstance(value, dict):
        if not all(isinstance(key, str) for key in value):
            raise AssertConversionError(f"{where}: dict keys must be strings to compare as JSON, got {value!r}")
        return {key: to_plain_json(item, where) for key, item in value.items()}
    raise AssertConversionError(f"{where}: a {type(value).__name__} ({value!r}) has no plain JSON form")


@dataclass
class _Converter:
    """Turns assert statements into FunctionTests; ``function`` is the name that is called (or the
    HumanEval ``candidate`` parameter, mapped to ``entry_point``)."""

    where: str
    function: str | None = None
    called: str | None = None

    def fail(self, node: ast.AST, why: str) -> AssertConversionError:
        line = getattr(node, "lineno", "?")
        return AssertConversionError(
            f"{self.where}, line {line}: cannot convert `{_clip(ast.unparse(node), 120)}`: {why}. Supported: "
            "assert f(<literals>) == <literal>, assert f(...) is True/False/None, assert [not] f(...), "
            "assert math.isclose(f(...), <literal>[, rel_tol=, abs_tol=]), assert abs(f(...) - <literal>) < <tol>; "
            "set skip_unconvertible=true to skip such problems"
        )

    def call(self, node: ast.AST, statement: ast.AST) -> list[JsonValue]:
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise self.fail(statement, "the tested expression is not a plain call f(...)")
        name = node.func.id
        if self.function is not None and name != self.function:
            raise self.fail(statement, f"it calls {name!r}, not the function under test {self.function!r}")
        if self.called is not None and name != self.called:
            raise self.fail(statement, f"it calls {name!r} but an earlier assert called {self.called!r}")
        self.called = name
        if node.keywords or any(isinstance(arg, ast.Starred) for arg in node.args):
            raise self.fail(statement, "keyword or starred arguments")
        return [self.literal(arg, statement) for arg in node.args]

    def literal(self, node: ast.AST, statement: ast.AST) -> JsonValue:
        try:
            value = ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise self.fail(statement, f"`{_clip(ast.unparse(node))}` is not a literal") from None
        try:
            return to_plain_json(value, self.where)
        except AssertConversionError as exc:
            raise self.fail(statement, str(exc).split(": ", 1)[-1]) from None

    def convert(self, statement: ast.Assert) -> FunctionTest:
        test, where = statement.test, f"{self.where}, line {statement.lineno}"
        if isinstance(test, ast.Compare) and len(test.ops) == 1:
            op, right = test.ops[0], test.comparators[0]
            if isinstance(op, ast.Eq):
                call, value = (test.left, right) if isinstance(test.left, ast.Call) else (right, test.left)
                return FunctionTest(
                    args=self.call(call, statement), expected=self.literal(value, statement), source=where
                )
            if isinstance(op, ast.Is) and isinstance(right, ast.Constant) and right.value in (True, False, None):
                return FunctionTest(args=self.call(test.left, statement), expected=right.value, source=where)
            if isinstance(op, ast.Lt | ast.LtE) and _is_abs_difference(test.left):
                inner = test.left.args[0]  # type: ignore[attr-defined]
                tol = self.literal(right, statement)
                if type(tol) not in (int, float):
                    raise self.fail(statement, "the tolerance is not a number")
                return FunctionTest(
                    args=self.call(inner.left, statement),
                    expected=self.literal(inner.right, statement),
                    abs_tol=float(tol),  # type: ignore[arg-type]
                    source=where,
                )
        if isinstance(test, ast.Call) and _is_isclose(test.func):
            if len(test.args) != 2:
                raise self.fail(statement, "math.isclose needs two positional arguments")
            tolerances = {kw.arg: self.literal(kw.value, statement) for kw in test.keywords}
            if set(tolerances) - {"rel_tol", "abs_tol"} or not all(
                type(t) in (int, float) for t in tolerances.values()
            ):
                raise self.fail(statement, "math.isclose takes numeric rel_tol and abs_tol only")
            return FunctionTest(
                args=self.call(test.args[0], statement),
                expected=self.literal(test.args[1], statement),
                rel_tol=float(tolerances.get("rel_tol", 1e-9)),  # type: ignore[arg-type] # math.isclose's default
                abs_tol=float(tolerances.get("abs_tol", 0.0)),  # type: ignore[arg-type]
                source=where,
            )
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            return FunctionTest(args=self.call(test.operand, statement), expected=False, source=where)
        if isinstance(test, ast.Call):
            return FunctionTest(args=self.call(test, statement), expected=True, source=where)
        raise self.fail(statement, "unsupported assert form")


def _is_abs_difference(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "abs"
        and len(node.args) == 1
        and isinstance(node.args[0], ast.BinOp)
        and isinstance(node.args[0].op, ast.Sub)
    )


def _is_isclose(node: ast.AST) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr == "isclose" and isinstance(node.value, ast.Name) and node.value.id == "math"
    return isinstance(node, ast.Name) and node.id == "isclose"


def _parse(source: str, where: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise AssertConversionError(f"{where}, line {exc.lineno}: the test code does not parse: {exc.msg}") from None


def convert_assert_list(asserts: Sequence[str], where: str) -> tuple[str, list[FunctionTest]]:
    """MBPP style: each string one ``assert f(...) == ...``; returns (function name, tests).

    Notes on strictness: ``assert f(x)`` becomes "returns exactly True" (the original passes on any
    truthy value), and lists and tuples compare equal (JSON has arrays only)."""
    converter = _Converter(where)
    tests = []
    for number, text in enumerate(asserts):
        converter.where = f"{where} test_list[{number}]"
        module = _parse(text, converter.where)
        statements = [s for s in module.body if not isinstance(s, ast.Import | ast.ImportFrom)]
        if len(statements) != 1 or not isinstance(statements[0], ast.Assert):
            raise AssertConversionError(f"{converter.where}: expected one assert statement, got {_clip(text)!r}")
        tests.append(converter.convert(statements[0]))
    if converter.called is None:
        raise AssertConversionError(f"{where}: no asserts to convert")
    return converter.called, tests


def convert_check_function(test_code: str, entry_point: str, where: str) -> list[FunctionTest]:
    """HumanEval style: ``def check(candidate): assert candidate(...) == ...``; calls of the
    parameter become calls of ``entry_point``. Module-level METADATA, imports and docstrings are
    skipped; any other statement (loops, assignments) raises."""
    module = _parse(test_code, where)
    checks = [node for node in module.body if isinstance(node, ast.FunctionDef) and node.name == "check"]
    if len(checks) != 1 or not checks[0].args.args:
        raise AssertConversionError(f"{where}: expected one `def check(candidate):` in the test code")
    check = checks[0]
    converter = _Converter(where, function=check.args.args[0].arg)
    tests = []
    for statement in check.body:
        if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
            continue  # a docstring or a bare string
        if not isinstance(statement, ast.Assert):
            raise converter.fail(statement, "only assert statements can be converted")
        if isinstance(statement.test, ast.Constant):
            continue  # HumanEval's `assert True, "This prints if this assert fails"`: tests nothing
        tests.append(converter.convert(statement))
    if not tests:
        raise AssertConversionError(f"{where}: check() holds no asserts; entry point {entry_point!r}")
    return tests


def apps_function_tests(inputs: Sequence[Any], outputs: Sequence[Any], where: str) -> list[FunctionTest]:
    """APPS/TACO call-based tests: ``inputs[i]`` is the argument list; ``outputs[i]`` the value,
    which APPS often wraps in a one-element list, so that both [x] and x pass, as in APPS's own
    checker (hendrycks/apps, eval/testing_util.py: ``output == outputs[i] or output == outputs[i][0]``)."""
    tests = []
    for number, (args, output) in enumerate(zip(inputs, outputs, strict=True)):
        place = f"{where} input_output[{number}]"
        plain_args = to_plain_json(args if isinstance(args, list) else [args], place)
        expected = to_plain_json(output, place)
        also = [expected[0]] if isinstance(expected, list) and len(expected) == 1 else []
        tests.append(FunctionTest(args=plain_args, expected=expected, also_accept=also, source=place))
    return tests
