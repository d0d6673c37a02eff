"""Flatten step tables for offline analysis: one row per token (or per response) as CSV, Parquet or JSONL.

Token rows are built with Arrow kernels (``list_flatten`` + ``take`` by parent row). ``--where
"entropy > 2 AND position < 100"`` is an allow-listed SQL expression (`wbtrace.where`) evaluated first,
over only the columns it names; then only the kept rows are built and joined with the vocabulary.
Steps stream one at a time: memory holds one step, whatever the run's length.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from wbtrace.errors import BadInputError
from wbtrace.store import TraceStore, atomic_output
from wbtrace.vocab import Vocab
from wbtrace.where import RowFilter

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


def _token_builders(table: pa.Table, vocab: Vocab, vocab_texts: pa.Array | None
                    ) -> dict[str, Callable[[pa.Array | None], pa.Array]]:
    """Each token-row column as a function of the token indices to keep (None: all), so a filtered
    export builds only the rows it writes (and the vocabulary join only for them)."""
    ent = table.column("entropy").combine_chunks()
    parents = pc.list_parent_indices(ent)
    offsets = ent.offsets.to_numpy()
    starts = (offsets - offsets[0]).astype(np.int64)
    ids = pc.list_flatten(table.column("token_ids").combine_chunks())

    def pick(flat: pa.Array) -> Callable[[pa.Array | None], pa.Array]:
        def build(idx: pa.Array | None) -> pa.Array:
            out = flat if idx is None else flat.take(idx)
            return out.cast(pa.float32()) if pa.types.is_float16(out.type) else out
        return build

    def per_response(name: str) -> Callable[[pa.Array | None], pa.Array]:
        return lambda idx: pc.take(table.column(name), parents if idx is None else parents.take(idx))

    def position(idx: pa.Array | None) -> pa.Array:
        at = np.arange(len(ids), dtype=np.int64) if idx is None else idx.to_numpy()
        par = parents.to_numpy() if idx is None else parents.take(idx).to_numpy()
        return pa.array((at - starts[par]).astype(np.int32))

    cols: dict[str, Callable[[pa.Array | None], pa.Array]] = {}
    for name in table.column_names:
        typ = table.schema.field(name).type
        if pa.types.is_list(typ) or pa.types.is_large_list(typ):
            if name not in ("token_ids", "prompt_token_ids"):
                cols[name] = pick(pc.list_flatten(table.column(name).combine_chunks()))
        elif name not in ("prompt_text", "response_text"):
            cols[name] = per_response(name)
    cols["position"] = position
    cols["token_id"] = pick(ids)
    cols["token"] = lambda idx: vocab.arrow_texts(ids if idx is None else ids.take(idx), vocab_texts)
    return cols


def token_rows(table: pa.Table, vocab: Vocab, vocab_texts: pa.Array | None = None,
               where: RowFilter | None = None) -> pa.Table:
    """One row per token: ``step, sample_id, group_id, position, token_id, token, entropy, logprob,
    reward, advantage``, then other per-response columns and extra per-token lists (``ratio`` ...).

    ``where`` is evaluated over the columns it names first; only the rows it keeps are built.
    """
    cols = _token_builders(table, vocab, vocab_texts)
    idx = None
    if where is not None:
        where.check_columns(cols)
        idx = pa.array(where.rows(pa.table({c: cols[c](None) for c in sorted(where.columns)})))
    order = [c for c in TOKEN_FIRST if c in cols] + [c for c in cols if c not in TOKEN_FIRST]
    return pa.table({c: cols[c](idx) for c in order})


def response_rows(table: pa.Table, vocab: Vocab, where: RowFilter | None = None) -> pa.Table:
    """One row per response: its per-response columns, entropy mean/max, tokens above 0.672, text.

    With ``where``, response texts are decoded only for the rows it keeps (unless it filters on them).
    """
    from wbtrace.stats import response_entropy

    keep = [c for c in table.column_names if not pa.types.is_list(table.schema.field(c).type)]
    out = {c: table.column(c) for c in keep}
    summary = response_entropy(table)
    out["entropy_mean"] = pa.array(summary["entropy_mean"].astype(np.float32))
    out["entropy_max"] = pa.array(summary["entropy_max"].astype(np.float32))
    out["n_above_threshold"] = pa.array(summary["n_above"].astype(np.int32))

    def texts(t: pa.Table) -> pa.Array:
        return pa.array([vocab.decode(ids) for ids in t.column("token_ids").to_pylist()], type=pa.string())

    if where is not None:
        where.check_columns([*out, *([] if "response_text" in out else ["response_text"])])
        if "response_text" in where.columns and "response_text" not in out:
            out["response_text"] = texts(table)
        rows = pa.array(where.rows(pa.table({c: out[c] for c in sorted(where.columns)})))
        out = {c: v.take(rows) for c, v in out.items()}
        table = table.take(rows)
    if "response_text" not in out:
        out["response_text"] = texts(table)
    return pa.table(out)


def filter_rows(table: pa.Table, where: str | None) -> pa.Table:
    """Rows of ``table`` where the expression ``where`` holds (`wbtrace.where.RowFilter`)."""
    if not where:
        return table
    return table.take(pa.array(RowFilter(where).rows(table)))


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
    row_filter = RowFilter(where) if where else None  # checked before any output exists
    vocab = store.vocab
    with _open_output(out, fmt) as f:
        sink = _Sink(fmt, f, out)
        try:
            for step, table in store.iter_steps(steps):
                if level == "token":
                    for batch in response_batches(table):  # bounded memory on a big step
                        sink.write(token_rows(batch, vocab, None, row_filter))
                else:
                    sink.write(response_rows(table, vocab, row_filter))
                if progress is not None:
                    progress(step)
        finally:
            sink.close()
    return sink.rows
