"""``grpopp envs ...`` and ``grpopp verify``: inspect, sample, check and verify environments."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from grpopp.cli.errors import fail, user_errors
from grpopp.cli.plugins import PluginOption, load_plugins
from grpopp.config_tools import ConfigError, UserError, apply_overrides, load_config_file, validate_config
from grpopp.envs.base import Environment, Message, Split, Task, prompt_text
from grpopp.envs.check import CONTENT_TASKS, check_env
from grpopp.envs.mixture import EnvSpec, build_mixture, parse_env_arg
from grpopp.envs.multiturn import MultiTurnEnv, last_assistant, play_episode, stored_transcript
from grpopp.envs.registry import env_class, make_env, registered_envs
from grpopp.rewards.shaping import LengthLimits

envs_app = typer.Typer(help="Environments: list, show options, sample tasks, check the contract.", no_args_is_help=True)
console = Console()

SetOption = Annotated[
    list[str] | None, typer.Option("--set", help="Environment option, e.g. --set max_operand=999 (repeatable).")
]


def build_env(name: str, overrides: list[str] | None) -> Environment[Any]:
    """make_env with --set overrides validated against the environment's config class."""
    cls, implied = env_class(name)
    config = validate_config(cls.config_class, implied, prefix=f"env {name}")
    config = apply_overrides(config, overrides or [])
    return make_env(name, **config.model_dump(exclude=set(implied)))


def summary_line(cls: type) -> str:
    """The first line of a class's docstring; "" for a class without one."""
    lines = (cls.__doc__ or "").strip().splitlines()
    return lines[0] if lines else ""


@envs_app.command("list")
@user_errors
def envs_list(plugin: PluginOption = None) -> None:
    """List the registered environments."""
    load_plugins(plugin)
    table = Table(title="grpopp environments")
    for column in ("name", "description", "config"):
        table.add_column(column)
    for name, cls in registered_envs().items():
        table.add_row(Text(name), Text(summary_line(cls)), Text(cls.config_class.__name__))
    console.print(table)


def _field_rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(_field_rows(annotation, f"{prefix}{name}."))
            continue
        type_name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        default = "required" if info.is_required() else repr(info.get_default(call_default_factory=True))
        rows.append((prefix + name, type_name, default, (info.description or "").replace("\n", " ")))
    return rows


@envs_app.command("show")
@user_errors
def envs_show(name: str, plugin: PluginOption = None) -> None:
    """Show an environment's options: type, default and help of every field. Set them with --set
    KEY=VALUE on envs sample, envs check and verify, or under the environment's config: in a
    training config."""
    load_plugins(plugin)
    cls, _ = env_class(name)
    summary = summary_line(cls)
    table = Table(title=escape(f"{name}: {summary}" if summary else name), show_lines=True)
    for column in ("option", "type", "default", "help"):
        table.add_column(column, overflow="fold")
    for row in _field_rows(cls.config_class):
        table.add_row(*(Text(cell) for cell in row))
    console.print(table)


@envs_app.command("sample")
@user_errors
def envs_sample(
    name: str,
    n: Annotated[int, typer.Option("-n", help="How many tasks.")] = 3,
    start: Annotated[int, typer.Option(help="Index of the first task.")] = 0,
    split: Annotated[str, typer.Option(help="train or test.")] = "train",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON task per line.")] = False,
    set_: SetOption = None,
    plugin: PluginOption = None,
) -> None:
    """Print tasks of an environment: id, prompt and gold answer."""
    load_plugins(plugin)
    if split not in ("train", "test"):
        raise fail(f"--split must be train or test, got {split!r}")
    env = build_env(name, set_)
    size = env.num_tasks(split)  # type: ignore[arg-type]
    for index in range(start, start + n if size is None else min(start + n, size)):
        task = env.task(index, split)  # type: ignore[arg-type]
        gold = _gold_episode(env, task)
        if as_json:
            record = task.model_dump(mode="json")
            if gold is not None:
                record["gold_episode"] = [m.model_dump(mode="json", exclude_none=True) for m in gold]
            typer.echo(json.dumps(record))
        else:
            console.rule(task.id)
            console.print(prompt_text(task), highlight=False, markup=False)
            console.print(f"[bold]answer:[/] {task.answer}", highlight=False)
            for message in gold or []:
                console.print(f"[bold]{message.role}:[/] {escape(message.content)}", highlight=False)


def _gold_episode(env: Environment[Any], task: Task) -> list[Message] | None:
    """A multi-turn environment's gold episode of ``task`` (played without a model), when it gives one."""
    if not isinstance(env, MultiTurnEnv):
        return None
    try:
        return play_episode(env, task, env.gold_turn)
    except Exception as exc:
        console.print(f"[yellow]no gold episode: {type(exc).__name__}: {escape(str(exc))}[/]")
        return None


@envs_app.command("check")
@user_errors
def envs_check(
    name: str,
    n: Annotated[int, typer.Option("-n", help="Tasks per split to check.")] = 20,
    content_tasks: Annotated[
        int,
        typer.Option(
            help="Tasks per split compared by content (train/test disjointness); lower it where tasks are slow.",
            min=1,
        ),
    ] = CONTENT_TASKS,
    set_: SetOption = None,
    plugin: PluginOption = None,
) -> None:
    """Check the contract: deterministic tasks, train and test disjoint by content, gold answers
    correct, wrong answers not."""
    load_plugins(plugin)
    env = build_env(name, set_)
    report = check_env(env, n, content_tasks)
    table = Table(title=f"envs check {name}")
    for column in ("check", "result", "detail"):
        table.add_column(column, overflow="fold")
    for result in report.results:
        table.add_row(result.name, "[green]pass[/]" if result.passed else "[red]FAIL[/]", result.detail)
    console.print(table)
    if not report.ok:
        raise typer.Exit(code=1)


