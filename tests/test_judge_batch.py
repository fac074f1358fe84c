"""A verifier that raises never ends a batch: ``Environment.judge_batch`` and the trainer's scoring.

Environments here override ``verify_batch`` with the faults user verifiers have: raising for one
completion, returning too few results, returning something that is not a ``VerifyResult``. Every
other completion of the batch must keep its own verdict, worked out by hand from the rules below.
"""

from __future__ import annotations

from collections.abc import Sequence

from grpopp.envs.base import EnvConfig, Environment, Split, Task
from grpopp.rewards.shaping import LengthLimits
from grpopp.rewards.types import VerifyResult
from grpopp.rollout.base import Completion
from grpopp.rollout.groups import score_groups


class _Echo(Environment[EnvConfig]):
    """Correct when the completion equals the task's answer; ``verify_batch`` misbehaves on "boom"."""

    name = "echo"
    fault = "raise"

    def num_tasks(self, split: Split = "train") -> int | None:
        return None

    def task(self, index: int, split: Split = "train") -> Task:
        return Task(id=f"echo/{split}/{index}", env="echo", split=split, index=index, prompt="say", answer=str(index))

    def verify(self, task: Task, completion: str) -> VerifyResult:
        ok = completion == task.answer
        return VerifyResult(status="correct" if ok else "incorrect", score=float(ok))

    def verify_batch(self, tasks: Sequence[Task], completions: Sequence[str]) -> list[VerifyResult]:
        if "boom" in completions:
            if self.fault == "raise":
                raise ZeroDivisionError("the verifier divided by zero")
            if self.fault == "short":
                return [self.verify(t, c) for t, c in zip(tasks, completions, strict=True)][:-1]
            return ["not a result"] * len(tasks)  # type: ignore[list-item]
        return [self.verify(task, completion) for task, completion in zip(tasks, completions, strict=True)]

    def gold_completion(self, task: Task) -> str:
        return task.answer or ""

    def wrong_completion(self, task: Task) -> str:
        return "wrong"


def _env(fault: str) -> _Echo:
    env = _Echo(EnvConfig())
    env.fault = fault
    return env


def test_one_raising_sample_is_an_error_and_the_others_are_graded() -> None:
    env = _env("raise")
    tasks = [env.task(i) for i in range(4)]
    results = env.judge_batch(tasks, ["0", "boom", "7", "3"])
    # task 0 says "0": correct; "boom": the verifier raises; task 2 says "7": incorrect; task 3 says "3": correct
    assert [r.status for r in results] == ["correct", "error", "incorrect", "correct"]
    assert "ZeroDivisionError: the verifier divided by zero" in results[1].reason
    assert not results[1].judged and results[1].score == 0.0


def test_malformed_batch_answers_fall_back_to_one_by_one() -> None:
    for fault, why in (
        ("short", "echo.verify_batch returned 0 results for 1 completions"),
        ("type", "echo.verify_batch returned a str, not a VerifyResult"),
    ):
        env = _env(fault)
        results = env.judge_batch([env.task(0), env.task(1)], ["0", "boom"])
        assert [r.status for r in results] == ["correct", "error"], fault
        assert why in results[1].reason, results[1].reason
        # alone, "0" is fine; alone, "boom" still misbehaves, so only it is an error


def test_score_groups_never_raises_for_a_verifier_fault() -> None:
    env = _env("raise")
    tasks = [env.task(0), env.task(1)]

    def completion(text: str) -> Completion:
        return Completion(prompt_ids=[1], token_ids=[2, 3], text=text, logprobs=[-0.1, -0.2], finish_reason="stop")

    groups = score_groups(
        tasks,
        [[completion("0"), completion("boom")], [completion("1"), completion("2")]],
        {"echo": env},
        LengthLimits(max_length=8, cache_length=0),
    )
    statuses = [[s.reward.status for s in g.samples] for g in groups]
    assert statuses == [["correct", "error"], ["correct", "incorrect"]]
    assert [[s.reward.valid for s in g.samples] for g in groups] == [[True, False], [True, True]]
