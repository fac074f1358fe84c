"""Judging programs against hidden tests: stdio tests outside the sandbox, function tests by a trusted
harness inside it that never loads the program.

Two kinds of test:

- **stdio**: the test's input is the program's stdin; its stdout is compared here with the expected
  output (``compare_stdout``). A pass needs matching output AND exit status 0 AND no timeout or
  limit: ``sys.exit(0)`` / ``os._exit(0)`` before printing leaves the output empty, which does not
  match, and printing the right answer then crashing does not pass either. Each test runs in a
  container of its own that holds only that test's input, so a program cannot read other tests.
- **function**: the data set's own test code runs as written: HumanEval's ``check(candidate)``
  (loops, random inputs, helper functions of the prompt, imports), MBPP's ``test_list`` asserts
  after ``test_setup_code``, and APPS/TACO ``fn_name`` calls (``CallTest``: arguments and expected
  value as JSON, compared with APPS's rule). One container judges all tests of one program.

Split-process judging of function tests (one bubblewrap container per program, ``grpopp.rewards.sandbox``):

1. The container's main program is grpopp's harness (``HARNESS_SOURCE``, PID 1 of the container).
   It reads its spec from stdin: the test code (``HiddenTests.setup`` and each test), the names of
   the functions under test, the per-test timeout and a random nonce the parent drew for this run.
   The spec crosses on stdin only: it is in no file of ``/sandbox``, which holds the harness, the
   runner (``RUNNER_SOURCE``) and the candidate's ``solution.py``, read-only.
2. Before it starts any process, the harness makes itself non-dumpable (``prctl(PR_SET_DUMPABLE,
   0)`` through ctypes), so that a process of the same uid cannot ptrace it, ``pidfd_getfd`` its
   descriptors or open ``/proc/<harness>/fd``, ``mem`` or ``environ``; it resets SIGINT to the
   default, so that, as PID 1, no signal from inside the container reaches it except SIGALRM (its
   timer, which at worst times a test out). Its stdin and stdout become ``/dev/null``.
3. It executes the setup (HumanEval: the prompt, which defines helpers such as ``poly`` or
   ``encode_cyclic``, then the test code), binds each function under test to a proxy, and runs
   each test under its own SIGALRM budget. The candidate's program is never imported here.
4. Each proxy call is forwarded over a pipe to the runner: a fresh interpreter (fork, then exec:
   none of the harness's memory survives) whose descriptors are its two call pipes only (stdin,
   stdout and stderr are ``/dev/null``, every other descriptor is closed; prints corrupt nothing)
   and which loads ``solution.py``. Arguments and return values cross as plain data with their
   exact types (None, bool, int, float, str, bytes, list, tuple, dict, set, frozenset) in a tagged
   JSON encoding (``_CODEC_SOURCE``: ints of any size, floats exact through ``float.hex``, nan and
   inf included; depth and size bounded). The harness rebuilds each value itself and the test code
   compares it with Python's own semantics, so HumanEval's rules hold exactly (``1 == True``
   passes, a list is not a tuple) and a rigged ``__eq__``, a patched builtin or ``sys.exit(0)`` in
   the candidate's process changes nothing in the harness. A value that is not plain data fails
   its test ("returned a generator, not plain data"); a subclass of a plain type crosses as its
   base type (a Counter as a dict), leaving its methods behind. An exception the candidate raises
   is raised in the test code as the builtin type of that name (a test may expect a ValueError),
   else as ``CandidateError``.
5. A call that times out, crashes the runner or breaks the protocol fails its test; the runner is
   killed (with its process group) and restarted for the next test. A program that fails to load
   is not restarted: every later test fails with the same reason.
6. The harness writes one verdict record per test to the sandbox's result channel
   (``run(channel=True)``), each carrying the nonce, then a final "done" record. The parent
   (``judge``) accepts a pass only with the right nonce on every record, the "done" record and the
   harness's clean exit; otherwise every test fails that was not reported failed. The expected
   values never leave the harness; the runner has no descriptor of the channel and cannot learn
   the nonce. (In the weaker ``rlimits`` mode the harness is not PID 1, so the runner can kill or
   stop it: then no "done" record comes and every test fails.)

Test code is trusted data (from the data set, never from the model); it is only parsed with ``ast``
at load time (``humaneval_suite``, ``mbpp_suite``), never executed in the parent. Known limits:
arguments are copies (a test that checks an in-place change of an argument cannot pass), and a test
that passes a function or another non-plain object to the candidate gets status "error".
"""

from __future__ import annotations

import ast
import builtins
import json
import keyword
import math
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from grpopp.rewards.sandbox import ExecResult, Job, SandboxConfig

