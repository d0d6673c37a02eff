"""Benchmark (not a test): research-scale traces (issue 20): hand-off, full queue, manifest reads, --where.

Each row measures the code as it was before (reconstructed here, same data, same process), as it is
now, and a plain Polars/DuckDB baseline where one exists, in the same run, so the ratios hold on a
shared machine. Synthetic Zipf-like steps, vocab 151,936 (`wbtrace.synthetic.make_step`).

    .venv/bin/python scripts/bench_scale.py [--handoff-tokens 33554432] [--step-tokens 2000000]
                                            [--stats-steps 100] [--manifest-steps 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from wbtrace import TraceSampling, TraceStore, TraceWriter
from wbtrace.export import token_rows
from wbtrace.schema import to_numpy
from wbtrace.sinks.base import TraceSink
from wbtrace.stats import step_summary
from wbtrace.synthetic import make_step, synthetic_vocab
from wbtrace.where import RowFilter
from wbtrace.writer import _handoff

V = 151_936
ROWS: list[tuple[str, str, str, str, str]] = []


def timed(fn, repeat: int = 3) -> float:
    """Median wall seconds of ``fn``; its CPU seconds (all threads of this process) go to `CPU`."""
    xs = []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        xs.append((time.perf_counter() - t0, time.process_time() - c0))
    wall, cpu = sorted(xs)[len(xs) // 2]
    timed.cpu = cpu
    return wall


def cpu() -> str:
    return f"{timed.cpu:.2f} s CPU"


def row(what: str, before: str, after: str, baseline: str = "", note: str = "") -> None:
    ROWS.append((what, before, after, baseline, note))
    print(f"{what}: before {before} | after {after} | baseline {baseline} | {note}", flush=True)


def big_step(tokens: int, n: int, seed: int = 0) -> dict[str, Any]:
    t = max(tokens // n, 1)
    return make_step(n, t, V, seed=seed, min_len=t, zipf=True)


# ----------------------------------------------------------------------------- hand-off
def bench_handoff(tokens: int) -> None:
    step = big_step(tokens, 1024)
    n_tok = int(step["response_mask"].sum())
    old_dtypes = {"token_ids": np.int32, "response_mask": np.bool_, "entropy": np.float16, "logprob": np.float16}

    def before() -> None:  # the old write_step: a converting copy of every array on the caller's thread
        {k: to_numpy(v, k, old_dtypes.get(k)) for k, v in step.items()}

    def after(copy: bool) -> None:
        {k: _handoff(v, k, copy, {}) for k, v in step.items()}

    def plain() -> None:
        {k: np.copy(v) for k, v in step.items()}

    b, a, a0, p = timed(before), timed(lambda: after(True)), timed(lambda: after(False)), timed(plain)
    row(f"write_step hand-off, {n_tok / 1e6:.1f}M tokens (numpy)", f"{1000 * b:.0f} ms",
        f"{1000 * a:.0f} ms (copy) / {1000 * a0:.3f} ms (copy=False)", f"np.copy {1000 * p:.0f} ms",
        "conversion moved to the writer thread")
    try:
        import torch
    except ImportError:
        return
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in step.items() if isinstance(v, np.ndarray)
               and v.dtype.kind != "U"}
    t_before = timed(lambda: {k: to_numpy(v, k, old_dtypes.get(k)) for k, v in tensors.items()})
    t_after = timed(lambda: {k: _handoff(v, k, True, {}) for k, v in tensors.items()})
    row(f"write_step hand-off, {n_tok / 1e6:.1f}M tokens (torch CPU)", f"{1000 * t_before:.0f} ms",
        f"{1000 * t_after:.0f} ms (clone) / ~0 ms (copy=False)", "", "")


def bench_handoff_cuda(tokens: int, tmp: Path) -> None:
    """CUDA tensors: the caller's time is queueing pinned non-blocking copies; the writer waits for them."""
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: skipped the CUDA hand-off")
        return
    from wbtrace.writer import _to_host

    n, t = 1024, max(tokens // 1024, 1)
    g = torch.Generator(device="cuda").manual_seed(0)
    step = {"token_ids": torch.randint(0, V, (n, t), device="cuda", generator=g),
            "response_mask": torch.ones(n, t, dtype=torch.bool, device="cuda"),
            "entropy": torch.rand(n, t, device="cuda", generator=g) * 3,
            "logprob": -torch.rand(n, t, device="cuda", generator=g)}
    torch.cuda.synchronize()
    dtypes = {"response_mask": "bool", "entropy": "float16", "logprob": "float16"}
    caller, wait = [], []
    for _ in range(4):
        t0 = time.perf_counter()
        snap = {k: _handoff(v, k, True, dtypes) for k, v in step.items()}
        t1 = time.perf_counter()
        host = {k: _to_host(v, k) for k, v in snap.items()}
        caller.append(t1 - t0)
        wait.append(time.perf_counter() - t1)
    assert np.array_equal(host["token_ids"], step["token_ids"].cpu().numpy())
    old = timed(lambda: {k: to_numpy(v, k, {"token_ids": np.int32, "entropy": np.float16}.get(k))
                         for k, v in step.items()})
    row(f"write_step hand-off, {n * t / 1e6:.1f}M tokens (CUDA, {torch.cuda.get_device_name()})",
        f"{1000 * old:.0f} ms (synchronous .cpu())",
        f"{1000 * statistics.median(caller[1:]):.1f} ms (first call {1000 * caller[0]:.0f} ms: pinned alloc)",
        f"copy done in the writer after {1000 * statistics.median(wait[1:]):.0f} ms", "pinned, non-blocking")
    with TraceWriter(tmp / "cuda", vocab=synthetic_vocab(V)) as w:
        t0 = time.perf_counter()
        w.write_step(1, **step)
        call = time.perf_counter() - t0
    stored = TraceStore(tmp / "cuda").read_step(1).column("token_ids")[0].as_py()
    assert stored == step["token_ids"][0].tolist(), "CUDA round trip"
    row("write_step (CUDA tensors, whole call)", "", f"{1000 * call:.1f} ms", "", "round trip checked")


# ----------------------------------------------------------------------------- full queue
class _Slow(TraceSink):
    name = "slow"

    def log_step(self, *args: Any) -> None:
        time.sleep(2.0)  # a sink (or disk) far slower than training


def bench_full_queue(tmp: Path) -> None:
    step = make_step(64, 512, V, seed=1)
    w = TraceWriter(tmp / "queue", sinks=[_Slow()], queue_size=2)
    waits = []
    for s in range(12):
        t0 = time.perf_counter()
        w.write_step(s, **step)
        waits.append(time.perf_counter() - t0)
    report = w.close()
    row("write_step when the writer is behind (max block)", "0.4-30 s (issue table: max_block_s=30)",
        f"{1000 * max(waits):.0f} ms max, {report.dropped} of 12 dropped and counted", "",
        "max_wait_ms=100 then drop")


# ----------------------------------------------------------------------------- GIL
def _python_rate(seconds: float) -> float:
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        n += 1
    return n / seconds


_COMMIT_IN_PROCESS = """
import sys
from wbtrace import TraceWriter
from wbtrace.synthetic import make_step, synthetic_vocab
step = make_step(512, int(sys.argv[2]) // 512, 151936, seed=2, min_len=int(sys.argv[2]) // 512, zipf=True)
print("ready", flush=True)
sys.stdin.readline()
with TraceWriter(sys.argv[1], vocab=synthetic_vocab(151936)) as w:
    w.write_step(1, **step)
"""


def _rate_while(busy: threading.Event, idle: float) -> tuple[float, float]:
    rates, t0 = [], time.perf_counter()
    while not busy.is_set():
        rates.append(_python_rate(0.1))
    return 100 * statistics.mean(rates) / idle, time.perf_counter() - t0


def bench_gil(tmp: Path, tokens: int) -> None:
    """How fast a pure-Python training loop runs while the step is committed by the writer thread, and
    while the same commit runs in another process (same CPU competition, no shared GIL): the difference
    is what a writer process would buy."""
    import subprocess
    import sys

    w = TraceWriter(tmp / "gil", vocab=synthetic_vocab(V))
    t = tokens // 512
    step = make_step(512, t, V, seed=2, min_len=t, zipf=True)
    idle_before = _python_rate(2.0)
    w.write_step(1, **step)
    done = threading.Event()
    threading.Thread(target=lambda: (w.flush(), done.set()), daemon=True).start()
    thread_pct, thread_s = _rate_while(done, idle_before)
    w.close()
    proc = subprocess.Popen([sys.executable, "-c", _COMMIT_IN_PROCESS, str(tmp / "gil-proc"), str(tokens)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # the step is built; now commit it while we count
    idle_between = _python_rate(2.0)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    exited = threading.Event()
    threading.Thread(target=lambda: (proc.wait(), exited.set()), daemon=True).start()
    proc_pct, proc_s = _rate_while(exited, idle_between)
    row(f"main thread speed while a {tokens / 1e6:.0f}M-token step is committed", "",
        f"writer thread: {thread_pct:.0f}% for {thread_s:.1f} s", f"writer process: {proc_pct:.0f}% for {proc_s:.1f} s",
        "a pure-Python loop; the gap is the GIL")


# ----------------------------------------------------------------------------- manifest reads
def _trace(tmp: Path, steps: int, n: int, t: int) -> Path:
    d = tmp / f"trace-{steps}-{n}x{t}"
    with TraceWriter(d, vocab=synthetic_vocab(V), queue_size=8, max_wait_ms=60_000) as w:
        for s in range(1, steps + 1):
            w.write_step(s, **make_step(n, t, V, seed=s, zipf=True))
    return d


def _many_steps(src: Path, tmp: Path, steps: int) -> Path:
    """A trace of ``steps`` steps made of copies of one small step file (manifest lines are real)."""
    d = tmp / f"many-{steps}"
    (d / "steps").mkdir(parents=True)
    shutil.copy(src / "run.json", d)
    shutil.copy(src / "vocab.parquet", d)
    entry = TraceStore(src).manifest[0]
    one = TraceStore(src).step_path(entry["step"])
    lines = []
    for s in range(1, steps + 1):
        os.link(one, d / "steps" / f"step_{s:06d}.parquet")
        lines.append(json.dumps({**entry, "step": s, "file": f"steps/step_{s:06d}.parquet"}))
    (d / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return d


def bench_manifest(tmp: Path, stats_steps: int, manifest_steps: int) -> None:
    from click.testing import CliRunner

    from wbtrace.cli import main

    cli = CliRunner()
    d = _trace(tmp, stats_steps, 128, 2048)
    store = TraceStore(d)
    tok = sum(e["n_tokens"] for e in store.manifest)
    before = timed(lambda: [step_summary(t) for _, t in store.iter_steps()], repeat=1)
    before_cpu = cpu()
    after = timed(lambda: cli.invoke(main, ["stats", str(d), "--json"]), repeat=1)
    after_cpu = cpu()
    import duckdb

    files = [str(store.step_path(s)) for s in store.steps]
    duck = timed(lambda: duckdb.sql(
        "SELECT step, avg(h), quantile_cont(h, [0.5, 0.8, 0.9, 0.99]) FROM (SELECT step, unnest(entropy)::DOUBLE h "
        f"FROM read_parquet({files!r})) GROUP BY step").fetchall(), repeat=1)
    row(f"stats, all {stats_steps} steps ({tok / 1e6:.0f}M tokens)", f"{before:.1f} s, {before_cpu} (every file read)",
        f"{after:.2f} s, {after_cpu} (manifest)", f"DuckDB over the files {duck:.1f} s, {cpu()}", "")
    many = _many_steps(d, tmp, manifest_steps)
    for cmd in (["ls"], ["stats", "--json"], ["plot", "-o", str(tmp / "p.png")]):
        t = timed(lambda cmd=cmd: cli.invoke(main, [cmd[0], str(many), *cmd[1:]]), repeat=1)
        row(f"`{' '.join(cmd[:2] if cmd[0] == 'stats' else cmd[:1])}` over {manifest_steps} steps", "",
            f"{t:.2f} s, {cpu()}", "", "wall includes imports (matplotlib: ~1 s)")
    manifest = TraceStore(many).manifest
    steps = [e["step"] for e in manifest]
    for n in (manifest_steps, 4 * manifest_steps):
        m = (manifest * 4)[:n]
        st = (steps * 4)[:n]
        old = timed(lambda m=m, st=st: [e for e in m if e["step"] in set(st)], repeat=1)
        new = timed(lambda m=m, wanted=set(st): [e for e in m if e["step"] in wanted], repeat=1)
        row(f"plot's step filter, {n} manifest lines", f"{old:.2f} s (a set per line)", f"{1000 * new:.1f} ms", "", "")


# ----------------------------------------------------------------------------- --where
def bench_where(tmp: Path, tokens: int) -> None:
    import polars as pl

    d = tmp / "where"
    with TraceWriter(d, vocab=synthetic_vocab(V)) as w:
        w.write_step(1, **big_step(tokens, 512, seed=3))
    store = TraceStore(d)
    table = store.read_step(1)
    texts = store.vocab.texts_arrow
    where = "entropy > 2 AND position < 4000"
    n_tok = sum(table.column("response_length").to_pylist())

    def before() -> int:  # old path: every column of every token, the vocab join, then Polars' filter
        return pl.from_arrow(token_rows(table, store.vocab, texts)).filter(pl.sql_expr(where)).height

    def after() -> int:
        return token_rows(table, store.vocab, texts, RowFilter(where)).num_rows

    vocab = pl.DataFrame({"token_id": np.arange(len(texts), dtype=np.int32), "token": texts.to_pylist()})

    def polars_plain() -> int:  # what a user would write: explode the lists, filter, join the vocab
        df = pl.read_parquet(store.step_path(1)).drop(["prompt_token_ids"], strict=False)
        df = df.explode(["token_ids", "entropy", "logprob"]).with_columns(
            pl.int_range(pl.len()).over("sample_id").alias("position"))
        return df.filter(pl.sql_expr(where)).join(vocab, left_on="token_ids", right_on="token_id", how="left").height

    counts = {before(), after(), polars_plain()}
    assert len(counts) == 1, counts
    b = timed(before)
    bc = cpu()
    a = timed(after)
    ac = cpu()
    p = timed(polars_plain)
    row(f"export --where, one {n_tok / 1e6:.1f}M-token step", f"{b:.2f} s, {bc} ({n_tok / b / 1e6:.1f}M tok/s)",
        f"{a:.2f} s, {ac} ({n_tok / a / 1e6:.1f}M tok/s)",
        f"Polars {p:.2f} s, {cpu()} ({n_tok / p / 1e6:.1f}M tok/s)", f"{counts.pop()} rows kept")


def bench_sampling(tmp: Path) -> None:
    sizes = {}
    for name, sampling in (("all", None), ("quarter", TraceSampling(group_fraction=0.25))):
        with TraceWriter(tmp / f"s-{name}", vocab=synthetic_vocab(V), sampling=sampling) as w:
            w.write_step(1, **make_step(512, 2048, V, seed=4, zipf=True, group_size=16))
        sizes[name] = TraceStore(tmp / f"s-{name}").manifest[0]["bytes"]
    row("bytes per step, group_fraction=0.25 (512 responses, groups of 16)", f"{sizes['all'] / 1e6:.1f} MB",
        f"{sizes['quarter'] / 1e6:.1f} MB", "", "manifest statistics stay those of the whole step")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--handoff-tokens", type=int, default=33_554_432)
    ap.add_argument("--step-tokens", type=int, default=2_000_000)
    ap.add_argument("--stats-steps", type=int, default=100)
    ap.add_argument("--manifest-steps", type=int, default=5000)
    ap.add_argument("--only", default="handoff,queue,gil,where,manifest,sampling",
                    help="comma-separated sections: handoff, cuda, queue, gil, where, manifest, sampling")
    args = ap.parse_args()
    print(f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, pyarrow {pa.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sections = {
            "handoff": lambda: bench_handoff(args.handoff_tokens),
            "cuda": lambda: bench_handoff_cuda(args.handoff_tokens, tmp),
            "queue": lambda: bench_full_queue(tmp),
            "gil": lambda: bench_gil(tmp, args.step_tokens),
            "where": lambda: bench_where(tmp, args.step_tokens),
            "manifest": lambda: bench_manifest(tmp, args.stats_steps, args.manifest_steps),
            "sampling": lambda: bench_sampling(tmp),
        }
        for name in args.only.split(","):
            sections[name.strip()]()
    _print_table()


def _print_table() -> None:
    print("\n| what | before | after | plain baseline | note |\n|---|---|---|---|---|")
    for r in ROWS:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
