"""One analysis over several traces at once, in parallel on a Ray cluster (or the local Ray).

    python examples/ray_multi_trace.py traces/run-a traces/run-b traces/run-c
    RAY_ADDRESS=auto python examples/ray_multi_trace.py /shared/traces/*      # on a cluster

Each trace directory is plain Parquet (one file per step under ``steps/``), so no wbtrace code is
needed to read it at scale: ``ray.data.read_parquet`` spreads the step files over the cluster's
workers, each worker reduces its blocks to a few numbers per (run, step), and the driver combines
those. The analysis here is the per-step token-entropy mean and the share of tokens above a threshold
(the "forking tokens" of arXiv 2506.01939), recomputed from the tokens, for every run side by side.

The file list comes from each trace's manifest, which names only whole, committed files (a trace being
written has temp files in ``steps/``). On one machine DuckDB answers the same question with one query
over the same files: see `duckdb_over_runs`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wbtrace import TraceStore

THRESHOLD = 0.672


def committed_files(trace_dirs: list[str | Path]) -> dict[str, str]:
    """Step file path -> run name, for every committed step of every trace."""
    files = {}
    for d in trace_dirs:
        store = TraceStore(d)
        files.update({str(store.step_path(s)): store.run_dir.name for s in store.steps})
    return files


def partial_sums(batch: pa.Table, threshold: float = THRESHOLD) -> pa.Table:
    """Per (file, step) token count, entropy sum and count above ``threshold`` of one block of rows."""
    ent = batch.column("entropy").combine_chunks()
    flat = pc.list_flatten(ent).cast(pa.float64())
    parents = pc.list_parent_indices(ent)
    tokens = pa.table({"path": pc.take(batch.column("path"), parents), "step": pc.take(batch.column("step"), parents),
                       "h": flat, "above": pc.cast(pc.greater(flat, threshold), pa.int64())})
    return tokens.group_by(["path", "step"]).aggregate([("h", "count"), ("h", "sum"), ("above", "sum")])


def entropy_by_run_and_step(trace_dirs: list[str | Path], threshold: float = THRESHOLD) -> pa.Table:
    """``run, step, n_tokens, entropy_mean, share_above`` for every step of every trace, via Ray Data."""
    import ray

    files = committed_files(trace_dirs)
    ds = ray.data.read_parquet(list(files), columns=["step", "entropy"], include_paths=True)
    parts = ds.map_batches(partial_sums, batch_format="pyarrow", fn_kwargs={"threshold": threshold})
    sums = pa.Table.from_batches([b for ref in parts.to_arrow_refs() for b in ray.get(ref).to_batches()])
    # a step file can span several blocks: add the partial sums up on the driver (one row per block and step)
    total = sums.group_by(["path", "step"]).aggregate([("h_count", "sum"), ("h_sum", "sum"), ("above_sum", "sum")])
    n = total.column("h_count_sum").to_numpy()
    out = pa.table({
        "run": [files[p] for p in total.column("path").to_pylist()],
        "step": total.column("step"),
        "n_tokens": n,
        "entropy_mean": total.column("h_sum_sum").to_numpy() / np.maximum(n, 1),
        "share_above": total.column("above_sum_sum").to_numpy() / np.maximum(n, 1),
    })
    return out.sort_by([("run", "ascending"), ("step", "ascending")])


def duckdb_over_runs(trace_dirs: list[str | Path], threshold: float = THRESHOLD) -> pa.Table:
    """The same table from DuckDB on one machine: one query over every run's committed step files."""
    import duckdb

    files = committed_files(trace_dirs)
    con = duckdb.connect()
    con.register("runs", pa.table({"path": list(files), "run": list(files.values())}))
    return con.sql("""
        SELECT runs.run, t.step, count(*) AS n_tokens, avg(t.h) AS entropy_mean,
               avg(CASE WHEN t.h > ? THEN 1.0 ELSE 0.0 END) AS share_above
        FROM (SELECT filename, step, unnest(entropy)::DOUBLE AS h FROM read_parquet(?, filename = true)) t
        JOIN runs ON runs.path = t.filename
        GROUP BY ALL ORDER BY runs.run, t.step""", params=[threshold, list(files)]).to_arrow_table()


def main(argv: list[str]) -> None:
    import ray

    if not argv:
        sys.exit(__doc__)
    ray.init(ignore_reinit_error=True)  # joins RAY_ADDRESS when set, else starts a local instance
    table = entropy_by_run_and_step(argv)
    for row in table.to_pylist():
        print(f"{row['run']:>20}  step {row['step']:>6}  {row['n_tokens']:>9} tokens  "
              f"H mean {row['entropy_mean']:.4f}  share > {THRESHOLD:g}: {100 * row['share_above']:.1f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