TestKind: TypeAlias = Literal["stdio", "function"]
OutcomeKind: TypeAlias = Literal["passed", "wrong_answer", "runtime_error", "timeout", "limit", "missing", "error"]
WhitespaceRule: TypeAlias = Literal["tokens", "strip", "rstrip", "exact"]

HARNESS_KINDS: frozenset[str] = frozenset({"passed", "wrong_answer", "runtime_error", "timeout", "error"})
"""Verdicts the harness may report for one test ("error": the test code passed something that is not
plain data to the program, a problem of the data); "missing" and "limit" are the parent's."""

MAX_MESSAGE_BYTES = 16 << 20
"""Largest call or reply between the harness and the runner (one JSON line)."""

START_UP_S = 2.0
"""Wall time a function-test container gets on top of its tests' budgets (two interpreter starts)."""


class InvalidTestsError(ValueError):
    """A row's test code cannot be used (does not parse, names no function); names file and line."""


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


class AssertTest(BaseModel):
    """Test code run by the harness: it passes when it raises nothing (HumanEval, MBPP)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    type: Literal["assert"] = "assert"
    code: str
    """Statements run in the harness's namespace after ``HiddenTests.setup``; the functions under
    test are proxies there, e.g. ``assert add(1, 2) == 3`` or ``check(has_close_elements)``."""

    source: str = ""
    """Where the test came from, "file:line ...", for messages."""


class CallTest(BaseModel):
    """One call with JSON arguments and an expected value, judged by APPS's rule (APPS/TACO fn_name)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    type: Literal["call"] = "call"
    args: list[JsonValue]
    """Positional arguments."""

    expected: JsonValue
    """Passes when the return value (a tuple as a list) equals it, or its only element when it is a
    one-element list (hendrycks/apps, eval/testing_util.py); stays in the harness."""

    source: str = ""


FunctionTest: TypeAlias = Annotated[AssertTest | CallTest, Field(discriminator="type")]


class HiddenTests(BaseModel):
    """The hidden tests of one problem."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    kind: TestKind
    stdio: list[StdioTest] = []
    checks: list[FunctionTest] = []
    fn_name: str | None = None
    """Function under test (kind "function"); a method of ``class Solution`` is found too."""

    other_functions: list[str] = []
    """Further names the test code calls that the program defines (each becomes a proxy too)."""

    setup: str = ""
    """Trusted code the harness runs once before the tests: HumanEval's prompt and test code, MBPP's
    test_setup_code (and imports of standard modules the asserts use without importing them)."""

    def __len__(self) -> int:
        return len(self.stdio) if self.kind == "stdio" else len(self.checks)


@dataclass(frozen=True)
class Outcome:
    """The verdict on one test; ``kind`` "error" means no verdict (the sandbox or the data failed)."""

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


# -- the programs inside a function-test container -------------------------------------------------

_CODEC_SOURCE = r'''
_MAX_DEPTH = 100
_SMALL_INT = 1 << 62
_PLAIN = "None, bool, int, float, str, bytes, list, tuple, dict, set, frozenset"


class NotPlain(Exception):
    """A value that cannot cross between the harness and the runner; says what it is."""


def _a(name):
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def encode(value, depth=0):
    """``value`` as a JSON-ready tree that keeps its exact type: None, True, False, a str and a small
    int as themselves; a large int as ["i", hex]; anything else as a list that starts with a tag:
    ["f", float.hex], ["y", hex], ["l", ...], ["t", ...], ["s", ...], ["z", ...] (frozenset),
    ["d", key, value, ...]. A subclass of a plain type crosses as its base type (an IntEnum as int,
    a Counter as dict): its own methods stay behind."""
    if value is None or value is True or value is False:
        return value
    kind = type(value)
    if depth > _MAX_DEPTH:
        raise NotPlain("a value nested deeper than %d levels" % _MAX_DEPTH)
    if issubclass(kind, int):
        number = int.__int__(value)
        return number if -_SMALL_INT < number < _SMALL_INT else ["i", format(number, "x")]
    if issubclass(kind, float):
        return ["f", float.hex(value)]
    if issubclass(kind, str):
        return str.__str__(value)
    if issubclass(kind, bytes):
        return ["y", bytes.hex(value)]
    for base, tag in ((list, "l"), (tuple, "t"), (frozenset, "z"), (set, "s")):
        if issubclass(kind, base):
            return [tag] + [encode(item, depth + 1) for item in base.__iter__(value)]
    if issubclass(kind, dict):
        tree = ["d"]
        for key, item in dict.items(value):
            tree.append(encode(key, depth + 1))
            tree.append(encode(item, depth + 1))
        return tree
    raise NotPlain(_a(kind.__name__) if depth == 0 else "a value holding " + _a(kind.__name__))


def decode(tree, depth=0):
    """The value an ``encode`` tree stands for, rebuilt with exact types; NotPlain for any other tree."""
    if tree is None or tree is True or tree is False or type(tree) is str or type(tree) is int:
        return tree
    if type(tree) is not list or not tree or type(tree[0]) is not str or depth > _MAX_DEPTH:
        raise NotPlain("malformed data")
    tag, rest = tree[0], tree[1:]
    if tag in ("i", "f", "y"):
        if len(rest) != 1 or type(rest[0]) is not str:
            raise NotPlain("malformed data")
        try:
            if tag == "i":
                return int(rest[0], 16)
            return float.fromhex(rest[0]) if tag == "f" else bytes.fromhex(rest[0])
        except (ValueError, OverflowError):
            raise NotPlain("malformed data") from None
    items = [decode(item, depth + 1) for item in rest]
    try:
        if tag == "l":
            return items
        if tag == "t":
            return tuple(items)
        if tag == "s":
            return set(items)
        if tag == "z":
            return frozenset(items)
        if tag == "d" and len(items) % 2 == 0:
            return dict(zip(items[0::2], items[1::2]))
    except TypeError:
        raise NotPlain("malformed data (an unhashable key)") from None
    raise NotPlain("malformed data")
'''

RUNNER_SOURCE = (
    r'''"""grpopp's runner: holds the program under test and answers the calls the harness forwards
