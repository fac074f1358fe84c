"""A test environment whose verifier answers with non-finite scores (loaded as a plugin).

- ``coin_nan``: the coin of ``coin_env`` (correct when the first character's code point is even),
  except that a completion starting with a digit gets score NaN and one starting with an upper-case
  letter score inf. ``VerifyResult``'s validation refuses such scores, so the verdicts are built with
  ``model_construct``, as a plugin that skips validation for speed would; every train-split
  completion judged is recorded in ``CoinNan.judged`` for the tests to count.
"""

import math
from typing import ClassVar

from grpopp.envs.base import EnvConfig, Environment, Split, Task
from grpopp.envs.registry import register_env
from grpopp.rewards.types import VerifyResult


class CoinNanConfig(EnvConfig):
    """Options of the coin_nan environment."""


@register_env("coin_nan")
class CoinNan(Environment[CoinNanConfig]):
    """A coin whose verifier scores NaN (first character a digit) or inf (an upper-case letter)."""

    config_class = CoinNanConfig
    judged: ClassVar[list[str]] = []
    """Every train-split completion verified, in order (shared by all instances)."""

    def num_tasks(self, split: Split = "train") -> int | None:
        return None

    def task(self, index: int, split: Split = "train") -> Task:
        prompt = f"{index % 10}+{index % 7}="
        return Task(id=self.task_id(index, split), env=self.name, split=split, index=index, prompt=prompt, answer="0")

    def verify(self, task: Task, completion: str) -> VerifyResult:
        if task.split == "train":
            CoinNan.judged.append(completion)
        first = completion[:1]
        if first.isdigit() or first.isupper():
            score = math.nan if first.isdigit() else math.inf
            return VerifyResult.model_construct(status="correct", score=score, reason="", decided_by="coin_nan")
        ok = bool(first) and ord(first) % 2 == 0
        return VerifyResult(status="correct" if ok else "incorrect", score=float(ok), decided_by="coin_nan")

    def gold_completion(self, task: Task) -> str:
        return "b"

    def wrong_completion(self, task: Task) -> str:
        return "a"
