"""``gsm8k`` and ``math``: math word problems from a data file, graded by math-verify.

Data comes from a local JSONL or Parquet file, or from a Hugging Face data set through the
``datasets`` library when the network allows; a small hand-written sample ships in the package
(``envs/data/``) so both environments work offline and in tests. Column names and the way the gold
answer is read from the answer column are configurable:

- "gsm8k_hash": GSM8K's solutions end with "#### <answer>";
- "boxed": MATH's solutions hold the final answer in the last ``\\boxed{}`` (several boxes of one
  final statement, as "\\boxed{2} and \\boxed{3}", are one answer: "2, 3");
- "raw": the column is the answer itself.

Held-out split: a ``test_path`` (or the Hugging Face test split) when given, less every row whose
question is also a training question (dropped with a warning that counts them); otherwise a fixed
fraction of the rows, chosen by a hash of the question text (``grpopp.envs.base.in_test_class``), so train
and test never share a problem, whatever the seed, and appending rows does not move old ones between
splits.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from grpopp.config_tools import ConfigError
from grpopp.envs.base import EnvConfig, Environment, Split, Task
from grpopp.envs.data_files import DataFileError, jsonl_rows, parquet_rows, split_rows
from grpopp.envs.registry import register_env
from grpopp.rewards.extract import find_boxed
from grpopp.rewards.math_verify_pool import MathVerifier, MathVerifyConfig, get_shared_verifier
from grpopp.rewards.types import VerifyResult

AnswerParser = Literal["gsm8k_hash", "boxed", "raw"]


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str
    source: str
    """Where the row came from, "file:line" or "hf:name[split]#row"."""


class MathDataConfig(EnvConfig):
    """Options shared by the ``gsm8k`` and ``math`` environments."""

    path: str | None = None
    """Local .jsonl or .parquet file of problems. None: the sample shipped with grpopp (or hf_dataset)."""

    test_path: str | None = None
    """Local held-out file, same format. None: a held-out slice of the data (see test_fraction)."""

    hf_dataset: str | None = None
    """Hugging Face data set name, loaded with ``datasets`` (needs the network), e.g. "openai/gsm8k"."""

    hf_config: str | None = None
    """Its configuration name, e.g. "main" for openai/gsm8k."""

    hf_split: str = "train"
    """Split of the Hugging Face data set used for training."""

    hf_test_split: str | None = "test"
    """Split used for evaluation; None: a held-out slice of hf_split."""

    question_column: str = "question"
    """Column holding the problem statement."""

    answer_column: str = "answer"
    """Column holding the answer or the worked solution."""

    answer_parser: AnswerParser = "gsm8k_hash"
    """How to read the gold answer from answer_column: "gsm8k_hash", "boxed" or "raw"."""

    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of rows held out for evaluation when there is no separate test data."""

    prompt_template: str = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
    """Prompt; ``{question}`` is replaced by the problem (use ``{{}}`` for literal braces)."""

    verifier: MathVerifyConfig = MathVerifyConfig()
    """Math verification: answer extraction, timeouts, worker pool."""

    @model_validator(mode="after")
    def _check(self) -> MathDataConfig:
        if self.path is not None and self.hf_dataset is not None:
            raise ValueError("set either path or hf_dataset, not both")
        for field in ("path", "test_path"):
            value = getattr(self, field)
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{field}: no such file {value!r}; give a .jsonl or .parquet file")
        if "{question}" not in self.prompt_template:
            raise ValueError("prompt_template must contain '{question}'")
        return self