(grpopp.rewards.code_judge). Everything here is in the candidate's reach; the harness trusts nothing it says."""
import json
import os
import sys
'''
    + _CODEC_SOURCE
    + r"""
_requests, _replies = int(sys.argv[1]), int(sys.argv[2])
_dumps, _loads, _read, _write = json.dumps, json.loads, os.read, os.write


def _send(message):
    data = (_dumps(message, separators=(",", ":")) + "\n").encode()
    while data:
        data = data[_write(_replies, data):]


def _text(exc):
    try:
        return ("%s: %s" % (type(exc).__name__, exc))[:500]
    except BaseException:
        return type(exc).__name__


def _incoming():
    buffer, start = bytearray(), 0
    while True:
        end = buffer.find(b"\n", start)
        if end < 0:
            start = len(buffer)
            chunk = _read(_requests, 1 << 16)
            if not chunk:
                return
            buffer += chunk
            continue
        line = bytes(buffer[:end])
        del buffer[: end + 1]
        start = 0
        yield line


def _load():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "solution.py")
    sys.argv = [path]
    namespace = {"__name__": "solution", "__file__": path, "__builtins__": __builtins__}
    try:
        with open(path, encoding="utf-8") as handle:
            code = handle.read()
        exec(compile(code, "solution.py", "exec"), namespace)
    except BaseException as exc:  # SystemExit included: leaving before the calls is a failure
        _send(["load_error", _text(exc)])
        os._exit(1)
    return namespace


def _function(namespace, name):
    found = namespace.get(name)
    if not callable(found) and isinstance(namespace.get("Solution"), type):
        found = getattr(namespace["Solution"](), name, None)  # LeetCode style (APPS/TACO)
    return found if callable(found) else None


_namespace = _load()
_send(["ready"])
for _line in _incoming():
    _seq, _name, _args, _kwargs = _loads(_line)
    try:
        _fn = _function(_namespace, _name)
        if _fn is None:
            _send([_seq, "missing"])
            continue
        _value = _fn(*decode(_args), **decode(_kwargs))
    except BaseException as exc:
        _send([_seq, "raise", type(exc).__name__, _text(exc).split(": ", 1)[-1]])
        continue
    try:
        _reply = [_seq, "ok", encode(_value)]
    except NotPlain as exc:
        _reply = [_seq, "notplain", str(exc)[:200]]
    except Exception as exc:
        _reply = [_seq, "notplain", "a value that cannot be read (%s)" % _text(exc)[:200]]
    _send(_reply)
"""
)

HARNESS_SOURCE = (
    r'''"""grpopp's judging harness: the trusted main program of a function-test container
(grpopp.rewards.code_judge, whose docstring gives the design). It never loads the program under test."""
import builtins
import ctypes
import json
import os
import reprlib
import signal
import sys
import time
'''
    + _CODEC_SOURCE
    + r'''
_CHANNEL = int(sys.argv[-1])
_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runner.py")
_FLAGS = ["-I", "-B", "-X", "utf8"] + (["-S"] if sys.flags.no_site else [])
_short = reprlib.Repr()
_short.maxstring = _short.maxother = 80
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = _short.maxfrozenset = 8
_nonce = ""


