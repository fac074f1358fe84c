"""The ``grpopp`` command line.

Commands so far:
- ``grpopp algo list``: the algorithm presets side by side (a column each, fits 100 columns), with
  their sources.
- ``grpopp algo show NAME [--set KEY=VALUE ...]``: one preset's full config, with overrides
  applied and validated, as JSON (the form a training config will embed).
- ``grpopp envs list|show|sample|check``: environments and their contract check.
- ``grpopp verify --env NAME``: verify completions and print the reward breakdown.
- ``grpopp sandbox run FILE [--stdin FILE]|check``: the code sandbox.
- ``grpopp train``: GRPO++ training (default: the tiny-arithmetic recipe on CPU).
- ``grpopp eval TARGET...`` / ``grpopp eval reverify SAMPLES``: evaluate checkpoints; re-score samples.
- ``grpopp report RUN_DIR``: PNG figures of the training curves and evaluations, and report.md.
- ``grpopp version``.
"""

from __future__ import annotations

import json
from importlib import metadata
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from grpopp.cli.envs_cmd import envs_app, verify_command
from grpopp.cli.errors import error_console, user_errors
from grpopp.cli.eval_cmd import eval_command
from grpopp.cli.report_cmd import report_command
from grpopp.cli.sandbox_cmd import sandbox_app
from grpopp.cli.train_cmd import train_command
from grpopp.config_tools import apply_overrides
from grpopp.objective.algorithms import PRESETS, AlgorithmConfig, get_preset
from grpopp.training.config import current_overrides

app = typer.Typer(
    help="grpopp: GRPO++ reinforcement learning from verifiable rewards for reasoning LLMs.",
    no_args_is_help=True,
    add_completion=False,
)
algo_app = typer.Typer(
    help="Algorithm presets: GRPO, DAPO, Dr. GRPO, GSPO, CISPO, grpopp and TRL's defaults (trl_dapo).",
    no_args_is_help=True,
)
app.add_typer(algo_app, name="algo")
app.add_typer(envs_app, name="envs")
app.add_typer(sandbox_app, name="sandbox")
app.command("verify")(verify_command)
app.command("train")(train_command)
app.command("eval")(eval_command)
app.command("report")(report_command)

console = Console()


def _describe(cfg: AlgorithmConfig) -> dict[str, str]:
    loss = cfg.loss
    objective, aggregation, tis = loss.objective.model_dump(), loss.aggregation.model_dump(), loss.tis.model_dump()
    clip = f"{objective['eps_low']:g} / {objective['eps_high']:g}"
    clip += f", dual {objective['dual_clip']:g}" if objective.get("dual_clip") else ""
    length = f" (L={aggregation['norm_length']})" if "norm_length" in aggregation else ""
    overlong = [
        name for name, on in (("soft", cfg.overlong.soft_punishment), ("filter", cfg.overlong.filter_truncated)) if on
    ]
    return {
        "objective": objective["type"],
        "clip low / high": clip,
        "aggregation": aggregation["type"] + length,
        "advantage": cfg.advantage_scale,
        "KL": f"{loss.kl_estimator} x {loss.kl_coef:g}" if loss.kl_coef > 0 else "off",
        "TIS": f"{tis['type']} (C={tis['cap']:g})" if "cap" in tis else tis["type"],
        "dyn. sampling": "on" if cfg.dynamic_sampling.enabled else "off",
        "overlong": ", ".join(overlong) or "off",
    }


@algo_app.command("list")
@user_errors
def algo_list() -> None:
    """Show every preset's settings side by side (a column per preset, as many tables as the
    terminal's width needs), and the paper each follows."""
    described = {name: _describe(preset.config) for name, preset in PRESETS.items()}
    settings = list(_describe(get_preset("grpopp")))
    for group in _column_groups(described, settings, console.width):
        table = Table(title="grpopp algorithm presets", show_lines=True)
        table.add_column("setting", style="bold")
        for name in group:
            table.add_column(name)
        for setting in settings:
            table.add_row(setting, *(Text(described[name][setting]) for name in group))
        console.print(table)
    for name, preset in PRESETS.items():
        console.print(Text.assemble((name, "bold"), f": {preset.source}"))
    console.print("Details: grpopp algo show NAME; override any field with --set KEY=VALUE.")


def _column_groups(described: dict[str, dict[str, str]], settings: list[str], width: int) -> list[list[str]]:
    """The presets split into runs that fit ``width`` as columns beside the setting names, each column
    as wide as its longest word (so no value is cut inside a word)."""

    def longest_word(texts: list[str]) -> int:
        return max(len(word) for text in texts for word in text.split())

    used = longest_word(settings) + 4  # padding and the borders on both sides
    groups: list[list[str]] = [[]]
    for name, values in described.items():
        column = longest_word([name, *values.values()]) + 3  # padding and one border
        if groups[-1] and used + column > width:
            groups.append([])
            used = longest_word(settings) + 4
        groups[-1].append(name)
        used += column
    return groups


@algo_app.command("show")
@user_errors
def algo_show(
    name: Annotated[str, typer.Argument(help="Preset name (see grpopp algo list).")] = "grpopp",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a field, e.g. --set loss.objective.eps_high=0.3 (repeatable)."),
    ] = None,
) -> None:
    """Print one preset's complete configuration as JSON, with --set overrides validated."""
    # Keys as under `grpopp train --set algorithm.KEY` (short names and the flat loss keys work too).
    assignments = current_overrides([f"algorithm.{assignment}" for assignment in set_ or []])
    cfg = apply_overrides(get_preset(name), [assignment.removeprefix("algorithm.") for assignment in assignments])
    preset = PRESETS[name]
    error_console.print(f"[bold]{name}[/]: {preset.summary}\nsource: {preset.source}", highlight=False)
    if preset.optim:
        error_console.print(
            "optimizer (applied to a training config's optim, under its own values): "
            + ", ".join(f"{k}={v}" for k, v in preset.optim.items()),
            highlight=False,
            markup=False,
        )
    if set_:
        cfg = cfg.model_copy(update={"name": f"{name} + overrides"})
    typer.echo(json.dumps(cfg.model_dump(), indent=2))


@app.command()
def version() -> None:
    """Print the installed grpopp version."""
    typer.echo(metadata.version("grpopp"))


if __name__ == "__main__":
    app()
