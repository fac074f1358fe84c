"""``grpopp sandbox run|check``: run a program in the code sandbox, and see which isolation this machine has."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from grpopp.cli.errors import fail, user_errors
from grpopp.config_tools import UserError, format_validation_error
from grpopp.rewards.sandbox import Isolation, Sandbox, SandboxConfig, SandboxUnavailable, check_isolation

sandbox_app = typer.Typer(
    help="The code sandbox: run a program in it, check this machine's isolation.", no_args_is_help=True
)
console = Console()


def _read(path: Path, what: str) -> bytes:
    """The bytes of an input file; a missing one (or a folder) is refused with its name."""
    if not path.is_file():
        raise UserError(f"{what} {path}: {'a folder' if path.is_dir() else 'no such file'}; give a file")
    return path.read_bytes()


@sandbox_app.command("run")
@user_errors
def sandbox_run(
    file: Annotated[Path, typer.Argument(help="Python program to run.")],
    stdin: Annotated[Path | None, typer.Option("--stdin", help="File fed to the program's stdin.")] = None,
    isolation: Annotated[str, typer.Option(help="bwrap (default) or rlimits (weaker, explicit only).")] = "bwrap",
    wall_timeout: Annotated[float, typer.Option(help="Wall-clock limit, seconds.")] = 10.0,
    cpu_time: Annotated[int, typer.Option(help="CPU-time limit per process, seconds.")] = 5,
    memory_mb: Annotated[int, typer.Option(help="Address-space limit per process, MiB.")] = 1024,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full result as JSON.")] = False,
) -> None:
    """Run FILE in a fresh container; print its output, the limits it hit and the timing.

    Exit status: 0 when the program exited 0 within its limits, 1 when it did not, 2 when the
    sandbox could not start."""
    if isolation not in ("bwrap", "rlimits"):
        raise fail(f"--isolation must be bwrap or rlimits, got {isolation!r}")
    mode: Isolation = "bwrap" if isolation == "bwrap" else "rlimits"
    try:
        program = _read(file, "program").decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"program {file}: not UTF-8 text ({error.reason}); give a Python source file") from None
    feed = _read(stdin, "--stdin") if stdin is not None else b""
    try:
        config = SandboxConfig(isolation=mode, wall_timeout_s=wall_timeout, cpu_time_s=cpu_time, memory_mb=memory_mb)
    except ValidationError as error:
        message = format_validation_error(error)
        for field, option in (
            ("wall_timeout_s", "--wall-timeout"),
            ("cpu_time_s", "--cpu-time"),
            ("memory_mb", "--memory-mb"),
        ):
            message = message.replace(f"{field}:", f"{option}:")
        raise fail(message) from None
    try:
        with Sandbox(config) as sandbox:
            result = sandbox.run(program, feed)
    except SandboxUnavailable as error:
        raise fail(str(error)) from None
    if as_json:
        typer.echo(json.dumps(result.model_dump(), indent=2))
    else:
        if result.stdout:
            console.rule("stdout" + (" (truncated)" if result.stdout_truncated else ""))
            console.print(result.stdout, end="", highlight=False, markup=False)
        if result.stderr:
            console.rule("stderr" + (" (truncated)" if result.stderr_truncated else ""))
            console.print(result.stderr, end="", highlight=False, markup=False)
        console.rule("result")
        table = Table(show_header=False)
        how = f"killed by signal {result.signal}" if result.exit_code is None else str(result.exit_code)
        rows = [
            ("exit status", how),
            ("timed out", str(result.timed_out)),
            ("limits hit", ", ".join(result.limits_hit) or "none"),
            ("wall time", f"{result.wall_time_s:.3f} s"),
            ("cpu time", f"{result.cpu_time_s:.3f} s"),
            ("isolation", result.isolation + (f" ({result.warning})" if result.warning else "")),
        ]
        if result.error:
            rows.append(("sandbox error", result.error))
        for name, value in rows:
            table.add_row(name, value)
        console.print(table)
    if result.error is not None:
        raise typer.Exit(code=2)
    if not result.ok:
        raise typer.Exit(code=1)


@sandbox_app.command("check")
@user_errors
def sandbox_check() -> None:
    """Report which isolation this machine supports; exit status 1 when bwrap does not work."""
    report = check_isolation()
    table = Table(title="grpopp sandbox check", show_header=False)
    for name, value in report.model_dump().items():
        table.add_row(name.replace("_", " "), str(value))
    console.print(table)
    if report.bwrap_works:
        console.print("[green]bwrap isolation works[/]: the code environment runs with full isolation.")
    else:
        console.print(
            "[red]bwrap isolation does not work here.[/] Install it: apt-get install -y bubblewrap; "
            + ("the weaker mode is available with isolation='rlimits'." if report.rlimits_works else ""),
            highlight=False,
        )
        raise typer.Exit(code=1)