class MathDataEnv(Environment[MathDataConfig]):
    """Problems from a data file, answers graded by math-verify in a worker pool."""

    config_class = MathDataConfig
    sample_file = ""

    def __init__(self, config: MathDataConfig) -> None:
        super().__init__(config)
        self.skipped: list[str] = []
        """Rows left out because their gold answer could not be read, as "source: reason"."""
        self._splits = self._load()

    # -- data ------------------------------------------------------------------------------------

    def _load(self) -> dict[Split, list[Problem]]:
        cfg = self.config
        if cfg.hf_dataset is not None:
            source = f"Hugging Face data set {cfg.hf_dataset!r} (split {cfg.hf_split!r})"
            train = self._read_hf(cfg.hf_split)
            test = self._read_hf(cfg.hf_test_split) if cfg.hf_test_split else None
        else:
            source = str(Path(cfg.path) if cfg.path else self._sample_path())
            train = self._read_file(Path(source))
            test = self._read_file(Path(cfg.test_path)) if cfg.test_path else None
        if self.skipped:
            warnings.warn(
                f"{self.name}: skipped {len(self.skipped)} rows whose gold answer could not be read, "
                f"first: {self.skipped[0]}",
                stacklevel=3,
            )
        train, test = split_rows(self.name, train, test, cfg.test_fraction)
        if not train:
            skipped = f" ({len(self.skipped)} rows skipped: no readable gold answer)" if self.skipped else ""
            raise DataFileError(
                f"{source}: no training problems for {self.name} in it{skipped}; give a file with one problem per "
                f"row, in columns {cfg.question_column!r} and {cfg.answer_column!r}"
            )
        return {"train": train, "test": test}

    def _sample_path(self) -> Path:
        return Path(str(resources.files("grpopp.envs") / "data" / self.sample_file))

    def _read_file(self, path: Path) -> list[Problem]:
        if path.suffix == ".parquet":
            rows = parquet_rows(path)
        elif path.suffix in (".jsonl", ".json"):
            rows = jsonl_rows(path)
        else:
            raise DataFileError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl or .parquet")
        return self._problems(rows)

    def _read_hf(self, split: str) -> list[Problem]:
        cfg = self.config
        try:
            import datasets
        except ImportError as exc:
            raise ConfigError(
                "hf_dataset needs the 'datasets' package: pip install 'grpopp[datasets]'; or download the data "
                "and set path to a local .jsonl/.parquet file"
            ) from exc
        try:
            data = datasets.load_dataset(cfg.hf_dataset, cfg.hf_config, split=split)
        except Exception as exc:
            raise DataFileError(
                f"could not load Hugging Face data set {cfg.hf_dataset!r} (config {cfg.hf_config!r}, split {split!r}): "
                f"{type(exc).__name__}: {exc}. Without network access, set path to a local file."
            ) from exc
        return self._problems((f"hf:{cfg.hf_dataset}[{split}]#{i}", row) for i, row in enumerate(data))

    def _problems(self, rows: Any) -> list[Problem]:
        cfg = self.config
        problems = []
        for source, row in rows:
            missing = [c for c in (cfg.question_column, cfg.answer_column) if c not in row]
            if missing:
                raise DataFileError(
                    f"{source}: missing column {missing[0]!r}; the row has columns {sorted(row)}. Set "
                    f"question_column / answer_column to the names your data uses"
                )
            answer = _gold_answer(str(row[cfg.answer_column]), cfg.answer_parser)
            if answer is None:
                self.skipped.append(f"{source}: no gold answer found by parser {cfg.answer_parser!r}")
                continue
            problems.append(Problem(str(row[cfg.question_column]), answer, source))
        return problems

    # -- environment contract --------------------------------------------------------------------

    def num_tasks(self, split: Split = "train") -> int | None:
        return len(self._splits[split])

    def task(self, index: int, split: Split = "train") -> Task:
        problems = self._splits[split]
        if not 0 <= index < len(problems):
            raise IndexError(f"{self.name} {split} has {len(problems)} tasks; index {index} is out of range")
        problem = problems[index]
        return Task(
            id=self.task_id(index, split),
            env=self.name,
            split=split,
            index=index,
            prompt=self.make_prompt(self.config.prompt_template.format(question=problem.question)),
            answer=problem.answer,
            metadata={"source": problem.source},
        )

    @property
    def verifier(self) -> MathVerifier:
        return get_shared_verifier(self.config.verifier)

    def verify(self, task: Task, completion: str) -> VerifyResult:
        return self.verifier.verify(task.answer or "", completion)

    def verify_batch(self, tasks: Sequence[Task], completions: Sequence[str]) -> list[VerifyResult]:
        pairs = [(task.answer or "", completion) for task, completion in zip(tasks, completions, strict=True)]
        return self.verifier.verify_many(pairs)

    def gold_completion(self, task: Task) -> str:
        return f"Reasoning done.\nThe final answer is \\boxed{{{task.answer}}}."

    def wrong_completion(self, task: Task) -> str:
        return "Reasoning done.\nThe final answer is \\boxed{-987654321}."


def _gold_answer(text: str, parser: AnswerParser) -> str | None:
    if parser == "raw":
        return text.strip() or None
    if parser == "boxed":
        final = find_boxed(text)  # the final boxed statement: "\boxed{2} and \boxed{3}" is "2, 3"
        return final.text if final is not None and final.text else None
    _, sep, tail = text.rpartition("####")
    answer = tail.strip().replace(",", "")
    return answer if sep and answer else None


class GSM8KConfig(MathDataConfig):
    """Options of the ``gsm8k`` environment (GSM8K's columns and "#### answer" format by default)."""


class MATHConfig(MathDataConfig):
    """Options of the ``math`` environment (MATH's columns and boxed solutions by default)."""

    question_column: str = "problem"
    """Column holding the problem statement."""

    answer_column: str = "solution"
    """Column holding the worked solution with a final \\boxed{} answer."""

    answer_parser: AnswerParser = "boxed"
    """How to read the gold answer from answer_column."""


@register_env("gsm8k")
class GSM8KEnv(MathDataEnv):
    """Grade-school math word problems (GSM8K format); a 40-problem sample ships with grpopp."""

    config_class = GSM8KConfig
    sample_file = "gsm8k_sample.jsonl"


@register_env("math")
class MATHEnv(MathDataEnv):
    """Competition math with \\boxed{} answers (MATH format); a 40-problem sample ships with grpopp."""

    config_class = MATHConfig
    sample_file = "math_sample.jsonl"
