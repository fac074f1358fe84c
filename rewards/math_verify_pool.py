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
6. Gold answers are parsed once per distinct string, in a worker (parsing can hang too), cached in
   the parent and sent parsed with each job (sympy objects pickle).
"""

from __future__ import annotations

import atexit
import itertools
import multiprocessing
import os
import re
import resource
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from types import TracebackType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rewards.extract import EXTRACTORS, strip_thinking
from rewards.types import VerifyResult

AnswerSource = Literal["boxed", "answer_line", "last_number", "latex"]

_SOFT_MARGIN_S = 0.5
"""The worker stops asking math-verify for more time this long before the parent's hard deadline."""
_STARTUP_LIMIT_S = 120.0
"""A worker that is not ready this long after it was started is a broken installation: raise."""
_MEMORY_NEAR_LIMIT = 0.9
"""A job whose peak address space used this share of the headroom is taken to have hit the limit."""
_READY = "ready"


class MathVerifyConfig(BaseModel):
    """How completions are graded against gold answers with math-verify, and the pool's limits."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    extraction: tuple[AnswerSource, ...] = Field(("boxed", "answer_line", "latex", "last_number"), min_length=1)
    """Where to look for the answer, tried in order once the reasoning is cut off (``strip_thinking``):
    "boxed" = the last \\boxed{}, "answer_line" = "Answer: X" / "The answer is X", "latex" =
    math-verify's own LaTeX and expression extraction over the whole text, "last_number" = the last
    number in the text. The first source whose text math-verify can parse gives the answer."""

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

    @property
    def worker_count(self) -> int:
        """The number of worker processes, ``workers`` or the CPU count when it is 0."""
        return self.workers or os.cpu_count() or 1


@dataclass(frozen=True)
class ParsedGold:
    """A gold answer as math-verify parsed it, or the result every completion of it gets instead."""

    text: str
    """The gold answer as given."""

    expressions: tuple[Any, ...] = ()
    """math-verify's parse: sympy expressions and the matched strings."""

    failure: VerifyResult | None = None
    """Set when the gold could not be parsed: then no completion of it is graded."""


# ---------------------------------------------------------------------------------------------------
# Worker side: runs in the worker processes, on their main thread.
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Outcome:
    """What became of one job: its value, or why there is none."""

    status: Literal["ok", "timeout", "error"]
    value: Any = None
    reason: str = ""


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


