"""The ``tokenomy extensions`` command: list the registered extensions and where they come from."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..model.errors import TokenomyError
from ..model.registry import BUILTIN, ENTRY_POINT_GROUP, REGISTRY

EXIT_INVALID = 2


def register(app: typer.Typer) -> None:
    """Add the ``extensions`` command to ``app``."""
    app.command("extensions")(extensions_command)


def extensions_command(
    json_output: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
    builtin: Annotated[bool, typer.Option(
        "--builtin", help="Also list the market kinds and curve families tokenomy defines.")] = False,
) -> None:
    """List the layers, market kinds, curve families and detectors of installed extensions."""
    try:
        REGISTRY.load_extensions()  # also picks up packages installed since the last scan
    except TokenomyError as error:
        Console(stderr=True, soft_wrap=True).print(str(error), markup=False, highlight=False)
        raise typer.Exit(EXIT_INVALID) from None
    rows = [row for row in REGISTRY.describe() if builtin or row["source"] != BUILTIN]
    if json_output:
        print(json.dumps(rows, indent=2))  # noqa: T201
        return
    console = Console(width=max(Console().width, 120))
    if not rows:
        console.print(f"no extensions registered (entry-point group {ENTRY_POINT_GROUP})")
        return
    table = Table(title=f"extensions (entry-point group {ENTRY_POINT_GROUP})")
    for column in ("type", "name", "source", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["type"], escape(row["name"]), escape(row["source"]),
                      escape(row["description"]))
    console.print(table)
