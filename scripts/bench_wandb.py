"""W&B sink at scale, before and after, in one process: per-step extras, `.wandb` growth, offline pull memory.

"Before" is the sink and `.wandb` reader of git revision ``--before`` (default: the commit before the
linear-log work), loaded from ``git show``; "after" is this checkout. Same synthetic data for both.

1. **Per-step extras** (what `WandbSink.log_step` computes besides the artifact itself: histogram,
   position profile, heatmap and preview rows) on steps of 2M and 17M tokens (float16 entropy, vocab
   151,936), with the floor of one Arrow flatten + numpy pass over the entropies.
2. **`.wandb` log growth**: offline runs of N tiny steps through each sink: file size and the bytes of
   history/summary records at row 10 and row N.
3. **Offline pull memory**: peak Python allocation (tracemalloc) of listing the trace versions of the
   N-step log: before = read the whole log into memory; after = stream it.

Usage: ``python scripts/bench_wandb.py [--tokens 2000000,17000000] [--steps 100,400] [--before REV]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
import types
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BEFORE = "96598f9"


def old_module(rev: str, path: str, name: str) -> types.ModuleType:
    """Module ``path`` as it was at ``rev`` (imports resolve against this checkout's wbtrace)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True, capture_output=True,
                         text=True).stdout
    mod = types.ModuleType(name)
    mod.__file__ = f"{rev}:{path}"
    sys.modules[name] = mod
    exec(compile(src, mod.__file__, "exec"), mod.__dict__)
    return mod


def big_step(n_tokens: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = max(16, n_tokens // 16_000)
    lengths = rng.multinomial(n_tokens - n, np.ones(n) / n).astype(np.int32) + 1
    off = pa.array(np.r_[0, np.cumsum(lengths)].astype(np.int32))
    total = int(lengths.sum())
    ent = rng.exponential(0.7, total).astype(np.float16)
    return pa.table({
        "step": np.ones(n, np.int32), "sample_id": np.arange(n, dtype=np.int32),
        "group_id": pa.array([f"p{i // 16}" for i in range(n)]), "reward": rng.random(n).astype(np.float32),
        "correct": rng.random(n) > 0.5, "response_length": lengths,
        "token_ids": pa.ListArray.from_arrays(off, pa.array(rng.integers(0, 151_936, total, dtype=np.int32))),
        "entropy": pa.ListArray.from_arrays(off, pa.array(ent)),
    })


def timed(fn, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_extras(sizes: list[int], rev: str) -> None:
    from wbtrace.sinks import wandb_rows as new
    from wbtrace.stats import histogram, position_profile

    old = old_module(rev, "wbtrace/sinks/wandb.py", "wbtrace_old_sink")
    texts = np.array([f"t{i}" for i in range(151_936)], dtype=object)
    print("| step tokens | before: hist + position + heatmap + preview (s) | after (s) | ratio | floor: flatten + one pass (s) |")
    print("|---:|---:|---:|---:|---:|")
    for n in sizes:
        table = big_step(n)

        def before(table: pa.Table = table) -> None:
            histogram(table, bins=old.HIST_BINS, max_entropy=old.HIST_MAX)
            position_profile(table)
            old.heatmap_rows(table, texts)
            old.preview_rows(table, texts, 64)

        def after(table: pa.Table = table) -> None:
            new.history_scalars(1, {}, table)
            new.heatmap_rows(table, texts)
            new.preview_rows(table, texts, 64, max_tokens=2048)  # what "before" showed (default now 1024)

        def floor(table: pa.Table = table) -> None:
            pc.list_flatten(table.column("entropy").combine_chunks()).to_numpy(zero_copy_only=False).astype(
                np.float32).sum()

        b, a, f = timed(before, 1), timed(after), timed(floor)
        print(f"| {table.column('response_length').to_numpy().sum():,} | {b:.2f} | {a:.3f} | {b / a:.0f}x | {f:.3f} |")


def run_sink(sink_cls, root: Path, n_steps: int) -> Path:
    from wbtrace import TraceWriter

    sink = sink_cls(project="bench", mode="offline", dir=str(root / "wb"), preview_rows=4)
    rng = np.random.default_rng(0)
    with TraceWriter(root / "trace", vocab=[f"t{i}" for i in range(64)], sinks=[sink]) as w:
        for step in range(1, n_steps + 1):
            w.write_step(step, token_ids=rng.integers(0, 64, (8, 32)), response_mask=np.ones((8, 32)),
                         entropy=rng.exponential(0.7, (8, 32)), reward=rng.random(8),
                         group_id=np.repeat(np.arange(2), 4))
    sink.finish()
    return Path(sink.run.settings.sync_dir)


def record_sizes(path: Path) -> dict[str, list[int]]:
    from wandb.proto import wandb_internal_pb2 as pb

    from wbtrace.backends.wandb_file import iter_payloads

    sizes: dict[str, list[int]] = {"history": [], "summary": []}
    with open(path, "rb") as f:
        for payload in iter_payloads(f):
            r = pb.Record()
            r.ParseFromString(payload)
            kind = r.WhichOneof("record_type")
            if kind in sizes and len(payload) > 200:
                sizes[kind].append(len(payload))
    return sizes


def bench_log(steps: list[int], rev: str) -> None:
    from wbtrace.sinks.wandb import WandbSink
    from wbtrace.sources.wandb_offline import find_wandb_file, trace_versions

    old_sink = old_module(rev, "wbtrace/sinks/wandb.py", "wbtrace_old_sink").WandbSink
    old_file = old_module(rev, "wbtrace/sources/wandb_file.py", "wbtrace_old_file")
    os.environ["WANDB_SILENT"] = "true"
    print("\n| steps | sink | .wandb (MB) | history row 10 / last (KB) | summary row 10 / last (KB) | "
          "list versions: peak alloc (MB), time (s) |")
    print("|---:|---|---:|---:|---:|---:|")
    for n in steps:
        for label, cls in (("before", old_sink), ("after", WandbSink)):
            with tempfile.TemporaryDirectory() as tmp:
                log = find_wandb_file(run_sink(cls, Path(tmp), n))
                s = record_sizes(log)
                tracemalloc.start()
                t0 = time.perf_counter()
                if label == "before":
                    old_file.read_run_log(log)
                else:
                    trace_versions(log.parent)
                dt = time.perf_counter() - t0
                peak = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                h, m = s["history"], s["summary"]
                print(f"| {n} | {label} | {log.stat().st_size / 1e6:.2f} | {h[9] / 1e3:.1f} / {h[-1] / 1e3:.1f} | "
                      f"{m[9] / 1e3:.1f} / {m[-1] / 1e3:.1f} | {peak / 1e6:.1f}, {dt:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", default="2000000,17000000")
    ap.add_argument("--steps", default="100,400")
    ap.add_argument("--before", default=BEFORE)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; before = {args.before}\n")
    if args.tokens:
        bench_extras([int(x) for x in args.tokens.split(",")], args.before)
    if args.steps:
        bench_log([int(x) for x in args.steps.split(",")], args.before)


if __name__ == "__main__":
    main()
