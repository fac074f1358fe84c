"""``grpopp eval``: evaluate checkpoints or models, write results.json and samples.jsonl, re-verify.

A target is a run directory (its checkpoints, chosen by ``checkpoints``: all, last, or every:N
steps), a model folder, a hub id, or "tiny". A run directory brings its config: the environments
with their verifier and shaping options, the sampling parameters, the model settings; otherwise the
built-in recipe's config is the base, with the model replaced. Options override either. For each
checkpoint: build the rollout engine of the config (``hf`` or ``vllm``), run
``evaluate.evaluate_engine`` and collect the results.

Everything is checked before any work starts (targets, ``checkpoints``, options, environments and
their data, model folders); the output folder is created only then, and the files land in it only
when the evaluation has succeeded (written beside their final names and renamed), so a failed or
refused evaluation changes no earlier evaluation in ``out`` and leaves no empty folder.

Output (``out``, default RUN_DIR/evals/<UTC time> for a run directory, else evals/<UTC time>):

- ``results.json``: the resolved job (environments, sampling, settings, limits), package versions,
  and per checkpoint the metrics per environment and overall (``evaluate.summarise``): an
  ``EvalResults`` of ``grpopp.evaluation.results``, the model the CLI table and the report read.
- ``samples.jsonl``: one line per completion: checkpoint, step, env, task id, split and index,
  sample number, prompt, completion, finish reason, token count, the ``VerifyResult`` and the reward
  with every component.

``reverify(samples.jsonl)`` scores stored completions again with the current verifiers (the
environments rebuilt from the results.json beside it), without generating, and reports each
verdict or reward that changed; a task whose prompt is no longer the stored one is refused.
``summarise_samples(samples.jsonl, settings)`` recomputes the metrics from the stored records alone.

Only test-split tasks are evaluated: a task that is not one (by split, or by its problem's hash
class, ``Environment.split_violation``) is refused with its id, here and in ``evaluate``.
"""

from __future__ import annotations

import gc
import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from rich.console import Console

from grpopp.config_tools import ConfigError, check_model_source, format_validation_error
from grpopp.envs.base import Environment, Message, Split, Task
from grpopp.envs.mixture import EnvSpec, parse_env_arg, select_envs
from grpopp.envs.multiturn import MultiTurnEnv, stored_transcript
from grpopp.envs.registry import make_env
from grpopp.evaluation.evaluate import (
    EvalRun,
    EvalSettings,
    TaskOutcome,
    evaluate_engine,
    outcome_of,
    require_held_out,
    summarise,
)
from grpopp.evaluation.results import CheckpointResult, EvalResults, null_for_non_finite
from grpopp.learner import checkpoint as ckpt
from grpopp.progress import Ticker
from grpopp.rewards.shaping import LengthLimits
from grpopp.rewards.types import Reward
from grpopp.rollout.base import EpisodeStats, SamplingParams
from grpopp.rollout.episodes import episode_record
from grpopp.training.config import TrainConfig, is_run_dir, load_run_config, load_train_config

_PROGRESS_CONSOLE = Console(stderr=True)
"""Evaluation progress goes to stderr: a bar in a terminal, a line every 30 s otherwise."""

RESULTS_FILE = "results.json"
SAMPLES_FILE = "samples.jsonl"


class EvalEnv(BaseModel):
    """One environment of an evaluation."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str
    tasks: int = Field(ge=1)
    """Held-out tasks (the first ones of the test split; fewer if it is smaller)."""
    config: dict[str, Any] = {}
    """The environment's options: the run's, when the run trained on it."""


class EvalJob(BaseModel):
    """The resolved evaluation, as written to results.json."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    envs: list[EvalEnv]
    settings: EvalSettings
    sampling: SamplingParams
    limits: LengthLimits
    train_config: dict[str, Any]
    """The run's (or the recipe's) config the engine and model settings come from."""

    notes: list[str] = Field(default=[], exclude=True)
    """What the user should hear about the resolution (an --env the config does not hold); not saved."""


@dataclass(frozen=True)
class Checkpoint:
    """One model to evaluate."""

    path: str
    """Checkpoint folder, model folder, hub id, or "tiny"."""
    step: int | None
    config: TrainConfig


