"""Running a training job end to end: run directory, model, engine, evaluation, checkpoints, resume.

``train(config)`` is what ``grpopp train`` calls: it writes the resolved config into the run
directory, loads (or builds) the model, evaluates on held-out tasks, runs the steps with a progress
bar, checkpoints, evaluates again and returns a summary. ``train(config, resume=RUN_DIR)`` continues a
run from its newest complete checkpoint, with the same data position and sampling seeds, so the
metrics continue as those of an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from envs.mixture import Mixture
from grpopp_trainer import checkpoint as ckpt
from grpopp_trainer.config import RUN_CONFIG_FILE, ModelConfig, TrainConfig, load_run_config
from grpopp_trainer.config_tools import ConfigError
from grpopp_trainer.distributed import SINGLE, DistInfo, barrier, broadcast_object, init_distributed
from grpopp_trainer.policy import Policy, shard_model
from grpopp_trainer.rollout.base import RolloutEngine
from grpopp_trainer.trainer import Trainer, make_reference

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


def model_source(config: ModelConfig, path: str | None = None) -> str:
    """Where the model is read from: ``path`` (a checkpoint), the built-in tiny model's cache folder
    (built and warm-started on first use), or ``config.name_or_path`` (a local folder or hub id)."""
    if path:
        return path
    if config.name_or_path == "tiny":
        from grpopp_trainer.tiny import load_or_create_tiny_model

        return str(load_or_create_tiny_model())
    return config.name_or_path


def load_model(config: ModelConfig, path: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The policy model and its tokenizer, from ``model_source(config, path)``."""
    source = model_source(config, path)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=config.trust_remote_code)
    kernel = {"attn_implementation": config.attn_implementation} if config.attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=DTYPES[config.dtype], trust_remote_code=config.trust_remote_code, **kernel
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if config.gradient_checkpointing:
        # transformers 5 renamed it activation checkpointing; older releases only have the old name.
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    _disable_dropout(model)
    return model, tokenizer


