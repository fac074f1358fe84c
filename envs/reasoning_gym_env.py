"""Any reasoning-gym dataset as a grpopp environment: ``make_env("reasoning_gym:chain_sum", size=2000)``.

reasoning-gym (https://github.com/open-thought/reasoning-gym) generates item ``idx`` of a dataset
from ``random.Random(seed + idx)`` and judges an answer with the dataset's own ``score_answer``. This
module wraps one dataset per split and adds what grpopp needs:

- Splits, disjoint by content: the problem is the item's question; it is a test problem when its
  hash falls in the test class (``grpopp.envs.base.in_test_class``, share ``test_fraction``). Task i of a
  split is item i of the first "round" whose question falls in the split's class: round r of the
  train split is the dataset seeded ``seed mod 2^30 + r * size`` (size ``size``), round r of the
  test split the one seeded ``seed mod 2^30 + 2^30 + r * test_size``. So task i looks at one item
  per round and at most ``draw_budget`` rounds (about 1.1 for a train task and 1 / test_fraction
  for a test task on average), never scans the stream, and every item can be regenerated alone.
  Round 0 of the train split is the dataset of earlier versions, so most train items are unchanged.
  ``size`` (``test_size``) times the rounds allowed stays within 2^30, so all seeds stay below
  2^32, as numpy seeding needs. Some datasets (list_functions, gsm_symbolic) also draw their item
  order from (seed, size), so changing ``size`` changes their items.
- Verification: the final answer is taken from the completion in the configured format, the item
  is regenerated from (split, index) and ``score_answer`` decides: 1.0 is "correct", a score in
  [0, 1) is "incorrect" with the partial credit kept, an exception or a score outside [0, 1] is
  "error" (the sample is masked, never a silent 0).
- Tasks without a reference answer (boxnet, graph_color, propositional_logic, rubiks_cube, rush_hour
  give ``answer=None``; ``score_answer`` checks a solution) work for training and evaluation, but
  have no gold completion.

reasoning-gym is an optional dependency (``pip install 'grpopp[reasoning-gym]'``); it is imported on
first use, so registering this family costs nothing.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import itertools
import math
import numbers
from typing import Any, Literal, TypeAlias

from pydantic import ConfigDict, Field, JsonValue, ValidationInfo, field_validator, model_validator

from grpopp.envs.base import Environment, ProceduralConfig, Split, Task, draw_budget
from grpopp.envs.registry import register_env
from grpopp.rewards.extract import EXTRACTORS, strip_thinking
from grpopp.rewards.types import VerifyResult

AnswerFormat: TypeAlias = Literal["answer_tag", "boxed", "answer_line"]

MAX_SPLIT_SIZE = 2**30
"""Largest split times its rounds; also the distance between the train and test seeds (see the module
docstring)."""

_SPLIT_SEED_OFFSET: dict[str, int] = {"train": 0, "test": MAX_SPLIT_SIZE}
_RESERVED_OPTIONS = ("seed", "size")
_ENTRY_CACHE_SIZE = 1024
"""Items kept after generation: a group's G completions are verified against one regenerated item."""

_INSTRUCTIONS: dict[str, str] = {
    "boxed": "Think step by step, then put your final answer, and nothing else, in \\boxed{}.",
    "answer_line": 'Think step by step, then write your final answer on the last line as "Answer: <your answer>".',
}
"""Format instructions; "answer_tag" uses reasoning-gym's own default prompt (``SYSTEM_PROMPTS``)."""

_WRONG_MARKER = "WRONG"


def _reasoning_gym() -> Any:
    """The reasoning_gym module, or an ImportError that says how to install it."""
    try:
        import reasoning_gym
    except ImportError as exc:
        raise ImportError(
            "the reasoning_gym environments need the reasoning-gym package: pip install 'grpopp[reasoning-gym]'"
        ) from exc
    return reasoning_gym


def _known_tasks() -> dict[str, tuple[type, type]]:
    """reasoning-gym's registry: task name -> (dataset class, config dataclass)."""
    _reasoning_gym()
    from reasoning_gym.factory import DATASETS

    return dict(DATASETS)


