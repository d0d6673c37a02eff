"""Benchmark (not a test): trace I/O on a large step, against the seed's padded-npz writer, same data.

A synthetic DAPO step of 512 responses x up to 8,192 tokens (~2.1M tokens, vocab 151,936) is written
by `TraceWriter` and by the seed's writer (`np.savez_compressed` of padded arrays, synchronous on the
trainer's thread). Measured: how long `write_step` blocks the caller, total write time (CPU of the
writer: pack + Parquet + stats + manifest), bytes per token, read time of one step, and token-level
CSV export rows/s. Targets: blocking <= 50 ms, write <= 250 ms, <= 6 bytes/token,
read <= 100 ms, CSV >= 2M rows/s on 2 cores. Results go to docs/BENCHMARKS.md between markers.

    .venv/bin/python scripts/bench_io.py [--steps 5] [--no-update]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from wbtrace import TraceStore, TraceWriter
from wbtrace.export import export_steps
from wbtrace.schema import pack_step
from wbtrace.seed_format import read_seed_step, write_seed_step
from wbtrace.synthetic import make_step, synthetic_vocab
from wbtrace.writer import commit_step, write_parquet_atomic

N, T, V = 512, 8192, 151_936
ROOT = Path(__file__).resolve().parent.parent


def median_ms(xs: list[float]) -> float:
    return 1000 * statistics.median(xs)


def bench_wbtrace(steps: list[dict], tmp: Path) -> dict[str, float]:
    w = TraceWriter(tmp / "wb", vocab=synthetic_vocab(V))
    w.write_step(0, **steps[0])  # warm-up: first-touch page faults and imports are not per-step costs
    w.flush()
    blocking, total = [], []
    for i, s in enumerate(steps, 1):
        t0 = time.perf_counter()
        w.write_step(i, **s)
        blocking.append(time.perf_counter() - t0)
        w.flush()
        total.append(time.perf_counter() - t0)
    w.close()
    # The writer's own CPU per step, off the training thread: pack + Parquet + stats + manifest.
    cpu = []
    (tmp / "wb2" / "steps").mkdir(parents=True)
    commit_step(tmp / "wb2", 0, pack_step(0, **steps[0]))
    for i, s in enumerate(steps, 1):
        t0 = time.process_time()
        commit_step(tmp / "wb2", i, pack_step(i, **s))
        cpu.append(time.process_time() - t0)
    # The seed stored ids + entropy only: the same columns, for a like-for-like size.
    seed_cols = write_parquet_atomic(pack_step(1, steps[0]["token_ids"], steps[0]["response_mask"],
                                               steps[0]["entropy"]), tmp / "seed_cols.parquet")
    store = TraceStore(tmp / "wb")
    tokens = sum(e["n_tokens"] for e in store.manifest[1:])
    nbytes = sum(e["bytes"] for e in store.manifest[1:])
    reads = []
    for step in store.steps:
        t0 = time.perf_counter()
        store.read_step(step)
        reads.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    rows = export_steps(store, store.steps, str(tmp / "wb.csv"))
    csv_s = time.perf_counter() - t0
    return {"blocking_ms": median_ms(blocking), "write_ms": median_ms(total), "cpu_ms": median_ms(cpu),
            "bytes_per_token": nbytes / tokens, "read_ms": median_ms(reads), "csv_rows_per_s": rows / csv_s,
            "seed_cols_bytes_per_token": seed_cols / int(steps[0]["response_mask"].sum())}


def bench_seed(steps: list[dict], tmp: Path) -> dict[str, float]:
    import pandas as pd

    times, cpu, paths = [], [], []
    for i, s in enumerate(steps, 1):
        t0, c0 = time.perf_counter(), time.process_time()
        paths.append(write_seed_step(tmp / "seed", i, s["token_ids"], s["response_mask"], s["entropy"]))
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    tokens = sum(int(s["response_mask"].sum()) for s in steps)
    reads = []
    for p in paths:
        t0 = time.perf_counter()
        read_seed_step(p)
        reads.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    rows = 0
    for i, p in enumerate(paths, 1):  # the seed viewer's CSV path: mask the padded arrays, pandas.to_csv
        d = read_seed_step(p)
        m = d["response_mask"]
        r, pos = np.nonzero(m)
        df = pd.DataFrame({"step": i, "sample_id": r, "position": pos, "token_id": d["responses"][m],
                           "entropy": d["entropies"][m].astype(np.float32)})
        df.to_csv(tmp / "seed.csv", mode="a", header=i == 1, index=False)
        rows += len(df)
    csv_s = time.perf_counter() - t0
    nbytes = sum(p.stat().st_size for p in paths)
    return {"blocking_ms": median_ms(times), "write_ms": median_ms(times), "cpu_ms": median_ms(cpu),
            "bytes_per_token": nbytes / tokens, "read_ms": median_ms(reads), "csv_rows_per_s": rows / csv_s,
            "seed_cols_bytes_per_token": nbytes / tokens}


ROWS = [("write_step blocks the trainer (ms)", "blocking_ms", "<= 50", "{:.1f}"),
        ("write, enqueue to committed (ms)", "write_ms", "", "{:.0f}"),
        ("writer CPU per step (ms)", "cpu_ms", "<= 250", "{:.0f}"),
        ("bytes per token on disk (all columns)", "bytes_per_token", "<= 6", "{:.2f}"),
        ("bytes per token, the seed's columns only (ids + entropy)", "seed_cols_bytes_per_token", "", "{:.2f}"),
        ("read one step (ms)", "read_ms", "<= 100", "{:.0f}"),
        ("token CSV export (rows/s)", "csv_rows_per_s", ">= 2M", "{:,.0f}")]


def table(ours: dict, seed: dict, label: str) -> str:
    lines = [f"| {label} | wbtrace | seed (padded npz) | ratio | target |", "|---|---|---|---|---|"]
    for name, key, target, fmt in ROWS:
        better_low = key != "csv_rows_per_s"
        ratio = seed[key] / ours[key] if better_low else ours[key] / seed[key]
        lines.append(f"| {name} | {fmt.format(ours[key])} | {fmt.format(seed[key])} | {ratio:.1f}x | {target} |")
    return "\n".join(lines)


def update_doc(text: str) -> None:
    doc = ROOT / "docs" / "BENCHMARKS.md"
    start, end = "<!-- bench_io:start -->", "<!-- bench_io:end -->"
    body = doc.read_text() if doc.exists() else "# Benchmarks\n"
    block = f"{start}\n{text}\n{end}"
    body = body[: body.index(start)] + block + body[body.index(end) + len(end):] if start in body else \
        body + "\n" + block + "\n"
    doc.write_text(body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--no-update", action="store_true", help="Print only; do not edit docs/BENCHMARKS.md.")
    args = ap.parse_args()
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    parts = [f"### Trace I/O (`scripts/bench_io.py`)\n\nStep: {N} responses x up to {T:,} tokens, vocab {V:,}, "
             f"{args.steps} steps, median. Machine: {machine}. Ratio = how many times better wbtrace is.\n"]
    for zipf, label in ((True, "Zipf token ids (like text)"), (False, "uniform token ids (worst case)")):
        steps = [make_step(N, T, V, seed=i, group_size=16, zipf=zipf) for i in range(args.steps)]
        with tempfile.TemporaryDirectory() as d:
            ours, seed = bench_wbtrace(steps, Path(d)), bench_seed(steps, Path(d))
        tokens = int(steps[0]["response_mask"].sum())
        parts.append(f"{label}, {tokens:,} tokens in the first step:\n\n{table(ours, seed, label)}\n")
        print(parts[-1], flush=True)
    if not args.no_update:
        update_doc("\n".join(parts))


if __name__ == "__main__":
    main()
