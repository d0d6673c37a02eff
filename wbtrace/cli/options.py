"""Options shared by several commands (trace argument, step selection, output format), defined once."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress

from wbtrace.steps import GRAMMAR, StepSelection
from wbtrace.store import TraceStore


def trace_dir_argument(f: Callable, name: str = "trace_dir") -> Callable:
    """The trace argument: anything `wbtrace pull` accepts (see `open_store`)."""
    return click.argument(name, metavar="TRACE")(f)


def step_options(f: Callable | None = None, *, all_flag: bool = False, default: str = "every step") -> Callable:
    """``--step N`` (repeatable) and ``--steps SPEC`` (repeatable; `wbtrace.steps` grammar), given to the
    command as one ``steps: StepSelection`` (the union of both; empty when neither is given).

    ``all_flag`` adds ``--all`` (the same as ``--steps all``); ``default`` says in the help what no
    selection means for this command.
    """
    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def command(*args: Any, step: tuple[int, ...] = (), step_specs: tuple[str, ...] = (),
                    all_steps: bool = False, **kwargs: Any) -> Any:
            return f(*args, steps=StepSelection.parse(*step_specs, steps=step, all=all_steps), **kwargs)

        if all_flag:
            command = click.option("--all", "all_steps", is_flag=True, help="Every step the run has.")(command)
        command = click.option("--steps", "step_specs", multiple=True, metavar="SPEC",
                               help=f"Steps: {GRAMMAR}; e.g. 10:20, 50:, 1,5,9 (repeatable). "
                                    f"Default: {default}.")(command)
        return click.option("--step", "step", type=int, multiple=True, metavar="N",
                            help="A step (repeatable).")(command)

    return decorate(f) if f is not None else decorate


def format_option(choices: tuple[str, ...], default: str) -> Callable:
    return click.option("--format", "fmt", type=click.Choice(choices), default=default, show_default=True,
                        help="Output format.")


def open_store(trace_dir: str, steps: StepSelection | None = None) -> TraceStore:
    """The trace a command reads: a trace dir in place, any other source through the local cache
    (`wbtrace.sources.local_copy.local_store`; only the ``steps`` selected are fetched, once)."""
    from pathlib import Path

    if (Path(trace_dir) / "run.json").is_file():
        return TraceStore(trace_dir)
    from wbtrace.sources.local_copy import local_store

    with progress_bar() as bar:
        task = bar.add_task(f"reading {trace_dir}", total=None)
        progress = lambda done, total: bar.update(task, completed=done, total=total)  # noqa: E731
        return local_store(trace_dir, steps, progress)[0]


def progress_bar(show: bool = True) -> Progress:
    """A progress bar on stderr (stdout may carry data); hidden when ``show`` is false or stderr is no terminal."""
    console = Console(stderr=True)
    return Progress(console=console, transient=True, disable=not show or not console.is_terminal)


def fmt_count(x: Any) -> str:
    """A count for a table cell; ``-`` (like `fmt_float`) when the manifest does not have it, never ``None``."""
    return "-" if x is None else str(x)


def fmt_float(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"
