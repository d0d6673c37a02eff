"""Per-step rows for the W&B across-steps charts (`weave_panels/charts`: forks_trend, cov_entropy_change,
group_shares; position_heatmap reads the sink's existing ``trace/position`` table).

The sink calls `step_rows` with the step table it is logging (no trace store: it runs in the writer's
thread), and appends each list to an INCREMENTAL `wandb.Table` named by the key, with `TABLE_COLUMNS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from wbtrace.stats import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    import pyarrow as pa

TABLE_COLUMNS = {
    "trace/forks": ["step", "token", "token_id", "forks", "fork_share"],
    "trace/cov": ["step", "cov_mean", "entropy_mean", "n_tokens", "clip_cov_candidates"],
    "trace/groups": ["step", "share_all_correct", "share_all_wrong", "share_zero_spread", "n_groups"],
}
TOP_FORKS = 10


def step_rows(table: pa.Table, texts: np.ndarray | None = None, threshold: float = DEFAULT_THRESHOLD
              ) -> dict[str, list[list[Any]]]:
    """``{table key: rows}`` for one step; a key is left out when the step lacks its columns."""
    from wbtrace.analysis import covariance, forks, groups
    from wbtrace.analysis.frames import column_names

    step = int(table.column("step")[0].as_py()) if table.num_rows else None
    if step is None:
        return {}
    names = column_names(table)
    top = forks.forks(table, threshold=threshold, top=TOP_FORKS)
    ids = top["token_id"].to_numpy()
    label = [str(texts[i]) if texts is not None and 0 <= i < len(texts) else f"<id:{i}>" for i in ids]
    out: dict[str, list[list[Any]]] = {"trace/forks": [
        [step, t, int(i), int(f), float(s)] for t, i, f, s in zip(label, ids, top["forks"], top["fork_share"])]}
    if {"logprob", "advantage"} <= set(names):
        c = covariance.cov_by_step(table).row(0, named=True)
        if c["n_tokens"]:
            out["trace/cov"] = [[step, c["cov_mean"], c["entropy_mean"], int(c["n_tokens"]),
                                 int(c["clip_cov_candidates"])]]
    if "group_id" in names and "correct" in names:
        g = groups.group_shares(table).row(0, named=True)
        out["trace/groups"] = [[step, g["share_all_correct"], g["share_all_wrong"], g["share_zero_spread"],
                                int(g["n_groups"])]]
    return out
