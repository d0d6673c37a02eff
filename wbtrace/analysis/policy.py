"""Log-prob, importance-ratio and clipping statistics of one step, where the trace holds those columns.

Over the step's tokens (after any response filter): ``logprob_mean``; ``ratio_mean/min/max`` over tokens with
a finite ratio (the trainer records NaN where no update ran, e.g. filtered responses); ``clip_frac`` (share of
those tokens the update clipped); ``high_entropy_share`` (share flagged high-entropy by the trainer's
dual-token rule). Keys whose column is missing are left out.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pyarrow as pa


def _flat(table: pa.Table, name: str) -> np.ndarray | None:
    import pyarrow as pa
    import pyarrow.compute as pc

    if name not in table.column_names:
        return None
    values = pc.list_flatten(table.column(name).combine_chunks())
    if pa.types.is_boolean(values.type):
        values = pc.fill_null(values, False)
    return values.to_numpy(zero_copy_only=False)


def policy_stats(table: pa.Table) -> dict[str, Any]:
    """The statistics above for one step table; empty dict when it has none of the columns."""
    out: dict[str, Any] = {}
    lp = _flat(table, "logprob")
    if lp is not None and lp.size:
        out["logprob_mean"] = float(np.nanmean(lp.astype(np.float64)))
    ratio = _flat(table, "ratio")
    finite = np.isfinite(ratio) if ratio is not None else None
    if ratio is not None and finite.any():
        r = ratio[finite].astype(np.float64)
        out.update(ratio_mean=float(r.mean()), ratio_min=float(r.min()), ratio_max=float(r.max()))
        clipped = _flat(table, "clipped")
        if clipped is not None and clipped.size == ratio.size:
            out["clip_frac"] = float(clipped.astype(bool)[finite].mean())
    high = _flat(table, "high_entropy")
    if high is not None and high.size:
        out["high_entropy_share"] = float(high.astype(bool).mean())
    return out
