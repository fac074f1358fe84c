"""``grpopp report RUN_DIR``: PNG figures of a run's training curves and evaluations, and a report.md."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from grpopp.cli.errors import user_errors
from grpopp.jobs.report import write_report

console = Console()


@user_errors
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="Run directory of grpopp train (holds metrics.jsonl).")],
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the figures and report.md.")] = None,
) -> None:
    """Draw a run's training curves and evaluations as PNG figures, with a report.md that shows them
    (default folder: RUN_DIR/report; needs matplotlib: pip install -e '.\\[report]')."""
    summary = write_report(run_dir, out)
    table = Table(title=f"grpopp report: {escape(str(summary.out_dir))}")
    for column in ("figure", "metrics"):
        table.add_column(column, overflow="fold")
    for figure in summary.figures:
        table.add_row(figure.file, ", ".join(figure.metrics))
    for skipped in summary.skipped:
        table.add_row(f"[dim]{skipped.name} (not drawn)[/]", f"[dim]{escape(skipped.reason)}[/]")
    console.print(table)
    for problem in summary.problems:
        console.print(f"[yellow]warning:[/] {escape(problem)}", highlight=False)
    console.print(f"wrote {len(summary.figures)} figure(s) and {summary.markdown}", highlight=False)
