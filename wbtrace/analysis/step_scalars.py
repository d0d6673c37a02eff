"""The analyses of one step as history scalars, for the W&B across-steps presets (`weave_panels`).

W&B history holds one row of scalars per step (the sink logs no growing tables), so each across-steps
analysis is reduced to numbers per step. The sink calls `step_scalars` with the step table it is logging
(no trace store: it runs in the writer's thread); keys are logged as ``trace/<key>``.

- ``cov_mean``, ``cov_entropy_mean``, ``clip_cov_candidates``: `covariance.cov_by_step` over kept tokens
  (the preset computes the entropy change to the next step in Vega);
- ``share_all_correct``, ``share_all_wrong``, ``share_zero_spread``: `groups.group_shares`;
- ``end_share``: `positions.end_share` (last 10% of responses);
- ``forks_top_share``: the share of the step's forks that the top-10 forking tokens make;
  ``forks_top_fork_share``: how often those tokens fork when they occur (their pooled fork share).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wbtrace.stats import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    import pyarrow as pa

TOP_FORKS = 10


def step_scalars(table: pa.Table, threshold: float = DEFAULT_THRESHOLD) -> dict[str, float]:
    """The keys above for one step (a key is left out when the step lacks what it needs)."""
    from wbtrace.analysis import covariance, forks, groups, positions
    from wbtrace.analysis.frames import column_names

    if not table.num_rows:
        return {}
    names = set(column_names(table))
    out: dict[str, float] = {}
    if {"logprob", "advantage"} <= names:
        c = covariance.cov_by_step(table).row(0, named=True)
        if c["n_tokens"]:
            out.update(cov_mean=c["cov_mean"], cov_entropy_mean=c["entropy_mean"],
                       clip_cov_candidates=c["clip_cov_candidates"])
    if {"group_id", "correct"} <= names:
        g = groups.group_shares(table).row(0, named=True)
        out.update({k: g[k] for k in ("share_all_correct", "share_all_wrong", "share_zero_spread")})
    e = positions.end_share(table, threshold=threshold).row(0, named=True)
    if e["end_share"] is not None:
        out["end_share"] = e["end_share"]
        all_forks = forks.forks(table, threshold=threshold, top=10**9)
        top = all_forks.head(TOP_FORKS)
        out["forks_top_share"] = top["forks"].sum() / all_forks["forks"].sum()
        out["forks_top_fork_share"] = top["forks"].sum() / top["count"].sum()
    return {k: float(v) for k, v in out.items() if v is not None}
