"""Typed records of evaluation results: what ``evaluate.summarise`` returns and what results.json holds.

One set of models serves every stage (as torchtune passes typed records between stages):
``evaluate.summarise`` makes a ``Summary`` per environment and overall, ``grpopp eval`` gathers them
per checkpoint into ``EvalResults`` and writes it as results.json (``EvalResults.to_json``), the
trainer reads its held-out accuracy from a ``Summary``, and the ``grpopp eval`` table and
``grpopp report`` read the models' attributes (the report reads results.json back with
``EvalResults.read``).

The file is the models' own dump: fields in declaration order, JSON as ``json.dumps(indent=2)``
writes it. JSON has no NaN: a number that is not finite (a metric no task can give, the length of no
sample) is written as null (``null_for_non_finite``) and read back as NaN, so in memory every number
is a float.

Older files read too: metrics of files written before maj@k pooled over the environments that report
answers lack ``envs`` (read as []), and checkpoints of the first results.json files lack ``config``
(None; ``reverify`` needs it and says so). Keys this version does not know are ignored, so a file of
a later version reads as far as this one understands it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from grpopp.config_tools import UserError
from grpopp.rewards.types import JUDGED_STATUSES, VerifyStatus


def _nan_for_null(value: object) -> object:
    return math.nan if value is None else value


Number = Annotated[float, BeforeValidator(_nan_for_null)]
"""A float that JSON holds as null when it is not finite (NaN, inf): null reads back as NaN."""


def null_for_non_finite(value: Any) -> Any:
    """``value`` (nested dicts, lists, tuples) ready for strict JSON: NaN and inf become null, tuples
    lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: null_for_non_finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [null_for_non_finite(v) for v in value]
    return value


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, use_attribute_docstrings=True)


class MetricValue(_Record):
    """One metric (avg@K, pass@k, maj@k) of a set of tasks: the mean of a per-task value."""

    value: Number
    """The mean over ``tasks`` of the per-task values; NaN when no task can give the metric."""

    ci95: tuple[Number, Number]
    """Percentile-bootstrap 95% interval (low, high) of that mean, resampling tasks; (value, value)
    without resamples or with one task, NaN without tasks."""

    tasks: int = Field(ge=0)
    """Tasks that contributed: those with enough judged samples, of environments that report it."""

    envs: list[str] = []
    """The environments those tasks come from, sorted ([] in files written before it was recorded)."""


class EpisodeSummary(_Record):
    """How a multi-turn environment's episodes went (means over episodes)."""

    turns_mean: Number
    """Assistant turns per episode."""

    tool_calls_mean: Number
    """Tool calls per episode."""

    tool_errors_mean: Number
    """Failed tool calls per episode (unknown tool, invalid arguments, a raise, a timeout)."""

    ended_by_turn_limit: Number
    """Share of episodes ended by ``max_turns``."""

    ended_by_token_limit: Number
    """Share of episodes ended by ``max_total_tokens``."""

    ended_by_env_error: Number
    """Share of episodes the environment failed in (masked, status error)."""


class Summary(_Record):
    """The metrics of a set of tasks: one environment's, or every environment's (the overall row)."""

    tasks: int = Field(ge=0)
    """Held-out tasks evaluated."""

    samples_per_task: int = Field(ge=1)
    """K: completions sampled per task."""

    metrics: dict[str, MetricValue]
    """Metric name -> value: avg@K, then pass@k for each k, then maj@k for each k (maj@k only where
    the verifier reports extracted answers)."""

    tasks_without_enough_judged_samples: dict[str, int]
    """"k=<k>" -> tasks with fewer than k judged samples (left out of pass@k and maj@k), for each k
    asked and for K."""

    length_mean: Number
    """Mean completion length in tokens over every sample; NaN without samples."""

    truncated: Number
    """Fraction of samples cut off at the generation limit; NaN without samples."""

    statuses: dict[VerifyStatus, int]
    """Samples by verifier status, every status listed (``VERIFY_STATUSES``' order)."""

    episodes: EpisodeSummary | None = None
    """Multi-turn environments: turns, tool calls and how episodes ended; None for single turns (and
    then absent from results.json, which stays as single-turn evaluations have always written it)."""

    @model_serializer(mode="wrap")
    def _without_absent_episodes(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("episodes") is None:
            data.pop("episodes", None)
        return data

    @property
    def avg(self) -> MetricValue:
        """avg@K: the mean accuracy over each task's K samples, then over tasks."""
        return self.metrics[f"avg@{self.samples_per_task}"]

    @property
    def unjudged(self) -> int:
        """Samples the verifier could not judge (timeout, error): left out of every metric."""
        return sum(count for status, count in self.statuses.items() if status not in JUDGED_STATUSES)


class CheckpointResult(_Record):
    """One evaluated model: its summaries per environment and overall."""

    checkpoint: str
    """The checkpoint folder, model folder, hub id or "tiny" evaluated."""

    step: int | None = None
    """Its training step; None for a model that is not a checkpoint of a run."""

    envs: dict[str, Summary]
    """Environment name -> its summary, in the evaluation's order."""

    overall: Summary
    """Over the tasks of every environment (a metric only over the environments that report it)."""

    config: dict[str, Any] | None = None
    """The resolved job (``eval_job.EvalJob``) this checkpoint was evaluated with: what ``reverify``
    rebuilds the environments from; None in the first results.json files and in summaries recomputed
    from samples.jsonl (``eval_job.summarise_samples``)."""


class EvalResults(_Record):
    """A results.json of ``grpopp eval``."""

    versions: dict[str, str] = {}
    """Package -> version installed when evaluating ("absent" when it was not)."""

    checkpoints: list[CheckpointResult]
    """One entry per checkpoint evaluated, in the order evaluated."""

    config: dict[str, Any] = {}
    """The first checkpoint's resolved job (each checkpoint also carries its own)."""

    def to_json(self) -> str:
        """The text of results.json: indented JSON, null for numbers that are not finite."""
        return json.dumps(null_for_non_finite(self.model_dump()), indent=2) + "\n"

    @classmethod
    def read(cls, path: Path, shown_as: str | None = None) -> EvalResults:
        """Read a results.json; a file that is not one is refused with a ``UserError`` that names it
        (as ``shown_as``, default the path) and each bad key."""
        name = shown_as or str(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UserError(
                f"{name}: not a grpopp eval results.json ({type(exc).__name__}: {exc}); evaluate again"
            ) from None
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or 'the file'}: {item['msg']}"
                for item in exc.errors()[:5]
            )
            more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
            raise UserError(
                f"{name}: not a grpopp eval results.json: {problems}{more}; evaluate again to write a new one"
            ) from None