def _disable_dropout(model: torch.nn.Module) -> None:
    """RL needs pi_old = pi on the first pass: dropout would make the ratio noisy (TRL does the same)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def make_engine(
    config: TrainConfig,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    dist_info: DistInfo = SINGLE,
) -> RolloutEngine:
    """The rollout engine of ``config.rollout.engine`` over the policy ``model`` (read from ``source``).
    Under torchrun (``dist_info``) each rank builds its own vLLM engine, all at the same time."""
    if config.rollout.engine == "vllm":
        from grpopp_trainer.rollout.vllm_engine import VLLMEngine

        # vLLM computes in the learner's dtype: FSDP's compute dtype when set, else the model's.
        dtype = (config.model.fsdp_param_dtype if dist_info.enabled else None) or config.model.dtype
        return VLLMEngine(
            model,
            tokenizer,
            source,
            config.rollout.vllm,
            dtype=dtype,
            seed=config.seed + dist_info.rank,
            distributed=dist_info.enabled,
        )
    from grpopp_trainer.rollout.hf import HFEngine

    # Chat models may end a turn with another token than the tokenizer's EOS (e.g. <|eot_id|>): stop on all.
    eos: set[int] = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    generation_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos.update([generation_eos] if isinstance(generation_eos, int) else list(generation_eos or []))
    return HFEngine(model, tokenizer, batch_size=config.rollout.batch_size, eos_token_ids=sorted(eos) or None)


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
) -> TrainSummary:
    """Run a training job, or resume the one in ``resume`` (its saved config is used; ``config`` must
    be None then). ``stop_after`` ends it after that many steps, as a kill would (tests). ``mixture``:
    the environments of ``config.envs`` if the caller built them already (the CLI does, to check
    them before anything is loaded)."""
    started = time.perf_counter()
    dist_info, device = init_distributed(config.device if config is not None else "auto")
    # Only rank 0 prints and writes; every rank trains.
    console = console or Console()
    console = console if dist_info.is_main else Console(quiet=True)
    if resume is not None:
        if config is not None:
            raise ConfigError("a resumed run uses the config saved in its run directory; pass config=None")
        config, checkpoint = _load_resume(resume)
        run_dir = resume
    elif config is None:
        raise ConfigError("give a TrainConfig, or a run directory to resume")
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
    source = model_source(config.model, str(checkpoint) if checkpoint else None) if dist_info.is_main else None
    barrier(dist_info)
    source = source or model_source(config.model, str(checkpoint) if checkpoint else None)
    model, tokenizer = load_model(config.model, source)
    mixed = DTYPES[config.model.fsdp_param_dtype] if config.model.fsdp_param_dtype else None  # FSDP only
    reference = None
    if config.algorithm.loss.kl_coef > 0:
        initial, _ = load_model(config.model) if checkpoint else (model, tokenizer)
        reference = make_reference(initial)
        torch.nn.Module.to(reference, device)
        if dist_info.enabled:
            shard_model(reference, mixed)
    total_optimizer_steps = config.steps * config.batch.mini_batches * config.batch.epochs
    policy = Policy(model, tokenizer, config.optim, total_optimizer_steps, device, dist_info, mixed)
    engine = make_engine(config, policy.model, tokenizer, source, dist_info)
    try:
        return _train(config, policy, engine, run_dir, reference, mixture, checkpoint, console, stop_after, started)
    finally:
        engine.close()  # vLLM's engine and groups first; the trainer's process group after (cli.train_cmd)


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
    trainer = Trainer(config, policy, engine, run_dir, reference, mixture)
    if checkpoint is not None:
        trainer.restore(checkpoint)
        console.print(f"resumed from {checkpoint} at step {trainer.step}")
        if trainer.step >= config.steps:
            console.print(f"the run in {run_dir} is already complete ({trainer.step} of {config.steps} steps)")
            trainer.log.close()
            return TrainSummary(run_dir, trainer.step, math.nan, math.nan, time.perf_counter() - started)

    before = _evaluate(trainer, console, "before training") if trainer.step == 0 else _last_eval(run_dir)
    _run_steps(trainer, console, stop_after)
    after = _evaluate(trainer, console, "after training") if trainer.step >= config.steps else {}
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
            f"({summary.steps} steps, {summary.seconds:.0f} s, run dir {run_dir})"
        )
    return summary


def _run_steps(trainer: Trainer, console: Console, stop_after: int | None) -> None:
    cfg = trainer.config
    last = cfg.steps if stop_after is None else min(cfg.steps, trainer.step + stop_after)
    columns = [TextColumn("[bold]step {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.description}")]
    with Progress(
        *columns, TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not cfg.logging.progress
    ) as bar:
        task = bar.add_task("", total=cfg.steps, completed=trainer.step)
        while trainer.step < last:
            result = trainer.train_step()
            trainer.step += 1
            trainer.log.metrics(trainer.step, result.metrics)
            trainer.log.samples(trainer.step, trainer.sample_records(result.groups))
            m = result.metrics
            bar.update(
                task,
                completed=trainer.step,
                description=f"reward {m['reward']:.3f} acc {m['accuracy']:.3f} len {m['length/mean']:.1f} "
                f"entropy {m.get('entropy', float('nan')):.3f}",
            )
            if cfg.eval.every and trainer.step % cfg.eval.every == 0 and trainer.step < cfg.steps:
                trainer.log.eval(trainer.step, trainer.evaluate())
            if (cfg.checkpoint.every and trainer.step % cfg.checkpoint.every == 0) or trainer.step == cfg.steps:
                trainer.save()


def _evaluate(trainer: Trainer, console: Console, when: str) -> dict[str, float]:
    results = trainer.evaluate()
    trainer.log.eval(trainer.step, results)
    per_env = ", ".join(f"{k.removesuffix('/accuracy')} {v:.3f}" for k, v in results.items() if k.endswith("/accuracy"))
    console.print(f"held-out accuracy {when}: {results['accuracy']:.3f} ({per_env})")
    return results


def _last_eval(run_dir: Path) -> dict[str, float]:
    path = run_dir / "eval.jsonl"
    if not path.is_file():
        return {}
    lines = path.read_text(encoding="utf-8").splitlines()
    first: dict[str, float] = json.loads(lines[0]) if lines else {}
    return first


def _load_resume(run_dir: Path) -> tuple[TrainConfig, Path]:
    try:
        config = load_run_config(run_dir)
    except ConfigError as error:
        raise ConfigError(f"--resume {error}") from None
    checkpoint = ckpt.latest_checkpoint(run_dir)
    if checkpoint is None:
        raise ConfigError(f"--resume {run_dir}: no complete checkpoint to resume from (set checkpoint.every)")
    return config, checkpoint


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
        ("device", device),
        ("processes", f"{world_size} (FSDP2)" if world_size > 1 else "1"),
        ("algorithm", config.algorithm.name),
        ("environments", ", ".join(f"{e.name} (w={e.weight:g})" for e in config.envs)),
        ("steps", config.steps),
        ("prompts per step x group", f"{config.batch.prompts_per_step} x {config.rollout.completions_per_prompt}"),
        *config.derived().items(),
    ]
    if checkpoint is not None:
        rows.append(("resume from", checkpoint))
    for key, value in rows:
        table.add_row(key, str(value))
    console.print(table)
