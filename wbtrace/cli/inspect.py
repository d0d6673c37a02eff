"""CLI commands that look at a trace: ``ls``, ``stats``, ``plot``, ``verify`` (``show`` is in cli/show.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from wbtrace.cli.analyze import where_options
from wbtrace.cli.app import main
from wbtrace.cli.options import fmt_count, fmt_float, open_store, step_options, trace_dir_argument
from wbtrace.stats import DEFAULT_THRESHOLD, step_summary
from wbtrace.steps import StepSelection
from wbtrace.textsafe import rich_text, terminal_text


@main.command("ls")
@trace_dir_argument
def ls_cmd(trace_dir: str) -> None:
    """List the steps of a trace: responses, tokens, entropy.

    \b
    Example:
        wbtrace ls outputs/demo/entropy_trace
    """
    store = open_store(trace_dir)
    table = Table(title=rich_text(f"{store.run_dir}  ({store.run_info.get('model') or 'model ?'})"),
                  title_justify="left")
    for col in ("step", "responses", "kept", "tokens", "mean H", "p90 H", "reward", "KiB"):
        table.add_column(col, justify="right")
    for e in store.manifest:
        table.add_row(str(e["step"]), fmt_count(e.get("n_responses")), fmt_count(e.get("n_kept")),
                      fmt_count(e.get("n_tokens")),
                      fmt_float(e.get("entropy_mean")), fmt_float(e.get("entropy_p90")),
                      fmt_float(e.get("reward_mean")), f"{e.get('bytes', 0) / 1024:.0f}")
    print_table(wide_console(), table)


def wide_console(**kwargs) -> Console:
    """A console at least 120 columns wide when piped (rich would fall back to 80 and cut columns)."""
    console = Console(**kwargs)
    return console if console.is_terminal else Console(width=max(console.width, 120), **kwargs)


RICH_MAX_ROWS = 200  # rich lays out ~1 ms a row: 5,000 steps took 8 s of CPU in `ls` alone


def print_table(console: Console, table: Table) -> None:
    """Print ``table`` with rich, or, above `RICH_MAX_ROWS` rows, as plain aligned text (same columns)."""
    if table.row_count <= RICH_MAX_ROWS:
        console.print(table)
        return
    from wbtrace.textsafe import terminal_text

    cols = [[terminal_text(getattr(c, "plain", c)) for c in (col.header, *col.cells)] for col in table.columns]
    widths = [max(map(len, col)) for col in cols]
    left = [col.justify == "left" or (col.justify == "default" and i > 0) for i, col in enumerate(table.columns)]
    lines = [terminal_text(getattr(table.title, "plain", table.title or ""))]
    for cells in zip(*cols):
        lines.append("  ".join(c.ljust(w) if lf else c.rjust(w) for c, w, lf in zip(cells, widths, left)).rstrip())
    click.echo("\n".join(lines))


_BOOKKEEPING = ("step", "file", "bytes", "sha256", "committed_at", "recovered", "policy")


def _number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _stats_record(store, step: int, entry: dict | None, threshold: float, where=None) -> dict:
    """A step's statistics from its manifest line; the step file is read only for what the line lacks
    (an older trace), another threshold, or a response filter (the line covers every response)."""
    from wbtrace.analysis.frames import filter_table
    from wbtrace.analysis.policy import policy_stats

    filtered = where is not None and (where.kept is not None or where.correct is not None)
    if not filtered and entry and entry.get("threshold") == threshold and isinstance(entry.get("policy"), dict) \
            and all(isinstance(entry.get(k), list) for k in ("entropy_by_position", "forking_tokens")) \
            and all(v is None or _number(v) for v in entry["entropy_by_position"]):
        summary = {k: v for k, v in entry.items() if k not in _BOOKKEEPING}
        summary.update(entry["policy"])
    else:
        t = store.read_step(step)
        if filtered:
            t = filter_table(t, where)
        summary = {**step_summary(t, threshold), **policy_stats(t)}
    summary["forking_tokens"] = [{**f, "token": store.vocab.text(f["token_id"])} for f in summary["forking_tokens"]
                                 if isinstance(f, dict) and isinstance(f.get("token_id"), int)
                                 and _number(f.get("count")) and _number(f.get("entropy_mean"))]
    return {"step": step, **summary}


@main.command("stats")
@trace_dir_argument
@step_options
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_THRESHOLD,
              show_default=True,
              help="Entropy (nats) above which a token counts as high-entropy.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per step) instead of tables.")
@where_options
def stats_cmd(trace_dir: str, steps: StepSelection, threshold: float, as_json: bool, kept: bool | None,
              correct: bool | None) -> None:
    """Per-step entropy statistics: percentiles, share above a threshold, correct vs incorrect,
    entropy by relative position, top forking tokens.

    \b
    Example:
        wbtrace stats outputs/demo/entropy_trace --steps 1:5
        wbtrace stats outputs/demo/entropy_trace --json | jq '.[] | .entropy_p90'
        wbtrace stats outputs/demo/entropy_trace --kept --incorrect
    """
    from wbtrace.analysis import Where

    store = open_store(trace_dir, steps)
    where = Where(kept=kept, correct=correct)
    lines = {e["step"]: e for e in store.manifest}
    records = [_stats_record(store, s, lines.get(s), threshold, where) for s in store.select(steps)]
    if as_json:  # one record a line: json's C encoder (indent= falls back to pure Python, 5x slower)
        click.echo("[\n" + ",\n".join(json.dumps(_json_safe(r), allow_nan=False) for r in records) + "\n]")
        return
    console = wide_console()
    print_table(console, _percentile_table(records, threshold))
    print_table(console, _position_table(records))
    if any("ratio_mean" in r or "logprob_mean" in r for r in records):
        print_table(console, _policy_table(records))
    forks = Table(title="Top forking tokens (count, mean H)", title_justify="left")
    forks.add_column("step", justify="right")
    forks.add_column("tokens")
    for r in records:
        forks.add_row(str(r["step"]), rich_text("  ".join(f"{f['token']!r} {f['count']} ({f['entropy_mean']:.2f})"
                                                          for f in r["forking_tokens"][:6])))
    print_table(console, forks)


def _json_safe(value):
    """``value`` with NaN/inf (a trace's NaN rewards, say) as null: ``NaN`` is not JSON and breaks ``jq``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _percentile_table(records: list[dict], threshold: float) -> Table:
    t = Table(title="Token entropy (nats)", title_justify="left")
    cols = ("step", "tokens", "mean", "p50", "p80", "p90", "p99", f">{threshold:g}", "H right", "H wrong",
            "acc", "reward")
    for c in cols:
        t.add_column(c, justify="right")
    for r in records:
        share = r.get("share_above")
        t.add_row(str(r["step"]), str(r["n_tokens"]), *(fmt_float(r.get(k)) for k in
                  ("entropy_mean", "entropy_p50", "entropy_p80", "entropy_p90", "entropy_p99")),
                  "-" if share is None else f"{100 * share:.1f}%",
                  fmt_float(r.get("entropy_mean_correct")), fmt_float(r.get("entropy_mean_incorrect")),
                  fmt_float(r.get("accuracy"), 2), fmt_float(r.get("reward_mean")))
    return t


def _policy_table(records: list[dict]) -> Table:
    t = Table(title="Log-prob, ratio and clipping (tokens with a recorded ratio)", title_justify="left")
    keys = ("logprob_mean", "ratio_mean", "ratio_min", "ratio_max", "clip_frac", "high_entropy_share")
    for c in ("step", "mean log-prob", "ratio mean", "ratio min", "ratio max", "clipped", "high-entropy"):
        t.add_column(c, justify="right")
    for r in records:
        t.add_row(str(r["step"]), *(fmt_float(r.get(k), 4) for k in keys))
    return t


def _position_table(records: list[dict]) -> Table:
    t = Table(title="Mean entropy by relative position in the response (deciles)", title_justify="left")
    t.add_column("step", justify="right")
    for i in range(10):
        t.add_column(f"{10 * i}%", justify="right")
    for r in records:
        t.add_row(str(r["step"]), *(fmt_float(v, 2) for v in r["entropy_by_position"]))
    return t


@main.command("plot")
@trace_dir_argument
@step_options
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Image file; the format follows the suffix (.png, .svg, .pdf). Default: entropy.png in "
                   "the current directory.")
