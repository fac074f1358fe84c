"""The environment contract check behind ``grpopp envs check NAME``.

An environment passes when its tasks are deterministic (same task for the same index, also from a
freshly built instance), its task ids are unique with train and test disjoint, gold completions
score correct, wrong and empty completions do not, and its verifier always reaches a verdict on
them (no timeout or error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from envs.base import Environment, Split, Task
from envs.registry import make_env


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

    def add(self, name: str, failures: list[str], checked: int) -> None:
        detail = f"{checked - len(failures)}/{checked} ok" + (f"; first failure: {failures[0]}" if failures else "")
        self.results.append(CheckResult(name, not failures, detail))


def _indices(env: Environment[Any], split: Split, count: int) -> list[int]:
    size = env.num_tasks(split)
    if size is None:
        return list(range(count))
    if size <= count:
        return list(range(size))
    return sorted({round(i * (size - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]


def check_env(env: Environment[Any], num_tasks: int = 20) -> CheckReport:
    """Run every contract check on ``num_tasks`` tasks of each split."""
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
    report.add("unique ids, train/test disjoint", [f"duplicate id {d}" for d in duplicates], len(ids))

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
