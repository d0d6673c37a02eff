"""Polars frames over a trace's step files: the one place the analyses read data and filter responses.

Every analysis starts from `responses` (one row per response) or `tokens` (one row per token, the list
columns exploded together, with the position in the response and its relative position). Both are lazy
scans of the step Parquet files, so an analysis is one Polars query, not a Python loop over rows.
`Where` holds the response filters shared by every command (kept / filtered, correct / incorrect); a
missing ``kept`` or ``correct`` counts as false, as in `wbtrace.stats`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wbtrace.errors import BadInputError

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from wbtrace.store import TraceStore

TOKEN_LISTS = ("token_ids", "entropy", "logprob", "ratio", "clipped", "high_entropy")


@dataclass(frozen=True)
class Where:
    """Response filters. ``kept=True``: only responses trained on; ``False``: only those dynamic sampling
    filtered out; ``None``: both. ``correct`` likewise for verified-correct responses."""

    kept: bool | None = None
    correct: bool | None = None

    def expr(self, schema: Sequence[str]) -> pl.Expr:
        import polars as pl

        out = pl.lit(True)
        for name, want in (("kept", self.kept), ("correct", self.correct)):
            if want is None:
                continue
            if name not in schema:
                raise BadInputError(f"the trace has no {name!r} column: --{'kept' if name == 'kept' else 'correct'}"
                                    " filters need it")
            col = pl.col(name).fill_null(False)
            out = out & (col if want else ~col)
        return out

    def label(self) -> str:
        parts = [] if self.kept is None else ["kept" if self.kept else "filtered"]
        parts += [] if self.correct is None else ["correct" if self.correct else "incorrect"]
        return ", ".join(parts) or "all responses"


ALL = Where()  # every response, kept or filtered, correct or not


def chosen_steps(store: TraceStore | pa.Table, steps: Iterable[int] | None = None) -> list[int]:
    """``steps`` as a list, or every step of ``store`` (a trace, or one step table already in memory)."""
    if steps is not None:
        return list(steps)
    if not _is_table(store):
        return list(store.steps)
    return sorted(set(store.column("step").to_pylist())) if store.num_rows else []


def _is_table(store: object) -> bool:
    import pyarrow as pa

    return isinstance(store, pa.Table)


def scan(store: TraceStore | pa.Table, steps: Iterable[int] | None = None) -> pl.LazyFrame:
    """A lazy scan of the chosen committed step files (all by default), columns missing in some filled with
    nulls. ``store`` may also be a step table in memory (the W&B sink analyses the step it is logging)."""
    import polars as pl

    if _is_table(store):
        lf = pl.from_arrow(store).lazy()
        return lf if steps is None else lf.filter(pl.col("step").is_in(list(steps)))
    chosen = chosen_steps(store, steps)
    paths = [str(store.step_path(s)) for s in chosen]
    _check_footers(paths)
    if not paths:
        return pl.LazyFrame({"step": pl.Series([], dtype=pl.Int32)})
    return pl.scan_parquet(paths, missing_columns="insert", extra_columns="ignore")


def _check_footers(paths: list[str]) -> None:
    """Column types from each file's footer (no data read): a file with, say, string entropy is one clear
    `TraceFormatError` here instead of a Polars cast error deep inside a query."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wbtrace.errors import TraceFormatError
    from wbtrace.schema import check_schema

    for path in paths:
        try:
            schema = pq.read_schema(path)
        except (pa.ArrowException, OSError) as e:
            raise TraceFormatError(f"{path}: corrupt or truncated Parquet file ({e})") from None
        check_schema(schema, path)


def responses(store: TraceStore, steps: Iterable[int] | None = None, where: Where = ALL,
              columns: Sequence[str] | None = None) -> pl.LazyFrame:
    """One row per response of the chosen steps that pass ``where``; ``columns`` selects (default all)."""
    lf = scan(store, steps)
    names = lf.collect_schema().names()
    lf = lf.filter(where.expr(names))
    if columns is not None:
        require(names, columns)
        lf = lf.select(list(columns))
    return lf


