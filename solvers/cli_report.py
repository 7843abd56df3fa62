"""Command-line HTML report: ``tokenomy report RESULT.json --html OUT.html``.

:func:`register` adds the command to the main ``tokenomy`` app. A file that is
not a readable tokenomy report exits with code 2 and a one-line message on
stderr that names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .html_report import write_html
from .report_input import ReportInputError

EXIT_INVALID = 2

console = Console()
errors = Console(stderr=True, soft_wrap=True)


def report_command(
    file: Annotated[Path, typer.Argument(
        help="JSON report from tokenomy solve --json or --out (report.json), or from "
             "tokenomy compare --json.")],
    html: Annotated[Path, typer.Option("--html", help="HTML file to write.")],
) -> None:
    """Write a self-contained HTML report (tables and figures) of a JSON report."""
    try:
        path = write_html(file, html)
    except ReportInputError as error:
        errors.print(str(error), markup=False, highlight=False)
        raise typer.Exit(EXIT_INVALID) from None
    except OSError as error:
        errors.print(f"{html}: cannot write the HTML file: {error.strerror}", markup=False,
                     highlight=False)
        raise typer.Exit(EXIT_INVALID) from None
    console.print(f"wrote {path}", markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``report`` to ``app``."""
    app.command("report")(report_command)
