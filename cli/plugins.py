"""Environment plugins on the command line: ``--plugin`` loads them, and folders remember them.

A training run made with ``--plugin`` records each plugin in ``plugins.json`` in its run directory
(as given, its file, the sha256 of that file, the environments it registered), written before
training starts; ``grpopp eval`` writes the same record beside its results. ``--resume``, ``eval`` of
a run directory and ``eval reverify`` load the recorded plugins themselves:

- a plugin whose environments are already registered (given again with ``--plugin``) is not loaded
  twice;
- a file whose content changed since is loaded as it is now, with a warning that names it;
- a file that is gone is an error that names it and the environments it registered, and says to
  pass it with ``--plugin``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import BaseModel, ConfigDict, ValidationError

from grpopp.cli.errors import warn
from grpopp.config_tools import UserError, format_validation_error
from grpopp.envs.registry import RegistryError, load_plugin, registered_envs
from grpopp.learner import checkpoint as ckpt
from grpopp.training.config import TrainConfig

PLUGINS_FILE = "plugins.json"
"""The plugins a run (or an evaluation) was made with, in its folder."""

PluginOption = Annotated[
    list[str] | None,
    typer.Option("--plugin", help="Your environment module: path/to/file.py or package.module (repeatable)."),
]


class PluginRecord(BaseModel):
    """One plugin a run was made with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plugin: str
    """As given to --plugin: a .py path or a module name."""
    file: str | None
    """The module's file, absolute; None for a module without one."""
    sha256: str | None
    """sha256 of that file when the run was made."""
    envs: list[str]
    """The environments it registered."""


class PluginsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    plugins: list[PluginRecord]


def load_plugins(specs: list[str] | None) -> list[PluginRecord]:
    """Load each ``--plugin`` and return what to record of it."""
    return [_record(spec, load_plugin(spec)) for spec in specs or []]


def load_recorded_plugins(folder: Path, loaded: list[PluginRecord]) -> list[PluginRecord]:
    """Load the plugins recorded in ``folder`` (a run directory or an evaluation folder) that the
    plugins already ``loaded`` do not provide; return ``loaded`` with the ones loaded here added."""
    added: list[PluginRecord] = []
    for record in read_records(folder):
        provided = set(record.envs) <= _registered_names()
        if provided and all(other.file != record.file for other in loaded):
            continue  # given again with --plugin (perhaps from a new place), or recorded twice
        if record.file is not None and not Path(record.file).is_file():
            raise RegistryError(
                f"plugin {record.file} is gone: {folder / PLUGINS_FILE} records it (--plugin {record.plugin}) as the "
                f"plugin that registered {', '.join(record.envs)}. Pass its new location with --plugin path/to/file.py"
            )
        current = _digest(Path(record.file)) if record.file is not None else None
        if current is not None and record.sha256 is not None and current != record.sha256:
            warn(
                f"plugin {record.plugin} ({record.file}) changed since {folder} was made with it "
                f"(sha256 {record.sha256[:12]} then, {current[:12]} now); using the file as it is now"
            )
        if not provided:
            spec = record.file if record.file is not None and record.plugin.endswith(".py") else record.plugin
            try:
                added.append(_record(record.plugin, load_plugin(spec), spec))
            except RegistryError as error:
                raise RegistryError(
                    f"plugin {record.plugin}, recorded in {folder / PLUGINS_FILE}, does not load now: {error}. Fix it, "
                    "or pass its current version with --plugin"
                ) from None
    return _unique([*loaded, *added])


def record_in_new_run(config: TrainConfig, records: list[PluginRecord]) -> TrainConfig:
    """Before a new run made with plugins starts: fix its run directory (``logging.run_dir``; by
    default runs/<UTC time> on rank 0's clock, as ``run.train`` picks it) and write plugins.json
    there. A directory that already holds a run is left alone (``run.train`` refuses it)."""
    if not records:
        return config
    from grpopp.jobs.run import new_run_dir
    from grpopp.learner.distributed import broadcast_object, init_distributed

    dist_info, _ = init_distributed(config.device)
    run_dir = broadcast_object(dist_info, new_run_dir(config))
    holds_run = ckpt.latest_checkpoint(run_dir) is not None or (run_dir / "metrics.jsonl").exists()
    if dist_info.is_main and not holds_run:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / PLUGINS_FILE).write_text(records_json(records))
    logging = config.logging.model_copy(update={"run_dir": str(run_dir)})
    return config.model_copy(update={"logging": logging})


def read_records(folder: Path) -> list[PluginRecord]:
    """The plugins recorded in ``folder``; none when it has no plugins.json."""
    path = folder / PLUGINS_FILE
    if not path.is_file():
        return []
    try:
        return PluginsFile.model_validate_json(path.read_bytes()).plugins
    except ValidationError as error:
        raise UserError(
            f"{path}: not a plugin record of grpopp ({format_validation_error(error)}); remove it and pass the "
            "plugins with --plugin"
        ) from None


def records_json(records: list[PluginRecord]) -> str:
    """The text of a plugins.json holding ``records``."""
    return json.dumps(PluginsFile(plugins=records).model_dump(mode="json"), indent=2) + "\n"


def _record(plugin: str, envs: list[str], loaded_as: str | None = None) -> PluginRecord:
    """What to record of ``plugin`` (as the user gave it; loaded from ``loaded_as`` when that differs,
    e.g. the absolute path of a recorded file)."""
    spec = loaded_as or plugin
    path = Path(spec)
    if spec.endswith(".py") or path.exists():
        file: Path | None = path.resolve()
    else:
        origin = getattr(sys.modules.get(spec), "__file__", None)
        file = Path(origin).resolve() if origin else None
    digest = _digest(file) if file is not None else None
    return PluginRecord(plugin=plugin, file=str(file) if file else None, sha256=digest, envs=envs)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _registered_names() -> set[str]:
    return {name.removesuffix(":<task>") for name in registered_envs()}


def _unique(records: list[PluginRecord]) -> list[PluginRecord]:
    seen: dict[str, PluginRecord] = {}
    for record in records:
        seen.setdefault(record.file or record.plugin, record)
    return list(seen.values())