def resolve_targets(targets: list[str], which: str) -> list[Checkpoint]:
    """Expand run directories into their checkpoints (``which``: all | last | every:N); any other
    target must be a model folder, a hub id or "tiny" (``check_model_source``)."""
    every = parse_checkpoints(which)
    found: list[Checkpoint] = []
    for target in targets:
        run_dir = Path(target)
        if is_run_dir(run_dir):
            config = load_run_config(run_dir)
            checkpoints = _choose(ckpt.list_checkpoints(run_dir), every, target)
            found += [Checkpoint(str(c), ckpt.step_of(c), config) for c in checkpoints]
        else:
            check_model_source(target, "eval target", also="a run directory (with config.yaml), ")
            config = load_train_config()
            model = config.model.model_copy(update={"name_or_path": target})
            found.append(Checkpoint(target, None, config.model_copy(update={"model": model})))
    return found


def verify_checkpoints(checkpoints: list[Checkpoint]) -> None:
    """Refuse a checkpoint of a run that is not complete (``checkpoint.checkpoint_problem``: a file cut
    short or changed since it was saved), naming it and the problem."""
    for point in checkpoints:
        problem = ckpt.checkpoint_problem(Path(point.path)) if point.step is not None else None
        if problem is not None:
            raise ConfigError(
                f"checkpoint {point.path} cannot be evaluated: {problem}. Choose others with --checkpoints, or "
                "restore an intact copy of that folder"
            )


def parse_checkpoints(which: str) -> int | None:
    """``--checkpoints``: "last" -> None, "all" -> 1, "every:N" -> N (N >= 1)."""
    if which in ("last", "all"):
        return None if which == "last" else 1
    head, _, count = which.partition(":")
    if head == "every" and count.isdigit() and int(count) >= 1:
        return int(count)
    raise ConfigError(f"--checkpoints {which!r}: use all, last or every:N (N >= 1 steps)")


def _choose(checkpoints: list[Path], every: int | None, target: str) -> list[Path]:
    if not checkpoints:
        raise ConfigError(f"{target}: the run has no complete checkpoint to evaluate (set checkpoint.every)")
    if every is None:
        return checkpoints[-1:]
    chosen = [c for c in checkpoints if ckpt.step_of(c) % every == 0]
    return chosen or checkpoints[-1:]


def parse_eval_env(text: str, default_tasks: int) -> tuple[str, int]:
    """``NAME[:N]``: N held-out tasks; family names with ':' work (the count is the last part if numeric)."""
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit():
        if int(tail) < 1:
            raise ConfigError(f"--env {text!r}: the task count must be >= 1")
        return head, int(tail)
    return parse_env_arg(text).name, default_tasks


def resolve_job(
    base: TrainConfig,
    env_args: list[str],
    tasks: int,
    settings: EvalSettings,
    greedy: bool,
    temperature: float | None,
    max_new_tokens: int | None,
) -> EvalJob:
    """Environments (the run's config for each, when it has one), sampling (the run's rollout, with
    the overrides), and the length limits the run's shaping used."""
    chosen = [parse_eval_env(arg, tasks) for arg in env_args] or [(spec.name, tasks) for spec in base.envs]
    selection = select_envs(base.envs, [EnvSpec(name=name) for name, _ in chosen])  # as `grpopp train --env`
    envs = [
        EvalEnv(name=spec.name, tasks=count, config=spec.config)
        for spec, (_, count) in zip(selection.specs, chosen, strict=True)
    ]
    given = {"max_new_tokens": max_new_tokens or None, "temperature": temperature}
    rollout = base.rollout.model_copy(update={key: value for key, value in given.items() if value is not None})
    sampling = rollout.sampling_params(seed=settings.seed, greedy=greedy)
    if greedy and settings.samples > 1:
        raise ConfigError("--greedy gives one answer per task: use --samples 1 (or sample with a temperature)")
    limits = base.algorithm.length_limits(sampling.max_new_tokens)
    return EvalJob(
        envs=envs,
        settings=settings,
        sampling=sampling,
        limits=limits,
        train_config=base.model_dump(mode="json"),
        notes=selection.notes,
    )