class ReasoningGymConfig(ProceduralConfig):
    """Options of a reasoning-gym environment; the task's own knobs go in ``dataset_options``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    task: str
    """The reasoning-gym dataset, e.g. "chain_sum" (set by the name: "reasoning_gym:chain_sum")."""

    size: int = Field(10_000, ge=1, le=MAX_SPLIT_SIZE)
    """Number of tasks in the train split."""

    test_size: int = Field(500, ge=1, le=MAX_SPLIT_SIZE)
    """Number of tasks in the test split."""

    dataset_options: dict[str, JsonValue] = Field({}, validate_default=True)
    """Keyword arguments of the task's reasoning-gym config (difficulty knobs such as
    ``{"min_terms": 3, "max_digits": 5}``); seed and size come from this config."""

    answer_format: AnswerFormat = "answer_tag"
    """How the model gives its final answer: "answer_tag" is reasoning-gym's ``<answer>...</answer>``,
    "boxed" is ``\\boxed{...}``, "answer_line" a last line "Answer: ...". Only "answer_tag" carries any
    answer: "answer_line" takes one line and drops a final "." (sudoku grids, matrices and sentences
    then never score 1), "boxed" needs balanced braces."""

    instruction: str | None = None
    """Text appended to every question to ask for the answer format; None: the default for
    ``answer_format``; "" appends nothing (e.g. when the system prompt already says it)."""

    @model_validator(mode="after")
    def _seeds_in_range(self) -> ReasoningGymConfig:
        splits: tuple[tuple[str, Split], ...] = (("size", "train"), ("test_size", "test"))
        for field, split in splits:
            rounds = draw_budget(split, self.test_fraction)
            if getattr(self, field) * rounds > MAX_SPLIT_SIZE:
                raise ValueError(
                    f"{field}={getattr(self, field)} is too large: the {split} split may look at {rounds} rounds "
                    f"of {field} items (test_fraction={self.test_fraction}), and their seeds must stay within "
                    f"2^30; give at most {MAX_SPLIT_SIZE // rounds}"
                )
        return self

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        known = _known_tasks()
        if task not in known:
            close = difflib.get_close_matches(task, list(known), n=3, cutoff=0.6)
            hint = f" Did you mean {' or '.join(repr(name) for name in close)}?" if close else ""
            raise ValueError(
                f"unknown reasoning-gym task {task!r}.{hint} The {len(known)} tasks of the installed "
                f"reasoning-gym are listed by: python -c 'import reasoning_gym.factory as f; print(sorted(f.DATASETS))'"
            )
        return task

    @field_validator("dataset_options")
    @classmethod
    def _valid_options(cls, options: dict[str, JsonValue], info: ValidationInfo) -> dict[str, JsonValue]:
        task = info.data.get("task")
        if task is not None:  # an unknown task has been reported already
            _check_dataset_options(task, options, info.data.get("size", 1))
        return options


def _check_dataset_options(task: str, options: dict[str, JsonValue], size: int) -> None:
    """Build (but do not use) the task's reasoning-gym config, so a bad option fails at construction."""
    config_class = _known_tasks()[task][1]
    fields = [field.name for field in dataclasses.fields(config_class)]
    for name in options:
        if name in _RESERVED_OPTIONS:
            raise ValueError(
                f"dataset_options of {task!r} must not set {name!r}: set the environment's "
                f"{'seed' if name == 'seed' else 'size / test_size'} instead"
            )
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            allowed = ", ".join(field for field in fields if field not in _RESERVED_OPTIONS)
            raise ValueError(f"reasoning-gym task {task!r} has no option {name!r}.{hint} Its options: {allowed}")
    try:
        config = config_class(**options, seed=0, size=size)
        if callable(getattr(config, "validate", None)):
            config.validate()
    except Exception as exc:  # reasoning-gym reports bad values with assert, ValueError or TypeError
        message = str(exc) or type(exc).__name__
        named = [name for name in options if name in message] or list(options)
        raise ValueError(
            f"reasoning-gym task {task!r} rejected dataset_options {', '.join(named) or '(none)'}: {message} "
            f"(given {options})"
        ) from exc


# -- answers ------------------------------------------------------------------------------------


def extract_final_answer(completion: str, answer_format: AnswerFormat) -> str | None:
    """The final answer in ``answer_format``, taken outside the reasoning; None when absent or empty."""
    answer = EXTRACTORS[answer_format](strip_thinking(completion))
    return answer.strip() or None if answer is not None else None


