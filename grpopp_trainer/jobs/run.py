"""Running a training job end to end: run directory, model, engine, evaluation, checkpoints, resume.

``train(config)`` is what ``grpopp train`` calls: it writes the resolved config into the run
directory, loads (or builds) the model, evaluates on held-out tasks, runs the steps (shown by
``progress.StepDisplay``: a bar in a terminal, one line per step in a log file), checkpoints,
evaluates again and returns a summary.

``train(None, resume=RUN_DIR)`` continues a run from its newest complete checkpoint (verified
against its manifest; newer ones that fail are skipped with a warning that names each and why, see
``checkpoint``), with the same data position and sampling seeds, so the metrics continue as those
of an uninterrupted run. ``steps=N`` with ``resume`` sets the run's total to N steps (its saved
config is updated): a finished run is extended. The learning-rate schedule is then the one of a run
planned for N steps: unchanged for a constant schedule (the default) and during warm-up, so an
extended run matches an uninterrupted N-step run; under a cosine or linear decay the steps after
the resume step take the N-step schedule's values (usually above where the shorter run ended, as
the decay is stretched over N steps) and reach ``min_lr_ratio`` x lr at step N. ``steps`` may also
shorten an unfinished run, down to its checkpoint's step.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.table import Table
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from grpopp.config_tools import TINY_MODELS, ConfigError, validate_config
from grpopp.envs.mixture import Mixture
from grpopp.learner import checkpoint as ckpt
from grpopp.learner import lora, recompute
from grpopp.learner.distributed import SINGLE, DistInfo, barrier, broadcast_object, init_distributed
from grpopp.learner.policy import Policy, shard_model
from grpopp.progress import StepDisplay, quiet_transformers_bars
from grpopp.rollout.base import EngineContext, RolloutEngine
from grpopp.training.config import RUN_CONFIG_FILE, ModelConfig, TrainConfig, load_run_config
from grpopp.training.trainer import Trainer, make_reference

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TrainSummary:
    run_dir: Path
    steps: int
    accuracy_before: float
    accuracy_after: float
    seconds: float


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available; use device=auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def model_source(config: ModelConfig, path: str | None = None, console: Console | None = None) -> str:
    """Where the model is read from: ``path`` (a checkpoint), the built-in tiny model's cache folder
    (built and warm-started on first use, its progress shown on ``console``), or
    ``config.name_or_path`` (a local folder or hub id)."""
    if path:
        return path
    if config.name_or_path in TINY_MODELS:
        from grpopp.recipes.tiny import load_or_create_tiny_model

        recipe = TINY_MODELS[config.name_or_path]
        if console is None:
            return str(load_or_create_tiny_model(recipe=recipe))
        log = lambda text: console.print(text, soft_wrap=True)  # noqa: E731
        return str(load_or_create_tiny_model(recipe=recipe, log=log, console=console))
    return config.name_or_path


def load_model(config: ModelConfig, path: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The policy model and its tokenizer, from ``model_source(config, path)``.

    A folder of LoRA adapters (a LoRA run's checkpoint, ``grpopp.learner.lora``) is loaded onto its
    base model (``config.name_or_path``'s model for a LoRA run, else the base the folder names), and
    trains on when ``config.lora`` is set; with ``config.lora`` and a whole model, fresh adapters are
    added to it."""
    source = model_source(config, path)
    adapters = lora.is_adapter_folder(source)
    base = weights_source(config, source)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=config.trust_remote_code)
    kernel = {"attn_implementation": config.attn_implementation} if config.attn_implementation else {}
    with quiet_transformers_bars():  # its "Loading weights" bar would interleave with grpopp's lines
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=DTYPES[config.dtype], trust_remote_code=config.trust_remote_code, **kernel
        )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if adapters:
        lora.load_lora(model, source, trainable=config.lora is not None)
    elif config.lora is not None:
        lora.add_lora(model, config.lora)
    if config.gradient_checkpointing:
        recompute.enable_checkpointing(model, "selective" if config.gradient_checkpointing == "selective" else "full")
        if lora.has_lora(model):  # frozen embeddings: the checkpointed blocks' inputs must carry a gradient
            model.enable_input_require_grads()
    _disable_dropout(model)
    return model, tokenizer