def build_envs(job: EvalJob) -> dict[str, Environment[Any]]:
    """The job's environments, each with its options (the same verifier and shaping as training)."""
    return {e.name: make_env(e.name, **e.config) for e in job.envs}


def run_eval(
    targets: list[str],
    which: str,
    job_for: Callable[[TrainConfig], EvalJob],
    out: Path | None,
    extra_files: Mapping[str, str] | None = None,
) -> tuple[Path, EvalResults]:
    """Evaluate every checkpoint of ``targets``; ``job_for(config)`` resolves the job against each
    target's config. Returns the output folder and the results written to it (with ``extra_files``,
    name -> text, beside them).

    Steps: 1. check everything (targets, jobs, environments, devices, checkpoints, the output folder);
    2. create the output folder; 3. evaluate each checkpoint into a temporary samples file;
    4. move samples.jsonl, results.json and the extra files into place."""
    from grpopp.jobs.run import load_model, make_engine, model_source, resolve_device

    checkpoints = resolve_targets(targets, which)  # 1.
    jobs = [job_for(point.config) for point in checkpoints]
    keys = [job.model_dump_json() for job in jobs]  # jobs that are equal share their environments
    envs_of: dict[str, dict[str, Environment[Any]]] = {}
    for key, job in zip(keys, jobs, strict=True):
        if key not in envs_of:
            envs_of[key] = build_envs(job)
    for point in checkpoints:
        resolve_device(point.config.device)
    verify_checkpoints(checkpoints)  # last: it reads every file of every checkpoint
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    first = Path(targets[0])
    out = out or ((first / "evals" / stamp) if is_run_dir(first) else Path("evals") / stamp)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file is there; give a folder for results.json and samples.jsonl")
    evaluated: list[CheckpointResult] = []
    with _new_files(out, [SAMPLES_FILE, RESULTS_FILE, *(extra_files or {})]) as staged:  # 2.
        for point, job, key in zip(checkpoints, jobs, keys, strict=True):  # 3.
            config = point.config
            torch.manual_seed(job.settings.seed)
            source = model_source(config.model, point.path if point.step is not None else None)
            model, tokenizer = load_model(config.model, source)
            torch.nn.Module.to(model, resolve_device(config.device))
            engine = make_engine(config, model, tokenizer, source)
            try:
                tasks = {e.name: e.tasks for e in job.envs}
                envs = envs_of[key]
                total = sum(tasks.values())
                with Ticker(f"evaluating {point.path}", total, console=_PROGRESS_CONSOLE) as ticker:
                    run = evaluate_engine(
                        engine, envs, tasks, job.sampling, job.limits, job.settings, progress=ticker.update
                    )
            finally:
                engine.close()  # a vLLM engine ends before the next checkpoint's is built
            evaluated.append(
                CheckpointResult(
                    checkpoint=point.path,
                    step=point.step,
                    envs=run.per_env,
                    overall=run.overall,
                    config=json.loads(key),  # targets may differ (e.g. two runs)
                )
            )
            _append_samples(staged[SAMPLES_FILE], point, run)
            del engine, model
            gc.collect()
        results = EvalResults(versions=_versions(), checkpoints=evaluated, config=json.loads(keys[0]))
        staged[RESULTS_FILE].write_text(results.to_json())  # 4.
        for name, text in (extra_files or {}).items():
            staged[name].write_text(text)
    return out, results


