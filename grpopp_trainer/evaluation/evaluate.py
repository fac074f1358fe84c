"""Evaluation of checkpoints with the verifiers and shaping that trained them.

``evaluate_engine`` samples K completions for held-out tasks of each environment with a rollout
engine (the same engines as training), scores them with ``Environment.score_batch`` (the same path
as training rewards) and summarises per environment and overall:

- ``avg@K``: mean accuracy over the K samples of each task, then over tasks.
- ``pass@k`` for the asked k <= K: the unbiased estimator of Chen et al. 2021 (arXiv 2107.03374,
  sec. 2.1), 1 - C(n - c, k) / C(n, k) with n judged samples of which c are correct, computed as a
  product so that no large binomial is formed.
- ``maj@k``: the answer given most often among a task's first k judged samples is the task's
  answer; it counts when that answer was judged correct. A sample without an answer votes for "no
  answer", which is wrong, so a task whose k samples hold no answer counts as wrong. Ties go to the
  answer seen first in sample order (``majority_correct``). Only for environments whose verifier
  reports the extracted answer (``VerifyResult.extracted``) for some sample of the evaluation, as
  answers must be comparable; there it is over the same tasks as pass@k (those with >= k judged
  samples). At k = K (every sample judged) maj@K <= pass@K on every task; at k < K maj@k reads the
  first k samples while pass@k averages over all k-subsets, so on one task it can be higher.
- mean completion length (tokens) and truncation rate, and the verifier statuses counted.

Every metric says over how many tasks it is (``tasks``) and from which environments (``envs``).
The summaries are typed records (``grpopp.evaluation.results``: ``Summary``, ``MetricValue``), the
same that ``grpopp eval`` writes to results.json and the trainer, the CLI table and the report read.
The overall row pools the tasks of every environment that reports the metric and no other: its
maj@k is over the tasks of the environments with answers only, never diluted by the others.

Samples the verifier could not judge (timeout, error) are counted and reported, never scored as
wrong: they leave n (a task whose judged samples fall below k gives no pass@k / maj@k value, and
the count of such tasks is reported). 95% confidence intervals come from a percentile bootstrap over
tasks (resampling tasks with replacement, ``bootstrap`` times, with a fixed seed).

Progress: with an engine that decodes with the policy module itself (``hf``), generation runs in
chunks of at most ``EVAL_CHUNK_ROWS`` completions, so a display can show how far it is
(``progress``). Only the first chunk sets the seed; the others continue the engine's generator, so
the samples are those of one call whenever a chunk holds a whole number of the engine's batches
(e.g. K and ``rollout.engine.batch_size`` powers of two up to 1024), and the same on every run in any
case. An engine with its own copy of the weights (``vllm``) gets one call per environment, as each
call may wake it and reload weights, and under torchrun every rank must make the same calls.

Held-out tasks: evaluation reads split "test" only, training split "train" only (``Mixture`` reads
the train stream). The environment contract keeps the two disjoint by content for every seed:
procedural environments split their problem space by a hash of each problem, data environments hold
out rows by a hash of the question or read a separate file less the training questions (see
``grpopp.envs.base``). Evaluation refuses a task that is not a test-split task (``held_out_tasks``).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from grpopp.config_tools import ConfigError
from grpopp.envs.base import Environment, Task
from grpopp.evaluation.results import EpisodeSummary, MetricValue, Summary
from grpopp.learner.distributed import SINGLE, DistInfo, gather_shares, my_share
from grpopp.rewards.shaping import LengthLimits
from grpopp.rewards.types import VERIFY_STATUSES, Reward, VerifyStatus
from grpopp.rollout.base import Completion, EpisodeStats, RolloutEngine, SamplingParams
from grpopp.rollout.episodes import rollout
from grpopp.rollout.groups import Group, score_groups

EVAL_CHUNK_ROWS = 1024
"""Most completions one generation call of an evaluation asks for (a step of its progress display)."""


class EvalSettings(BaseModel):
    """What an evaluation measures (``grpopp eval`` options)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    samples: int = Field(1, ge=1)
    """K: completions sampled per task."""

    ks: tuple[int, ...] = ()
    """The k of pass@k and maj@k (each <= samples); empty: 1, 2, 4, ... up to K, and K."""

    bootstrap: int = Field(1000, ge=0)
    """Bootstrap resamples for the 95% confidence intervals; 0 turns them off."""

    seed: int = 0
    """Seed of the sampler and of the bootstrap."""

    @model_validator(mode="after")
    def _check(self) -> EvalSettings:
        bad = [k for k in self.ks if not 1 <= k <= self.samples]
        if bad:
            raise ValueError(f"ks: {bad} not within 1..samples={self.samples}; ask for k <= --samples")
        return self

    def resolved_ks(self) -> list[int]:
        if self.ks:
            return sorted(set(self.ks))
        powers = [2**i for i in range(int(math.log2(self.samples)) + 1)]
        return sorted({*powers, self.samples})


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one task with ``n`` judged samples, ``c`` of them correct (Chen et al. 2021).

    1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i); 1 when n - c < k (every
    draw of k samples holds a correct one).
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n, got k={k}, n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n, got c={c}, n={n}")
    if n - c < k:
        return 1.0
    all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        all_wrong *= 1.0 - k / i
    return 1.0 - all_wrong


