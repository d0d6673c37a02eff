"""Prompt groups (the GRPO group: responses sharing a ``group_id``) and the DAPO group shares.

Per group at a step: its rewards, whether they have zero spread (all equal: no learning signal, what
DAPO's dynamic sampling filters), all-correct / all-wrong, kept (every response kept), per-response mean
and max entropy, and ``pass@k`` with the unbiased estimator ``1 - C(n - c, k) / C(n, k)`` (c correct of
n; ``k`` defaults to the group size, where it is "any correct").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from wbtrace.analysis.frames import ALL, Where, chosen_steps, has_columns, responses, steps_frame
from wbtrace.errors import BadInputError

if TYPE_CHECKING:
    import polars as pl

    from wbtrace.store import TraceStore


def pass_at_k(n: np.ndarray, c: np.ndarray, k: int | np.ndarray) -> np.ndarray:
    """Unbiased pass@k per group, vectorised: ``1 - prod_{i<k} (n - c - i) / (n - i)``; NaN where k > n."""
    n, c = np.asarray(n, np.float64), np.asarray(c, np.float64)
    k = np.broadcast_to(np.asarray(k, np.int64), n.shape)
    kmax = int(k.max()) if k.size else 0
    i = np.arange(kmax)[None, :]
    factors = np.where(i < k[:, None], np.clip(n[:, None] - c[:, None] - i, 0, None) / np.maximum(n[:, None] - i, 1), 1)
    out = 1.0 - factors.prod(axis=1)
    return np.where(k <= n, out, np.nan)


def _group_frame(store: TraceStore, steps: list[int], where: Where, entropy: bool = True) -> pl.LazyFrame:
    import polars as pl

    if not has_columns(store, steps, ["group_id"]):
        raise BadInputError("the trace has no group_id column: groups need it")
    lf = responses(store, steps, where)
    names = lf.collect_schema().names()
    opt = {c: (pl.col(c) if c in names else pl.lit(None)) for c in ("reward", "correct", "kept")}
    ent = pl.col("entropy").cast(pl.List(pl.Float32))
    lf = lf.with_columns(
        reward=opt["reward"].cast(pl.Float32),
        correct=opt["correct"].cast(pl.Boolean).fill_null(False),
        kept=opt["kept"].cast(pl.Boolean).fill_null(False),
        # the shares need no token data: reading the entropy lists would cost most of the query
        h_mean=ent.list.mean().cast(pl.Float32) if entropy else pl.lit(None, pl.Float32),
        h_max=ent.list.max() if entropy else pl.lit(None, pl.Float32),
    )
    return lf.group_by("step", "group_id").agg(
        n=pl.len(),
        sample_ids=pl.col("sample_id").sort(),
        rewards=pl.col("reward").sort_by("sample_id"),
        reward_mean=pl.col("reward").mean(),
        reward_std=pl.col("reward").std(ddof=0),
        n_correct=pl.col("correct").sum(),
        kept=pl.col("kept").all(),
        entropy_mean=pl.col("h_mean").sort_by("sample_id"),
        entropy_max=pl.col("h_max").sort_by("sample_id"),
        has_reward=pl.col("reward").is_not_null().all(),
    ).with_columns(
        zero_spread=pl.when(pl.col("has_reward")).then(pl.col("reward_std") == 0),
        all_correct=pl.col("n_correct") == pl.col("n"),
        all_wrong=pl.col("n_correct") == 0,
    ).drop("has_reward")


def groups(store: TraceStore, step: int, k: int | None = None, where: Where = ALL) -> pl.DataFrame:
    """One row per group at ``step``: ``group_id, n, sample_ids, rewards, reward_mean, reward_std, zero_spread,
    n_correct, all_correct, all_wrong, kept, entropy_mean, entropy_max`` (lists per response), ``pass_at_k``."""
    import polars as pl

    df = _group_frame(store, [step], where).sort("group_id").collect()
    kk = df["n"].to_numpy() if k is None else k
    pk = pass_at_k(df["n"].to_numpy(), df["n_correct"].to_numpy(), kk) if df.height else np.zeros(0)
    return df.with_columns(pass_at_k=pl.Series(pk, dtype=pl.Float64), k=pl.Series(
        np.broadcast_to(kk, (df.height,)).astype(np.int64) if df.height else [], dtype=pl.Int64)).drop("step")


def group_shares(store: TraceStore, steps: Iterable[int] | None = None, where: Where = ALL) -> pl.DataFrame:
    """Per step: ``n_groups, n_kept_groups, share_all_correct, share_all_wrong, share_zero_spread`` (DAPO)."""
    import polars as pl

    chosen = chosen_steps(store, steps)
    per = _group_frame(store, chosen, where, entropy=False).group_by("step").agg(
        n_groups=pl.len(),
        n_kept_groups=pl.col("kept").sum(),
        share_all_correct=pl.col("all_correct").mean(),
        share_all_wrong=pl.col("all_wrong").mean(),
        share_zero_spread=pl.col("zero_spread").mean(),
    ).collect()
    return steps_frame(chosen).join(per, on="step", how="left").with_columns(
        pl.col("n_groups", "n_kept_groups").fill_null(0)).sort("step")