def _worker_main(conn: Connection, memory_limit_mb: int) -> None:
    """A worker: import math-verify once, cap memory, say ready, then run jobs until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    import math_verify  # noqa: F401  -- the one import of math-verify and sympy, at start-up

    memory = _MemoryGuard(memory_limit_mb)
    conn.send(_READY)
    while True:
        try:
            call = conn.recv()
        except EOFError:
            return
        if call is None:
            return
        outcome, retire = _run_job(call, memory)
        conn.send((outcome, retire))
        if retire:
            return


def _run_job(call: tuple[Callable[..., Any], tuple[Any, ...]], memory: _MemoryGuard) -> tuple[_Outcome, bool]:
    """Run one job; return its outcome and whether this worker must retire (memory exhausted)."""
    from math_verify.errors import TimeoutException

    func, args = call
    try:
        outcome = _Outcome("ok", value=func(*args))
    except MemoryError:
        return _Outcome("error", reason=memory.describe() + " (MemoryError)"), True
    except TimeoutException as exc:
        outcome = _Outcome("timeout", reason=f"math-verify's own timeout, under the hard limit: {_short(str(exc))}")
    except Exception as exc:
        outcome = _Outcome("error", reason=f"{type(exc).__name__}: {_short(str(exc))}")
    if memory.near_limit():
        return _Outcome("error", reason=memory.describe()), True
    return outcome, False


_MATH_DELIMITER = re.compile(r"(?<!\\)\$|\\\(|\\\[|\\boxed")
"""An unescaped $, \\( or \\[ or a \\boxed: the text already marks its math (an escaped \\$ is a currency sign)."""
_E_NOTATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)[eE]([+-]?\d+)\s*$")


def _parse_math(text: str, seconds: int, wrap: bool = True) -> list[Any]:
    """math-verify's parse of an answer; bare text is wrapped in $...$ so that LaTeX like x^2+1 is found."""
    from math_verify import parse
    from math_verify.parser import ExprExtractionConfig, LatexExtractionConfig

    if wrap:
        # "1.5e3" would read as 1.5 * e * 3 in LaTeX: write a bare E-notation number as 1.5 \times 10^{3}
        text = _E_NOTATION.sub(r"\1\\times 10^{\2}", text)
        if not _MATH_DELIMITER.search(text):
            text = f"${text}$"
    config = [LatexExtractionConfig(), ExprExtractionConfig()]
    return list(parse(text, extraction_config=config, parsing_timeout=seconds, raise_on_error=True))


def _parse_gold(gold: str, config: MathVerifyConfig) -> ParsedGold:
    """Parse a gold answer; one that yields no expression (only raw strings, or nothing) is unparseable."""
    parsed = _parse_math(gold, _Budget(config.timeout_seconds).seconds())
    if all(isinstance(item, str) for item in parsed):
        reason = f"math-verify found no expression in the gold answer {_short(gold)!r} (got {parsed!r})"
        return ParsedGold(gold, failure=VerifyResult.error(reason, decided_by="gold_unparseable"))
    return ParsedGold(gold, tuple(parsed))


def _find_answer(completion: str, config: MathVerifyConfig, budget: _Budget) -> _Answer | None:
    """The first answer source in ``config.extraction`` that gives math-verify something to parse."""
    text = strip_thinking(completion)
    for source in config.extraction:
        if source == "latex":
            parsed = _parse_math(text, budget.seconds(), wrap=False)
            span = next((item for item in parsed if isinstance(item, str)), "")  # the text it matched
        else:
            found = EXTRACTORS[source](text)
            if found is None:
                continue
            if not found.strip():
                return None  # an empty final \boxed{} is the model's answer: none, not a cue to look elsewhere
            span, parsed = found, _parse_math(found, budget.seconds())
        if parsed:
            return _Answer(parsed, span, source)
    return None


def _grade(gold: ParsedGold, completion: str, config: MathVerifyConfig) -> VerifyResult:
    """Grade one completion against a parsed gold answer (runs in a worker)."""
    budget = _Budget(config.timeout_seconds)
    answer = _find_answer(completion, config, budget)
    if answer is None:
        reason = f"no answer found (looked for: {', '.join(config.extraction)})"
        return VerifyResult(status="unparseable", score=0.0, reason=reason, decided_by="math_verify")
    return _compare(gold, answer, config, budget)


def _compare(gold: ParsedGold, answer: _Answer, config: MathVerifyConfig, budget: _Budget) -> VerifyResult:
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
    status: Literal["correct", "incorrect", "timeout", "error"], gold: ParsedGold, answer: _Answer, how: str
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
    """One worker process as the parent sees it: starting, idle, or busy with job ``job``."""

    process: BaseProcess
    conn: Connection
    started_at: float
    ready: bool = False
    job: int | None = None
    deadline: float = float("inf")


class _WorkerPool:
    """Spawned workers that run one job each at a time, with a hard wall-clock limit per job."""

    def __init__(self, size: int, timeout_seconds: float, memory_limit_mb: int) -> None:
        self._size = size
        self._timeout_seconds = timeout_seconds
        self._memory_limit_mb = memory_limit_mb
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []

    def run(self, calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[_Outcome]:
        """Run every call in the pool; outcomes in input order, none lost to a timeout or a crash."""
        if not calls:
            return []
        outcomes: list[_Outcome | None] = [None] * len(calls)
        pending = deque(range(len(calls)))
        while len(self._workers) < self._size:
            self._workers.append(self._start_worker())
        try:
            while pending or any(worker.job is not None for worker in self._workers):
                self._dispatch(pending, calls)
                self._collect(outcomes)
                self._expire(outcomes)
        except BaseException:  # e.g. Ctrl-C: no busy worker may later answer into another batch
            self._abandon()
            raise
        done = [outcome for outcome in outcomes if outcome is not None]
        if len(done) != len(calls):
            raise RuntimeError(f"internal error: {len(calls) - len(done)} of {len(calls)} jobs lost")
        return done

    def close(self) -> None:
        """Stop every worker (a later ``run`` starts new ones)."""
        for worker in self._workers:
            self._stop(worker)
        self._workers = []

    def _abandon(self) -> None:
        """Stop every busy worker (the next run starts others): their jobs' batch is not waited for."""
        for worker in self._workers:
            if worker.job is not None:
                self._stop(worker, kill=True)
        self._workers = [worker for worker in self._workers if worker.job is None]

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._context.Pipe()
        process = self._context.Process(
            target=_worker_main, args=(child_conn, self._memory_limit_mb), name="math-verify-worker", daemon=True
        )
        process.start()
        child_conn.close()  # the child's end: closed here, so the parent sees EOF when the child dies
        return _Worker(process, parent_conn, started_at=time.monotonic())

    def _dispatch(self, pending: deque[int], calls: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
        """Send the next pending job to each idle worker and start its deadline."""
        for index, worker in enumerate(self._workers):
            if not pending or not worker.ready or worker.job is not None:
                continue
            job = pending.popleft()
            try:
                worker.conn.send(calls[job])
            except OSError:  # died while idle: the job goes back to the queue
                pending.appendleft(job)
                self._replace(index)
                continue
            worker.job, worker.deadline = job, time.monotonic() + self._timeout_seconds

    def _collect(self, outcomes: list[_Outcome | None]) -> None:
        """Wait until a worker answers (or dies) or the next deadline, and take in what came back."""
        ready = set(wait([worker.conn for worker in self._workers], timeout=self._seconds_to_next_deadline()))
        for index, worker in enumerate(self._workers):
            if worker.conn not in ready:
                continue
            try:
                message = worker.conn.recv()
            except (EOFError, OSError):
                self._on_death(index, outcomes)
                continue
            if message == _READY:
                worker.ready = True
                continue
            outcome, retire = message
            outcomes[worker.job] = outcome  # type: ignore[index]  # a busy worker has a job
            worker.job, worker.deadline = None, float("inf")
            if retire:
                self._replace(index)

    def _expire(self, outcomes: list[_Outcome | None]) -> None:
        """Kill and replace every worker past its job's hard deadline; fail loudly on a stuck start-up."""
        now = time.monotonic()
        for index, worker in enumerate(self._workers):
            if worker.job is not None and now >= worker.deadline:
                reason = f"hard limit of {self._timeout_seconds:g} s hit: the worker was killed and replaced"
                outcomes[worker.job] = _Outcome("timeout", reason=reason)
                self._replace(index)
            elif not worker.ready and now - worker.started_at > _STARTUP_LIMIT_S:
                raise RuntimeError(f"a math-verify worker did not start within {_STARTUP_LIMIT_S:g} s")

    def _on_death(self, index: int, outcomes: list[_Outcome | None]) -> None:
        """A worker's pipe closed: its job (if any) is an error; a worker that never started is fatal."""
        worker = self._workers[index]
        worker.process.join(timeout=5)
        code = worker.process.exitcode
        if not worker.ready:
            raise RuntimeError(f"a math-verify worker died while starting (exit code {code}); see its stderr")
        if worker.job is not None:
            reason = f"the worker died while grading (exit code {code}): a crash or the memory limit"
            outcomes[worker.job] = _Outcome("error", reason=reason)
        self._replace(index)

    def _replace(self, index: int) -> None:
        self._stop(self._workers[index], kill=True)
        self._workers[index] = self._start_worker()

    def _seconds_to_next_deadline(self) -> float:
        now = time.monotonic()
        deadlines = [worker.deadline for worker in self._workers if worker.job is not None]
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
        self._pool = _WorkerPool(self.config.worker_count, self.config.timeout_seconds, self.config.memory_limit_mb)
        self._golds: dict[str, ParsedGold] = {}
        self._lock = threading.Lock()

    def verify(self, gold: str, completion: str) -> VerifyResult:
        """Grade one completion against its gold answer."""
        return self.verify_many([(gold, completion)])[0]

    def verify_many(self, pairs: Sequence[tuple[str, str]]) -> list[VerifyResult]:
        """Grade (gold, completion) pairs in parallel; results in input order."""
        with self._lock:
            golds = self._parse_golds({gold for gold, _ in pairs})
            to_grade = [i for i, (gold, _) in enumerate(pairs) if golds[gold].failure is None]
            calls = [(_grade, (golds[pairs[i][0]], pairs[i][1], self.config)) for i in to_grade]
            graded = dict(zip(to_grade, map(_grading_result, self._pool.run(calls)), strict=True))
            return [graded[i] if i in graded else _failure(golds[gold]) for i, (gold, _) in enumerate(pairs)]

    def parse_gold(self, gold: str) -> ParsedGold:
        """The gold answer as math-verify parses it (cached; ``failure`` set when it is unparseable)."""
        with self._lock:
            return self._parse_golds({gold})[gold]

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

    def _parse_golds(self, golds: set[str]) -> dict[str, ParsedGold]:
        """Parse the golds not in the cache (in the workers, in parallel); cache the deterministic ones."""
        new = sorted(golds - self._golds.keys())
        outcomes = self._pool.run([(_parse_gold, (gold, self.config)) for gold in new])
        parsed = {gold: _gold_result(gold, outcome) for gold, outcome in zip(new, outcomes, strict=True)}
        for gold, result in parsed.items():
            if result.failure is None or result.failure.decided_by == "gold_unparseable":
                self._golds[gold] = result  # a timeout or a crash is retried with the next batch
        return {gold: self._golds.get(gold) or parsed[gold] for gold in golds}


def _failure(gold: ParsedGold) -> VerifyResult:
    if gold.failure is None:
        raise RuntimeError(f"internal error: gold {gold.text!r} parsed but its completion was not graded")
    return gold.failure


def _grading_result(outcome: _Outcome) -> VerifyResult:
    """A grading job's outcome as a VerifyResult: the worker's verdict, or the timeout / error."""
    if outcome.status == "ok":
        result: VerifyResult = outcome.value
        return result
    if outcome.status == "timeout":
        return VerifyResult.timeout(outcome.reason, decided_by="math_verify")
    return VerifyResult.error(outcome.reason, decided_by="math_verify")


def _gold_result(gold: str, outcome: _Outcome) -> ParsedGold:
    """A gold-parsing job's outcome; parsing that timed out or crashed fails every completion of it."""
    if outcome.status == "ok":
        parsed: ParsedGold = outcome.value
        return parsed
    reason = f"parsing the gold answer {_short(gold)!r}: {outcome.reason}"
    failure = VerifyResult(status=outcome.status, score=0.0, reason=reason, decided_by="gold_parse")
    return ParsedGold(gold, failure=failure)


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