@contextmanager
def _new_files(folder: Path, names: list[str]) -> Iterator[dict[str, Path]]:
    """Temporary files in ``folder`` (created with its parents) for the files ``names``; when the block
    ends without an error each is renamed to its name, replacing an earlier one. On an error the
    temporary files are removed, and so are the folders this created, so a failed evaluation changes
    nothing that was there and leaves no empty folder."""
    created = [parent for parent in (folder, *folder.parents) if not parent.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    staged = {name: folder / f".{name}.tmp-{os.getpid()}" for name in names}
    for path in staged.values():
        path.write_text("")
    try:
        yield staged
    except BaseException:
        for path in staged.values():
            path.unlink(missing_ok=True)
        for parent in created:  # deepest first
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        raise
    for name, path in staged.items():
        os.replace(path, folder / name)


def _append_samples(path: Path, point: Checkpoint, run: EvalRun) -> None:
    with path.open("a", encoding="utf-8") as handle:
        for group in run.groups:
            task = group.task
            for number, sample in enumerate(group.samples):
                record = {
                    "checkpoint": point.path,
                    "step": point.step,
                    "env": task.env,
                    "task_id": task.id,
                    "split": task.split,
                    "index": task.index,
                    "sample": number,
                    "prompt": _prompt_json(task),
                    "completion": sample.completion.text,
                    "finish_reason": sample.completion.finish_reason,
                    "num_tokens": sample.completion.model_tokens,
                    "reward": sample.reward.model_dump(mode="json"),
                    **episode_record(sample.completion),
                }
                handle.write(json.dumps(null_for_non_finite(record)) + "\n")


def _prompt_json(task: Task) -> str | list[dict[str, Any]]:
    return task.prompt if isinstance(task.prompt, str) else [m.model_dump() for m in task.prompt]


# -- reverify ---------------------------------------------------------------------------------------


@dataclass
class Change:
    line: int
    task_id: str
    sample: int
    before: str
    after: str
    total_before: float
    total_after: float


@dataclass
class ReverifyReport:
    samples: int
    changes: list[Change]
    transitions: Counter[tuple[str, str]]
    statuses: Counter[str]


def reverify(samples_file: Path) -> ReverifyReport:
    """Score the completions of ``samples_file`` again with the current verifiers and shaping (the
    environments and limits of the results.json beside it, per checkpoint); report what changed.
    Completions are scored in one batch per environment, as in training."""
    results_file = samples_file.parent / RESULTS_FILE
    if not results_file.is_file():
        raise ConfigError(
            f"{samples_file}: no {RESULTS_FILE} beside it; reverify needs the evaluation's config "
            "(environments and limits) that grpopp eval writes there"
        )
    jobs = {point.checkpoint: _job_of(results_file, point) for point in EvalResults.read(results_file).checkpoints}
    built: dict[str, tuple[EvalJob, dict[str, Environment[Any]]]] = {}  # job JSON -> (job, its environments)
    batches: dict[tuple[str, str], list[tuple[int, dict[str, Any], Task, Reward]]] = defaultdict(list)
    for number, line in enumerate(_read_text(samples_file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            job = jobs[record["checkpoint"]]
            key = job.model_dump_json()
            if key not in built:
                built[key] = (job, build_envs(job))
            split: Split = record["split"]
            env = built[key][1][record["env"]]
            task = env.task(int(record["index"]), split)
            before = Reward.model_validate(record["reward"])
        except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"{samples_file}:{number}: not a grpopp eval sample ({type(exc).__name__}: {exc})"
            ) from exc
        _require_test_record(samples_file, number, record)
        require_held_out(env, task)
        if task.id != record["task_id"]:
            raise ConfigError(
                f"{samples_file}:{number}: task {record['task_id']} is now {task.id}: the environment's data changed"
            )
        if _prompt_json(task) != record.get("prompt"):
            raise ConfigError(
                f"{samples_file}:{number}: task {task.id} now has another prompt: the environment's tasks changed "
                "since this evaluation (e.g. another split of its problems); evaluate again instead"
            )
        batches[(key, record["env"])].append((number, record, task, before))
    report = ReverifyReport(0, [], Counter(), Counter())
    for (key, env_name), items in batches.items():
        job, envs = built[key]
        env, tasks = envs[env_name], [task for _, _, task, _ in items]
        lengths = [int(record["num_tokens"]) for _, record, _, _ in items]
        if isinstance(env, MultiTurnEnv):  # the stored transcript, judged again
            transcripts = [_transcript_of(record) for _, record, _, _ in items]
            rescored = env.score_episodes(tasks, transcripts, lengths, job.limits)
        else:
            rescored = env.score_batch(tasks, [record["completion"] for _, record, _, _ in items], lengths, job.limits)
        for (number, record, task, before), after in zip(items, rescored, strict=True):
            report.samples += 1
            report.statuses[after.status] += 1
            report.transitions[(before.status, after.status)] += 1
            if before.status != after.status or not math.isclose(before.total, after.total, abs_tol=1e-9):
                change = Change(
                    number, task.id, int(record["sample"]), before.status, after.status, before.total, after.total
                )
                report.changes.append(change)
    report.changes.sort(key=lambda change: change.line)
    return report


def _job_of(results_file: Path, point: CheckpointResult) -> EvalJob:
    """The job ``point`` was evaluated with, as ``reverify`` needs it to rebuild the environments."""
    if point.config is None:
        raise ConfigError(
            f"{results_file}: checkpoint {point.checkpoint} has no config (an early results.json); evaluate again"
        )
    try:
        return EvalJob.model_validate(point.config)
    except ValidationError as exc:
        raise ConfigError(f"{results_file}: not a grpopp eval results.json: {format_validation_error(exc)}") from None


# -- summaries from samples.jsonl --------------------------------------------------------------------


def summarise_samples(samples_file: Path, settings: EvalSettings) -> dict[str, CheckpointResult]:
    """The metrics of a samples.jsonl, recomputed from its records alone (no model, no verifier): per
    checkpoint, its result as results.json holds it (without the job's ``config``, which the records
    lack). Samples are grouped by (checkpoint, task id) in sample order; a record of a train-split
    task is refused."""
    tasks: dict[str, dict[tuple[str, str], dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    steps: dict[str, int | None] = {}
    for number, line in enumerate(_read_text(samples_file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            checkpoint, env, task_id, sample = record["checkpoint"], record["env"], record["task_id"], record["sample"]
            step = None if record.get("step") is None else int(record["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{samples_file}:{number}: not a grpopp eval sample ({type(exc).__name__}: {exc})"
            ) from exc
        _require_test_record(samples_file, number, record)
        tasks[str(checkpoint)][(env, task_id)][int(sample)] = record
        steps.setdefault(str(checkpoint), step)
    results: dict[str, CheckpointResult] = {}
    for checkpoint, groups in tasks.items():
        outcomes = [_record_outcome(env, task_id, samples) for (env, task_id), samples in groups.items()]
        per_env = {
            env: summarise([o for o in outcomes if o.env == env], settings, salt=f"{env}|")
            for env in dict.fromkeys(o.env for o in outcomes)
        }
        overall = summarise(outcomes, settings, salt="overall|")
        results[checkpoint] = CheckpointResult(
            checkpoint=checkpoint, step=steps[checkpoint], envs=per_env, overall=overall
        )
    return results


def _record_outcome(env: str, task_id: str, samples: dict[int, dict[str, Any]]) -> TaskOutcome:
    records = [samples[number] for number in sorted(samples)]
    try:
        rewards = [Reward.model_validate(record["reward"]) for record in records]
        lengths = [int(record["num_tokens"]) for record in records]
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(f"task {task_id}: a sample lacks a valid reward or num_tokens ({exc})") from exc
    truncated = [record.get("finish_reason") == "length" for record in records]
    outcome = outcome_of(env, task_id, rewards, lengths, truncated)
    try:
        outcome.episodes = [EpisodeStats(**record["episode"]) for record in records if record.get("episode")]
    except TypeError as exc:
        raise ConfigError(f"task {task_id}: a sample's episode record is not one grpopp wrote ({exc})") from exc
    return outcome


def _transcript_of(record: dict[str, Any]) -> list[Message]:
    """A stored episode's messages; a record without them (one turn) is its completion."""
    messages = stored_transcript(record)
    return [Message(role="assistant", content=str(record["completion"]))] if messages is None else messages


def _read_text(path: Path) -> str:
    """A samples file's text; one that is no UTF-8 text is refused with its name."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a samples.jsonl of grpopp eval (not UTF-8 text: {exc.reason})") from None


def _require_test_record(samples_file: Path, number: int, record: dict[str, Any]) -> None:
    if record.get("split") != "test":
        raise ConfigError(
            f"{samples_file}:{number}: task {record.get('task_id')} is from the {record.get('split')!r} split; "
            "evaluation reads held-out (test-split) tasks only"
        )


def _versions() -> dict[str, str]:
    found = {}
    for name in ("grpopp", "torch", "transformers", "math-verify", "vllm"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found
