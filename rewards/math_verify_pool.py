"""Math answer verification with math-verify, run in a pool of worker processes with a hard time limit.

Why a process pool of our own:

1. math-verify bounds ``parse`` and ``verify`` with ``signal.alarm`` (``math_verify/utils.py``), which
   only works on the main thread of the main interpreter. Called from any other thread it raises
   ``ValueError`` unless the timeout is switched off, and then sympy can run for good: e.g.
   ``9^{9^{9}}`` against gold ``2``, or the tower ``2^{2^{2^{2^{2^{2^{2}}}}}}``. Each worker is a
   process of its own, so it runs math-verify on its main thread with its timeouts on. (Off the main
   thread it is worse than a hang: ``9^{9^{9}}`` reaches one huge integer power in sympy's
   ``Integer._eval_power`` that holds the GIL, so the whole process stops, not just that thread.)
2. A signal timeout is cooperative: code that swallows the exception or never returns to the
   interpreter outlives it. So the parent owns the hard limit: it waits on every busy worker's pipe
   with ``multiprocessing.connection.wait`` until the earliest job deadline, SIGKILLs a worker
   that is past its deadline (result "timeout"), and starts a replacement. ``multiprocessing.Pool``
   cannot do this: it has no way to kill the one worker that runs a hung task. Inside, workers give
   math-verify's own timeouts what is left of a budget 0.5 s under the hard limit (whole seconds, as
   ``signal.alarm`` takes), so a hang usually ends in the worker and only one that outlives the
   signal costs a kill and a restart.
3. math-verify catches its own ``TimeoutException`` and answers ``False`` / ``[]``: a timeout would
   read as "incorrect" or "no answer". Workers call it with ``raise_on_error=True``, so a timeout is
   reported as "timeout", never folded into a verdict.
4. Workers are started with "spawn": the parent may hold torch and CUDA state, which must not be
   forked. Each imports math-verify (and sympy) once at start-up and tells the parent it is ready,
   so that start-up time never counts against a job's deadline. As with any spawn child, a worker
   re-imports the parent's ``__main__`` module: keep scripts' work under ``if __name__ == "__main__"``.
5. Memory: each worker caps its address space (``RLIMIT_AS``) at its start-up size plus
   ``memory_limit_mb``. sympy and math-verify catch ``MemoryError`` in places (``except Exception``)
   and then answer ``False``, so after every job the worker also checks its peak address space: a
   job that came within 10% of the cap is reported as "error" and the worker is replaced. A worker
   that dies (EOF on its pipe) gives "error" for its job only; every other job is still graded.
6. Only plain data crosses the pipes: a job is (gold text, completion text), a result a
   ``VerifyResult``. Each worker parses a gold answer the first time it meets it and keeps the
   parse. (Parsed golds used to be sent from the parent: sympy objects do not survive pickling,
   e.g. ``Eq(z, 1 + 1) & Eq(1 + 1, 2)`` from ``z = 1 + 1 = 2`` raised ``AttributeError`` while being
   unpickled, and a gold set or interval came back changed.) Whatever still goes wrong with one job
   (an exception in the worker, a message that cannot be read, a worker that dies) is that job's
   "error"; the rest of the batch is graded.
7. Throughput: jobs go to a worker in small chunks, and the worker answers each job as it finishes,
   so the parent restarts the deadline per job while the pipe carries one message per chunk; the
   configuration crosses once, when the worker starts.

Grading follows math-verify: the gold answer is parsed as math-verify parses it (bare text is read as
LaTeX, a bare number as math-verify's number reader reads it: "1,22" is 1.22), the completion's final
answer is found (``grpopp.rewards.extract.rank_answers``: the final statement wins, several boxes of one
statement are one answer), and ``math_verify.verify`` compares them.
"""

from __future__ import annotations

import atexit
import itertools
import math
import multiprocessing
import os
import re
import resource
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from grpopp.rewards.extract import EXPLICIT_METHODS, Found, rank_answers, strip_thinking
from grpopp.rewards.types import VerifyResult

AnswerSource = Literal["boxed", "answer_line", "last_number", "latex"]

