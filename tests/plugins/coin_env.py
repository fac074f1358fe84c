"""Test environments for the trainer (loaded as a plugin, as users load theirs).

- ``coin``: correct when the completion's first character has an even code point. A random model is
  right half the time, so every group has reward variance, and the task is trivially learnable.
- ``coin_half_flat``: even task indices are always correct (groups with no signal, which dynamic
  sampling drops), odd ones are a coin.
- ``coin_flaky``: like coin, but completions whose first character is a digit make the verifier
  fail (status "error"), so those samples must be masked.
"""

from grpopp.envs.base import EnvConfig, Environment, Split, Task
from grpopp.envs.registry import register_env
from grpopp.rewards.types import VerifyResult


class CoinConfig(EnvConfig):
    """Options of the coin environments."""


class _Coin(Environment[CoinConfig]):
    config_class = CoinConfig

    def num_tasks(self, split: Split = "train") -> int | None:
        return None

    def task(self, index: int, split: Split = "train") -> Task:
        prompt = f"{index % 10}+{index % 7}="
        return Task(id=self.task_id(index, split), env=self.name, split=split, index=index, prompt=prompt, answer="0")

    def verify(self, task: Task, completion: str) -> VerifyResult:
        if not completion:
            return VerifyResult(status="unparseable", score=0.0, decided_by="coin")
        ok = ord(completion[0]) % 2 == 0
        return VerifyResult(status="correct" if ok else "incorrect", score=float(ok), decided_by="coin")

    def gold_completion(self, task: Task) -> str:
        return "b"

    def wrong_completion(self, task: Task) -> str:
        return "a"


@register_env("coin")
class Coin(_Coin):
    """Correct when the first character's code point is even."""


@register_env("coin_half_flat")
class CoinHalfFlat(_Coin):
    """Even task indices always correct (no signal); odd ones a coin."""

    def verify(self, task: Task, completion: str) -> VerifyResult:
        if task.index % 2 == 0:
            return VerifyResult(status="correct", score=1.0, decided_by="coin")
        return super().verify(task, completion)


@register_env("coin_flaky")
class CoinFlaky(_Coin):
    """A coin whose verifier fails on completions that start with a digit."""

    def verify(self, task: Task, completion: str) -> VerifyResult:
        if completion[:1].isdigit():
            return VerifyResult.error("simulated verifier crash", "coin")
        return super().verify(task, completion)
