"""Benchmark (not a test): whole-process start-up of the CLI and end-to-end CSV export of a 2M-token step.

Each command is run as a fresh process (what a user waits for: interpreter, imports, work), ``--runs``
times, against this checkout and against a baseline git revision extracted beside it (``git archive
REV wbtrace``), interleaved so both see the same machine load. Reported: median wall time and median
CPU time (user + system of the child; the machine is shared, so CPU time is the steadier number).
The export row is ``wbtrace export TRACE --step 1 -o out.csv`` on a synthetic step of 512 responses x
up to 8,192 tokens (~2.1M tokens, Zipf ids, vocab 151,936): rows per second of wall time, start-up
included. Targets (issue 21): start-up <= 0.3 s, export >= 2M rows/s.

    .venv/bin/python scripts/bench_startup.py [--baseline 96598f9] [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "docs" / "runs" / "h100-sample"


def checkout(rev: str, into: Path) -> Path:
    """The ``wbtrace`` package of git revision ``rev``, extracted under ``into``."""
    data = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "wbtrace", "weave_panels"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_once(cmd: list[str], pythonpath: Path, cwd: Path) -> tuple[float, float]:
    """(wall s, CPU s) of one process running ``python -m wbtrace.cli CMD``."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", "import sys; from wbtrace.cli import main; sys.exit(main())", *cmd],
                          env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def make_big_trace(path: Path) -> int:
    """A one-step trace of ~2.1M tokens; returns its token count."""
    from wbtrace import TraceWriter
    from wbtrace.synthetic import make_step, synthetic_vocab

    with TraceWriter(path, vocab=synthetic_vocab(151_936)) as w:
        w.write_step(1, **make_step(512, 8192, 151_936, seed=1, min_len=1, zipf=True))
    from wbtrace.store import TraceStore

    return TraceStore(path).manifest[0]["n_tokens"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="96598f9", help="git revision to compare with")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--export-runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        tmp = Path(tmp)
        trees = {"this checkout": ROOT, f"baseline {args.baseline}": checkout(args.baseline, tmp / "base")}
        tokens = make_big_trace(tmp / "big")
        cases = [("wbtrace --help", ["--help"]), ("wbtrace ls SAMPLE", ["ls", str(SAMPLE)]),
                 ("wbtrace export SAMPLE --step 100 -o x.csv", ["export", str(SAMPLE), "--step", "100", "-o", "x.csv"]),
                 ("wbtrace train -h", ["train", "-h"]), ("wbtrace pull -h", ["pull", "-h"])]
        big = ["export", str(tmp / "big"), "--step", "1", "-o", "big.csv"]
        results: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for name, cmd, runs in [*((n, c, args.runs) for n, c in cases), ("export 2M", big, args.export_runs)]:
            for _ in range(runs):
                for tree, path in trees.items():  # interleaved: both trees see the same load
                    results.setdefault((name, tree), []).append(run_once(cmd, path, tmp))
        print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
              f"load average {os.getloadavg()[0]:.2f}; median of {args.runs} runs ({args.export_runs} for export)")
        print("| command | " + " | ".join(f"{t} wall (s) | {t} CPU (s)" for t in trees) + " | ratio (wall) |")
        print("|---" * (2 * len(trees) + 2) + "|")
        for name in [n for n, _ in cases] + ["export 2M"]:
            cells, walls = [], []
            for tree in trees:
                wall = statistics.median(w for w, _ in results[(name, tree)])
                cpu = statistics.median(c for _, c in results[(name, tree)])
                walls.append(wall)
                cells += [f"{wall:.3f}", f"{cpu:.3f}"]
            label = f"wbtrace export BIG --step 1 -o big.csv ({tokens:,} rows)" if name == "export 2M" else name
            print(f"| {label} | " + " | ".join(cells) + f" | {walls[1] / walls[0]:.2f}x |")
        for tree in trees:
            wall = statistics.median(w for w, _ in results[("export 2M", tree)])
            cpu = statistics.median(c for _, c in results[("export 2M", tree)])
            print(f"export, {tree}: {tokens / wall:,.0f} rows/s of wall time, {tokens / cpu:,.0f} rows/s of CPU time")


if __name__ == "__main__":
    main()