class CandidateError(Exception):
    """An exception the program under test raised whose type is not a builtin one."""


class _Failed(BaseException):
    """Ends a test with a verdict; a BaseException, so that test code's ``except Exception`` cannot hide it."""

    def __init__(self, kind, reason):
        super().__init__(reason)
        self.kind, self.reason = kind, reason


class _Timeout(BaseException):
    pass


class _State:
    armed = False
    fired = False
    failure = None


def _alarm(signum, frame):
    if _State.armed and not _State.fired:
        _State.fired = True
        raise _Timeout()


def _fail(kind, reason):
    _State.failure = failure = _Failed(kind, reason)
    raise failure


def _emit(record):
    record["nonce"] = _nonce
    data = (json.dumps(record) + "\n").encode()
    while data:
        data = data[os.write(_CHANNEL, data):]


def _protect():
    """Non-dumpable: no process of the same uid may ptrace this one or open /proc/<pid>/fd, mem,
    environ. SIGINT back to SIG_DFL: as PID 1 nothing from inside the container reaches it then."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0 or libc.prctl(3, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE, PR_GET_DUMPABLE
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) did not take effect")
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _timed(seconds, work):
    """(work's exception or None, whether the budget ran out). SIGALRM raises _Timeout once per
    budget; wherever it lands, even after work() returned, the loop catches it and disarms again."""
    error, started = None, False
    _State.fired = False
    while True:
        try:
            if not started:
                started = True
                _State.armed = True
                signal.setitimer(signal.ITIMER_REAL, seconds)
                try:
                    work()
                except _Timeout:
                    raise
                except BaseException as exc:
                    error = exc
            _State.armed = False
            signal.setitimer(signal.ITIMER_REAL, 0)
            return error, _State.fired
        except _Timeout:
            continue


class _Runner:
    """The process that holds the program under test: started at the first call, and again after a
    call that timed out, crashed it or broke the protocol."""

    def __init__(self, max_bytes):
        self.pid, self.to_runner, self.from_runner = None, -1, -1
        self.buffer = bytearray()
        self.seq, self.busy, self.loading, self.max_bytes = 0, False, False, max_bytes
        self.load_error = self.raised = None
        self.raised_reason = self.last_call = self.last_result = ""

    def start(self):
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the runner: its two pipe ends and /dev/null, then exec (no harness memory survives)
            try:
                os.setpgid(0, 0)
                null = os.open(os.devnull, os.O_RDWR)
                for fd in (0, 1, 2):
                    os.dup2(null, fd)
                low = 3
                for fd in sorted((request_read, reply_write)):
                    os.closerange(low, fd)
                    os.set_inheritable(fd, True)
                    low = fd + 1
                os.closerange(low, 1 << 16)
                os.execv(sys.executable, [sys.executable, *_FLAGS, _RUNNER, str(request_read), str(reply_write)])
            finally:
                os._exit(127)
        os.close(request_read)
        os.close(reply_write)
        self.pid, self.to_runner, self.from_runner = pid, request_write, reply_read
        self.buffer.clear()
        self.busy = self.loading = True
        try:
            reply = self.receive()
        except _Failed as failed:  # it died or broke the protocol while loading: so will every restart
            self.load_error = failed.reason
            raise
        finally:
            self.loading = False
        self.busy = False
        if reply == ["ready"]:
            return
        if len(reply) == 2 and reply[0] == "load_error" and type(reply[1]) is str:
            self.load_error = "the program failed to load: " + reply[1][:500]
        else:
            self.load_error = "the program's runner broke the protocol while loading"
        self.stop()
        _fail("runtime_error", self.load_error)

    def stop(self):
        if self.pid is not None:
            for kill in (os.killpg, os.kill):
                try:
                    kill(self.pid, signal.SIGKILL)
                except OSError:
                    pass
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = None
        for fd in (self.to_runner, self.from_runner):
            try:
                os.close(fd)
            except OSError:  # -1, or already closed when a timer cut an earlier stop() short
                pass
        self.to_runner = self.from_runner = -1
        self.busy = False
        while True:  # as PID 1 the harness inherits the runner's orphans: reap those that ended
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break

    def _ended(self):
        for _ in range(40):
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return "the runner ended"
            if pid:
                self.pid = None
                if os.WIFSIGNALED(status):
                    return "the program was killed by signal %s" % signal.Signals(os.WTERMSIG(status)).name
                return "the program exited with status %d" % os.WEXITSTATUS(status)
            time.sleep(0.005)
        return "the program closed its reply pipe"

    def _break(self, reason):
        where = " while loading" if self.loading else " during " + self.last_call
        self.stop()
        _fail("runtime_error", reason + where)

    def receive(self):
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end >= 0:
                break
            start = len(self.buffer)
            if start > self.max_bytes:
                self._break("the program sent a reply over %d bytes" % self.max_bytes)
            chunk = os.read(self.from_runner, 1 << 16)
            if not chunk:
                self._break(self._ended())
            self.buffer += chunk
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        try:
            message = json.loads(line)
        except (ValueError, RecursionError, MemoryError):
            message = None
        if type(message) is not list or not message:
            self._break("the program sent a reply that is not a JSON list")
        return message

    def call(self, name, args, kwargs):
        self.last_call = "%s(%s)" % (name, ", ".join(
            [_short.repr(a) for a in args] + ["%s=%s" % (k, _short.repr(v)) for k, v in kwargs.items()]))
        if self.load_error is not None:
            _fail("runtime_error", self.load_error)
        try:
            packed = ["t"] + [encode(value) for value in args]  # each argument at depth 0: its own message
            named = ["d"] + [item for key, value in kwargs.items() for item in (key, encode(value))]
            request = json.dumps([self.seq + 1, name, packed, named], separators=(",", ":"))
        except NotPlain as exc:
            _fail("error", "the test passes %s to %s: only plain data can cross to the program" % (exc, name))
        if self.pid is None:
            self.start()
        self.seq += 1
        self.busy = True
        data = (request + "\n").encode()
        while data:
            try:
                data = data[os.write(self.to_runner, data):]
            except BrokenPipeError:
                self._break(self._ended())
        reply = self.receive()
        self.busy = False
        return self.answer(name, reply)

    def answer(self, name, reply):
        status = reply[1] if len(reply) > 1 and reply[0] == self.seq else None
        if status == "ok" and len(reply) == 3:
            try:
                value = decode(reply[2])
            except (NotPlain, RecursionError, MemoryError) as exc:
                self._break("the program sent %s" % exc)
            self.last_result = _short.repr(value)
            return value
        if status == "raise" and len(reply) == 4 and type(reply[2]) is str and type(reply[3]) is str:
            raise self.exception(reply[2][:100], reply[3][:500])
        if status == "notplain" and len(reply) == 3 and type(reply[2]) is str:
            _fail("wrong_answer", "%s returned %s, not plain data (%s)" % (self.last_call, reply[2][:200], _PLAIN))
        if status == "missing" and len(reply) == 2:
            _fail("runtime_error", "the program defines no function %r" % name)
        self._break("the program's reply broke the protocol")

    def exception(self, type_name, message):
        """The candidate's exception, raised in the test code: a builtin type as itself (a test may
        expect a ValueError), any other as CandidateError."""
        kind = getattr(builtins, type_name, None) if type_name.isidentifier() else None
        error = None
        if isinstance(kind, type) and issubclass(kind, Exception):
            try:
                error = kind(message)
            except Exception:
                error = None
        self.raised = error if error is not None else CandidateError("%s: %s" % (type_name, message))
        self.raised_reason = "%s raised %s: %s" % (self.last_call, type_name, message)
        self.last_result = ""
        return self.raised


class _Proxy:
    """Stands for a function of the program under test in the test code's namespace."""

    def __init__(self, runner, name):
        self._runner, self.__name__ = runner, name

    def __call__(self, *args, **kwargs):
        if _State.fired:
            raise _Timeout()
        return self._runner.call(self.__name__, args, kwargs)

    def __repr__(self):
        return "<function %s of the program under test>" % self.__name__


