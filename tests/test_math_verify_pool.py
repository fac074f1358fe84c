"""Tests of grpopp.rewards.math_verify_pool: verdicts, gold parsing, and the pool's hard limits.

Expected verdicts are worked out by hand (1/2 = 0.5, 18 != 17, ...). The hanging inputs were found by
hand: ``9^{9^{9}}`` (9 to the 387,420,489) and ``7^{7^{7^{7}}}`` compared with a small integer keep
sympy busy for minutes; ``test_hanging_input_hangs_plain_math_verify_in_a_thread`` confirms it.
Timeouts are 2 s here, so the file stays well under a minute on two cores.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from grpopp.rewards.math_verify_pool import MathVerifier, MathVerifyConfig, get_shared_verifier

TIMEOUT_S = 2.0
MARGIN_S = 1.5
"""Slack over the hard limit for a timeout to come back: the parent's wake-up, the kill and the pipes."""
HANG_9 = "\\boxed{9^{9^{9}}}"
HANG_7 = "\\boxed{7^{7^{7^{7}}}}"


@pytest.fixture(scope="module")
def verifier() -> Iterator[MathVerifier]:
    with MathVerifier(MathVerifyConfig(timeout_seconds=TIMEOUT_S, workers=2)) as math_verifier:
        yield math_verifier


def _new_workers(before: set[int]) -> list[multiprocessing.process.BaseProcess]:
    return [p for p in multiprocessing.active_children() if p.name == "math-verify-worker" and p.pid not in before]


def _worker_pids() -> set[int]:
    return {p.pid for p in multiprocessing.active_children() if p.pid is not None}


@pytest.mark.parametrize(
    ("gold", "completion", "status", "extracted"),
    [
        ("0.5", "Halving 1 gives \\boxed{1/2}.", "correct", "1/2"),  # 1/2 = 0.5
        ("\\frac{1}{2}", "So the probability is \\boxed{0.5}", "correct", "0.5"),
        ("\\frac{1}{2}", "Answer: 1/2", "correct", "1/2"),
        ("x^2+1", "The answer is 1 + x^2", "correct", "1 + x^2"),  # same polynomial, reordered
        ("17", "8 + 9 = 18, so \\boxed{18}", "incorrect", "18"),
        ("17", "First 8 + 8 = 16, then add 2 to get 18.", "incorrect", "18"),  # last number
        ("17", "I could not solve this one.", "unparseable", None),
        ("17", "<think>it is \\boxed{17}</think> My final guess: \\boxed{18}", "incorrect", "18"),
        ("17", "<think>it is \\boxed{17}</think> I give up.", "unparseable", None),  # never from the reasoning
    ],
)
def test_plain_verdicts(verifier: MathVerifier, gold: str, completion: str, status: str, extracted: str | None) -> None:
    result = verifier.verify(gold, completion)
    assert (result.status, result.extracted) == (status, extracted), result.reason
    assert result.score == (1.0 if status == "correct" else 0.0)
    assert result.decided_by == "math_verify"


def test_unparseable_gold_is_an_error_for_every_completion(verifier: MathVerifier) -> None:
    results = verifier.verify_many([("  ", "\\boxed{1}"), ("", "Answer: 2"), ("3", "\\boxed{3}")])
    assert [(r.status, r.decided_by) for r in results[:2]] == [("error", "gold_unparseable")] * 2
    assert not results[0].judged and results[0].score == 0.0
    assert results[2].status == "correct"
    problem = verifier.gold_problem("")
    assert problem is not None and (problem.status, problem.decided_by) == ("error", "gold_unparseable")
    assert verifier.gold_problem("\\frac{1}{2}") is None
    assert verifier.gold_problem("\\text{odd}") is None  # a text answer: compared as text, as math-verify does


# Golds that used to break grading when they were parsed in the parent and pickled to the workers:
# sets, intervals and equations came back changed (correct answers rejected), and z = 1 + 1 = 2 raised
# AttributeError while being unpickled, which ended the whole batch. Verdicts worked out by hand.
AWKWARD_GOLDS = [
    ("n = 1, 2, 3", "\\boxed{n = 1, 2, 3}", "correct"),
    ("n = 1, 2, 3", "\\boxed{1, 2, 3}", "correct"),  # the values without the variable
    ("n = 1, 2, 3", "\\boxed{1, 2, 4}", "incorrect"),
    ("S=\\{1,2,3\\}", "\\boxed{\\{3,2,1\\}}", "correct"),  # a set: order does not matter
    ("S=\\{1,2,3\\}", "\\boxed{\\{1,2\\}}", "incorrect"),
    ("D = (0, 1)", "\\boxed{(0, 1)}", "correct"),
    ("D = (0, 1)", "\\boxed{(0, 2)}", "incorrect"),
    ("x \\in [-2,7]", "\\boxed{[-2,7]}", "correct"),
    ("x \\in [-2,7]", "\\boxed{[-2,8]}", "incorrect"),
    ("z = 1 + 1 = 2", "\\boxed{2}", "correct"),  # the chain's final value
    ("z = 1 + 1 = 2", "\\boxed{3}", "incorrect"),
    ("1,22", "\\boxed{1.22}", "correct"),  # a bare number with a decimal comma, as math-verify reads it
    ("\\text{odd}", "\\boxed{\\text{odd}}", "correct"),  # a gold that math-verify reads as text
    ("\\text{odd}", "\\boxed{\\text{even}}", "incorrect"),
]


def test_awkward_golds_among_plain_ones_are_each_graded(verifier: MathVerifier) -> None:
    """One batch: plain pairs around every awkward gold; each pair gets its own right verdict."""
    plain = [("3", "\\boxed{3}", "correct"), ("4", "\\boxed{5}", "incorrect")]
    cases = [pair for awkward in AWKWARD_GOLDS for pair in (plain[0], awkward, plain[1])]
    results = verifier.verify_many([(gold, completion) for gold, completion, _ in cases])
    assert [(r.status, r.decided_by) for r in results] == [(status, "math_verify") for _, _, status in cases]