def weights_source(config: ModelConfig, source: str) -> str:
    """The whole model ``source`` stands on: ``source`` itself, or for a folder of LoRA adapters its base
    model (``config.name_or_path``'s for a LoRA run, else the base the folder names). The policy loads
    it under the adapters; an engine that reads weights from disk (vLLM) starts from it."""
    if not lora.is_adapter_folder(source):
        return source
    return model_source(config) if config.lora is not None else lora.base_model_of(source)


def _disable_dropout(model: torch.nn.Module) -> None:
    """RL needs pi_old = pi on the first pass: dropout would make the ratio noisy (TRL does the same).
    LoRA's own dropout is left as ``model.lora.dropout`` sets it."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout) and ".lora_dropout." not in name:
            module.p = 0.0


def make_engine(
    config: TrainConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    dist_info: DistInfo = SINGLE,
) -> RolloutEngine:
    """The rollout engine of ``config.rollout.engine`` over the policy ``model`` (read from ``source``).
    Under torchrun (``dist_info``) each rank builds its own engine, all at the same time."""
    # The learner's compute dtype: FSDP's when set, else the model's.
    dtype = (config.model.fsdp_param_dtype if dist_info.enabled else None) or config.model.dtype
    handoff = lora.handoff(model) if lora.has_lora(model) else None  # vLLM runs the merged model or the adapters
    context = EngineContext(
        model,
        tokenizer,
        weights_source(config.model, source),
        dtype,
        config.seed + dist_info.rank,
        dist_info.enabled,
        handoff,
    )
    return config.rollout.engine.build(context)


def new_run_dir(config: TrainConfig) -> Path:
    if config.logging.run_dir:
        return Path(config.logging.run_dir)
    return Path("runs") / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def train(
    config: TrainConfig | None,
    resume: Path | None = None,
    console: Console | None = None,
    stop_after: int | None = None,
    mixture: Mixture | None = None,
    steps: int | None = None,
) -> TrainSummary:
    """Run a training job, or resume the one in ``resume`` (its saved config is used; ``config`` must
    be None then). ``stop_after`` ends it after that many steps, as a kill would (tests). ``mixture``:
    the environments of ``config.envs`` if the caller built them already (the CLI does, to check
    them before anything is loaded). ``steps``: with ``resume``, the run's new total number of steps
    (see the module docstring)."""
    started = time.perf_counter()
    dist_info, device = init_distributed(config.device if config is not None else "auto")
    # Only rank 0 prints and writes; every rank trains.
    console = console or Console()
    console = console if dist_info.is_main else Console(quiet=True)
    if resume is not None:
        if config is not None:
            raise ConfigError("a resumed run uses the config saved in its run directory; pass config=None")
        config, checkpoint = _load_resume(resume, dist_info, console, steps)
        run_dir = resume
    elif config is None:
        raise ConfigError("give a TrainConfig, or a run directory to resume")
    elif steps is not None:
        raise ConfigError("steps= sets a resumed run's new total; for a new run set config.steps")
    else:
        run_dir, checkpoint = broadcast_object(dist_info, new_run_dir(config)), None  # rank 0's clock
        if ckpt.latest_checkpoint(run_dir) is not None or (run_dir / "metrics.jsonl").exists():
            raise ConfigError(
                f"{run_dir} already holds a run: resume it with --resume {run_dir}, or pick another run_dir"
            )
        barrier(dist_info)  # every rank has looked before rank 0 writes
        if dist_info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / RUN_CONFIG_FILE).write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    device = device if dist_info.enabled else resolve_device(config.device)
    random.seed(config.seed)
    torch.manual_seed(config.seed)
    _print_summary(console, config, run_dir, device, checkpoint, dist_info.world_size)

    # Rank 0 first: it may build and cache the tiny model, which the other ranks then read.
    path = str(checkpoint) if checkpoint else None
    source = model_source(config.model, path, console) if dist_info.is_main else None
    barrier(dist_info)
    source = source or model_source(config.model, path)
    model, tokenizer = load_model(config.model, source)
    mixed = DTYPES[config.model.fsdp_param_dtype] if config.model.fsdp_param_dtype else None  # FSDP only
    reference = None
    if config.derived().reference_model and config.model.lora is None:  # LoRA: the policy's base model
        initial, _ = load_model(config.model) if checkpoint else (model, tokenizer)
        reference = make_reference(initial)
        torch.nn.Module.to(reference, device)
        if dist_info.enabled:
            shard_model(reference, mixed)
    policy = Policy(model, tokenizer, config.optim, config.derived().total_optimizer_steps, device, dist_info, mixed)
    engine = make_engine(config, policy.model, tokenizer, source, dist_info)
    try:
        return _train(config, policy, engine, run_dir, reference, mixture, checkpoint, console, stop_after, started)
    finally:
        engine.close()  # vLLM's engine and groups first; the trainer's process group after (grpopp.cli.train_cmd)


def _train(
    config: TrainConfig,
    policy: Policy,
    engine: RolloutEngine,
    run_dir: Path,
    reference: PreTrainedModel | None,
    mixture: Mixture | None,
    checkpoint: Path | None,
    console: Console,
    stop_after: int | None,
    started: float,
) -> TrainSummary:
    """The steps of a run, and the evaluations before and after."""
    trainer = Trainer(config, policy, engine, run_dir, reference, mixture, started=started)
    if checkpoint is not None:
        trainer.restore(checkpoint)
        console.print(f"resumed from {checkpoint} at step {trainer.step}", soft_wrap=True)
        if trainer.step >= config.steps:
            console.print(
                f"the run in {run_dir} is already complete ({trainer.step} of {config.steps} steps); "
                f"train it further with --resume {run_dir} --steps N (N > {trainer.step})",
                soft_wrap=True,
            )
            trainer.log.close()
            return TrainSummary(run_dir, trainer.step, math.nan, math.nan, time.perf_counter() - started)

    logging = config.logging
    with StepDisplay(console, config.steps, trainer.step, logging.print_every, logging.progress) as display:
        before = _evaluate(trainer, display, "before training") if trainer.step == 0 else _last_eval(run_dir)
        _run_steps(trainer, display, stop_after)
        after = _evaluate(trainer, display, "after training") if trainer.step >= config.steps else {}
    trainer.log.close()
    summary = TrainSummary(
        run_dir,
        trainer.step,
        before.get("accuracy", float("nan")),
        after.get("accuracy", float("nan")),
        time.perf_counter() - started,
    )
    if after:
        console.print(
            f"[bold]held-out accuracy: {summary.accuracy_before:.3f} -> {summary.accuracy_after:.3f}[/] "
            f"({summary.steps} steps, {summary.seconds:.0f} s, run dir {run_dir}; "
            f"final model: {ckpt.latest_checkpoint(run_dir)})",
            soft_wrap=True,
        )
    return summary


def _run_steps(trainer: Trainer, display: StepDisplay, stop_after: int | None) -> None:
    """The steps, each then logged and shown; evaluations and checkpoints when due."""
    cfg = trainer.config
    last = cfg.steps if stop_after is None else min(cfg.steps, trainer.step + stop_after)
    while trainer.step < last:
        result = trainer.train_step()
        trainer.step += 1
        trainer.log.metrics(trainer.step, result.metrics)
        trainer.log.samples(trainer.step, trainer.sample_records(result.groups, result.generated))
        display.step(trainer.step, result.metrics, result.metrics["time/step"])
        if cfg.eval.every and trainer.step % cfg.eval.every == 0 and trainer.step < cfg.steps:
            _evaluate(trainer, display, f"at step {trainer.step}")
        if (cfg.checkpoint.every and trainer.step % cfg.checkpoint.every == 0) or trainer.step == cfg.steps:
            trainer.save()


def _evaluate(trainer: Trainer, display: StepDisplay, when: str) -> dict[str, float]:
    """Held-out accuracy now: logged to eval.jsonl and printed as one line (nothing when evaluation
    is off: ``eval.tasks_per_env`` = 0)."""
    if not trainer.config.eval.enabled:
        return {}
    tasks = len(trainer.envs) * trainer.config.eval.tasks_per_env
    with display.ticker(f"evaluating {when}", tasks) as ticker:
        results = trainer.evaluate(progress=ticker.update)
    trainer.log.eval(trainer.step, results)
    per_env = ", ".join(f"{k.removesuffix('/accuracy')} {v:.3f}" for k, v in results.items() if k.endswith("/accuracy"))
    turns = "".join(
        f", {k.removesuffix('/turns')} mean turns {v:.2f}" for k, v in results.items() if k.endswith("/turns")
    )
    display.print(f"held-out accuracy {when}: {results['accuracy']:.3f} ({per_env}{turns})")
    return results


def _last_eval(run_dir: Path) -> dict[str, float]:
    path = run_dir / "eval.jsonl"
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    first: dict[str, float] = json.loads(lines[0]) if lines else {}
    return first


def _load_resume(run_dir: Path, dist_info: DistInfo, console: Console, steps: int | None) -> tuple[TrainConfig, Path]:
    """The saved config (with ``steps`` as its new total when given) and the newest complete
    checkpoint; rank 0 verifies the checkpoints and tells the others."""
    try:
        config = load_run_config(run_dir)
    except ConfigError as error:
        raise ConfigError(f"--resume {error}") from None
    # Rank 0 reads and hashes the checkpoints; the other ranks take its verdict.
    point = ckpt.find_resume_checkpoint(run_dir) if dist_info.is_main else ckpt.ResumePoint(None)
    point = broadcast_object(dist_info, point)
    why = "; ".join(f"{path.name}: {problem}" for path, problem in point.skipped)
    if point.checkpoint is None:
        found = f"every checkpoint fails its check ({why})" if why else "it has no checkpoint"
        raise ConfigError(
            f"--resume {run_dir}: no complete checkpoint to resume from: {found}. Start a new run (set "
            "checkpoint.every to save during training), or restore an intact copy of a checkpoint folder"
        )
    for path, problem in point.skipped:
        console.print(
            f"[yellow]warning:[/] skipped checkpoint {path}: {problem}; resuming from {point.checkpoint.name}, "
            "the newest complete one",
            soft_wrap=True,
        )
    if point.legacy:
        console.print(
            f"[yellow]warning:[/] {point.checkpoint} has no {ckpt.MANIFEST_FILE} (written by an older grpopp): "
            f"only checked that {ckpt.STATE_FILE} and the .safetensors files are whole",
            soft_wrap=True,
        )
    if steps is not None:
        config = _extend(config, run_dir, ckpt.step_of(point.checkpoint), steps, dist_info)
    return config, point.checkpoint


def _extend(config: TrainConfig, run_dir: Path, at_step: int, steps: int, dist_info: DistInfo) -> TrainConfig:
    """The config with ``steps`` as its total, also written into the run directory's config.yaml."""
    if steps < at_step:
        raise ConfigError(
            f"--steps {steps}: the run resumes at step {at_step} (its newest complete checkpoint); --steps is "
            f"the run's total number of steps, so give at least {at_step}"
        )
    if steps == config.steps:
        return config
    try:
        extended = validate_config(TrainConfig, {**config.model_dump(mode="json"), "steps": steps})
    except ConfigError as error:
        raise ConfigError(f"--steps {steps}: {error}") from None
    if dist_info.is_main:
        path = run_dir / RUN_CONFIG_FILE
        partial = path.with_name(f"{path.name}.partial")
        partial.write_text(yaml.safe_dump(extended.model_dump(mode="json"), sort_keys=False))
        os.replace(partial, path)  # atomic: a kill leaves the old config or the new one
    barrier(dist_info)
    return extended


def _print_summary(
    console: Console,
    config: TrainConfig,
    run_dir: Path,
    device: torch.device,
    checkpoint: Path | None,
    world_size: int = 1,
) -> None:
    table = Table(title="grpopp train", show_header=False)
    rows: list[tuple[str, Any]] = [
        ("run dir", run_dir),
        ("model", config.model.name_or_path),
        (
            "training",
            "full" if (adapters := config.model.lora) is None else f"LoRA r={adapters.r} alpha={adapters.alpha}",
        ),
        ("device", device),
        ("processes", f"{world_size} (FSDP2)" if world_size > 1 else "1"),
        ("algorithm", config.algorithm.name),
        ("environments", ", ".join(f"{e.name} (w={e.weight:g})" for e in config.envs)),
        ("steps", config.steps),
        ("prompts per step x group", f"{config.batch.prompts_per_step} x {config.rollout.completions_per_prompt}"),
        *config.derived().rows(),
    ]
    if checkpoint is not None:
        rows.append(("resume from", checkpoint))
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