def tokens(store: TraceStore | pa.Table, steps: Iterable[int] | None = None, where: Where = ALL,
           token_columns: Sequence[str] = ("token_ids", "entropy"),
           response_columns: Sequence[str] = ("step", "sample_id"), positions: bool = False) -> pl.LazyFrame:
    """One row per token: ``response_columns`` and ``token_columns`` (exploded together; ``token_ids``
    becomes ``token_id``); with ``positions`` also ``pos`` (0-based), ``length`` and ``rel_pos = pos / length``
    in [0, 1) (they cost a third more: only the analyses that need them ask).

    Float token columns come out as float32 (float16 sums lose digits).
    """
    import polars as pl

    lf = responses(store, steps, where)
    names = lf.collect_schema().names()
    require(names, [*response_columns, *token_columns])
    lists = list(token_columns)
    lf = lf.select(*response_columns, *lists)
    if positions:
        n = pl.col(lists[0]).list.len()
        lf = lf.with_columns(length=n.cast(pl.Int32), pos=pl.int_ranges(0, n, dtype=pl.Int32))
        lists = ["pos", *lists]
    lf = lf.explode(lists).filter(pl.col(lists[0]).is_not_null())  # polars < 2 made an empty list one null row
    casts = {c: pl.col(c).cast(pl.Float32) for c in lists if c in ("entropy", "logprob", "ratio")}
    if positions:
        casts["rel_pos"] = pl.col("pos") / pl.col("length")
    lf = lf.with_columns(**casts)
    return lf.rename({"token_ids": "token_id"}) if "token_ids" in lists else lf


def column_names(store: TraceStore, steps: Iterable[int] | None = None) -> list[str]:
    return scan(store, steps).collect_schema().names()


def has_columns(store: TraceStore, steps: Iterable[int] | None, names: Sequence[str]) -> bool:
    have = column_names(store, steps)
    return all(n in have for n in names)


def require(have: Sequence[str], names: Iterable[str], purpose: str = "") -> None:
    """`BadInputError` naming the columns of ``names`` missing from ``have`` (and what needs them)."""
    missing = [n for n in names if n not in have]
    if missing:
        raise BadInputError(f"the trace has no {', '.join(repr(m) for m in missing)} column"
                            f"{'s' if len(missing) > 1 else ''}{': ' + purpose if purpose else ''}")


def steps_frame(steps: Iterable[int]) -> pl.DataFrame:
    """The chosen steps as a one-column frame, so per-step results keep steps that have no rows (empty steps)."""
    import polars as pl

    return pl.DataFrame({"step": sorted(steps)}, schema={"step": pl.Int32})


def with_text(df: pl.DataFrame, store: TraceStore, id_column: str = "token_id") -> pl.DataFrame:
    """``df`` with a ``text`` column: the vocabulary's display text of ``id_column`` (raw: escape to show)."""
    import polars as pl

    if _is_table(store):
        return df.with_columns(text=pl.lit(None, dtype=pl.String))  # a bare step table has no vocabulary
    texts = store.vocab.texts_for(df[id_column].to_numpy()) if df.height else []
    return df.with_columns(text=pl.Series(list(texts), dtype=pl.String))


def filter_table(table: pa.Table, where: Where) -> pa.Table:
    """The rows of one step table (pyarrow) that pass ``where``: for callers that already hold a step."""
    import pyarrow.compute as pc

    mask = None
    for name, want in (("kept", where.kept), ("correct", where.correct)):
        if want is None:
            continue
        require(table.column_names, [name])
        col = pc.fill_null(table.column(name), False)
        m = col if want else pc.invert(col)
        mask = m if mask is None else pc.and_(mask, m)
    return table if mask is None else table.filter(mask)