def majority_correct(answers: Sequence[tuple[str | None, bool]]) -> bool:
    """Whether the most frequent answer of (answer, correct) pairs is correct. Ties go to the answer
    whose first occurrence comes first. None (no answer found) is one more answer, and a wrong one:
    all None, or None winning a tie, is wrong; an empty list is wrong."""
    if not answers:
        return False
    votes = Counter(answer for answer, _ in answers)
    best = max(votes.values())
    winner = next(answer for answer, _ in answers if votes[answer] == best)
    if winner is None:
        return False
    verdicts = [correct for answer, correct in answers if answer == winner]
    return sum(verdicts) * 2 > len(verdicts)  # the verifier is deterministic: they agree


@dataclass
class TaskOutcome:
    """A task's K samples, as the metrics need them."""

    env: str
    task_id: str
    statuses: list[VerifyStatus]
    answers: list[tuple[str | None, bool]]
    """(normalised extracted answer, correct) of each judged sample, in sample order."""
    lengths: list[int]
    truncated: list[bool]
    has_answers: bool
    """The verifier reported an extracted answer for some sample (maj@k is meaningful)."""
    episodes: list[EpisodeStats] = field(default_factory=list)
    """Multi-turn environments: how each sample's episode went (empty for single turns)."""

    @property
    def judged(self) -> int:
        return len(self.answers)

    @property
    def correct(self) -> int:
        return sum(correct for _, correct in self.answers)


def task_outcome(group: Group) -> TaskOutcome:
    """The outcome of a scored group (what ``evaluate_engine`` produced)."""
    outcome = outcome_of(
        group.task.env,
        group.task.id,
        [s.reward for s in group.samples],
        [s.completion.model_tokens for s in group.samples],
        [s.truncated for s in group.samples],
    )
    outcome.episodes = [s.completion.episode for s in group.samples if s.completion.episode is not None]
    return outcome


def outcome_of(
    env: str, task_id: str, rewards: Sequence[Reward], lengths: Sequence[int], truncated: Sequence[bool]
) -> TaskOutcome:
    """The outcome of a task's samples, in sample order: their rewards, token counts and whether each
    hit the token limit (from a scored group, or from the records of samples.jsonl)."""
    answers: list[tuple[str | None, bool]] = []
    has_answers = False
    for reward in rewards:
        verification = reward.verification
        if verification is None or not verification.judged:
            continue
        extracted = None if verification.extracted is None else " ".join(verification.extracted.split())
        has_answers |= extracted is not None
        answers.append((extracted, verification.status == "correct"))
    return TaskOutcome(
        env=env,
        task_id=task_id,
        statuses=[reward.status for reward in rewards],
        answers=answers,
        lengths=list(lengths),
        truncated=list(truncated),
        has_answers=has_answers,
    )


