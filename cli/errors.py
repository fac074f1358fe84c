"""What the CLI prints when a user got something wrong: one paragraph on stderr, exit status 2.

Every command is wrapped by ``user_errors``: a ``UserError`` (a config key or value, a data file, a
plugin, a model path, a checkpoint, a report, an input file) becomes ``error: <message>`` and exit
status 2. Any other exception is a bug and keeps its traceback. Messages are printed as text, never
as rich markup ("[report]" stays as written).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from grpopp.config_tools import UserError

error_console = Console(stderr=True)

P = ParamSpec("P")
R = TypeVar("R")


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` (one paragraph, unwrapped) and return the Exit to raise."""
    error_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=code)


def warn(message: str) -> None:
    error_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command: a ``UserError`` it raises is printed by ``fail`` and exits with status 2."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except UserError as error:
            raise fail(str(error)) from None

    return run