def plot_cmd(trace_dir: str, steps: StepSelection, output: Path | None) -> None:
    """Plot entropy over training: percentile bands, share above the threshold, correct vs
    incorrect, reward (needs matplotlib: pip install 'wbtrace[plot]').

    \b
    Example:
        wbtrace plot outputs/demo/entropy_trace -o entropy.png
    """
    from wbtrace.plot import plot_trace

    store = open_store(trace_dir, steps)
    chosen = store.select(steps)
    out = plot_trace(store, output or Path("entropy.png"), chosen)
    click.echo(f"wrote {out}", err=True)


@main.command("verify")
@trace_dir_argument
def verify_cmd(trace_dir: str) -> None:
    """Check every file of a trace (sha256, Parquet page checksums, schema, counts); name the damage.

    Exit code 0 when every step is whole, 1 when something is damaged (each listed), 2 when TRACE_DIR
    is not a trace.

    \b
    Example:
        wbtrace verify outputs/demo/entropy_trace
    """
    from wbtrace.store import format_steps
    from wbtrace.verify import verify_trace

    report = verify_trace(trace_dir)
    for note in report.notes:
        click.echo(f"note: {terminal_text(note)}")
    for what, why in report.damaged.items():
        click.echo(f"damaged: {'step ' + str(what) if isinstance(what, int) else what}: {terminal_text(why)}")
    unverified = f"; {len(report.unverified)} without a recorded sha256 (checked by page checksums and schema)" \
        if report.unverified else ""
    if report.ok:
        click.echo(f"ok: {len(report.whole)} steps whole ({format_steps(report.whole)}){unverified}")
        return
    click.echo(f"{len(report.damaged)} damaged, {len(report.whole)} steps whole{unverified}", err=True)
    raise SystemExit(1)
