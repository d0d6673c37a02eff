"""Per-step entropy statistics people plot (DAPO paper; "Beyond the 80/20 Rule", arXiv 2506.01939).

`step_stats` is the one definition of the per-step numbers: the writer puts it in the manifest, the
W&B and MLflow sinks log it as metrics, ``wbtrace stats`` prints it. All statistics are over every
response of the step, kept or filtered by dynamic sampling; ``n_kept`` says how many were trained on.
Entropy is in nats at the rollout temperature.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DEFAULT_THRESHOLD = 0.672  # 80th percentile of token entropy in arXiv 2506.01939
PERCENTILES = (50, 80, 90, 99)


def token_arrays(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat per-token ``(entropy float32, row index, position in response)`` for a step table."""
    col = table.column("entropy").combine_chunks()
    ent = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.cumsum(lengths) - lengths
    pos = np.arange(len(ent)) - np.repeat(starts, lengths)
    return ent, rows, pos


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if x.size else None


def _column(table: pa.Table, name: str) -> np.ndarray | None:
    if name not in table.column_names:
        return None
    col = table.column(name)
    if col.null_count == len(col):
        return None
    if col.null_count:  # a missing value counts as not kept / not correct / NaN reward
        col = pc.fill_null(col, False if pa.types.is_boolean(col.type) else float("nan"))
    return col.to_numpy(zero_copy_only=False)


def step_stats(table: pa.Table, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Scalar statistics of one step: the manifest line and the metrics logged per step.

    Keys: ``n_responses, n_tokens, n_kept, entropy_mean, entropy_p50/p80/p90/p99, entropy_max,
    share_above, threshold, response_length_mean, reward_mean, accuracy, entropy_mean_correct,
    entropy_mean_incorrect`` (the last four only when the step has rewards / correctness).
    """
    ent, rows, _ = token_arrays(table)
    lengths = table.column("response_length").to_numpy(zero_copy_only=False) if "response_length" in \
        table.column_names else np.bincount(rows, minlength=table.num_rows)
    out: dict[str, Any] = {"n_responses": table.num_rows, "n_tokens": int(ent.size)}
    kept = _column(table, "kept")
    out["n_kept"] = int(kept.sum()) if kept is not None else table.num_rows
    if ent.size:
        qs = np.percentile(ent, PERCENTILES)
        out["entropy_mean"] = float(ent.mean(dtype=np.float64))
        out.update({f"entropy_p{p}": float(q) for p, q in zip(PERCENTILES, qs)})
        out["entropy_max"] = float(ent.max())
        out["share_above"] = float(np.count_nonzero(ent > threshold) / ent.size)
    out["threshold"] = threshold
    out["response_length_mean"] = float(np.mean(lengths)) if len(lengths) else 0.0
    reward = _column(table, "reward")
    if reward is not None:
        reward = reward.astype(np.float64)
        finite = np.isfinite(reward)
        out["reward_mean"] = float(reward[finite].mean()) if finite.any() else None  # JSON has no NaN
    correct = _column(table, "correct")
    if correct is not None:
        correct = correct.astype(bool)
        out["accuracy"] = float(correct.mean())
        tok_correct = correct[rows]
        out["entropy_mean_correct"] = _mean(ent[tok_correct])
        out["entropy_mean_incorrect"] = _mean(ent[~tok_correct])
    return out


def response_entropy(table: pa.Table, threshold: float = DEFAULT_THRESHOLD) -> dict[str, np.ndarray]:
    """Per response: ``entropy_mean``, ``entropy_max`` (NaN for an empty response) and ``n_above``
    (tokens with entropy above ``threshold``). The one definition the export, viewer and previews use."""
    ent, rows, _ = token_arrays(table)
    n = table.num_rows
    counts = np.bincount(rows, minlength=n)
    mean = np.full(n, np.nan)
    mx = np.full(n, np.nan, dtype=np.float32)
    nonempty = counts > 0
    if ent.size:
        starts = (np.cumsum(counts) - counts)[nonempty]
        mean[nonempty] = np.add.reduceat(ent.astype(np.float64), starts) / counts[nonempty]
        mx[nonempty] = np.maximum.reduceat(ent, starts)
    n_above = np.bincount(rows, weights=ent > threshold, minlength=n).astype(np.int64)
    return {"entropy_mean": mean, "entropy_max": mx, "n_above": n_above}


def position_profile(table: pa.Table, bins: int = 10) -> list[float | None]:
    """Mean entropy by relative position in the response (deciles by default: 0-10%, ..., 90-100%)."""
    ent, rows, pos = token_arrays(table)
    if not ent.size:
        return [None] * bins
    lengths = np.bincount(rows, minlength=table.num_rows)
    rel = pos / np.maximum(lengths[rows], 1)
    b = np.minimum((rel * bins).astype(np.int64), bins - 1)
    sums = np.bincount(b, weights=ent, minlength=bins)
    counts = np.bincount(b, minlength=bins)
    return [float(s / c) if c else None for s, c in zip(sums, counts)]


def forking_tokens(table: pa.Table, threshold: float = DEFAULT_THRESHOLD, top: int = 10) -> list[dict[str, Any]]:
    """The most frequent tokens among those above ``threshold`` ("forking tokens"), with their mean entropy."""
    ent, _, _ = token_arrays(table)
    ids = pc.list_flatten(table.column("token_ids").combine_chunks()).to_numpy(zero_copy_only=False)
    high = ent > threshold
    if not high.any():
        return []
    uniq, inv, counts = np.unique(ids[high], return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=ent[high])
    order = np.argsort(-counts, kind="stable")[:top]
    return [{"token_id": int(uniq[i]), "count": int(counts[i]), "entropy_mean": float(sums[i] / counts[i])}
            for i in order]


def histogram(table: pa.Table, bins: int = 40, max_entropy: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Counts of token entropy in ``bins`` equal bins from 0 to ``max_entropy`` (default: the step's max)."""
    ent, _, _ = token_arrays(table)
    hi = max_entropy if max_entropy is not None else (float(ent.max()) if ent.size else 1.0)
    return np.histogram(ent, bins=bins, range=(0.0, max(hi, 1e-6)))
