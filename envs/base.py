"""The environment contract: typed tasks, a pydantic config, deterministic task access, verification.

An environment is a source of tasks with a verifiable answer. It must be deterministic and
index-addressable: ``env.task(i, split)`` returns the same task for the same config, seed, split
and index, on any machine and in any order (items are generated from ``random.Random`` seeded by
(seed, split, index), as reasoning-gym does), so runs resume and evaluation sets are reproducible.

The "train" and "test" splits never share a task id; procedural environments draw each split from
its own seed stream, data environments read separate files or a disjoint held-out slice.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, Literal, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from rewards.shaping import LengthLimits, RewardConfig, compose_reward
from rewards.types import Reward, VerifyResult

Split: TypeAlias = Literal["train", "test"]


class Message(BaseModel):
    """One chat message of a prompt."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    role: Literal["system", "user", "assistant"]
    content: str


class Task(BaseModel):
    """One problem: the prompt shown to the model and what its answer is checked against."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    id: str
    """Unique and stable: "<env>/<split>/<index>" for built-ins."""

    env: str
    """Name of the environment that made it."""

    split: Split = "train"
    index: int = Field(ge=0)

    prompt: str | list[Message]
    """Plain text, or chat messages (rendered with the tokenizer's chat template)."""

    answer: str | None = None
    """The gold answer (None for tasks judged by tests)."""

    tests: list[JsonValue] | None = None
    """Hidden tests, for environments judged by running code."""

    metadata: dict[str, JsonValue] = {}
    """Anything else the verifier or the logs need (difficulty, source row, ...)."""


class EnvConfig(BaseModel):
    """Options every environment has; subclasses add their own, each documented."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    seed: int = 0
    """Seed of the task stream: task i of a split is a function of (seed, split, i)."""

    system_prompt: str | None = None
    """If set, prompts become chat messages with this system message first."""

    reward: RewardConfig = RewardConfig()
    """How this environment's reward is shaped (weights of correctness, format, overlong, length)."""


ConfigT = TypeVar("ConfigT", bound=EnvConfig)


class Environment(ABC, Generic[ConfigT]):
    """Base class of every environment. Subclasses set ``config_class`` and implement
    ``num_tasks``, ``task``, ``verify`` and ``gold_completion`` / ``wrong_completion`` (the last two
    let ``grpopp envs check`` test the contract)."""

    name: str = ""
    """Registry name, set by ``@register_env``."""

    config_class: ClassVar[type[EnvConfig]] = EnvConfig
    """The pydantic model of this environment's options."""

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    # -- tasks ---------------------------------------------------------------------------------

    @abstractmethod
    def num_tasks(self, split: Split = "train") -> int | None:
        """How many distinct tasks the split holds; None for an unbounded procedural stream."""

    @abstractmethod
    def task(self, index: int, split: Split = "train") -> Task:
        """Task ``index`` of ``split``; the same task every time for the same config."""

    def rng(self, index: int, split: Split) -> random.Random:
        """A generator private to one task: seeded by (env, seed, split, index) as a string, so it is
        stable across processes and Python versions (no ``hash()`` randomisation)."""
        return random.Random(f"{self.name}|{self.config.seed}|{split}|{index}")

    def make_prompt(self, text: str) -> str | list[Message]:
        """Wrap a user prompt as chat messages when a system prompt is configured."""
        if self.config.system_prompt is None:
            return text
        return [Message(role="system", content=self.config.system_prompt), Message(role="user", content=text)]

    def task_id(self, index: int, split: Split) -> str:
        return f"{self.name}/{split}/{index}"

    # -- verification --------------------------------------------------------------------------

    @abstractmethod
    def verify(self, task: Task, completion: str) -> VerifyResult:
        """Judge one completion. Never raises for a bad completion: that is "incorrect" or
        "unparseable"; a verifier that cannot judge returns "timeout" or "error"."""

    def verify_batch(self, tasks: Sequence[Task], completions: Sequence[str]) -> list[VerifyResult]:
        """Judge many completions; environments with an expensive verifier override this to use a
        worker pool. An exception from ``verify`` becomes status "error", never a crash or a 0."""
        results = []
        for task, completion in zip(tasks, completions, strict=True):
            try:
                results.append(self.verify(task, completion))
            except Exception as exc:
                results.append(VerifyResult.error(f"verify raised {type(exc).__name__}: {exc}", self.name))
        return results

    def judge_batch(self, tasks: Sequence[Task], completions: Sequence[str]) -> list[VerifyResult]:
        """``verify_batch`` that never raises: the one way callers judge completions.

        If the batch call raises (or returns something other than one ``VerifyResult`` per
        completion), each completion is judged alone, so one sample that breaks the verifier costs
        only its own verdict: it gets status "error" with the exception, and the others are graded.
        """
        try:
            results = self.verify_batch(tasks, completions)
            _check_results(results, len(tasks))
            return results
        except Exception:
            return [self._judge_one(task, completion) for task, completion in zip(tasks, completions, strict=True)]

    def _judge_one(self, task: Task, completion: str) -> VerifyResult:
        try:
            results = self.verify_batch([task], [completion])
            _check_results(results, 1)
            return results[0]
        except Exception as exc:
            reason = f"{self.name}.verify_batch raised {type(exc).__name__}: {exc}"
            return VerifyResult.error(reason[:2000], self.name or type(self).__name__)

    def score_batch(
        self,
        tasks: Sequence[Task],
        completions: Sequence[str],
        num_tokens: Sequence[int],
        limits: LengthLimits,
    ) -> list[Reward]:
        """Verify and shape: the one path from completions to rewards, in training and evaluation."""
        results = self.judge_batch(tasks, completions)
        return [
            compose_reward(result, completion, length, self.config.reward, limits)
            for result, completion, length in zip(results, completions, num_tokens, strict=True)
        ]

    # -- contract check ------------------------------------------------------------------------

    @abstractmethod
    def gold_completion(self, task: Task) -> str:
        """A completion that states the gold answer in the format this environment expects."""

    @abstractmethod
    def wrong_completion(self, task: Task) -> str:
        """A well-formed completion with a wrong answer (must not score correct)."""

    def describe(self) -> dict[str, Any]:
        """A short summary for ``grpopp envs list``."""
        return {"name": self.name, "train_tasks": self.num_tasks("train"), "test_tasks": self.num_tasks("test")}


def _check_results(results: object, count: int) -> None:
    """A verifier's answer must be one ``VerifyResult`` per completion, in order."""
    if not isinstance(results, list) or len(results) != count:
        size = len(results) if isinstance(results, list) else type(results).__name__
        raise TypeError(f"verify_batch returned {size} results for {count} completions; return one per completion")
    for result in results:
        if not isinstance(result, VerifyResult):
            raise TypeError(f"verify_batch returned a {type(result).__name__}, not a VerifyResult")
