"""Printing for humans (tables) and for tools (``-o json``)."""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
errors = Console(stderr=True)


class Format(enum.StrEnum):
    table = "table"
    json = "json"


def emit(rows: Sequence[dict[str, Any]] | dict[str, Any], *, fmt: Format,
         columns: Sequence[str], empty: str = "") -> None:
    """``empty``: what a table says instead of a bare header when there are no rows (a new
    user's first look); JSON is always the plain (empty) list."""
    if fmt is Format.json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    if empty and not rows:
        console.print(escape(empty), highlight=False, soft_wrap=True)
        return
    table = Table(*columns, show_edge=False, header_style="bold")
    for row in [rows] if isinstance(rows, dict) else rows:
        table.add_row(*(_cell(row.get(col)) for col in columns))
    console.print(table)


def fail(message: str, *, hint: str = "", code: int = 1) -> typer.Exit:
    errors.print(f"[bold red]error:[/] {escape(message)}")
    if hint:
        errors.print(f"[dim]hint:[/] {escape(hint)}")
    return typer.Exit(code)


def _cell(value: Any) -> str:
    if value is True:
        return "[green]yes[/]"
    if value is False:
        return "[red]no[/]"
    if isinstance(value, list | tuple):
        return escape(", ".join(str(v) for v in value))
    return "" if value is None else escape(str(value))
