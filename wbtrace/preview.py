"""The preview of a step that the sinks log beside its file: which responses, and their plain columns.

W&B shows it as ``trace/preview`` (with an HTML token column), MLflow as ``entropy_trace/preview/*.json``
(with decoded text); both start from `preview_columns`, so the two show the same rows and numbers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from wbtrace.stats import response_entropy

# Per-response columns a preview carries when the step has them.
ROW_COLUMNS = ("step", "sample_id", "group_id", "reward", "advantage", "correct", "response_length")


def preview_sample(table: pa.Table, n_rows: int) -> pa.Table:
    """At most ``n_rows`` responses spread evenly over the step, so every group has a chance to appear."""
    if table.num_rows == 0 or n_rows <= 0:
        return table.slice(0, 0)
    idx = np.unique(np.linspace(0, table.num_rows - 1, min(n_rows, table.num_rows)).astype(int))
    return table.take(pa.array(idx))


def preview_columns(sub: pa.Table) -> dict[str, list[Any]]:
    """The sample's per-response columns (those present) plus ``entropy_mean`` and ``entropy_max``."""
    cols = {name: sub.column(name).to_pylist() for name in ROW_COLUMNS if name in sub.column_names}
    summary = response_entropy(sub)
    for key in ("entropy_mean", "entropy_max"):
        cols[key] = [None if np.isnan(v) else float(v) for v in summary[key]]
    return cols