def format_answer(answer: str, answer_format: AnswerFormat) -> str:
    """A short completion that states ``answer`` in ``answer_format``."""
    if answer_format == "answer_tag":
        return f"Working through it step by step gives the result.\n<answer>{answer}</answer>"
    if answer_format == "boxed":
        return f"Working through it step by step gives the result: \\boxed{{{answer}}}"
    return f"Working through it step by step gives the result.\nAnswer: {answer}"


def _wrong_answers(gold: str | None) -> list[str]:
    """Candidate wrong answers, most natural first; the caller keeps the first that scores below 1."""
    if gold is None:
        return [_WRONG_MARKER, "0"]
    return [answer for answer in (f"{gold} {_WRONG_MARKER}", _WRONG_MARKER, "0", "-1") if answer != gold]


# -- metadata -----------------------------------------------------------------------------------

_DROP = object()


def _json_safe(value: Any) -> Any:
    """``value`` as JSON (tuples become lists, numpy scalars Python numbers), or ``_DROP`` if it cannot
    be: dict entries that cannot are dropped one by one, a list with one such element entirely."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return number if math.isfinite(number) else _DROP
    if isinstance(value, (list, tuple)):
        items = [_json_safe(item) for item in value]
        return _DROP if any(item is _DROP for item in items) else items
    if isinstance(value, dict):
        safe = {key: _json_safe(item) for key, item in value.items() if isinstance(key, str)}
        return {key: item for key, item in safe.items() if item is not _DROP}
    return _DROP


def json_safe_metadata(metadata: Any) -> dict[str, JsonValue]:
    """The JSON-serialisable part of a reasoning-gym item's metadata (sets, objects, NaN dropped)."""
    safe = _json_safe(metadata) if isinstance(metadata, dict) else {}
    return safe if isinstance(safe, dict) else {}