_SOFT_MARGIN_S = 0.5
"""The worker stops asking math-verify for more time this long before the parent's hard deadline."""
_STARTUP_LIMIT_S = 120.0
"""A worker that is not ready this long after it was started is a broken installation: raise."""
_MEMORY_NEAR_LIMIT = 0.9
"""A job whose peak address space used this share of the headroom is taken to have hit the limit."""
_MAX_CHUNK = 16
"""Most jobs sent to a worker in one message."""
_GOLD_CACHE_SIZE = 20_000
"""Parsed gold answers a worker keeps (the cache is emptied when it is full)."""
_READY = "ready"


class MathVerifyConfig(BaseModel):
    """How completions are graded against gold answers with math-verify, and the pool's limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    extraction: tuple[AnswerSource, ...] = Field(("boxed", "answer_line", "latex", "last_number"), min_length=1)
    """Where to look for the answer once the reasoning is cut off (``strip_thinking``): "boxed" = the
    final boxed statement (the last \\boxed{}, with boxes just before it joined by "and", "or" or
    ","), "answer_line" = "Answer: X" / "The answer is X", "latex" = math-verify's own LaTeX and
    expression extraction over the whole text, "last_number" = the last number standing as a token.
    Of "boxed" and "answer_line", one that stands wholly after the other wins (a final-answer line
    after the last box overrides it); otherwise sources are tried in this order, and the first whose
    text math-verify can parse gives the answer."""

    timeout_seconds: float = Field(5.0, ge=1.0)
    """Hard wall-clock limit per call, enforced by the parent (the worker is killed and replaced).
    At least 1 s: math-verify's own timeouts, passed on under this limit, count whole seconds."""

    workers: int = Field(0, ge=0)
    """Worker processes; 0 = ``os.cpu_count()``."""

    memory_limit_mb: int = Field(2048, ge=0)
    """Address space (RLIMIT_AS) a worker may add to its start-up size while grading; 0 = no limit."""

    float_rounding: int = Field(6, ge=0)
    """Decimal places floats are rounded to before comparing (math-verify's ``float_rounding``)."""

    numeric_precision: int = Field(15, ge=1)
    """Significant digits of numeric comparisons (math-verify's ``numeric_precision``)."""

    strict: bool = True
    """math-verify's ``strict``: variables must match too (f(x) is not f(y)), and so must relation sides."""

    allow_set_relation_comp: bool = False
    """math-verify's ``allow_set_relation_comp``: a gold interval ``x \\in [-2, 7]`` also accepts the
    relation ``-2 \\le x \\le 7`` (a gold relation always accepts the interval)."""

    @property
    def worker_count(self) -> int:
        """The number of worker processes, ``workers`` or the CPU count when it is 0."""
        return self.workers or os.cpu_count() or 1


# ---------------------------------------------------------------------------------------------------
# Worker side: runs in the worker processes, on their main thread.
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    """One unit of work, plain text only: grade ``completion`` against ``gold``, or (``completion``
    None) only check that ``gold`` parses."""

    gold: str
    completion: str | None = None


@dataclass(frozen=True)
class _Outcome:
    """What became of one job: its result, or why there is none."""

    status: Literal["ok", "timeout", "error"]
    result: VerifyResult | None = None
    reason: str = ""


@dataclass(frozen=True)
class _ParsedGold:
    """A gold answer as math-verify parsed it (in a worker; never sent anywhere), or why it failed."""

    text: str
    expressions: tuple[Any, ...] = ()
    failure: VerifyResult | None = None


@dataclass(frozen=True)
class _Answer:
    """The answer found in a completion: math-verify's parse, the text it came from, and how."""

    parsed: list[Any]
    text: str
    source: AnswerSource


class _Budget:
    """A job's share of the hard limit, handed to math-verify's own timeouts in whole seconds."""

    def __init__(self, hard_limit_s: float) -> None:
        self._deadline = time.monotonic() + max(1.0, hard_limit_s - _SOFT_MARGIN_S)

    def seconds(self) -> int:
        """Whole seconds left (``signal.alarm`` takes an int); raises math-verify's timeout when none is."""
        from math_verify.errors import TimeoutException

        left = int(self._deadline - time.monotonic())
        if left < 1:
            raise TimeoutException("the job's time budget is spent")
        return left


