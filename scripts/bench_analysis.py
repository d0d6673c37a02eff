"""Benchmark the analysis layer against the plain query a user would write, in the same run.

Makes a synthetic trace (``--steps`` x ``--responses`` x up to ``--max-len`` tokens; one step is
generated and written, the others are copies with their ``step`` column rewritten, so making the data is
cheap), then times each analysis and its baseline, each in a fresh Python process so the peak RSS
(``ru_maxrss``) is that query's alone:

- ``forks``: `wbtrace.analysis.forks.forks` vs a DuckDB ``unnest`` + ``GROUP BY`` over ``read_parquet``;
- ``cov``: `covariance.cov_by_step` vs DuckDB window means over the unnested kept tokens;
- ``positions``: `positions.position_heatmap` vs DuckDB ``generate_subscripts`` binning;
- ``groups``: `groups.group_shares` vs a DuckDB ``GROUP BY step, group_id``.

    python scripts/bench_analysis.py --steps 20 --responses 128 --max-len 2048 [--dir /tmp/bench_analysis]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OURS = {
    "forks": "from wbtrace.analysis import forks; forks.forks(store, top=20)",
    "cov": "from wbtrace.analysis import covariance; covariance.cov_by_step(store)",
    "positions": "from wbtrace.analysis import positions; positions.position_heatmap(store, bins=10)",
    "groups": "from wbtrace.analysis import groups; groups.group_shares(store)",
}
TOKENS = ("(SELECT step, kept, advantage, unnest(token_ids) AS tok, unnest(entropy)::FLOAT AS h, "
          "unnest(logprob)::FLOAT AS lp, generate_subscripts(token_ids, 1) - 1 AS pos, "
          "len(token_ids) AS n FROM read_parquet('{steps}/*.parquet'))")
BASELINE = {
    "forks": "SELECT tok, count(*) c, sum((h > 0.672)::INT) f, avg(h) FROM " + TOKENS +
             " GROUP BY tok ORDER BY f DESC, tok LIMIT 20",
    "cov": "SELECT step, avg(c) FROM (SELECT step, (advantage - avg(advantage) OVER w) * (lp - avg(lp) OVER w) c "
           "FROM " + TOKENS + " WHERE kept WINDOW w AS (PARTITION BY step)) GROUP BY step ORDER BY step",
    "positions": "SELECT step, least(floor(pos / n * 10), 9) b, avg(h) FROM " + TOKENS +
                 " GROUP BY step, b ORDER BY step, b",
    "groups": "SELECT step, avg((nc = k)::INT), avg((nc = 0)::INT) FROM (SELECT step, group_id, count(*) k, "
              "sum(correct::INT) nc FROM read_parquet('{steps}/*.parquet') GROUP BY step, group_id) GROUP BY step",
}


def make_trace(d: Path, steps: int, responses: int, max_len: int) -> int:
    """The synthetic trace in ``d``; returns its token count."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wbtrace import TraceWriter
    from wbtrace.synthetic import make_step, synthetic_vocab

    if d.exists():
        shutil.rmtree(d)
    with TraceWriter(d, vocab=synthetic_vocab(32000)) as w:
        w.write_step(0, **make_step(responses, max_len, 32000, seed=0, group_size=16, min_len=max_len // 8,
                                    zipf=True))
    first = d / "steps" / "step_000000.parquet"
    table = pq.read_table(first)
    n_tok = int(np.sum(table.column("response_length").to_numpy()))
    lines = []
    for s in range(1, steps):
        t = table.set_column(0, "step", pa.array(np.full(table.num_rows, s, np.int32)))
        path = d / "steps" / f"step_{s:06d}.parquet"
        pq.write_table(t, path, compression="zstd", use_dictionary=False,
                       column_encoding={c: "PLAIN" for c in ("entropy", "logprob")})
        lines.append(json.dumps({"step": s, "file": f"steps/{path.name}", "n_tokens": n_tok}))
    with open(d / "manifest.jsonl", "a") as f:
        f.write("\n".join(lines) + "\n")
    return n_tok * steps


def child(kind: str, name: str, trace: str) -> None:
    """Run one query in this process and print its seconds and peak RSS."""
    t0 = time.perf_counter()
    if kind == "ours":
        from wbtrace import TraceStore

        store = TraceStore(trace)  # noqa: F841  (used by the exec'd line)
        exec(OURS[name])
    else:
        import duckdb

        duckdb.sql(BASELINE[name].format(steps=trace + "/steps")).fetchall()
    dt = time.perf_counter() - t0
    print(json.dumps({"s": dt, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))  # noqa: T201


def measure(kind: str, name: str, trace: Path, repeat: int) -> dict:
    """The median time and peak RSS of ``repeat`` fresh processes (a shared, loaded machine is noisy)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, __file__, "--child", kind, name, str(trace)], capture_output=True,
                             text=True, env=env, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    runs.sort(key=lambda r: r["s"])
    return runs[len(runs) // 2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--responses", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--dir", default="/tmp/bench_analysis")
    ap.add_argument("--repeat", type=int, default=3, help="Fresh processes per query; the median is reported.")
    ap.add_argument("--child", nargs=3, metavar=("KIND", "NAME", "TRACE"))
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    trace = Path(args.dir) / "trace"
    t0 = time.perf_counter()
    n = make_trace(trace, args.steps, args.responses, args.max_len)
    print(f"trace: {args.steps} steps, {n / 1e6:.1f}M tokens, made in {time.perf_counter() - t0:.0f} s; "  # noqa: T201
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; median of {args.repeat} processes each")
    print("| analysis | wbtrace s | peak MiB | plain DuckDB s | peak MiB | ratio (time) |")  # noqa: T201
    print("|---|---|---|---|---|---|")  # noqa: T201
    for name in OURS:
        ours, base = measure("ours", name, trace, args.repeat), measure("duckdb", name, trace, args.repeat)
        print(f"| {name} | {ours['s']:.2f} | {ours['rss_mib']:.0f} | {base['s']:.2f} | {base['rss_mib']:.0f} | "  # noqa: T201
              f"{ours['s'] / base['s']:.2f}x |")


if __name__ == "__main__":
    main()
