"""Covariance of log-prob and advantage ("The Entropy Mechanism of RL for Reasoning LMs", arXiv 2505.22617).

Per token, the centred product that verl's Clip-Cov and KL-Cov compute (``compute_policy_loss_clip_cov``,
``compute_policy_loss_kl_cov`` in ``verl/trainer/ppo/core_algos.py``)::

    cov_i = (A_i - mean(A)) * (log p_i - mean(log p))

with both means over the tokens of the batch (verl: the response-mask tokens of the loss call). Here the
batch is a step's selected tokens, by default those of kept responses (what the update trained on);
``log p`` is the trace's ``logprob`` (old policy: equal to verl's ``log_prob`` in the first on-policy
mini-batch, where the ratio is 1 and Clip-Cov clips nothing "by origin"). The step mean of ``cov_i`` is
the covariance the paper shows tracking the next step's entropy change (dH ~ -eta * Cov).

Clip-Cov's candidates are the tokens with ``clip_cov_lb < cov_i < clip_cov_ub`` (defaults 1 and 5); it
detaches ``max(int(ratio * n), 1)`` of them chosen at random (ratio 2e-4). KL-Cov penalises the
``max(1, int(n * ratio))`` tokens of largest ``cov_i``. The fit ``R = -a * exp(H) + b`` is the paper's
reward-entropy law, here over the chosen steps' mean entropy and mean reward.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from wbtrace.analysis.frames import Where, chosen_steps, has_columns, responses, steps_frame, tokens

if TYPE_CHECKING:
    import polars as pl

    from wbtrace.store import TraceStore

CLIP_COV_RATIO = 2e-4  # verl PolicyLossConfig defaults
CLIP_COV_LB = 1.0
CLIP_COV_UB = 5.0
KL_COV_RATIO = 2e-4
KEPT = Where(kept=True)


def _centred(store: TraceStore, steps: Iterable[int] | None, where: Where, positions: bool = False) -> pl.LazyFrame:
    """The selected tokens with ``cov = (A - mean A) (log p - mean log p)``, means per step."""
    import polars as pl

    lf = tokens(store, steps, where, ("token_ids", "entropy", "logprob"), ("step", "sample_id", "advantage"),
                positions=positions)
    lf = lf.filter(pl.col("logprob").is_not_null() & pl.col("advantage").is_not_null())
    adv, lp = pl.col("advantage").cast(pl.Float64), pl.col("logprob").cast(pl.Float64)
    return lf.with_columns(cov=(adv - adv.mean().over("step")) * (lp - lp.mean().over("step")))


def _at_least_one(n: pl.Expr, ratio: float) -> pl.Expr:
    """verl's ``max(int(ratio * n), 1)``."""
    import polars as pl

    return pl.max_horizontal((n * ratio).floor().cast(pl.Int64), pl.lit(1))


def token_cov(store: TraceStore, steps: Iterable[int] | None = None, where: Where = KEPT, *,
              clip_cov_ratio: float = CLIP_COV_RATIO, clip_cov_lb: float = CLIP_COV_LB,
              clip_cov_ub: float = CLIP_COV_UB, kl_cov_ratio: float = KL_COV_RATIO,
              positions: bool = False) -> pl.LazyFrame:
    """One row per selected token: ``step, sample_id, token_id, entropy, logprob, advantage, cov`` (and ``pos``
    with ``positions``), ``clip_cov_candidate`` (inside Clip-Cov's bounds) and ``kl_cov`` (among KL-Cov's
    top-k of its step: a sort per step, so only this per-token view pays for it)."""
    import polars as pl

    n = pl.len().over("step")
    return _centred(store, steps, where, positions).with_columns(
        clip_cov_candidate=(pl.col("cov") > clip_cov_lb) & (pl.col("cov") < clip_cov_ub),
        kl_cov=pl.col("cov").rank("ordinal", descending=True).over("step") <= _at_least_one(n, kl_cov_ratio),
        clip_cov_n=_at_least_one(n, clip_cov_ratio),
    )


def cov_by_step(store: TraceStore, steps: Iterable[int] | None = None, where: Where = KEPT, *,
                clip_cov_ratio: float = CLIP_COV_RATIO, clip_cov_lb: float = CLIP_COV_LB,
                clip_cov_ub: float = CLIP_COV_UB, kl_cov_ratio: float = KL_COV_RATIO) -> pl.DataFrame:
    """Per step: ``n_tokens, cov_mean, entropy_mean, reward_mean``, the next chosen step and the observed
    entropy change to it (``entropy_change = H(next) - H(step)``), Clip-Cov's ``clip_cov_candidates`` and
    ``clip_cov_clipped`` (how many it would detach), and ``kl_cov_k``. Steps without tokens keep a row of nulls."""
    import polars as pl

    chosen = chosen_steps(store, steps)
    cand = ((pl.col("cov") > clip_cov_lb) & (pl.col("cov") < clip_cov_ub)).sum()
    per = _centred(store, chosen, where).group_by("step").agg(
        n_tokens=pl.len(),
        cov_mean=pl.col("cov").mean(),
        entropy_mean=pl.col("entropy").mean(),
        clip_cov_candidates=cand,
        clip_cov_clipped=pl.min_horizontal(cand, _at_least_one(pl.len(), clip_cov_ratio)),
        kl_cov_k=_at_least_one(pl.len(), kl_cov_ratio),
    ).collect()
    df = steps_frame(chosen).join(per, on="step", how="left")
    if has_columns(store, chosen, ["reward"]):
        rewards = responses(store, chosen, where).group_by("step").agg(reward_mean=pl.col("reward").mean())
        df = df.join(rewards.collect(), on="step", how="left")
    df = df.sort("step")
    return df.with_columns(
        next_step=pl.col("step").shift(-1),
        entropy_change=pl.col("entropy_mean").shift(-1) - pl.col("entropy_mean"),
    )


def entropy_reward_fit(per_step: pl.DataFrame, reward: str = "reward_mean") -> dict[str, Any]:
    """Least-squares fit of ``R = -a * exp(H) + b`` over steps (H = ``entropy_mean``): a, b, rmse, r2, n."""
    import numpy as np

    if reward not in per_step.columns:
        return {"a": None, "b": None, "rmse": None, "r2": None, "n": 0}
    df = per_step.select("entropy_mean", reward).drop_nulls().drop_nans()
    h, r = df["entropy_mean"].to_numpy().astype(np.float64), df[reward].to_numpy().astype(np.float64)
    if len(h) < 2 or np.ptp(h) == 0:
        return {"a": None, "b": None, "rmse": None, "r2": None, "n": int(len(h))}
    x = np.exp(h)
    slope, b = np.polyfit(x, r, 1)
    resid = r - (slope * x + b)
    ss_tot = float(((r - r.mean()) ** 2).sum())
    return {"a": float(-slope), "b": float(b), "rmse": float(np.sqrt((resid ** 2).mean())),
            "r2": 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else None, "n": int(len(h))}


def top_cov_tokens(store: TraceStore, step: int, where: Where = KEPT, top: int = 20, **ratios: float
                   ) -> pl.DataFrame:
    """The ``top`` tokens of largest covariance at ``step``, with their Clip-Cov / KL-Cov flags and text."""
    from wbtrace.analysis.frames import with_text

    df = token_cov(store, [step], where, positions=True, **ratios).sort("cov", descending=True).head(top).collect()
    return with_text(df, store).select("step", "sample_id", "pos", "token_id", "text", "entropy", "logprob",
                                       "advantage", "cov", "clip_cov_candidate", "kl_cov")
