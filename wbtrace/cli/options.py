"""Options shared by several commands (trace dir, step selection, output format), defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress

from wbtrace.store import TraceStore


def trace_dir_argument(f: Callable) -> Callable:
    return click.argument("trace_dir", type=click.Path(file_okay=False, path_type=str))(f)


def step_options(f: Callable) -> Callable:
    """``--step N`` (repeatable) and ``--steps A:B`` (inclusive, either side open)."""
    f = click.option("--steps", "step_range", metavar="A:B", help="Inclusive step range, e.g. 10:20, 50: or :5.")(f)
    return click.option("--step", "steps", type=int, multiple=True, metavar="N", help="A step (repeatable).")(f)


def format_option(choices: tuple[str, ...], default: str) -> Callable:
    return click.option("--format", "fmt", type=click.Choice(choices), default=default, show_default=True,
                        help="Output format.")


def open_store(trace_dir: str) -> TraceStore:
    return TraceStore(trace_dir)


def selected_steps(store: TraceStore, steps: tuple[int, ...], step_range: str | None) -> list[int]:
    from wbtrace.errors import BadInputError

    chosen = store.select(steps or None, step_range)
    if not chosen:
        raise BadInputError(f"no steps selected in {store.run_dir} (it has {len(store.steps)} steps)")
    return chosen


def progress_bar(show: bool = True) -> Progress:
    """A progress bar on stderr (stdout may carry data); hidden when ``show`` is false or stderr is no terminal."""
    console = Console(stderr=True)
    return Progress(console=console, transient=True, disable=not show or not console.is_terminal)


def fmt_count(x: Any) -> str:
    """A count for a table cell; blank when the trace does not have it (an older or foreign manifest)."""
    return "" if x is None else str(x)


def fmt_float(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