def test_hanging_input_hangs_plain_math_verify_in_a_thread() -> None:
    """Outside a main thread math-verify refuses its timeout, and without it sympy does not return.

    It even holds the GIL (one long integer power in sympy's Integer._eval_power), so the process's
    main thread cannot come back from a 3 s join: the subprocess must be killed from outside.
    """
    script = (
        "import threading, math_verify\n"
        "gold, pred = math_verify.parse('$2$'), math_verify.parse('$9^{9^{9}}$')\n"
        "def with_timeout():\n"
        "    try:\n"
        "        math_verify.verify(gold, pred, timeout_seconds=5)\n"
        "    except ValueError as exc:\n"
        "        print('refused:', exc, flush=True)\n"
        "thread = threading.Thread(target=with_timeout); thread.start(); thread.join()\n"
        "kwargs = {'timeout_seconds': None}\n"
        "thread = threading.Thread(target=math_verify.verify, args=(gold, pred), kwargs=kwargs, daemon=True)\n"
        "thread.start(); thread.join(3.0)\n"
        "print('back from join', flush=True)\n"
    )
    with pytest.raises(subprocess.TimeoutExpired) as hung:
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=10)
    output = hung.value.stdout.decode() if isinstance(hung.value.stdout, bytes) else str(hung.value.stdout)
    assert "refused: Math-Verify doesn't support threaded environment" in output
    assert "back from join" not in output


def test_hanging_input_times_out_within_the_limit(verifier: MathVerifier) -> None:
    start = time.monotonic()
    result = verifier.verify("2", HANG_9)
    assert time.monotonic() - start < TIMEOUT_S + MARGIN_S
    assert (result.status, result.score, result.judged) == ("timeout", 0.0, False)


def test_batch_mixing_hangs_keeps_grading_in_input_order(verifier: MathVerifier) -> None:
    """Gold i against \\boxed{i} (correct) or \\boxed{i+1} (incorrect, every third), two hangs mixed in."""
    pairs = [(str(i), f"\\boxed{{{i + 1 if i % 3 == 0 else i}}}") for i in range(12)]
    pairs[4], pairs[9] = ("2", HANG_9), ("7", HANG_7)
    results = verifier.verify_many(pairs)
    expected = ["incorrect", "correct", "correct", "incorrect", "timeout", "correct"]
    expected += ["incorrect", "correct", "correct", "timeout", "correct", "correct"]
    assert [r.status for r in results] == expected
    assert [r.extracted for r in results] == [completion[7:-1] for _, completion in pairs]


def test_unresponsive_worker_is_killed_at_the_hard_limit() -> None:
    """A stopped worker stands for one whose signal timeout never fires: the parent kills and replaces it."""
    before = _worker_pids()
    with MathVerifier(MathVerifyConfig(timeout_seconds=TIMEOUT_S, workers=1)) as single:
        assert single.verify("1", "\\boxed{1}").status == "correct"
        (worker,) = _new_workers(before)
        os.kill(worker.pid, signal.SIGSTOP)  # type: ignore[arg-type]
        start = time.monotonic()
        result = single.verify("1", "\\boxed{1}")
        assert time.monotonic() - start < TIMEOUT_S + MARGIN_S
        assert result.status == "timeout" and "hard limit" in result.reason
        assert single.verify("2", "\\boxed{2}").status == "correct"  # graded by the replacement


def test_dead_worker_gives_error_and_the_pool_goes_on() -> None:
    before = _worker_pids()
    with MathVerifier(MathVerifyConfig(timeout_seconds=10.0, workers=1)) as single:
        assert single.verify("1", "\\boxed{1}").status == "correct"
        (worker,) = _new_workers(before)
        threading.Timer(0.5, os.kill, (worker.pid, signal.SIGKILL)).start()
        result = single.verify("2", HANG_9)
        assert result.status == "error" and "died" in result.reason
        assert single.verify_many([("2", "\\boxed{2}"), ("3", "\\boxed{4}")])[1].status == "incorrect"


def test_memory_limit_gives_error_and_later_jobs_succeed() -> None:
    """Expanding (x+1)^100000 needs over 500 MB; with 300 MB allowed it must end as "error"."""
    config = MathVerifyConfig(timeout_seconds=5.0, workers=1, memory_limit_mb=300)
    with MathVerifier(config) as limited:
        results = limited.verify_many([("7", "\\boxed{(x+1)^{100000}}"), ("7", "\\boxed{7}"), ("7", "\\boxed{8}")])
    assert results[0].status == "error" and "memory limit" in results[0].reason
    assert [r.status for r in results[1:]] == ["correct", "incorrect"]


def test_shared_verifier_is_one_per_config() -> None:
    config = MathVerifyConfig(timeout_seconds=3.0, workers=1)
    assert get_shared_verifier(config) is get_shared_verifier(MathVerifyConfig(timeout_seconds=3.0, workers=1))
    assert get_shared_verifier(config) is not get_shared_verifier(config.model_copy(update={"workers": 2}))


def test_config_is_bounded_and_strict() -> None:
    with pytest.raises(ValidationError):
        MathVerifyConfig(timeout_seconds=0.5)
    with pytest.raises(ValidationError):
        MathVerifyConfig(extraction=())
    with pytest.raises(ValidationError):
        MathVerifyConfig(extraction=("boxed", "regex"))  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        MathVerifyConfig(timeout=5)  # type: ignore[call-arg]
    assert MathVerifyConfig(workers=0).worker_count == (os.cpu_count() or 1)
