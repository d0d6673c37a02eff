"""``wbtrace show``: one response in the terminal (prompt, token boundaries, marked forks), or a step's list.

On a terminal each token is coloured by its entropy, token boundaries alternate underline, and tokens
above the threshold are bold. Piped (or with ``--plain``) the same information survives without colour:
tokens are separated by ``|`` and the marked ones wrapped in ``**``. ``--values`` prints one row per
token with its numbers instead. Every trace string goes through `wbtrace.textsafe`.
"""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from wbtrace.cli.app import main
from wbtrace.cli.options import open_store, trace_dir_argument
from wbtrace.errors import BadInputError
from wbtrace.palette import entropy_hex, text_color_for
from wbtrace.stats import DEFAULT_THRESHOLD
from wbtrace.steps import StepSelection
from wbtrace.textsafe import rich_text, terminal_text
from wbtrace.vocab import Vocab

TOKEN_EXTRAS = ("logprob", "ratio", "clipped", "high_entropy")


def response_text(tokens: list[str], entropy: list[float], threshold: float, plain: bool) -> Text:
    """The response as one rich Text: coloured tokens with alternating underline, or ``|``-separated plain."""
    text = Text()
    for i, (tok, h) in enumerate(zip(tokens, entropy)):
        piece = terminal_text(tok, keep_newlines=True)
        high = h is not None and h > threshold
        if plain:
            text.append("|" + (f"**{piece}**" if high else piece))
            continue
        style = f"{text_color_for(h or 0)} on {entropy_hex(h or 0)}"
        style += " underline" if i % 2 else ""
        style += " bold" if high else ""
        text.append(piece, style=style)
    if plain and tokens:
        text.append("|")
    return text


def token_table(row: dict[str, Any], tokens: list[str], threshold: float) -> Table:
    """One row per token: position, id, escaped text, entropy and the per-token columns the trace has."""
    extras = [c for c in TOKEN_EXTRAS if row.get(c) is not None]
    t = Table(box=None, pad_edge=False)
    for c in ("pos", "id", "token", "entropy", *extras, ">thr"):
        t.add_column(c, justify="left" if c == "token" else "right")
    for i, (tid, tok, h) in enumerate(zip(row["token_ids"], tokens, row["entropy"])):
        vals = [_num(row[c][i]) for c in extras]
        t.add_row(str(i), str(tid), rich_text(repr(tok)), _num(h), *vals, "*" if h > threshold else "")
    return t


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def prompt_of(row: dict[str, Any], vocab: Vocab) -> str | None:
    if row.get("prompt_text"):
        return row["prompt_text"]
    if row.get("prompt_token_ids"):
        return vocab.decode(row["prompt_token_ids"])
    return None


def header(row: dict[str, Any], step: int) -> str:
    head = [f"step {step}", f"sample {row['sample_id']}", f"group {terminal_text(row.get('group_id'))}",
            f"{row['response_length']} tokens"]
    for key in ("reward", "correct", "advantage", "kept", "truncated"):
        if row.get(key) is not None:
            head.append(f"{key} {row[key]:.3g}" if isinstance(row[key], float) else f"{key} {row[key]}")
    return " | ".join(head)


def print_response(console: Console, row: dict[str, Any], step: int, vocab: Vocab, threshold: float,
                   values: bool, plain: bool, prompt: bool = True) -> None:
    """Header, prompt and the response of one step-table row (as a dict) on ``console``."""
    console.print(rich_text(header(row, step), style="bold"), soft_wrap=plain)
    text = prompt_of(row, vocab) if prompt else None
    if text:
        console.print(Text("prompt: ", style="bold") + rich_text(text, style="dim", keep_newlines=True),
                      soft_wrap=plain)
    tokens = [str(s) for s in vocab.texts_for(row["token_ids"])]
    if values:
        console.print(token_table(row, tokens, threshold))
        return
    console.print(Text("response: ", style="bold") if prompt else Text(), end="")
    console.print(response_text(tokens, row["entropy"], threshold, plain), soft_wrap=plain)
    if not plain:
        console.print(Text("scale: ") + Text.assemble(*((f" {h:g} ", f"{text_color_for(h)} on {entropy_hex(h)}")
                                                         for h in (0, 0.3, DEFAULT_THRESHOLD, 1, 2, 3.5, 6)))
                      + Text(f" nats; bold: above {threshold:g}; underline alternates per token"))
    else:
        console.print(f"(tokens between |; **token**: entropy above {threshold:g} nats)")


def response_list(table, step: int, threshold: float) -> Table:
    """A step's responses to pick from: id, group, reward, correct, kept, length, mean / max entropy, forks."""
    import polars as pl

    from wbtrace.cli.frames_out import frame_table
    from wbtrace.stats import response_entropy

    df = pl.from_arrow(table.drop([c for c in table.column_names if c not in (
        "sample_id", "group_id", "reward", "correct", "kept", "response_length")]))
    h = response_entropy(table, threshold)  # an empty response's NaN shows as a blank, like a null
    df = df.with_columns(mean_H=pl.Series(h["entropy_mean"]).fill_nan(None),
                         max_H=pl.Series(h["entropy_max"]).fill_nan(None), forks=pl.Series(h["n_above"]))

    return frame_table(df, f"Step {step}: {df.height} responses (wbtrace show TRACE --step {step} --sample ID)")


@main.command("show")
@trace_dir_argument
@click.option("--step", type=int, required=True, help="Step to show.")
@click.option("--sample", type=int, default=None,
              help="sample_id of the response [default: list the step's responses to pick one].")
@click.option("--list", "list_only", is_flag=True, help="List the step's responses (ids, group, reward, mean H).")
@click.option("--values", is_flag=True, help="One row per token with its entropy, log-prob, ratio, clipped.")
@click.option("--threshold", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_THRESHOLD,
              show_default=True, help="Mark tokens above this entropy (nats).")
@click.option("--plain", is_flag=True, help="No colour: | between tokens, **marked** tokens (the default when piped).")
@click.option("--no-prompt", is_flag=True, help="Leave out the prompt.")
def show_cmd(trace_dir: str, step: int, sample: int | None, list_only: bool, values: bool, threshold: float,
             plain: bool, no_prompt: bool) -> None:
    """Print one response with its prompt, each token coloured by its entropy and tokens above the
    threshold marked; or list a step's responses.

    \b
    Example:
        wbtrace show outputs/demo/entropy_trace --step 2            # list the responses
        wbtrace show outputs/demo/entropy_trace --step 2 --sample 0
        wbtrace show outputs/demo/entropy_trace --step 2 --sample 0 --values | less
    """
    from wbtrace.cli.inspect import wide_console

    store = open_store(trace_dir, StepSelection(steps=(step,)))
    table = store.read_step(step)
    console = wide_console(highlight=False)
    if sample is None or list_only:
        console.print(response_list(table, step, threshold))
        return
    ids = table.column("sample_id").to_pylist()
    if sample not in ids:
        have = f"sample ids are {min(ids)}..{max(ids)}" if ids else "it has no responses"
        raise BadInputError(f"step {step} has no sample {sample}; {have}")
    row = table.slice(ids.index(sample), 1).to_pylist()[0]
    print_response(console, row, step, store.vocab, threshold, values, plain or not console.is_terminal,
                   prompt=not no_prompt)