def _parse_task_id(env: Environment[Any], task_id: str) -> Task:
    prefix, sep, rest = task_id.rpartition("/")
    env_name, _, split = prefix.rpartition("/")
    if not sep or env_name != env.name or split not in ("train", "test") or not rest.isdigit():
        raise ValueError(f"task id {task_id!r} is not '{env.name}/<train|test>/<index>'")
    split_name: Split = "train" if split == "train" else "test"
    return env.task(int(rest), split_name)


@user_errors
def verify_command(
    env_name: Annotated[str, typer.Option("--env", help="Environment name.")],
    task_id: Annotated[str | None, typer.Option(help="Task id, e.g. arithmetic/train/3.")] = None,
    completion: Annotated[str | None, typer.Option(help="The completion text to verify.")] = None,
    input_file: Annotated[
        Path | None,
        typer.Option("--input", help="JSONL with task_id, completion and optional num_tokens per line; - = stdin."),
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Generation limit L_max for the length components.")] = 1024,
    num_tokens: Annotated[int | None, typer.Option(help="Completion length in tokens (default: word count).")] = None,
    set_: SetOption = None,
    plugin: PluginOption = None,
) -> None:
    """Verify completions and print the VerifyResult and reward breakdown as JSON lines."""
    load_plugins(plugin)
    if input_file is None:
        if task_id is None or completion is None:
            raise fail("give --task-id and --completion, or --input FILE.jsonl")
        lines = [json.dumps({"task_id": task_id, "completion": completion, "num_tokens": num_tokens})]
        source = "arguments"
    else:
        lines = _input_lines(input_file)
        source = str(input_file)
    env = build_env(env_name, set_)
    limits = LengthLimits(max_length=max_tokens, cache_length=max_tokens // 5)
    bad_lines = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            task = _parse_task_id(env, str(record["task_id"]))
            transcript = stored_transcript(record)
            text = last_assistant(transcript) if transcript is not None else str(record["completion"])
            length = record.get("num_tokens")
        except (json.JSONDecodeError, KeyError, ValueError, IndexError, ValidationError) as exc:
            bad_lines += 1
            problem = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            typer.echo(json.dumps({"line": number, "error": f"{source}:{number}: {problem}"}))
            continue
        length_source = "given" if length is not None else "words"
        length = int(length) if length is not None else len(text.split())
        if isinstance(env, MultiTurnEnv):  # a stored transcript (samples.jsonl's "messages"), or one turn
            episode = transcript if transcript is not None else [Message(role="assistant", content=text)]
            (reward,) = env.score_episodes([task], [episode], [length], limits)
        else:
            (reward,) = env.score_batch([task], [text], [length], limits)
        out = {
            "task_id": task.id,
            "status": reward.status,
            "reward": reward.total,
            "valid": reward.valid,
            "num_tokens": length,
            "num_tokens_source": length_source,
            "verification": reward.verification.model_dump() if reward.verification else None,
            "components": {k: c.model_dump() for k, c in reward.components.items()},
            "errors": reward.errors,
        }
        typer.echo(json.dumps(out))
    if bad_lines:
        raise fail(f"{bad_lines} input line(s) could not be read (see the 'error' records)", code=1)


def _input_lines(path: Path) -> list[str]:
    """The lines of ``verify --input`` (``-``: stdin); a file that is missing, unreadable, not text or
    empty is refused with its name."""
    if str(path) == "-":
        text = sys.stdin.read()
    else:
        if not path.is_file():
            what = "a folder" if path.is_dir() else "no such file"
            raise UserError(f"--input {path}: {what}; give a JSONL file with task_id and completion per line")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise UserError(
                f"--input {path}: not UTF-8 text ({error.reason} at byte {error.start}); give a JSONL file"
            ) from None
    if not text.strip():
        raise UserError(f"--input {path}: holds no line; give a JSONL file with task_id and completion per line")
    return text.splitlines()


@envs_app.command("mix")
@user_errors
def envs_mix(
    env: Annotated[list[str] | None, typer.Option("--env", help="NAME[:WEIGHT], repeatable.")] = None,
    config: Annotated[
        Path | None, typer.Option(help="YAML/TOML file with an 'envs' list of {name, weight, config}.")
    ] = None,
    batches: Annotated[int, typer.Option(help="How many batches to draw.")] = 3,
    batch_size: Annotated[int, typer.Option(help="Prompts per batch.")] = 10,
    seed: Annotated[int, typer.Option(help="Mixture seed.")] = 0,
    plugin: PluginOption = None,
) -> None:
    """Draw batches from a weighted mixture and show how many prompts each environment got."""
    load_plugins(plugin)
    specs = [parse_env_arg(text) for text in env or []]
    if config is not None:
        raw = load_config_file(config).get("envs", [])
        if not isinstance(raw, list):
            raise ConfigError(f"{config}: 'envs' must be a list of {{name, weight, config}} entries")
        specs += [validate_config(EnvSpec, item, prefix=f"envs.{i}") for i, item in enumerate(raw)]
    if not specs:
        raise ConfigError("give environments with --env NAME[:WEIGHT] or --config FILE")
    mixture = build_mixture(specs, seed=seed)
    table = Table(title="mixture batches")
    table.add_column("batch")
    for spec in specs:
        table.add_column(f"{spec.name} (w={spec.weight:g})")
    table.add_column("first tasks", overflow="fold")
    for number in range(batches):
        tasks = mixture.next_batch(batch_size)
        counts = [sum(t.env == spec.name for t in tasks) for spec in specs]
        table.add_row(str(number), *map(str, counts), ", ".join(t.id for t in tasks[:3]))
    console.print(table)
