"""Step-time table (not a test) from trainer metrics.jsonl files: medians per phase, tracing share.

One column per ``LABEL=METRICS.jsonl@A:B`` (steps A..B inclusive; leave out the first step of each
process, which pays for CUDA and Triton warm-up). The last column is the ratio of the first two.

    .venv/bin/python scripts/run_timings.py "2 GPUs=docs/runs/two-gpu/metrics.jsonl@2:20" \\
        "1 GPU=docs/runs/two-gpu/metrics.jsonl@22:26"
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from wbtrace.steps import StepSelection

ROWS = [("step (s)", "timing/step"), ("generate (s)", "timing/generate"), ("old log-prob (s)", "timing/log_prob"),
        ("update (s)", "timing/update"), ("reward (s)", "timing/reward"), ("tracing, `write_step` (ms)", "timing/trace"),
        ("mean response length", "response_length/mean"), ("tokens/s", "throughput/tokens_per_s")]


def column(spec: str) -> tuple[str, list[dict]]:
    """``LABEL=FILE@A:B`` -> (label, the metric rows of steps A..B)."""
    label, rest = spec.split("=", 1)
    path, steps = rest.rsplit("@", 1)
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    chosen = set(StepSelection.parse(steps).resolve([r["step"] for r in rows], path))
    return label, [r for r in rows if r["step"] in chosen]


def table(columns: list[tuple[str, list[dict]]]) -> str:
    """Markdown table of medians; a share row for tracing; the first-over-second ratio column."""
    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] * (1000 if key == "timing/trace" else 1) for r in rows)

    head = [f"{label} (n={len(rows)})" for label, rows in columns] + (["ratio"] if len(columns) > 1 else [])
    lines = ["| median | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name, key in ROWS:
        vals = [med(rows, key) for _, rows in columns]
        cells = [f"{v:.3g}" for v in vals]
        if len(vals) > 1:
            cells.append(f"{vals[0] / vals[1]:.2f}x" if vals[1] else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    share = [statistics.median(100 * r["timing/trace"] / r["timing/step"] for r in rows) for _, rows in columns]
    cells = [f"{s:.3f}" for s in share] + ([""] if len(columns) > 1 else [])
    lines.append("| tracing share of the step (%) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("columns", nargs="+", help="LABEL=METRICS.jsonl@A:B")
    print(table([column(c) for c in ap.parse_args().columns]))


if __name__ == "__main__":
    main()
