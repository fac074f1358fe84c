"""The environment contract: typed tasks, a pydantic config, deterministic task access, verification.

An environment is a source of tasks with a verifiable answer. It must be deterministic and
index-addressable: ``env.task(i, split)`` returns the same task for the same config, seed, split
and index, on any machine and in any order (items are generated from ``random.Random`` seeded by
(seed, split, index), as reasoning-gym does), so runs resume and evaluation sets are reproducible.

Held-out splits are disjoint by content, not only by id: no task of the "test" split poses the same
problem as a task of the "train" split (the same prompt text, or, where the environment has a
canonical form of its problems, ``instance_key``, the same instance: "3 + 4" in any wording, or the
numbers 3, 7, 25 in any order with the same target). How:

- Procedural environments (config ``ProceduralConfig``) split their problem space by a hash of the
  canonical key: a problem belongs to the test split when the first 8 bytes of sha256(key), read
  as a big-endian integer over 2^64, fall below ``test_fraction`` (``in_test_class``), else to the
  train split. ``draw_in_split(index, split, draw, key)`` draws problems from the task's private
  generator until one falls in the split's class (at most ``draw_budget(split, test_fraction)``
  draws), so a user environment gets the split in one line. ``check_split_space``, run by ``make_env``,
  refuses a problem space too small to split: a split where no problem can be drawn, or with fewer
  than ``MIN_SPLIT_PROBLEMS`` distinct problems among its first tasks.
- Data environments split the rows by the same hash of the question, or read a separate test file,
  from which they drop every question that also occurs in the training data (with a warning).

``grpopp envs check`` compares samples of both splits by content, and evaluation refuses a task
that is not a test-split task.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar, Generic, Literal, TypeAlias, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from grpopp.config_tools import ConfigError
from grpopp.rewards.shaping import LengthLimits, RewardConfig, compose_reward
from grpopp.rewards.types import Reward, VerifyResult

Split: TypeAlias = Literal["train", "test"]

MIN_SPLIT_PROBLEMS = 8
"""Fewest distinct problems a split of a procedural environment may hold (``check_split_space``)."""

SPLIT_PROBE_TASKS = 32
"""Tasks of each split that ``check_split_space`` draws by default."""


def in_test_class(key: str, test_fraction: float) -> bool:
    """Whether the problem with canonical ``key`` belongs to the test split: the first 8 bytes of
    sha256(key) as a big-endian integer, over 2^64, fall below ``test_fraction``. A pure function
    of the key, so the split of a problem is the same for every seed, index and machine."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def split_of(key: str, test_fraction: float) -> Split:
    """The split the problem with canonical ``key`` belongs to (``in_test_class``)."""
    return "test" if in_test_class(key, test_fraction) else "train"


def draw_budget(split: Split, test_fraction: float) -> int:
    """Draws ``draw_in_split`` makes for one task of ``split`` before giving up: in a large space a
    draw lands in the split with probability p (test_fraction for test, 1 - test_fraction for
    train), so all of them miss with probability (1 - p)^budget < e^-50."""
    share = test_fraction if split == "test" else 1.0 - test_fraction
    return math.ceil(50 / share)


class SplitSpaceError(ConfigError):
    """No problem of a split was found within the draw budget: the space is too small to split."""


class Message(BaseModel):
    """One chat message: of a prompt, or of an episode's transcript (``grpopp.envs.multiturn``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str
    name: str | None = None
    """A tool message's tool name."""

    def template_dict(self) -> dict[str, str]:
        """The message as chat templates take it."""
        out = {"role": self.role, "content": self.content}
        if self.name is not None:
            out["name"] = self.name
        return out


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


class ProceduralConfig(EnvConfig):
    """Options of an environment that generates its problems: ``EnvConfig`` plus the held-out share."""

    test_fraction: float = Field(0.1, ge=0.01, le=0.5)
    """Share of the problem space held out for the test split: a problem is a test problem when the
    hash of its canonical form falls in the first ``test_fraction`` of the hash range; train tasks
    are drawn from the rest. Between 0.01 and 0.5: a test task costs about 1 / test_fraction draws."""


ConfigT = TypeVar("ConfigT", bound=EnvConfig)
InstanceT = TypeVar("InstanceT")


