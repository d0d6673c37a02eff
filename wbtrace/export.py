"""Flatten step tables for offline analysis: one row per token (or per response) as CSV, Parquet or JSONL.

Token rows are built with Arrow kernels (``list_flatten`` + ``take`` by parent row) and filtered
with Polars' SQL expressions, so ``--where "entropy > 2 AND position < 100"`` needs no parser of
ours. Steps stream one at a time: memory holds one step, whatever the run's length.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wbtrace.errors import BadInputError
from wbtrace.store import TraceStore, atomic_output
from wbtrace.vocab import Vocab

FORMATS = ("csv", "parquet", "jsonl")
LEVELS = ("token", "response")
TOKEN_FIRST = ("step", "sample_id", "group_id", "position", "token_id", "token", "entropy", "logprob",
               "reward", "advantage")
ROW_SCALARS = ("prompt_index", "correct", "score", "kept", "truncated", "response_length")


# Token rows are built and written this many tokens at a time: a 2M-token step then reuses the same
# few MB of buffers instead of faulting in ~100 MB of fresh pages for one table (measured 1.2-1.5x).
BATCH_TOKENS = 1 << 18


def response_batches(table: pa.Table, max_tokens: int | None = None) -> Iterator[pa.Table]:
    """Consecutive slices of whole responses, each of at most ``max_tokens`` tokens (default
    `BATCH_TOKENS`) or one response."""
    max_tokens = max_tokens or BATCH_TOKENS
    if table.num_rows == 0:
        yield table  # an empty step still gives a CSV its header
        return
    lengths = pc.list_value_length(table.column("entropy")).fill_null(0).to_numpy(zero_copy_only=False)
    ends = np.cumsum(lengths)
    start = 0
    while start < table.num_rows:
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + max_tokens, side="right")))
        yield table.slice(start, stop - start)
        start = stop


def token_rows(table: pa.Table, vocab: Vocab, vocab_texts: pa.Array | None = None) -> pa.Table:
    """One row per token: ``step, sample_id, group_id, position, token_id, token, entropy, logprob,
    reward, advantage``, then other per-response columns and extra per-token lists (``ratio`` ...)."""
    ent = table.column("entropy").combine_chunks()
    parents = pc.list_parent_indices(ent)
    lengths = pc.list_value_length(ent).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    ids = pc.list_flatten(table.column("token_ids").combine_chunks())
    cols: dict[str, Any] = {}
    for name in table.column_names:
        typ = table.schema.field(name).type
        if pa.types.is_list(typ) or pa.types.is_large_list(typ):
            if name not in ("token_ids", "prompt_token_ids"):
                flat = pc.list_flatten(table.column(name).combine_chunks())
                cols[name] = flat.cast(pa.float32()) if pa.types.is_float16(flat.type) else flat
        elif name not in ("prompt_text", "response_text"):
            cols[name] = pc.take(table.column(name), parents)
    cols["position"] = pa.array((np.arange(len(ids)) - starts).astype(np.int32))
    cols["token_id"] = ids
    cols["token"] = vocab.arrow_texts(ids, vocab_texts)
    order = [c for c in TOKEN_FIRST if c in cols] + [c for c in cols if c not in TOKEN_FIRST]
    return pa.table({c: cols[c] for c in order})


def response_rows(table: pa.Table, vocab: Vocab) -> pa.Table:
    """One row per response: its per-response columns (``prompt_text`` included), entropy mean/max, tokens
    above 0.672, response text."""
    from wbtrace.stats import response_entropy

    keep = [c for c in table.column_names if not pa.types.is_list(table.schema.field(c).type)]
    out = {c: table.column(c) for c in keep}
    summary = response_entropy(table)
    out["entropy_mean"] = pa.array(summary["entropy_mean"].astype(np.float32))
    out["entropy_max"] = pa.array(summary["entropy_max"].astype(np.float32))
    out["n_above_threshold"] = pa.array(summary["n_above"].astype(np.int32))
    if "response_text" not in out:
        out["response_text"] = pa.array([vocab.decode(ids) for ids in table.column("token_ids").to_pylist()])
    return pa.table(out)


def filter_rows(table: pa.Table, where: str | None) -> pa.Table:
    """Rows of ``table`` where the SQL expression ``where`` holds (Polars' SQL dialect)."""
    if not where:
        return table
    import polars as pl

    try:
        return pl.from_arrow(table).filter(pl.sql_expr(where)).to_arrow()
    except pl.exceptions.PolarsError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "valid columns" not in first:
            first += f" (columns: {', '.join(table.column_names)})"
        raise BadInputError(f"--where {where!r}: {first}") from None


def guard_formulas(table: pa.Table) -> pa.Table:
    """Text cells a spreadsheet would run as formulas (``=HYPERLINK(...)``, ``@SUM``) get a leading ``'``.

    The rule is `wbtrace.textsafe.csv_cell`'s, applied per column with Arrow; the token ``-`` and plain
    numbers stay as they are. Only CSV gets this: Parquet and JSONL keep the exact text.
    """
    from wbtrace.textsafe import CSV_FORMULA_START, CSV_SAFE

    for i, field in enumerate(table.schema):
        if not (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
            continue
        col = table.column(i)
        risky = pc.and_(pc.match_substring_regex(col, CSV_FORMULA_START),
                        pc.invert(pc.match_substring_regex(col, CSV_SAFE))).fill_null(False)
        if pc.any(risky).as_py():
            table = table.set_column(i, field.name, pc.if_else(risky, pc.binary_join_element_wise("'", col, ""), col))
    return table


class _TerminalSafe:
    """stdout when it is a terminal: trace text could carry escape sequences (retitle, clear, OSC 52),
    so controls are shown as visible escapes there; a pipe or file gets the exact bytes."""

    def __init__(self, out: IO[bytes]) -> None:
        import codecs

        self.out = out
        self._decode = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes) -> int:
        from wbtrace.textsafe import terminal_text

        self.out.write(terminal_text(self._decode.decode(bytes(data)), keep_newlines=True).encode("utf-8"))
        return len(data)

    def flush(self) -> None:
        self.out.flush()


class _Sink:
    """Appends tables to one output in a format; Parquet keeps the first table's schema."""

    def __init__(self, fmt: str, out: IO[bytes], path: str) -> None:
        self.fmt, self.out, self.path = fmt, out, path
        self.rows = 0
        self._header = False
        self._pq: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        import polars as pl

        if self.fmt == "parquet":
            if self._pq is None:
                self._pq = pq.ParquetWriter(self.out, table.schema, compression="zstd")
            elif table.schema != self._pq.schema:
                table = self._conform(table)
            self._pq.write_table(table)
        elif self.fmt == "csv":
            pl.from_arrow(guard_formulas(table)).write_csv(self.out, include_header=not self._header)
            self._header = True
        else:
            pl.from_arrow(table).write_ndjson(self.out)
        self.rows += table.num_rows

    def _conform(self, table: pa.Table) -> pa.Table:
        want = self._pq.schema
        try:
            return table.select(want.names).cast(want)
        except (KeyError, pa.ArrowInvalid, ValueError):
            raise BadInputError(f"{self.path}: steps have different columns and cannot share one Parquet file:\n"
                                f"first: {want}\nthis: {table.schema}\nexport them separately") from None

    def close(self) -> None:
        if self._pq is not None:
            self._pq.close()


@contextmanager
def _open_output(path: str, fmt: str) -> Iterator[IO[bytes]]:
    if path == "-":
        if fmt == "parquet":
            raise BadInputError("--format parquet needs -o FILE (Parquet cannot stream to stdout)")
        yield _TerminalSafe(sys.stdout.buffer) if sys.stdout.isatty() else sys.stdout.buffer
        return
    if not path.strip():
        raise BadInputError("-o: empty file name (use -o - for stdout)")
    with atomic_output(path, parents=False) as tmp, open(tmp, "wb") as f:  # a failed export leaves no half file
        yield f


def export_steps(store: TraceStore, steps: Iterable[int], out: str = "-", fmt: str = "csv", level: str = "token",
                 where: str | None = None, progress: Any = None) -> int:
    """Export the given steps to ``out`` (a path or ``-`` for stdout); returns the number of rows written.

    ``progress`` is called with each finished step (the CLI passes a rich progress bar's advance).
    """
    if fmt not in FORMATS or level not in LEVELS:
        raise BadInputError(f"format must be one of {FORMATS} and level one of {LEVELS}")
    vocab = store.vocab
    with _open_output(out, fmt) as f:
        sink = _Sink(fmt, f, out)
        try:
            for step, table in store.iter_steps(steps):
                if level == "token":
                    for batch in response_batches(table):
                        sink.write(filter_rows(token_rows(batch, vocab), where))
                else:
                    sink.write(filter_rows(response_rows(table, vocab), where))
                if progress is not None:
                    progress(step)
        finally:
            sink.close()
    return sink.rows
