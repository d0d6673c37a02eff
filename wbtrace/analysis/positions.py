"""Entropy by position in the response: the step x relative-position heatmap and the end-of-sequence share.

A token at 0-based position ``pos`` of a response of ``length`` tokens falls in relative bin
``min(floor(pos / length * bins), bins - 1)`` (deciles by default, as `wbtrace.stats.position_profile`).
"Decomposing the Entropy-Performance Exchange" (arXiv 2508.02260) finds high-entropy tokens gathering at
sequence ends: ``end_share`` is the share of a step's above-threshold tokens that lie in the last
``tail`` of their response (``rel_pos >= 1 - tail``); with no position effect it is about ``tail``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from wbtrace.analysis.frames import ALL, Where, chosen_steps, steps_frame, tokens
from wbtrace.stats import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    import polars as pl

    from wbtrace.store import TraceStore


def position_heatmap(store: TraceStore, steps: Iterable[int] | None = None, bins: int = 10,
                     where: Where = ALL) -> pl.DataFrame:
    """Long form ``step, bin, n_tokens, entropy_mean``: every chosen step x every bin (nulls where empty)."""
    import polars as pl

    chosen = chosen_steps(store, steps)
    lf = tokens(store, chosen, where, ("entropy",), ("step",), positions=True)
    per = lf.with_columns(bin=pl.min_horizontal((pl.col("rel_pos") * bins).floor().cast(pl.Int32),
                                                pl.lit(bins - 1, pl.Int32))) \
        .group_by("step", "bin").agg(n_tokens=pl.len(), entropy_mean=pl.col("entropy").mean()).collect()
    grid = steps_frame(chosen).join(pl.DataFrame({"bin": list(range(bins))}, schema={"bin": pl.Int32}), how="cross")
    return grid.join(per, on=["step", "bin"], how="left").with_columns(pl.col("n_tokens").fill_null(0)) \
        .sort("step", "bin")


def heatmap_matrix(long: pl.DataFrame) -> pl.DataFrame:
    """`position_heatmap`'s long form as one row per step and one column per bin (``0%``, ``10%``, ...)."""
    bins = long["bin"].max() + 1 if long.height else 0
    wide = long.pivot(on="bin", index="step", values="entropy_mean", sort_columns=True)
    return wide.rename({str(b): f"{100 * b // bins}%" for b in range(bins)})


def end_share(store: TraceStore, steps: Iterable[int] | None = None, *, threshold: float = DEFAULT_THRESHOLD,
              tail: float = 0.1, where: Where = ALL) -> pl.DataFrame:
    """Per step: ``n_tokens, n_high, n_high_tail, end_share`` (= n_high_tail / n_high) and ``tail``."""
    import polars as pl

    chosen = chosen_steps(store, steps)
    lf = tokens(store, chosen, where, ("entropy",), ("step",), positions=True)
    high = pl.col("entropy") > threshold
    per = lf.group_by("step").agg(
        n_tokens=pl.len(),
        n_high=high.sum(),
        n_high_tail=(high & (pl.col("rel_pos") >= 1 - tail)).sum(),
    ).collect()
    df = steps_frame(chosen).join(per, on="step", how="left").with_columns(
        pl.col("n_tokens", "n_high", "n_high_tail").fill_null(0))
    return df.with_columns(
        end_share=pl.when(pl.col("n_high") > 0).then(pl.col("n_high_tail") / pl.col("n_high")),
        tail=pl.lit(tail),
    ).sort("step")
