"""Printing a Polars frame from an analysis: a rich table, JSON records or CSV, with trace strings made safe.

JSON is safe by construction (``json.dumps`` escapes every control character); a table escapes every
string cell through `wbtrace.textsafe`; CSV keeps the data as it is when piped and escapes it on a terminal.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from wbtrace.textsafe import rich_text, terminal_text

if TYPE_CHECKING:
    import polars as pl
    from rich.table import Table

FORMATS = ("table", "json", "csv")
QUOTED = {"text"}  # token text: quoted in tables so a space or an empty piece stays visible


def format_choice(f: Callable) -> Callable:
    return click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                        help="table (rich, escaped), json (records) or csv.")(f)


def cell(value: Any, digits: int = 3) -> str:
    """One value as table text: floats to ``digits`` decimals, lists shortened, None as ``-``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, list):
        shown = " ".join(cell(v, 2) for v in value[:8])
        return shown + (f" ... ({len(value)})" if len(value) > 8 else "")
    return str(value)


def frame_table(df: pl.DataFrame, title: str | None = None, digits: int = 3) -> Table:
    """A rich table of ``df``; every cell through `rich_text` (never markup, controls escaped)."""
    import polars as pl
    from rich.table import Table

    t = Table(title=rich_text(title) if title else None, title_justify="left")
    for name, dtype in df.schema.items():
        t.add_column(rich_text(name), justify="left" if dtype in (pl.String, pl.Boolean) else "right")
    quoted = [name in QUOTED for name in df.columns]
    for row in df.iter_rows():
        t.add_row(*(rich_text(repr(v) if q and isinstance(v, str) else cell(v, digits)) for q, v in zip(quoted, row)))
    return t


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [_json_value(x) for x in v]
    if isinstance(v, dict):
        return {k: _json_value(x) for k, x in v.items()}
    return v


def records(df: pl.DataFrame) -> list[dict[str, Any]]:
    return [{k: _json_value(v) for k, v in row.items()} for row in df.iter_rows(named=True)]


def emit(df: pl.DataFrame, fmt: str, title: str | None = None, extra: dict[str, Any] | None = None) -> None:
    """Print ``df`` in ``fmt``. ``extra`` (JSON only) adds top-level keys: the output is then an object
    ``{"rows": [...], **extra}`` instead of a list."""
    import polars as pl

    if fmt == "json":
        body: Any = records(df) if extra is None else {"rows": records(df), **_json_value(extra)}
        click.echo(json.dumps(body, indent=1, allow_nan=False))
    elif fmt == "csv":
        flat = df.with_columns(pl.col(c).cast(pl.List(pl.String)).list.join(" ")
                               for c, t in df.schema.items() if isinstance(t, pl.List))
        text = flat.write_csv()
        click.echo(terminal_text(text, keep_newlines=True) if sys.stdout.isatty() else text, nl=False)
    else:
        from wbtrace.cli.inspect import wide_console

        wide_console().print(frame_table(df, title))