def _apps_equal(output, expected):
    """APPS's rule (hendrycks/apps, eval/testing_util.py): a tuple compares as a list; the output
    equals the expected value or, when that is a non-empty list, its first element (as a list of
    lists when the output is a list of tuples)."""
    if isinstance(output, tuple):
        output = list(output)
    if output == expected:
        return True
    if not isinstance(expected, list) or not expected:
        return False
    if output == expected[0]:
        return True
    try:
        return isinstance(output[0], tuple) and [list(x) for x in output] == expected[0]
    except (TypeError, IndexError, KeyError):
        return False


def _where(error, sources):
    """" at <test 2> line 1: `assert f(1) == 2`" for the innermost frame of trusted test code."""
    found, tb = None, error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in sources:
            found = (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
        tb = tb.tb_next
    if found is None:
        return ""
    lines = sources[found[0]].splitlines()
    text = lines[found[1] - 1].strip() if 0 < found[1] <= len(lines) else ""
    return " at %s line %d: `%s`" % (found[0], found[1], text[:160])


def _classify(error, runner, sources):
    if isinstance(error, _Failed):
        return error.kind, error.reason
    if runner.raised is not None and error is runner.raised:
        return "runtime_error", runner.raised_reason
    detail = ": %s" % str(error)[:200] if str(error) else ""
    if isinstance(error, AssertionError):
        reason = "assertion failed" + _where(error, sources) + detail
    else:
        reason = "the test raised %s%s%s" % (type(error).__name__, detail, _where(error, sources))
    if runner.last_call:
        reason += "; last call %s %s" % (
            runner.last_call, "returned " + runner.last_result if runner.last_result else "raised")
    return "wrong_answer", reason


def _run_test(test, code, namespace, runner, spec, sources):
    runner.raised, runner.last_call, runner.last_result, _State.failure = None, "", "", None

    def work():
        if test["type"] == "call":
            value = namespace[spec["functions"][0]](*test["args"])
            if not _apps_equal(value, test["expected"]):
                got, want = _short.repr(value), _short.repr(test["expected"])
                raise _Failed("wrong_answer", "expected %s, got %s" % (want, got))
        else:
            exec(code, dict(namespace))

    error, timed_out = _timed(spec["timeout_s"], work)
    cut_off = runner.busy
    if cut_off:  # a call was cut off: the runner is hung or half-way through a reply
        runner.stop()
    if timed_out:
        return "timeout", "the test ran past its %g s budget%s" % (
            spec["timeout_s"], " in the call " + runner.last_call if cut_off else "")
    if _State.failure is not None:  # also when the test code caught it
        return _State.failure.kind, _State.failure.reason
    if error is None:
        return "passed", ""
    return _classify(error, runner, sources)


def _main():
    global _nonce
    spec = json.loads(sys.stdin.buffer.read())
    _nonce = spec["nonce"]
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    os.set_inheritable(_CHANNEL, False)
    try:
        _protect()
    except (OSError, AttributeError) as exc:
        _emit({"event": "fatal", "reason": "the harness could not make itself non-dumpable: %s" % exc})
        return
    signal.signal(signal.SIGALRM, _alarm)
    sources = {"<setup>": spec["setup"]}
    sources.update(("<test %d>" % i, t.get("code", "")) for i, t in enumerate(spec["tests"]))
    namespace = {"__name__": "__grpopp_tests__", "__builtins__": builtins}
    try:
        setup = compile(spec["setup"], "<setup>", "exec")
        codes = [compile(t["code"], "<test %d>" % i, "exec") if t["type"] == "assert" else None
                 for i, t in enumerate(spec["tests"])]
    except (SyntaxError, ValueError) as exc:
        _emit({"event": "fatal", "reason": "the test code does not compile here: %s" % exc})
        return
    error, timed_out = _timed(spec["timeout_s"], lambda: exec(setup, namespace))
    if error is not None or timed_out:
        why = "ran past its budget" if timed_out else "raised %s: %s" % (type(error).__name__, error)
        _emit({"event": "fatal", "reason": ("the test setup %s%s (a problem of the data, not of the program)"
                                            % (why, _where(error, sources) if error else ""))[:1000]})
        return
    runner = _Runner(spec["max_message_bytes"])
    for name in spec["functions"]:
        namespace[name] = _Proxy(runner, name)
    for index, test in enumerate(spec["tests"]):
        kind, reason = _run_test(test, codes[index], namespace, runner, spec, sources)
        _emit({"i": index, "kind": kind, "reason": reason[:1000]})
    runner.stop()
    _emit({"event": "done"})


_main()
'''
)


# -- planning runs and judging their results --------------------------------------------------------


@dataclass(frozen=True)
class JudgePlan:
    """The sandbox runs that judge one program, and what ``judge`` needs to read their results."""

    suite: HiddenTests
    jobs: list[Job]
    nonce: str = ""
    """Drawn per function-test run; every record of the harness must carry it."""


def plan_jobs(program: str, suite: HiddenTests, config: SandboxConfig) -> JudgePlan:
    """The sandbox runs that judge ``program``: one per stdio test (each sees only its own input);
    one harness run for all tests of a function suite, with the per-test wall and CPU budgets times
    the number of tests, plus ``START_UP_S`` (each test also has its own budget inside the harness)."""
    if suite.kind == "stdio":
        return JudgePlan(suite, [Job(program=program, stdin=test.input) for test in suite.stdio])
    if not suite.fn_name:
        raise ValueError("a function test suite needs fn_name")
    count = max(len(suite.checks), 1)
    nonce = secrets.token_hex(16)
    spec = {
        "nonce": nonce,
        "setup": suite.setup,
        "functions": [suite.fn_name, *suite.other_functions],
        "tests": [test.model_dump() for test in suite.checks],
        "timeout_s": config.wall_timeout_s,
        "max_message_bytes": MAX_MESSAGE_BYTES,
    }
    job = Job(
        program=HARNESS_SOURCE,
        stdin=json.dumps(spec),
        files={"runner.py": RUNNER_SOURCE, "solution.py": program},
        channel=True,
        wall_timeout_s=min(config.wall_timeout_s * count + START_UP_S, 3600.0),
        cpu_time_s=min(config.cpu_time_s * count + 1, 3600),
    )
    return JudgePlan(suite, [job], nonce)


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


@dataclass
class HarnessReport:
    """What the harness wrote on the result channel, checked record by record."""

    verdicts: dict[int, Outcome] = field(default_factory=dict)
    done: bool = False
    """The final record came: the harness went through every test."""

    fatal: str | None = None
    """The harness could not judge at all (the test setup failed, no prctl): no verdict."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a plain JSON value")


def parse_plain_json(text: str) -> Any:
    """``json.loads`` that refuses NaN and Infinity: the result holds plain types only."""
    return json.loads(text, parse_constant=_reject_constant)


def parse_channel(text: str, count: int, nonce: str) -> tuple[HarnessReport, str | None]:
    """Read the harness's records; the second value is a reason to fail every test (a line the
    harness never writes: another nonce, an unknown field, a test reported twice, a record after "done")."""
    report = HarnessReport()
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = parse_plain_json(line)
        except ValueError:
            return HarnessReport(), f"result channel line {number} is not JSON: tampered or truncated"
        if not isinstance(record, dict) or record.get("nonce") != nonce or report.done:
            return HarnessReport(), f"result channel line {number} is not from this run's harness: tampered"
        keys, event, reason = set(record), record.get("event"), record.get("reason")
        if keys == {"nonce", "event"} and event == "done":
            report.done = True
        elif keys == {"nonce", "event", "reason"} and event == "fatal" and isinstance(reason, str):
            report.fatal = reason
        elif keys == {"nonce", "i", "kind", "reason"} and isinstance(reason, str):
            index, kind = record["i"], record["kind"]
            if (
                type(index) is not int
                or not 0 <= index < count
                or index in report.verdicts
                or kind not in HARNESS_KINDS
            ):
                return HarnessReport(), f"result channel line {number} is not a verdict the harness writes: tampered"
            report.verdicts[index] = Outcome(kind, reason)
        else:
            return HarnessReport(), f"result channel line {number} has unexpected fields: tampered"
    return report, None


def judge_function(result: ExecResult, count: int, nonce: str) -> list[Outcome]:
    """Per test: the harness's verdict. A pass counts only when the run ended cleanly (the "done"
    record, exit status 0, no limit); otherwise tests not reported failed fail with the run's reason."""
    if result.error is not None:
        return [Outcome("error", result.error)] * count
    report, problem = parse_channel(result.channel or "", count, nonce)
    if problem is not None:
        return [Outcome("runtime_error", problem)] * count
    if report.fatal is not None:
        return [Outcome("error", report.fatal)] * count
    clean = report.done and result.ok
    if clean:
        unreported = Outcome("missing", "the harness reported no verdict for this test")
    else:
        unreported = _run_failure(result) or Outcome("missing", "the harness ended without its final record")
    outcomes = []
    for index in range(count):
        verdict = report.verdicts.get(index)
        passes_count = verdict is not None and (clean or not verdict.passed)
        outcomes.append(verdict if verdict is not None and passes_count else unreported)
    return outcomes


def judge(plan: JudgePlan, results: Sequence[ExecResult], rules: OutputMatch | None = None) -> list[Outcome]:
    """Outcomes of every test of ``plan.suite`` from the results of its runs (same order)."""
    suite = plan.suite
    if suite.kind == "stdio":
        return [judge_stdio(result, test, rules) for result, test in zip(results, suite.stdio, strict=True)]
    (result,) = results
    return judge_function(result, len(suite.checks), plan.nonce)


# -- test code of data sets (load time: parsed with ast, never executed here) -----------------------


def _parse(source: str, where: str) -> ast.Module:
    try:
        return ast.parse(source)
    except SyntaxError as exc:
        raise InvalidTestsError(f"{where}, line {exc.lineno}: the test code does not parse: {exc.msg}") from None


@dataclass
class _Names:
    """Names in test code: called (in order of appearance), bound by it, and read."""

    called: list[str] = field(default_factory=list)
    bound: set[str] = field(default_factory=set)
    read: list[str] = field(default_factory=list)

    def scan(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                if isinstance(node.ctx, ast.Load):
                    self.read.append(node.id)
                else:
                    self.bound.add(node.id)
            elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                self.bound.add(node.name)
            elif isinstance(node, ast.Import | ast.ImportFrom):
                self.bound.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
            elif isinstance(node, ast.arg):
                self.bound.add(node.arg)
            elif isinstance(node, ast.ExceptHandler) and node.name:
                self.bound.add(node.name)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                self.called.append(node.func.id)

    def free(self, names: list[str]) -> list[str]:
        """``names`` neither bound by the test code nor builtins, each once, in order."""
        return list(dict.fromkeys(n for n in names if n not in self.bound and not hasattr(builtins, n)))


def _check_name(name: str, where: str, what: str) -> str:
    if not name.isidentifier() or keyword.iskeyword(name):
        raise InvalidTestsError(f"{where}: {what} {name!r} is not a Python function name")
    return name


def humaneval_suite(prompt: str, test_code: str, entry_point: str, where: str) -> HiddenTests:
    """HumanEval: the harness runs the prompt (helpers such as ``poly`` are defined there) and the
    test code as setup, then one test, ``check(<entry_point>)``, with the entry point a proxy."""
    _check_name(entry_point, where, "entry_point")
    _parse(prompt, f"{where} prompt")
    module = _parse(test_code, f"{where} test")
    if not any(isinstance(node, ast.FunctionDef) and node.name == "check" and node.args.args for node in module.body):
        raise InvalidTestsError(f"{where}: the test code defines no `def check(candidate):`")
    setup = prompt + "\n" + test_code
    _parse(setup, f"{where} prompt + test")
    check = AssertTest(code=f"check({entry_point})\n", source=f"{where} check({entry_point})")
    return HiddenTests(kind="function", fn_name=entry_point, setup=setup, checks=[check])


def mbpp_suite(asserts: Sequence[str], where: str, setup: str = "", imports: Sequence[str] = ()) -> HiddenTests:
    """MBPP: each assert is one test, run after ``test_setup_code`` (and ``test_imports``, as in
    MBPP's sanitized split). The functions under test are the names the asserts call that neither
    the test code defines nor builtins are; standard modules the asserts use without importing them
    (``math.isclose``: MBPP relies on the solution's imports) are imported in the setup."""
    if not asserts:
        raise InvalidTestsError(f"{where}: test_list is empty")
    names = _Names()
    preamble = "".join(f"{line.strip()}\n" for line in imports)
    for text, place in [(preamble, "test_imports"), (setup, "test_setup_code")]:
        names.scan(_parse(text, f"{where} {place}"))
    tests = []
    for number, text in enumerate(asserts):
        place = f"{where} test_list[{number}]"
        names.scan(_parse(text, place))
        tests.append(AssertTest(code=text, source=place))
    functions = names.free(names.called)
    if not functions:
        raise InvalidTestsError(
            f"{where}: test_list calls no function of the solution (every name it calls is a builtin or defined by "
            "the test code)"
        )
    modules = [n for n in names.free(names.read) if n not in functions and n in sys.stdlib_module_names]
    preamble = "".join(f"import {module}\n" for module in modules) + preamble
    return HiddenTests(
        kind="function",
        fn_name=functions[0],
        other_functions=functions[1:],
        setup=preamble + setup,
        checks=tests,
    )


def apps_call_suite(fn_name: str, inputs: Sequence[Any], outputs: Sequence[Any], where: str) -> HiddenTests:
    """APPS/TACO call-based tests: ``inputs[i]`` is the argument list, ``outputs[i]`` the value the
    harness compares by APPS's rule (``CallTest``)."""
    _check_name(fn_name, where, "fn_name")
    checks: list[FunctionTest] = [
        CallTest(args=args if isinstance(args, list) else [args], expected=output, source=f"{where} input_output[{i}]")
        for i, (args, output) in enumerate(zip(inputs, outputs, strict=True))
    ]
    return HiddenTests(kind="function", fn_name=fn_name, checks=checks)


def example_call(suite: HiddenTests) -> str:
    """One call of the function under test as the tests make it (arguments only, never an expected
    value), for prompts: "add(1, 2)"; "" when the tests show none."""
    if not suite.checks or not suite.fn_name:
        return ""
    test = suite.checks[0]
    if isinstance(test, CallTest):
        return f"{suite.fn_name}({', '.join(json.dumps(arg) for arg in test.args)})"
    for node in ast.walk(ast.parse(test.code)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == suite.fn_name:
            return ast.unparse(node)
    return ""
