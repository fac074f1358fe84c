"""``grpopp train``: validate the config, then run (or resume) a training job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.console import Console
from rich.table import Table

from cli.envs_cmd import PluginOption, fail, load_plugins
from envs.mixture import build_mixture
from envs.registry import RegistryError
from grpopp_trainer.config import RECIPES, TrainConfig, load_train_config
from grpopp_trainer.config_tools import ConfigError
from grpopp_trainer.distributed import close_distributed

console = Console()


def train_command(
    config: Annotated[
        str | None,
        typer.Option(help=f"YAML/TOML config file, or a built-in recipe ({', '.join(RECIPES)}; the default)."),
    ] = None,
    env: Annotated[
        list[str] | None,
        typer.Option("--env", help="Environment NAME[:WEIGHT], repeatable (replaces the config's list)."),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a config key, e.g. --set algorithm.eps_high=0.28.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model: local folder or hub id (model.name_or_path).")] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps.")] = None,
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
    load_plugins(plugin)
    if resume is not None and (config or env or set_ or model or steps or run_dir):
        raise fail("--resume continues a run with its own saved config; give no other config options")
    shortcuts = [f"model.name_or_path={model}"] * bool(model) + [f"steps={steps}"] * (steps is not None)
    shortcuts += [f"logging.run_dir={run_dir}"] * bool(run_dir)
    try:
        resolved = None if resume is not None else load_train_config(config, env, [*shortcuts, *(set_ or [])])
        # Every environment's options are checked now, before a model is loaded; the trainer uses it.
        mixture = build_mixture(resolved.envs, seed=resolved.seed) if resolved is not None else None
    except (ConfigError, RegistryError) as error:
        raise fail(str(error)) from None
    if dry_run:
        if resolved is None:
            raise fail("--dry-run checks a new run's config; it does not combine with --resume")
        _print_resolved(resolved)
        return
    from grpopp_trainer.run import train

    try:
        train(resolved, resume=resume, console=console, mixture=mixture)
    except ConfigError as error:
        raise fail(str(error)) from None
    finally:
        close_distributed()  # under torchrun: leave the process group cleanly


def _print_resolved(config: TrainConfig) -> None:
    typer.echo(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    table = Table(title="derived values", show_header=False)
    for key, value in config.derived().items():
        table.add_row(key, str(value))
    console.print(table)
