"""The environment contract check behind ``grpopp envs check NAME``.

An environment passes when its tasks are deterministic (same task for the same index, also from a
freshly built instance), its task ids are unique, its train and test splits are disjoint by content
(no test task among a few hundred of each split has the prompt text, or the canonical problem, of a
train task, and every problem lies in its split's hash class), gold completions score correct,
wrong and empty completions do not, and its verifier always reaches a verdict on them (no timeout
or error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from grpopp.envs.base import Environment, Message, Split, Task, prompt_text
from grpopp.envs.multiturn import MultiTurnEnv, play_episode
from grpopp.envs.registry import make_env

CONTENT_TASKS = 300
"""Tasks of each split compared by content: enough to meet a repeat in a space of a few thousand
problems shared by both splits (birthday bound), and a second or so for most environments."""

_SHOWN = 3
"""Failures quoted in a check's detail."""


@dataclass
class CheckResult:
    name: str
    passed: bool
    detail: str


@dataclass
class CheckReport:
    env: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.passed for r in self.results)

    def add(self, name: str, failures: list[str], checked: int, note: str = "") -> None:
        detail = f"{checked - len(failures)}/{checked} ok" + (f"; {note}" if note else "")
        if failures:
            more = f" (and {len(failures) - _SHOWN} more)" if len(failures) > _SHOWN else ""
            label = "first failure" if len(failures) == 1 else f"first {min(len(failures), _SHOWN)} failures"
            detail += f"; {label}: " + "; ".join(failures[:_SHOWN]) + more
        self.results.append(CheckResult(name, not failures, detail))


def _indices(env: Environment[Any], split: Split, count: int) -> list[int]:
    size = env.num_tasks(split)
    if size is None:
        return list(range(count))
    if size <= count:
        return list(range(size))
    return sorted({round(i * (size - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def content_overlaps(env: Environment[Any], train: list[Task], test: list[Task]) -> list[str]:
    """One line per task that breaks the split: a test task with a train task's prompt text or
    problem (``content_key``), or a task whose problem lies in the other split's hash class."""
    by_prompt = {prompt_text(task): task for task in train}
    by_key = {env.content_key(task): task for task in train}
    failures = [reason for task in train if (reason := env.split_violation(task, "train")) is not None]
    for task in test:
        prompt, key = prompt_text(task), env.content_key(task)
        if env.prompt_poses_problem and prompt in by_prompt:
            failures.append(f"{task.id} has the prompt of {by_prompt[prompt].id}: {_short(prompt)}")
        elif key in by_key:
            failures.append(f"{task.id} poses the problem of {by_key[key].id}: {_short(key)}")
        elif (reason := env.split_violation(task, "test")) is not None:
            failures.append(reason)
    return failures


def check_env(env: Environment[Any], num_tasks: int = 20, content_tasks: int = CONTENT_TASKS) -> CheckReport:
    """Run every contract check on ``num_tasks`` tasks of each split, and the content-disjointness
    check on ``content_tasks`` tasks of each split (all of a smaller split)."""
    report = CheckReport(env.name)
    twin = make_env(
        env.name, **env.config.model_dump(exclude={"task"} if "task" in type(env.config).model_fields else None)
    )
    tasks: dict[Split, list[Task]] = {}
    failures: list[str] = []
    for split in ("train", "test"):
        size = env.num_tasks(split)
        if size == 0:
            failures.append(f"the {split} split is empty")
        tasks[split] = [env.task(i, split) for i in _indices(env, split, num_tasks)]
        for task in tasks[split]:
            if env.task(task.index, split) != task or twin.task(task.index, split) != task:
                failures.append(f"{task.id} differs between two calls or two instances")
    all_tasks = tasks["train"] + tasks["test"]
    report.add("deterministic tasks", failures, len(all_tasks))

    ids = [t.id for t in all_tasks]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    report.add("unique ids", [f"duplicate id {d}" for d in duplicates], len(ids))

    sampled: dict[Split, list[Task]] = {
        split: [env.task(i, split) for i in _indices(env, split, content_tasks)] for split in ("train", "test")
    }
    distinct = {split: len({env.content_key(task) for task in tasks}) for split, tasks in sampled.items()}
    report.add(
        "train/test disjoint by content",
        content_overlaps(env, sampled["train"], sampled["test"]),
        len(sampled["train"]) + len(sampled["test"]),
        note=", ".join(f"{split} {distinct[split]} distinct problems in {len(sampled[split])}" for split in sampled),
    )

    if isinstance(env, MultiTurnEnv):
        _check_episodes(env, all_tasks, report)
        return report
    checks: list[tuple[str, Callable[[Task], str], bool]] = [
        ("gold answers score correct", env.gold_completion, True),
        ("wrong answers do not score correct", env.wrong_completion, False),
        ("empty completions do not score correct", lambda task: "", False),
    ]
    for label, make, must_be_correct in checks:
        kept, completions, failures = [], [], []
        for task in all_tasks:
            try:
                completions.append(make(task))
                kept.append(task)
            except Exception as exc:  # e.g. a task without a reference answer: a failed check, not a crash
                failures.append(f"{task.id}: making the completion raised {type(exc).__name__}: {exc}")
        for task, result in zip(kept, env.judge_batch(kept, completions), strict=True):
            if not result.judged:
                failures.append(f"{task.id}: no verdict, {result.status} ({result.reason})")
            elif (result.status == "correct") != must_be_correct:
                failures.append(f"{task.id}: {result.status} ({result.reason})")
        report.add(label, failures, len(all_tasks))
    return report


def _check_episodes(env: MultiTurnEnv[Any], tasks: list[Task], report: CheckReport) -> None:
    """A multi-turn environment's verdict checks: gold and wrong episodes played without a model
    (``gold_turn`` / ``wrong_turn`` against ``respond``, within ``max_turns``) and an empty one-turn
    episode, each judged by ``verify_episode``. An environment without a gold or wrong policy skips
    that check, saying so."""
    policies: list[tuple[str, Callable[[Task, list[Message]], str | None], bool]] = [
        ("gold episodes score correct", env.gold_turn, True),
        ("wrong episodes do not score correct", env.wrong_turn, False),
        ("empty episodes do not score correct", lambda task, transcript: "", False),
    ]
    for label, policy, must_be_correct in policies:
        kept, transcripts, failures = [], [], []
        for task in tasks:
            try:
                transcript = play_episode(env, task, policy)
            except Exception as exc:
                failures.append(f"{task.id}: playing the episode raised {type(exc).__name__}: {exc}")
                continue
            if transcript is not None:
                kept.append(task)
                transcripts.append(transcript)
        if not kept and not failures:
            report.results.append(CheckResult(label, True, f"skipped: {env.name} gives no such episode"))
            continue
        for task, transcript, result in zip(kept, transcripts, env.judge_episodes(kept, transcripts), strict=True):
            turns = sum(m.role == "assistant" for m in transcript)
            if not result.judged:
                failures.append(f"{task.id}: no verdict after {turns} turns, {result.status} ({result.reason})")
            elif (result.status == "correct") != must_be_correct:
                failures.append(f"{task.id}: {result.status} after {turns} turns ({result.reason})")
        report.add(label, failures, len(tasks))
