"""``grpopp train``: validate the config, then run (or resume) a training job.

Before any model is loaded or anything is written: the config, every environment (options and data
files), the model folder, the writers' packages (``logging.wandb``, ``logging.tensorboard``) and the
device are checked, so a mistake fails in seconds with a message instead of after the model load.
A new run made with ``--plugin`` records its plugins in the run directory (``grpopp.cli.plugins``); a
resumed run loads them again by itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from grpopp.cli.errors import fail, user_errors
from grpopp.cli.plugins import PluginOption, load_plugins, load_recorded_plugins, record_in_new_run
from grpopp.config_tools import ConfigError, check_model_source
from grpopp.envs.mixture import build_mixture
from grpopp.learner.distributed import close_distributed
from grpopp.learner.lora import check_targets, require_peft
from grpopp.training.config import RECIPES, TrainConfig, load_run_config, resolve_train_config

console = Console()


@user_errors
def train_command(
    config: Annotated[
        str | None,
        typer.Option(help=f"YAML/TOML config file, or a built-in recipe ({', '.join(RECIPES)}; the default)."),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option(
            "--env",
            help="Environment NAME[:WEIGHT], repeatable: the run trains on these, each with the config file's "
            "options for it (a name the file does not hold: its defaults).",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override a config key, e.g. --set algorithm.eps_high=0.28 or --set algorithm.preset=trl_dapo.",
        ),
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model: local folder or hub id (model.name_or_path).")] = None,
    steps: Annotated[
        int | None, typer.Option(help="Training steps; with --resume, the run's new total (extends a finished run).")
    ] = None,
    run_dir: Annotated[str | None, typer.Option(help="Run directory (logging.run_dir).")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the run in this directory from its last checkpoint.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and print the resolved config; load no model.")
    ] = False,
    plugin: PluginOption = None,
) -> None:
    """Train a policy with GRPO++ on a mixture of environments (default: a tiny model on arithmetic, on CPU)."""
    plugins = load_plugins(plugin)
    if resume is not None and (config or env or set_ or model or run_dir):
        raise fail("--resume continues a run with its own saved config; give no other config options than --steps")
    if resume is not None and dry_run:
        raise fail("--dry-run checks a new run's config; it does not combine with --resume")
    shortcuts = [f"model.name_or_path={model}"] * bool(model) + [f"steps={steps}"] * (steps is not None)
    shortcuts += [f"logging.run_dir={run_dir}"] * bool(run_dir)
    notes: list[str] = []
    if resume is not None:
        resolved = _saved_config(resume)
        plugins = load_recorded_plugins(resume, plugins)
    else:
        resolution = resolve_train_config(config, env, [*shortcuts, *(set_ or [])])
        resolved, notes = resolution.config, resolution.notes
    # Every environment's options and data are checked now, before a model is loaded; the trainer uses it.
    mixture = build_mixture(resolved.envs, seed=resolved.seed)
    for note in notes:  # after the environments are checked: a note never stands beside an error
        typer.echo(f"note: {note}", err=True)  # stderr: --dry-run's stdout stays plain YAML
    _preflight(resolved, resuming=resume is not None)
    if dry_run:
        _print_resolved(resolved)
        return
    from grpopp.jobs.run import resolve_device, train

    resolve_device(resolved.device)
    try:
        if resume is None:
            resolved = record_in_new_run(resolved, plugins)
        resumed_steps = steps if resume is not None else None  # a resumed run's new total (run.train)
        train(
            None if resume is not None else resolved,
            resume=resume,
            console=console,
            mixture=mixture,
            steps=resumed_steps,
        )
    finally:
        close_distributed()  # under torchrun: leave the process group cleanly


def _saved_config(run_dir: Path) -> TrainConfig:
    """The config a run directory holds, for --resume."""
    try:
        return load_run_config(run_dir)
    except ConfigError as error:
        raise ConfigError(f"--resume {error}") from None


def _preflight(config: TrainConfig, resuming: bool) -> None:
    """Check what would otherwise fail only after the model is loaded: the model folder (a resumed
    run reads its checkpoint, and the original model only as the KL reference or, with LoRA, as the
    base model) and the packages of the optional writers and of LoRA."""
    if not resuming or config.derived().reference_model or config.model.lora is not None:  # LoRA: the base
        check_model_source(config.model.name_or_path, "model.name_or_path (--model)")
    if config.model.lora is not None:
        require_peft()
        if (Path(config.model.name_or_path).expanduser() / "config.json").is_file():
            check_targets(Path(config.model.name_or_path).expanduser(), config.model.lora)
    run_dir = config.logging.run_dir
    if not resuming and run_dir is not None and Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise ConfigError(f"logging.run_dir (--run-dir) {run_dir!r} is a file; give a folder for the run")
    for writer in ("wandb", "tensorboard"):
        if getattr(config.logging, writer) and importlib.util.find_spec(writer) is None:
            raise ConfigError(
                f"logging.{writer}=true needs the {writer} package, which is not installed: pip install {writer} "
                f"(or grpopp's 'tracking' extra), or set logging.{writer}=false"
            )


def _print_resolved(config: TrainConfig) -> None:
    typer.echo(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    table = Table(title="derived values", show_header=False)
    for key, value in config.derived().rows():
        table.add_row(key, str(value))
    console.print(table)