class Environment(ABC, Generic[ConfigT]):
    """Base class of every environment. Subclasses set ``config_class`` and implement
    ``num_tasks``, ``task``, ``verify`` and ``gold_completion`` / ``wrong_completion`` (the last two
    let ``grpopp envs check`` test the contract).

    ``task(i, "test")`` must never pose a problem that ``task(j, "train")`` poses, for any i, j:
    procedural environments take a ``ProceduralConfig`` and draw with ``draw_in_split`` (and give
    ``instance_key`` when one problem has several prompts); data environments hold out by question."""

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

    # -- content-disjoint splits ---------------------------------------------------------------

    prompt_poses_problem: ClassVar[bool] = True
    """False where the prompt does not pose the whole problem because part of it is hidden state (a
    game's secret): tasks of both splits may then show the same prompt, and the splits are disjoint
    by ``instance_key`` alone (``grpopp envs check`` compares keys, not prompts)."""

    split_probe_tasks: ClassVar[int] = SPLIT_PROBE_TASKS
    """Tasks of each split that ``check_split_space`` draws; lower it where a task is slow to make."""

    def instance_key(self, task: Task) -> str | None:
        """The canonical form of the task's problem, which the split hash, ``envs check`` and
        evaluation compare (e.g. an arithmetic task's expression); None: the prompt text is it."""
        return None

    def content_key(self, task: Task) -> str:
        """What two tasks must share to pose the same problem: ``instance_key``, else the prompt."""
        key = self.instance_key(task)
        return prompt_text(task) if key is None else key

    @property
    def test_fraction(self) -> float | None:
        """The share of the problem space held out for test (``ProceduralConfig.test_fraction``);
        None for environments that split otherwise (data files)."""
        return self.config.test_fraction if isinstance(self.config, ProceduralConfig) else None

    def draw_in_split(
        self, index: int, split: Split, draw: Callable[[random.Random], InstanceT], key: Callable[[InstanceT], str]
    ) -> InstanceT:
        """The first problem ``draw(rng)`` makes, from the task's private generator ``self.rng(index,
        split)``, whose ``key`` falls in the split's hash class: the content-disjoint split of a
        procedural environment in one line, e.g.
        ``word = self.draw_in_split(index, split, lambda rng: rng.choice(WORDS), key=str)``."""
        rng = self.rng(index, split)
        return self.first_in_split(split, (draw(rng) for _ in itertools.count()), key, f"task {index}")

    def first_in_split(
        self, split: Split, candidates: Iterable[InstanceT], key: Callable[[InstanceT], str], what: str
    ) -> InstanceT:
        """The first of ``candidates`` whose ``key`` falls in the split's hash class, looking at
        ``draw_budget(split, test_fraction)`` of them at most; ``SplitSpaceError`` when none does."""
        fraction = self.test_fraction
        if fraction is None:
            raise TypeError(
                f"{self.name or type(self).__name__}: drawing problems by split needs a test_fraction: "
                "make config_class subclass grpopp.envs.base.ProceduralConfig"
            )
        budget = draw_budget(split, fraction)
        for candidate in itertools.islice(candidates, budget):
            if split_of(key(candidate), fraction) == split:
                return candidate
        raise SplitSpaceError(
            f"{self.name}: no {split} problem for {what} in {budget} draws, so the problem space is too small to "
            f"split into train and test (test_fraction={fraction}): widen the options that set the space (ranges, "
            f"counts, word lists) or {'raise' if split == 'test' else 'lower'} test_fraction"
        )

    def check_split_space(self) -> None:
        """Refuse a problem space too small to split (``make_env`` runs this): each split of a
        procedural environment must yield a problem within the draw budget, and its first
        ``split_probe_tasks`` tasks must hold ``MIN_SPLIT_PROBLEMS`` distinct problems (all of them
        when fewer are probed). Environments without a test_fraction (data) check when they load."""
        fraction = self.test_fraction
        if fraction is None:
            return
        splits: tuple[Split, Split] = ("train", "test")
        for split in splits:  # first: can each split draw a problem at all?
            self.task(0, split)
        for split in splits:
            probed = self.split_probe_tasks
            distinct = len({self.content_key(self.task(i, split)) for i in range(probed)})
            if distinct < min(MIN_SPLIT_PROBLEMS, probed):
                raise SplitSpaceError(
                    f"{self.name}: the {split} split holds only {distinct} distinct problems among its first {probed} "
                    f"tasks (at least {MIN_SPLIT_PROBLEMS} are needed), so the problem space is too small to split "
                    f"with test_fraction={fraction}: widen the options that set the space (ranges, counts, word "
                    f"lists) or {'raise' if split == 'test' else 'lower'} test_fraction"
                )

    def split_violation(self, task: Task, split: Split) -> str | None:
        """Why ``task`` may not stand as a task of ``split``: it belongs to the other split, or its
        canonical problem hashes into the other split's class; None when it may."""
        if task.split != split:
            return f"task {task.id} is from the {task.split} split, not the {split} split"
        key, fraction = self.instance_key(task), self.test_fraction
        if key is not None and fraction is not None and split_of(key, fraction) != split:
            return (
                f"task {task.id} poses {key!r}, a problem of the {split_of(key, fraction)} split's hash class "
                f"(test_fraction={fraction})"
            )
        return None

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
        except _BadAnswer as exc:
            return VerifyResult.error(f"{self.name}.verify_batch {exc}"[:2000], self.name or type(self).__name__)
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


def prompt_text(task: Task) -> str:
    """A task's prompt as one text: chat messages as "[role] content" lines."""
    if isinstance(task.prompt, str):
        return task.prompt
    return "\n".join(f"[{message.role}] {message.content}" for message in task.prompt)


class _BadAnswer(TypeError):
    """``verify_batch`` returned something other than one ``VerifyResult`` per completion."""


def _check_results(results: object, count: int) -> None:
    """A verifier's answer must be one ``VerifyResult`` per completion, in order."""
    if not isinstance(results, list) or len(results) != count:
        size = len(results) if isinstance(results, list) else type(results).__name__
        raise _BadAnswer(f"returned {size} results for {count} completions; return one per completion")
    for result in results:
        if not isinstance(result, VerifyResult):
            raise _BadAnswer(f"returned a {type(result).__name__}, not a VerifyResult")