def _short(text: str | None, limit: int = 200) -> str:
    text = repr(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- the environment ----------------------------------------------------------------------------


@register_env("reasoning_gym", family=True)
class ReasoningGymEnv(Environment[ReasoningGymConfig]):
    """Any reasoning-gym dataset as an environment: reasoning_gym:<task>; offline, scored by its own rules.

    One reasoning-gym dataset per split, built lazily once; items are regenerated from their index.
    """

    config_class = ReasoningGymConfig
    split_probe_tasks = 1
    """Items can take 50 ms to make (sokoban): construction only checks that each split can draw."""

    def __init__(self, config: ReasoningGymConfig) -> None:
        super().__init__(config)
        self.name = f"reasoning_gym:{config.task}"
        self.decided_by = f"reasoning_gym.{config.task}"
        self._datasets: dict[tuple[Split, int], Any] = {}
        self._entry = functools.lru_cache(maxsize=_ENTRY_CACHE_SIZE)(self._generate_entry)
        if config.instruction is not None:
            self.instruction = config.instruction
        elif config.answer_format == "answer_tag":
            _reasoning_gym()
            from reasoning_gym.utils import SYSTEM_PROMPTS

            self.instruction = SYSTEM_PROMPTS["default"].strip()
        else:
            self.instruction = _INSTRUCTIONS[config.answer_format]

    # -- tasks ---------------------------------------------------------------------------------

    def num_tasks(self, split: Split = "train") -> int:
        if split not in _SPLIT_SEED_OFFSET:
            raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")
        return self.config.size if split == "train" else self.config.test_size

    def dataset_seed(self, split: Split, round_index: int = 0) -> int:
        """The seed of the split's dataset of round ``round_index``: its item i is drawn from seed + i."""
        return self.config.seed % MAX_SPLIT_SIZE + _SPLIT_SEED_OFFSET[split] + round_index * self.num_tasks(split)

    def dataset(self, split: Split, round_index: int = 0) -> Any:
        """The reasoning-gym dataset of the split's round ``round_index``, built on first use."""
        if (split, round_index) not in self._datasets:
            seed, size = self.dataset_seed(split, round_index), self.num_tasks(split)
            try:
                dataset = _reasoning_gym().create_dataset(
                    self.config.task, **self.config.dataset_options, seed=seed, size=size
                )
            except Exception as exc:
                raise RuntimeError(
                    f"{self.name}: reasoning-gym could not build the {split} split "
                    f"(options {self.config.dataset_options}, seed {seed}, size {size}): {type(exc).__name__}: {exc}"
                ) from exc
            self._datasets[(split, round_index)] = dataset
        return self._datasets[(split, round_index)]

    def _generate_entry(self, split: Split, index: int) -> tuple[Any, dict[str, Any]]:
        """(dataset, item) of task ``index``: item ``index`` of the first round whose question falls
        in the split's hash class."""
        if not 0 <= index < self.num_tasks(split):
            raise IndexError(f"{self.name}: task {index} is out of range for the {split} split")
        datasets = (self.dataset(split, round_index) for round_index in itertools.count())
        rounds = ((dataset, dataset[index]) for dataset in datasets)
        found: tuple[Any, dict[str, Any]] = self.first_in_split(
            split, rounds, key=lambda candidate: str(candidate[1]["question"]), what=f"task {index}"
        )
        return found

    def task(self, index: int, split: Split = "train") -> Task:
        entry = self._entry(split, index)[1]
        question = entry["question"]
        text = f"{question}\n\n{self.instruction}" if self.instruction else question
        answer = entry.get("answer")
        return Task(
            id=self.task_id(index, split),
            env=self.name,
            split=split,
            index=index,
            prompt=self.make_prompt(text),
            answer=None if answer is None else str(answer),
            metadata=json_safe_metadata(entry.get("metadata")),
        )

    def instance_key(self, task: Task) -> str:
        """The item's question (without the format instruction), regenerated from the task's index."""
        return str(self._entry(task.split, task.index)[1]["question"])

    # -- verification --------------------------------------------------------------------------

    def verify(self, task: Task, completion: str) -> VerifyResult:
        if task.env != self.name:
            return VerifyResult.error(f"task {task.id} is from {task.env!r}, not {self.name!r}", self.decided_by)
        answer = extract_final_answer(completion, self.config.answer_format)
        if answer is None:
            return VerifyResult(
                status="unparseable",
                score=0.0,
                reason=f"no final answer in the {self.config.answer_format} format",
                decided_by=self.decided_by,
            )
        try:
            dataset, entry = self._entry(task.split, task.index)
        except Exception as exc:
            return VerifyResult.error(f"cannot regenerate {task.id}: {type(exc).__name__}: {exc}", self.decided_by)
        gold = entry.get("answer")
        if (None if gold is None else str(gold)) != task.answer:
            return VerifyResult.error(
                f"task {task.id} does not match this environment's item (other seed or dataset_options?): "
                f"gold {_short(task.answer)} here {_short(gold)}",
                self.decided_by,
            )
        return self._score(answer, entry, dataset)

    def _score(self, answer: str, entry: dict[str, Any], dataset: Any) -> VerifyResult:
        """The dataset's ``score_answer`` as a verdict; the entry is copied in case it is mutated."""
        try:
            raw = dataset.score_answer(answer, copy.deepcopy(entry))
            score = float(raw)
        except Exception as exc:
            return VerifyResult.error(
                f"score_answer raised {type(exc).__name__}: {exc} (answer {_short(answer)})", self.decided_by
            )
        reason = f"answer {_short(answer)}, gold {_short(entry.get('answer'))}, score {score:g}"
        if not 0.0 <= score <= 1.0:  # also NaN
            return VerifyResult.error(f"score_answer returned {raw!r}, outside [0, 1]; {reason}", self.decided_by)
        status: Literal["correct", "incorrect"] = "correct" if score == 1.0 else "incorrect"
        return VerifyResult(status=status, score=score, reason=reason, decided_by=self.decided_by, extracted=answer)

    # -- contract check ------------------------------------------------------------------------

    def gold_completion(self, task: Task) -> str:
        if task.answer is None:
            raise ValueError(
                f"{self.name}: reasoning-gym gives no reference answer for {task.id} (its score_answer checks a "
                "solution instead), so there is no gold completion"
            )
        return format_answer(task.answer, self.config.answer_format)

    def wrong_completion(self, task: Task) -> str:
        """The gold answer with a marker appended; if the task's scorer does not call that incorrect (some
        read only the first number, some raise on it), fixed wrong strings: "WRONG", "0", "-1"."""
        tried = []
        for answer in _wrong_answers(task.answer):
            completion = format_answer(answer, self.config.answer_format)
            result = self.verify(task, completion)
            if result.status == "incorrect":
                return completion
            tried.append(f"{answer!r} -> {result.status}")
        raise ValueError(f"{self.name}: no wrong answer found for {task.id}; tried {'; '.join(tried)}")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "task": self.config.task, "answer_format": self.config.answer_format}
