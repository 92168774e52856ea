"""Output scripts can trust: `-o table|wide|json|name` on every listing and show command.

    table  a table for people: rich's boxes on a terminal; plain aligned columns when stdout is a
           pipe or a file (upper-case headers, one row per line, nothing wrapped or cut), what
           `grep`, `awk` and `cut` expect
    wide   the same with more columns (addresses, serials, who and why)
    json   the JSON the admin API answers (`--json` is the same)
    name   one id per line (unit ids, client ids, serials, audit sequence numbers), for `xargs`

Every cell passes through `printable`: ids, reasons and topics can hold what a client chose.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

import click
from rich.table import Table

from gateway.cli.common import console, emit_json
from gateway.render.safe_text import cell, printable

F = TypeVar("F", bound=Callable[..., Any])
FORMATS = ("table", "wide", "json", "name")
EMPTY = "-"


def output_option(fn: F) -> F:
    """`-o/--output FORMAT` and `--json` (the same as `-o json`); the command gets `output`."""

    @wraps(fn)
    def wrapper(*args: Any, output: str, json_flag: bool, **kwargs: Any) -> Any:
        return fn(*args, output="json" if json_flag else output, **kwargs)

    wrapper = click.option("--json", "json_flag", is_flag=True, help="The same as -o json.")(wrapper)
    wrapper = click.option(
        "-o",
        "--output",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table (plain columns when piped), wide (more columns), json, or name (one id per line).",
    )(wrapper)
    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class Column:
    header: str
    value: str | Callable[[dict[str, Any]], object]  # a key of the row, or how to get the cell
    wide: bool = False  # only with -o wide

    def text(self, row: dict[str, Any]) -> str:
        value = row.get(self.value) if isinstance(self.value, str) else self.value(row)
        return EMPTY if value is None or value == "" else printable(value)


def show_rows(
    rows: list[dict[str, Any]], columns: Iterable[Column], output: str, *, title: str, name: str
) -> None:
    """Rows in the chosen format; `name` is the key -o name prints."""
    if output == "json":
        emit_json(rows)
        return
    if output == "name":
        for row in rows:
            click.echo(printable(row[name]))
        return
    shown = [c for c in columns if output == "wide" or not c.wide]
    cells = [[c.text(row) for c in shown] for row in rows]
    if console.is_terminal:
        _rich_table(title, [c.header for c in shown], cells)
    else:
        plain_table([c.header for c in shown], cells)


def show_object(obj: dict[str, Any], fields: list[tuple[str, object]], output: str, *, name: str) -> None:
    """One object: `key: value` lines for people, its JSON, or its id."""
    if output == "json":
        emit_json(obj)
    elif output == "name":
        click.echo(printable(obj[name]))
    else:
        width = max((len(key) for key, _ in fields), default=0)
        for key, value in fields:
            text = EMPTY if value is None or value == "" else printable(value)
            click.echo(f"{key:>{width}}: {text}")


def plain_table(headers: list[str], cells: list[list[str]]) -> None:
    """Aligned columns, two spaces apart, headers in upper case with `_` for spaces: one line per row,
    so `grep`, `awk '{print $1}'` and `sort` work on it."""
    names = [h.upper().replace(" ", "_") for h in headers]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]
    for line in [names, *cells]:
        padded = [value.ljust(widths[i]) for i, value in enumerate(line[:-1])]
        click.echo("  ".join([*padded, line[-1]]) if line else "")


def _rich_table(title: str, headers: list[str], cells: list[list[str]]) -> None:
    out = Table(title=cell(title), title_justify="left")
    for header in headers:
        out.add_column(cell(header), overflow="fold")
    for row in cells:
        out.add_row(*(cell(value) for value in row))
    console.print(out)


def table(title: str, headers: list[str], rows: list[list[str]]) -> None:
    """A table of ready-made cells, for commands whose rows are not dicts (rich boxes on a terminal,
    plain columns otherwise)."""
    cells = [[EMPTY if v is None or v == "" else printable(v) for v in row] for row in rows]
    if console.is_terminal:
        _rich_table(title, headers, cells)
    else:
        plain_table(headers, cells)