def bootstrap_ci(values: Sequence[float], resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean of per-task ``values`` (resampling tasks)."""
    if not values:
        return (math.nan, math.nan)
    data = np.asarray(values, dtype=np.float64)  # [N]
    if resamples == 0 or len(data) == 1:
        return (float(data.mean()), float(data.mean()))
    rows = np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))  # [R, N]
    means = data[rows].mean(axis=1)  # [R]
    low, high = np.quantile(means, [0.025, 0.975])
    return (float(low), float(high))


def estimate(
    values: Sequence[float], settings: EvalSettings, salt: str, outcomes: Sequence[TaskOutcome] = ()
) -> MetricValue:
    """The mean of per-task ``values`` with its bootstrap interval; ``outcomes`` are their tasks."""
    value = math.fsum(values) / len(values) if values else math.nan
    seed = random.Random(f"{settings.seed}|{salt}").getrandbits(31)
    envs = sorted({o.env for o in outcomes})
    return MetricValue(value=value, ci95=bootstrap_ci(values, settings.bootstrap, seed), tasks=len(values), envs=envs)


def answer_reporting_envs(outcomes: Sequence[TaskOutcome]) -> set[str]:
    """Environments whose verifier reported an extracted answer for some sample: those with maj@k."""
    return {o.env for o in outcomes if o.has_answers}


def summarise(outcomes: Sequence[TaskOutcome], settings: EvalSettings, salt: str = "") -> Summary:
    """Metrics of a set of tasks (one environment's, or every environment's for the overall row):
    avg@K, pass@k, maj@k with 95% CIs, length, truncation, statuses. Each metric is over the tasks
    that can give it (``tasks`` counts them): avg@K over tasks with a judged sample, pass@k and maj@k
    over tasks with >= k judged samples, maj@k only from environments that report answers."""
    ks = settings.resolved_ks()
    metrics: dict[str, MetricValue] = {}
    judged = [o for o in outcomes if o.judged]
    metrics[f"avg@{settings.samples}"] = estimate(
        [o.correct / o.judged for o in judged], settings, f"{salt}avg", judged
    )
    for k in ks:
        eligible = [o for o in outcomes if o.judged >= k]
        values = [pass_at_k(o.judged, o.correct, k) for o in eligible]
        metrics[f"pass@{k}"] = estimate(values, settings, f"{salt}p{k}", eligible)
    voting = answer_reporting_envs(outcomes)
    if voting:
        for k in ks:
            eligible = [o for o in outcomes if o.env in voting and o.judged >= k]  # pass@k's tasks of these envs
            votes = [float(majority_correct(o.answers[:k])) for o in eligible]
            metrics[f"maj@{k}"] = estimate(votes, settings, f"{salt}m{k}", eligible)
    lengths = [length for o in outcomes for length in o.lengths]
    truncated = [t for o in outcomes for t in o.truncated]
    statuses = Counter(status for o in outcomes for status in o.statuses)
    return Summary(
        tasks=len(outcomes),
        samples_per_task=settings.samples,
        metrics=metrics,
        tasks_without_enough_judged_samples={
            f"k={k}": sum(o.judged < k for o in outcomes) for k in sorted({*ks, settings.samples})
        },
        length_mean=math.fsum(lengths) / len(lengths) if lengths else math.nan,
        truncated=sum(truncated) / len(truncated) if truncated else math.nan,
        statuses={status: statuses.get(status, 0) for status in VERIFY_STATUSES},
        episodes=episode_summary([e for o in outcomes for e in o.episodes]),
    )


def episode_summary(episodes: Sequence[EpisodeStats]) -> EpisodeSummary | None:
    """Means over multi-turn episodes; None when there are none."""
    if not episodes:
        return None

    def mean(values: Sequence[float]) -> float:
        return math.fsum(values) / len(values)

    return EpisodeSummary(
        turns_mean=mean([e.turns for e in episodes]),
        tool_calls_mean=mean([e.tool_calls for e in episodes]),
        tool_errors_mean=mean([e.tool_errors for e in episodes]),
        ended_by_turn_limit=mean([float(e.ended == "max_turns") for e in episodes]),
        ended_by_token_limit=mean([float(e.ended == "max_tokens") for e in episodes]),
        ended_by_env_error=mean([float(e.ended == "env_error") for e in episodes]),
    )


@dataclass(frozen=True)
class EvalRun:
    """Everything one checkpoint's evaluation produced."""

    groups: list[Group]
    """The scored groups of every environment, in task order."""
    per_env: dict[str, Summary]
    """Environment name -> its summary."""
    overall: Summary
    """Over the tasks of every environment."""


def held_out_tasks(env: Environment[Any], count: int) -> list[Task]:
    """The first ``count`` tasks of the test split (all of them when it has fewer); a task that is not
    a test-split task (``Environment.split_violation``) is refused with its id."""
    size = env.num_tasks("test")
    tasks = [env.task(i, "test") for i in range(count if size is None else min(size, count))]
    for task in tasks:
        require_held_out(env, task)
    return tasks


def require_held_out(env: Environment[Any], task: Task) -> None:
    """Refuse to evaluate ``task`` unless it is a test-split task of ``env`` (by split and by problem)."""
    reason = env.split_violation(task, "test")
    if reason is not None:
        raise ConfigError(
            f"evaluation reads held-out tasks only, and {reason}: evaluating {task.id} would score a problem the "
            f"model may have trained on; {env.name}.task(i, 'test') must return test-split tasks"
        )


def evaluate_engine(
    engine: RolloutEngine,
    envs: dict[str, Environment[Any]],
    tasks_per_env: dict[str, int],
    params: SamplingParams,
    limits: LengthLimits,
    settings: EvalSettings,
    dist: DistInfo = SINGLE,
    progress: Callable[[int, int], None] | None = None,
) -> EvalRun:
    """Steps: 1. held-out tasks of each environment; 2. K completions each with ``engine``, in chunks
    (see the module docstring); 3. rewards through ``score_batch`` (training's path); 4. metrics per
    environment and overall. ``progress(done, total)`` hears the tasks generated after each chunk.

    Under torchrun (``dist``) each rank generates and scores its share of the tasks (own sampling
    seed), and every rank gets all scored groups back in task order before step 4; ``progress``
    then counts this rank's share."""
    all_groups: list[Group] = []
    per_env: dict[str, Summary] = {}
    outcomes: list[TaskOutcome] = []
    params = params.for_rank(dist.rank)
    shares = {name: my_share(dist, held_out_tasks(env, tasks_per_env[name])) for name, env in envs.items()}  # 1.
    total, done = sum(len(tasks) for tasks in shares.values()), 0

    def report(count: int) -> None:
        nonlocal done
        done += count
        if progress is not None:
            progress(done, total)

    for name, env in envs.items():
        tasks = shares[name]
        completions = generate_in_chunks(engine, tasks, {name: env}, params, settings.samples, report)  # 2.
        groups = gather_shares(dist, score_groups(tasks, completions, {name: env}, limits))  # 3.
        env_outcomes = [task_outcome(g) for g in groups]
        all_groups += groups
        per_env[name] = summarise(env_outcomes, settings, salt=f"{name}|")  # 4.
        outcomes += env_outcomes
    return EvalRun(all_groups, per_env, summarise(outcomes, settings, salt="overall|"))


def generate_in_chunks(
    engine: RolloutEngine,
    tasks: list[Task],
    envs: dict[str, Environment[Any]],
    params: SamplingParams,
    n: int,
    report: Callable[[int], None] | None = None,
) -> list[list[Completion]]:
    """``rollout(engine, tasks, envs, params, n)`` (single turns and episodes), in chunks of at most
    ``EVAL_CHUNK_ROWS`` completions when the engine samples from the policy itself (see the module
    docstring); ``report(count)`` after each chunk of ``count`` tasks."""
    size = max(1, EVAL_CHUNK_ROWS // n) if engine.samples_from_policy else max(1, len(tasks))
    completions: list[list[Completion]] = []
    for start in range(0, max(1, len(tasks)), size):  # one call even without prompts (see vllm_engine)
        chunk = tasks[start : start + size]
        completions += rollout(
            engine, chunk, envs, params if start == 0 else params.model_copy(update={"seed": None}), n
        )
        if report is not None:
            report(len(chunk))
    return completions