class _MemoryGuard:
    """Caps the worker's address space and tells whether a job came near the cap.

    The cap is the start-up address space plus the headroom, so whatever the parent's ``__main__``
    imported into the worker (torch maps hundreds of MB) does not eat into the budget.
    """

    def __init__(self, headroom_mb: int) -> None:
        self.headroom = headroom_mb * 2**20
        self.start = _address_space("VmSize")
        if self.headroom > 0 and self.start > 0:
            cap = self.start + self.headroom
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    def near_limit(self) -> bool:
        """True when the peak address space used ``_MEMORY_NEAR_LIMIT`` of the headroom or more."""
        return self.headroom > 0 and _address_space("VmPeak") - self.start >= _MEMORY_NEAR_LIMIT * self.headroom

    def describe(self) -> str:
        used = (_address_space("VmPeak") - self.start) >> 20
        return f"memory limit hit: the job grew the address space by {used} MB of {self.headroom >> 20} MB allowed"


def _address_space(field: str) -> int:
    """``VmSize`` (now) or ``VmPeak`` (peak) of this process in bytes, from /proc; 0 where unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _Grader:
    """A worker's state: the configuration, the memory guard and the parsed gold answers."""

    def __init__(self, config: MathVerifyConfig) -> None:
        self.config = config
        self.memory = _MemoryGuard(config.memory_limit_mb)
        self.golds: dict[str, _ParsedGold] = {}

    def run(self, job: _Job) -> tuple[_Outcome, bool]:
        """Run one job; return its outcome and whether this worker must retire (memory exhausted)."""
        from math_verify.errors import TimeoutException

        try:
            gold = self.gold(job.gold)
            if job.completion is None:
                outcome = _Outcome("ok", gold.failure)
            else:
                outcome = _Outcome("ok", gold.failure or _grade(gold, job.completion, self.config))
        except MemoryError:
            return _Outcome("error", reason=self.memory.describe() + " (MemoryError)"), True
        except TimeoutException as exc:
            outcome = _Outcome("timeout", reason=f"math-verify's own timeout, under the hard limit: {_short(str(exc))}")
        except Exception as exc:
            outcome = _Outcome("error", reason=f"{type(exc).__name__}: {_short(str(exc))}")
        if self.memory.near_limit():
            return _Outcome("error", reason=self.memory.describe()), True
        return outcome, False

    def gold(self, text: str) -> _ParsedGold:
        """The gold answer parsed (kept for the next job); a parse that timed out or raised is not kept."""
        if text not in self.golds:
            if len(self.golds) >= _GOLD_CACHE_SIZE:
                self.golds.clear()
            from math_verify.errors import TimeoutException

            try:
                self.golds[text] = _parse_gold(text, self.config)
            except TimeoutException as exc:
                return _ParsedGold(text, failure=_gold_failure("timeout", text, f"math-verify's timeout: {exc}"))
            except Exception as exc:
                return _ParsedGold(text, failure=_gold_failure("error", text, f"{type(exc).__name__}: {exc}"))
        return self.golds[text]


