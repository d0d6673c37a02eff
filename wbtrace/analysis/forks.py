"""Forking tokens ("Beyond the 80/20 Rule", arXiv 2506.01939): which tokens carry the high entropy.

A token occurrence *forks* when its entropy is above the threshold: a fixed value in nats (default
0.672, the paper's 80th percentile) or, with ``quantile``, that quantile of the step's token entropy
(the paper's "top 20% of tokens" is ``quantile=0.8``, taken per step). Per token id: ``count`` (its
occurrences among the selected responses), ``forks`` (occurrences above the threshold), ``fork_share``
(forks / count), ``entropy_mean`` (over all its occurrences) and ``fork_entropy_mean`` (over its forks).
Ranked by ``forks``; the paper's high-entropy word list is the top of it, the low-entropy list the
most frequent tokens with ``fork_share`` 0 (`low_entropy_tokens`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from wbtrace.analysis.frames import ALL, Where, tokens, with_text
from wbtrace.stats import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    import polars as pl

    from wbtrace.store import TraceStore


def _forking(store: TraceStore, steps: Iterable[int] | None, where: Where, threshold: float,
             quantile: float | None, by: Sequence[str]) -> pl.LazyFrame:
    """Token rows with ``fork`` (bool): entropy above the fixed threshold or the step's quantile."""
    import polars as pl

    cols = tuple(dict.fromkeys(("step", "sample_id", *by)))
    lf = tokens(store, steps, where, ("token_ids", "entropy"), cols)
    cut = pl.col("entropy").quantile(quantile, "linear").over("step") if quantile is not None else pl.lit(threshold)
    return lf.with_columns(fork=pl.col("entropy") > cut)


def _aggregate(lf: pl.LazyFrame, keys: list[str]) -> pl.LazyFrame:
    import polars as pl

    fork_h = pl.when(pl.col("fork")).then(pl.col("entropy")).otherwise(0.0)
    return lf.group_by(keys).agg(
        count=pl.len(),
        forks=pl.col("fork").sum(),
        entropy_mean=pl.col("entropy").mean(),
        fork_entropy_sum=fork_h.sum(),  # a sum, not filter().mean(): a filter per group costs 2x here
    ).with_columns(fork_share=pl.col("forks") / pl.col("count"),
                   fork_entropy_mean=(pl.col("fork_entropy_sum") / pl.col("forks")).cast(pl.Float32))


def forks(store: TraceStore, steps: Iterable[int] | None = None, *, threshold: float = DEFAULT_THRESHOLD,
          quantile: float | None = None, top: int = 20, min_count: int = 1, where: Where = ALL,
          by: Sequence[str] = ()) -> pl.DataFrame:
    """The top forking tokens over the chosen steps, ``top`` per combination of ``by`` columns.

    Parameters
    ----------
    by : sequence of str
        Per-response columns to split on, e.g. ``("kept",)`` or ``("correct",)``: kept vs filtered and
        correct vs incorrect lists side by side.

    Returns
    -------
    polars.DataFrame
        ``*by, token_id, text, count, forks, fork_share, entropy_mean, fork_entropy_mean``.
    """
    import polars as pl

    keys = [*by, "token_id"]
    df = (_aggregate(_forking(store, steps, where, threshold, quantile, by), keys)
          .filter((pl.col("count") >= min_count) & (pl.col("forks") > 0))
          .sort([*by, "forks", "token_id"], descending=[False] * len(by) + [True, False])
          .collect())
    df = df.group_by(list(by), maintain_order=True).head(top) if by else df.head(top)
    df = with_text(df, store)
    return df.select(*keys, "text", "count", "forks", "fork_share", "entropy_mean", "fork_entropy_mean")


def low_entropy_tokens(store: TraceStore, steps: Iterable[int] | None = None, *,
                       threshold: float = DEFAULT_THRESHOLD, quantile: float | None = None, top: int = 20,
                       where: Where = ALL) -> pl.DataFrame:
    """The most frequent tokens that never fork (the paper's low-entropy word list)."""
    import polars as pl

    df = (_aggregate(_forking(store, steps, where, threshold, quantile, ()), ["token_id"])
          .filter(pl.col("forks") == 0).sort(["count", "token_id"], descending=[True, False]).head(top).collect())
    return with_text(df, store).select("token_id", "text", "count", "entropy_mean")


def forks_trend(store: TraceStore, token_ids: Sequence[int], steps: Iterable[int] | None = None, *,
                threshold: float = DEFAULT_THRESHOLD, quantile: float | None = None,
                where: Where = ALL) -> pl.DataFrame:
    """Per step and token id of ``token_ids``: ``count, forks, fork_share`` (0 rows where a token is absent)."""
    import polars as pl

    lf = _forking(store, steps, where, threshold, quantile, ()).filter(pl.col("token_id").is_in(list(token_ids)))
    df = _aggregate(lf, ["step", "token_id"]).collect()
    return df.select("step", "token_id", "count", "forks", "fork_share").sort(["step", "token_id"])


def fork_overlap(a: pl.DataFrame, b: pl.DataFrame) -> dict[str, float | int]:
    """Overlap of two fork lists' token ids: sizes, intersection and Jaccard index."""
    sa, sb = set(a["token_id"].to_list()), set(b["token_id"].to_list())
    union = sa | sb
    return {"n_a": len(sa), "n_b": len(sb), "common": len(sa & sb),
            "jaccard": len(sa & sb) / len(union) if union else 0.0}
