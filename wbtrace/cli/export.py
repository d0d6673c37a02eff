"""CLI commands that write traces out or in: ``export``, ``import-npz``."""

from __future__ import annotations

from pathlib import Path

import click

from wbtrace.cli.app import main
from wbtrace.cli.options import (
    format_option,
    open_store,
    progress_bar,
    step_options,
    trace_dir_argument,
)
from wbtrace.export import FORMATS, LEVELS, export_steps
from wbtrace.steps import StepSelection


@main.command("export")
@trace_dir_argument
@step_options
@click.option("--level", type=click.Choice(LEVELS), default="token", show_default=True,
              help="One row per token, or one per response.")
@format_option(FORMATS, "csv")
@click.option("--where", metavar="EXPR", help='SQL filter on the rows, e.g. "entropy > 2 AND kept".')
@click.option("-o", "--output", default="-", show_default=True, help="Output file, '-' for stdout.")
def export_cmd(trace_dir: str, steps: StepSelection, level: str, fmt: str, where: str | None,
               output: str) -> None:
    """Export steps as CSV, Parquet or JSONL, one row per token (default) or per response.

    Token rows: step, sample_id, group_id, position, token_id, token, entropy, logprob, reward,
    advantage, then the other per-response columns (kept, correct, ...).

    \b
    Example:
        wbtrace export outputs/demo/entropy_trace --step 2 -o step2.csv
        wbtrace export outputs/demo/entropy_trace --steps 1:3 --where "entropy > 2" --format parquet -o hi.parquet
        wbtrace export outputs/demo/entropy_trace --level response --format jsonl
    """
    store = open_store(trace_dir, steps)
    chosen = store.select(steps)
    with progress_bar(show=len(chosen) > 1) as bar:
        task = bar.add_task("exporting", total=len(chosen))
        rows = export_steps(store, chosen, output, fmt, level, where, progress=lambda _: bar.advance(task))
    if output != "-":
        click.echo(f"wrote {rows} rows ({level} level, {len(chosen)} steps) to {output}", err=True)


@main.command("import-npz")
@click.argument("seed_trace_dir", type=click.Path(file_okay=False, path_type=Path))
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--tokenizer", "tokenizer_path", type=click.Path(path_type=Path),
              help="Local tokenizer folder, to store token texts (vocab.parquet).")
def import_npz_cmd(seed_trace_dir: Path, out_dir: Path, tokenizer_path: Path | None) -> None:
    """Convert a seed trace (steps/step_*.npz, format_version 2) into a wbtrace trace, losslessly.

    \b
    Example:
        wbtrace import-npz output/run-v9/entropy_trace traces/run-v9
    """
    from wbtrace.importer import import_seed_trace

    tokenizer = None
    if tokenizer_path is not None:
        from wbtrace.errors import require

        tokenizer = require("transformers", "train").AutoTokenizer.from_pretrained(tokenizer_path)
    n = import_seed_trace(seed_trace_dir, out_dir, tokenizer=tokenizer)
    click.echo(f"imported {n} steps into {out_dir}")