def _worker_main(conn: Connection, config: MathVerifyConfig) -> None:
    """A worker: import math-verify once, cap memory, say ready, then run chunks of jobs until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    import math_verify  # noqa: F401  -- the one import of math-verify and sympy, at start-up

    grader = _Grader(config)
    conn.send(_READY)
    while True:
        try:
            chunk: list[_Job] | None = conn.recv()
        except EOFError:
            return
        if chunk is None:
            return
        for job in chunk:
            outcome, retire = grader.run(job)
            try:
                conn.send((outcome, retire))
            except Exception as exc:  # a result that does not pickle: still one answer per job
                conn.send((_Outcome("error", reason=f"the result could not be sent: {type(exc).__name__}"), retire))
            if retire:
                return


_MATH_DELIMITER = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed")
"""An unescaped $, \\( or \\[ or a \\boxed: the text already marks its math (an escaped \\$ is a currency sign)."""
_E_NOTATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)\s*$")
_PLAIN_NUMBER = re.compile(r"[+-]?\d+(?:[,. ]\d+)*")
"""A bare number, possibly with separators ("1,22", "1 000", "7,425,000"): read by math-verify's
number reader, as math-verify reads such a gold itself (wrapped in $...$, "1,22" would be {1, 22})."""


def _parse_math(text: str, seconds: int, wrap: bool = True, boxed: bool = False) -> list[Any]:
    """math-verify's parse of an answer; bare text is wrapped in $...$ so that LaTeX like x^2+1 is found.

    ``boxed``: only math-verify's boxed patterns, tried first (``boxed_match_priority=0``, no
    anchor-free LaTeX, no plain expressions): the final boxed statement, where boxes joined by "and",
    "or" or "," or sharing one math environment are one answer (a tuple or set)."""
    from math_verify import parse
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

    if wrap:
        # "1.5e3" would read as 1.5 * e * 3 in LaTeX: write a bare E-notation number as 1.5 \times 10^{3}
        text = _E_NOTATION.sub(r"\1\\times 10^{\2}", text)
        if not _MATH_DELIMITER.search(text):
            text = f"${text}$"
    config: list[LatexExtractionConfig | ExprExtractionConfig] = [LatexExtractionConfig(), ExprExtractionConfig()]
    if boxed:
        config = [LatexExtractionConfig(boxed_match_priority=0, try_extract_without_anchor=False)]
    return list(parse(text, extraction_config=config, parsing_timeout=seconds, raise_on_error=True))


_PROSE_WORD = re.compile(r"(?<![\\A-Za-z])[A-Za-z]{3,}")
_TEXT_COMMAND = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{[^{}]*\}")


def _is_prose(text: str) -> bool:
    """Two or more words (of three letters or more, outside LaTeX commands and \\text{}): a sentence
    such as "Jane started Sphere 3 hours ago", which math-verify's own extraction reads (3), where
    read as LaTeX it would be a product of letters."""
    return len(_PROSE_WORD.findall(_TEXT_COMMAND.sub(" ", text))) >= 2


def _parse_gold(gold: str, config: MathVerifyConfig) -> _ParsedGold:
    """Parse a gold answer; one that yields nothing is unparseable. One that math-verify reads only as
    a string (a text answer, or LaTeX it cannot convert) is compared as a string, as math-verify does."""
    from math_verify import parse
    from math_verify.parser import ExprExtractionConfig

    seconds = _Budget(config.timeout_seconds).seconds()
    text = gold.strip()
    if _PLAIN_NUMBER.fullmatch(text):
        parsed = list(parse(text, [ExprExtractionConfig()], parsing_timeout=seconds, raise_on_error=True))
    else:
        parsed = _parse_math(text, seconds)
    if not parsed:
        reason = f"math-verify found no answer in the gold answer {_short(gold)!r}"
        return _ParsedGold(gold, failure=VerifyResult.error(reason, decided_by="gold_unparseable"))
    return _ParsedGold(gold, tuple(parsed))


def _gold_failure(status: Literal["timeout", "error"], gold: str, why: str) -> VerifyResult:
    reason = f"parsing the gold answer {_short(gold)!r}: {_short(why)}"
    return VerifyResult(status=status, score=0.0, reason=reason, decided_by="gold_parse")


def _candidates(text: str, config: MathVerifyConfig) -> list[tuple[AnswerSource, Found | None]]:
    """The answer sources to try, in order: the explicit markers as ``rank_answers`` orders them, then
    the fallbacks in the configured order ("latex" carries no span: it reads the whole text)."""
    ranked = rank_answers(text, [source for source in config.extraction if source != "latex"])
    explicit: list[tuple[AnswerSource, Found | None]] = [
        (source, found)  # type: ignore[misc]  # the sources come from config.extraction
        for source, found in ranked
        if source in EXPLICIT_METHODS
    ]
    found_by = dict(ranked)
    fallbacks: list[tuple[AnswerSource, Found | None]] = [
        (source, found_by.get(source))
        for source in config.extraction
        if source not in EXPLICIT_METHODS and (source == "latex" or source in found_by)
    ]
    return explicit + fallbacks


def _find_answer(completion: str, config: MathVerifyConfig, budget: _Budget) -> _Answer | None:
    """The first candidate answer (``_candidates``) that gives math-verify something to parse."""
    text = strip_thinking(completion)
    for source, found in _candidates(text, config):
        if found is not None and not found.text.strip():
            return None  # an empty final \boxed{} is the model's answer: none, not a cue to look elsewhere
        if found is None:  # "latex": math-verify's own extraction over the whole text
            parsed = _parse_math(text, budget.seconds(), wrap=False)
            span = next((item for item in parsed if isinstance(item, str)), "")  # the text it matched
        elif source == "boxed":  # math-verify's own reading of the final boxed statement; shown as written
            span, parsed = found.text, _parse_math(text, budget.seconds(), wrap=False, boxed=True)
        else:
            span, parsed = found.text, _parse_math(found.text, budget.seconds(), wrap=not _is_prose(found.text))
        if parsed:
            return _Answer(parsed, span, source)
    return None


def _grade(gold: _ParsedGold, completion: str, config: MathVerifyConfig) -> VerifyResult:
    """Grade one completion against a parsed gold answer (runs in a worker)."""
    budget = _Budget(config.timeout_seconds)
    answer = _find_answer(completion, config, budget)
    if answer is None:
        reason = f"no answer found (looked for: {', '.join(config.extraction)})"
        return VerifyResult(status="unparseable", score=0.0, reason=reason, decided_by="math_verify")
    return _compare(gold, answer, config, budget)


def _compare(gold: _ParsedGold, answer: _Answer, config: MathVerifyConfig, budget: _Budget) -> VerifyResult:
    """math-verify's verify over every (gold, answer) parse pair: correct if any pair matches.

    Pairs are checked one by one, so a pair that times out or raises does not hide a match of
    another; with no match, a timeout or an error is reported as such, not as "incorrect".
    """
    from math_verify import verify
    from math_verify.errors import TimeoutException

    timed_out, errors = False, []
    for gold_item, answer_item in itertools.product(gold.expressions, answer.parsed):
        try:
            if verify(
                gold_item,
                answer_item,
                float_rounding=config.float_rounding,
                numeric_precision=config.numeric_precision,
                strict=config.strict,
                allow_set_relation_comp=config.allow_set_relation_comp,
                timeout_seconds=budget.seconds(),
                raise_on_error=True,
            ):
                return _verdict("correct", gold, answer, "matches")
        except TimeoutException:
            timed_out = True
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {_short(str(exc))}")
    if timed_out:
        return _verdict("timeout", gold, answer, "hit math-verify's own timeout comparing with")
    if errors:
        return _verdict("error", gold, answer, f"raised {'; '.join(errors)} comparing with")
    return _verdict("incorrect", gold, answer, "does not match")


def _verdict(
    status: Literal["correct", "incorrect", "timeout", "error"], gold: _ParsedGold, answer: _Answer, how: str
) -> VerifyResult:
    reason = f"{_short(answer.text)!r} (from {answer.source}) {how} gold {_short(gold.text)!r}"
    score = 1.0 if status == "correct" else 0.0
    return VerifyResult(status=status, score=score, reason=reason, decided_by="math_verify", extracted=answer.text)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------------------
# Parent side: the pool of killable workers and the verifier on top of it.
# ---------------------------------------------------------------------------------------------------


@dataclass
class _Worker:
    """One worker process as the parent sees it: starting, idle, or busy with the jobs in ``jobs``
    (sent in order; the first is running, with ``deadline``)."""

    process: BaseProcess
    conn: Connection
    started_at: float
    ready: bool = False
    jobs: deque[int] = field(default_factory=deque)
    deadline: float = math.inf

    @property
    def busy(self) -> bool:
        return bool(self.jobs)


class _WorkerPool:
    """Spawned workers that run jobs one at a time, with a hard wall-clock limit per job.

    During ``run``, ``_pending`` holds the indices of jobs not yet sent and ``_outcomes`` what came
    back; a job sent to a worker that is killed or dies before reaching it goes back to ``_pending``.
    """

    def __init__(self, config: MathVerifyConfig) -> None:
        self._config = config
        self._size = config.worker_count
        self._timeout_seconds = config.timeout_seconds
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._pending: deque[int] = deque()
        self._outcomes: list[_Outcome | None] = []

    def run(self, jobs: Sequence[_Job]) -> list[_Outcome]:
        """Run every job in the pool; outcomes in input order, none lost to a timeout or a crash."""
        if not jobs:
            return []
        self._outcomes = [None] * len(jobs)
        self._pending = deque(range(len(jobs)))
        while len(self._workers) < self._size:
            self._workers.append(self._start_worker())
        try:
            while self._pending or any(worker.busy for worker in self._workers):
                self._dispatch(jobs)
                self._collect()
                self._expire()
        except BaseException:  # e.g. Ctrl-C: no busy worker may later answer into another batch
            self._abandon()
            raise
        done = [outcome for outcome in self._outcomes if outcome is not None]
        if len(done) != len(jobs):
            raise RuntimeError(f"internal error: {len(jobs) - len(done)} of {len(jobs)} jobs lost")
        return done

    def close(self) -> None:
        """Stop every worker (a later ``run`` starts new ones)."""
        for worker in self._workers:
            self._stop(worker)
        self._workers = []

    def _abandon(self) -> None:
        """Stop every busy worker (the next run starts others): their jobs' batch is not waited for."""
        for worker in self._workers:
            if worker.busy:
                self._stop(worker, kill=True)
        self._workers = [worker for worker in self._workers if not worker.busy]

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(child_conn, self._config), name="math-verify-worker", daemon=True
        )
        process.start()
        child_conn.close()  # the child's end: closed here, so the parent sees EOF when the child dies
        return _Worker(process, parent_conn, started_at=time.monotonic())

    def _dispatch(self, jobs: Sequence[_Job]) -> None:
        """Send each idle worker a chunk of the pending jobs and start the first one's deadline.

        Chunks are small next to the queue (a quarter of each worker's fair share, at most
        ``_MAX_CHUNK``), so the workers finish close together."""
        for index, worker in enumerate(self._workers):
            if not self._pending:
                return
            if not worker.ready or worker.busy:
                continue
            size = max(1, min(_MAX_CHUNK, len(self._pending) // (4 * self._size)))
            chunk = [self._pending.popleft() for _ in range(size)]
            try:
                worker.conn.send([jobs[job] for job in chunk])
            except OSError:  # died while idle: the jobs go back to the queue
                self._pending.extendleft(reversed(chunk))
                self._replace(index)
                continue
            worker.jobs.extend(chunk)
            worker.deadline = time.monotonic() + self._timeout_seconds

    def _collect(self) -> None:
        """Wait until a worker answers (or dies) or the next deadline, and take in all that came back."""
        ready = wait([worker.conn for worker in self._workers], timeout=self._seconds_to_next_deadline())
        for index, worker in enumerate(self._workers):
            if worker.conn in ready:
                self._read(index)

    def _read(self, index: int) -> None:
        """Take every message waiting on worker ``index``'s pipe."""
        worker = self._workers[index]
        while True:
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                self._on_death(index)
                return
            except Exception as exc:  # an answer that cannot be read: its job is an error, the worker goes on
                message = (
                    _Outcome("error", reason=f"unreadable result: {type(exc).__name__}: {_short(str(exc))}"),
                    False,
                )
            if message == _READY:
                worker.ready = True
            elif worker.busy:
                outcome, retire = message
                self._outcomes[worker.jobs.popleft()] = outcome
                worker.deadline = time.monotonic() + self._timeout_seconds if worker.busy else math.inf
                if retire:
                    self._replace(index)
                    return
            if not worker.conn.poll():
                return

    def _expire(self) -> None:
        """Kill and replace every worker past its job's hard deadline; fail loudly on a stuck start-up."""
        now = time.monotonic()
        for index, worker in enumerate(self._workers):
            if worker.busy and now >= worker.deadline:
                reason = f"hard limit of {self._timeout_seconds:g} s hit: the worker was killed and replaced"
                self._outcomes[worker.jobs.popleft()] = _Outcome("timeout", reason=reason)
                self._replace(index)
            elif not worker.ready and now - worker.started_at > _STARTUP_LIMIT_S:
                raise RuntimeError(f"a math-verify worker did not start within {_STARTUP_LIMIT_S:g} s")

    def _on_death(self, index: int) -> None:
        """A worker's pipe closed: its running job (if any) is an error; a worker that never started is fatal."""
        worker = self._workers[index]
        worker.process.join(timeout=5)
        code = worker.process.exitcode
        if not worker.ready:
            raise RuntimeError(f"a math-verify worker died while starting (exit code {code}); see its stderr")
        if worker.busy:
            reason = f"the worker died while grading (exit code {code}): a crash or the memory limit"
            self._outcomes[worker.jobs.popleft()] = _Outcome("error", reason=reason)
        self._replace(index)

    def _replace(self, index: int) -> None:
        """Stop worker ``index`` and start another; the jobs it had not reached go back to the queue."""
        worker = self._workers[index]
        self._pending.extendleft(reversed(worker.jobs))
        worker.jobs.clear()
        self._stop(worker, kill=True)
        self._workers[index] = self._start_worker()

    def _seconds_to_next_deadline(self) -> float:
        now = time.monotonic()
        deadlines = [worker.deadline for worker in self._workers if worker.busy]
        deadlines += [worker.started_at + _STARTUP_LIMIT_S for worker in self._workers if not worker.ready]
        return max(0.0, min(deadlines) - now) if deadlines else _STARTUP_LIMIT_S

    @staticmethod
    def _stop(worker: _Worker, kill: bool = False) -> None:
        if not kill:
            try:
                worker.conn.send(None)  # asks an idle worker to exit
                worker.process.join(timeout=1)
            except OSError:
                pass
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()


class MathVerifier:
    """Grades (gold, completion) pairs with math-verify in worker processes (see the module docstring).

    Thread-safe: concurrent calls are served one batch at a time, each batch using every worker.
    """

    def __init__(self, config: MathVerifyConfig | None = None) -> None:
        self.config = config or MathVerifyConfig()
        self._pool = _WorkerPool(self.config)
        self._lock = threading.Lock()

    def verify(self, gold: str, completion: str) -> VerifyResult:
        """Grade one completion against its gold answer."""
        return self.verify_many([(gold, completion)])[0]

    def verify_many(self, pairs: Sequence[tuple[str, str]]) -> list[VerifyResult]:
        """Grade (gold, completion) pairs in parallel; results in input order. Never raises for a
        pair: whatever goes wrong with one is its status "timeout" or "error"."""
        with self._lock:
            outcomes = self._pool.run([_Job(str(gold), str(completion)) for gold, completion in pairs])
        return [_grading_result(outcome) for outcome in outcomes]

    def gold_problem(self, gold: str) -> VerifyResult | None:
        """None when math-verify reads ``gold``; else the result every completion of it gets."""
        with self._lock:
            (outcome,) = self._pool.run([_Job(gold)])
        return outcome.result if outcome.status == "ok" else _grading_result(outcome)

    def close(self) -> None:
        """Stop the workers; a later call starts new ones."""
        with self._lock:
            self._pool.close()

    def __enter__(self) -> MathVerifier:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _grading_result(outcome: _Outcome) -> VerifyResult:
    """A job's outcome as a VerifyResult: the worker's verdict, or the timeout / error."""
    if outcome.status == "ok" and isinstance(outcome.result, VerifyResult):
        return outcome.result
    if outcome.status == "timeout":
        return VerifyResult.timeout(outcome.reason, decided_by="math_verify")
    return VerifyResult.error(outcome.reason or "the worker sent no result", decided_by="math_verify")


_SHARED: dict[MathVerifyConfig, MathVerifier] = {}
_SHARED_LOCK = threading.Lock()


def get_shared_verifier(config: MathVerifyConfig) -> MathVerifier:
    """The process's one verifier (and pool) for ``config``, shared by every environment that uses it."""
    with _SHARED_LOCK:
        if config not in _SHARED:
            _SHARED[config] = MathVerifier(config)
        return _SHARED[config]


def _close_shared() -> None:
    with _SHARED_LOCK:
        for verifier in _SHARED.values():
            verifier.close()
        _SHARED.clear()


atexit.register(_close_shared)  # after multiprocessing's own handler, so it runs before it
