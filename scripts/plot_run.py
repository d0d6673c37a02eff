"""Plot a training run: reward/accuracy and token-entropy percentiles over steps, trace bytes per step.

    .venv/bin/python scripts/plot_run.py OUTPUT_DIR [-o run.png]

OUTPUT_DIR is a `wbtrace train` output dir (metrics.jsonl + entropy_trace/). Small PNGs, for docs/runs/.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from wbtrace import TraceStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("output_dir", type=Path)
    ap.add_argument("-o", "--out", type=Path, default=None)
    args = ap.parse_args()
    metrics = [json.loads(line) for line in (args.output_dir / "metrics.jsonl").read_text().splitlines() if line]
    manifest = TraceStore(args.output_dir / "entropy_trace").manifest
    steps = [e["step"] for e in manifest]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.6), dpi=80)
    ax = axes[0]
    ax.plot([m["step"] for m in metrics], [m.get("reward/mean") for m in metrics], label="reward (mean)")
    ax.plot([m["step"] for m in metrics], [m.get("accuracy") for m in metrics], label="accuracy")
    ax.set_xlabel("step"), ax.set_title("reward"), ax.legend(), ax.grid(alpha=0.3)
    ax = axes[1]
    for lo, hi, alpha in (("entropy_p50", "entropy_p99", 0.15), ("entropy_p80", "entropy_p90", 0.35)):
        ax.fill_between(steps, [e[lo] for e in manifest], [e[hi] for e in manifest], alpha=alpha, color="C3",
                        label=f"{lo[8:]}-{hi[8:]}")
    ax.plot(steps, [e["entropy_mean"] for e in manifest], color="k", label="mean")
    ax2 = ax.twinx()
    ax2.plot(steps, [100 * e["share_above"] for e in manifest], color="C0", ls="--", label="% > 0.672")
    ax2.set_ylabel("% tokens above 0.672 nats", color="C0")
    ax.set_xlabel("step"), ax.set_ylabel("nats"), ax.set_title("token entropy"), ax.legend(loc="upper right")
    ax.grid(alpha=0.3)
    ax = axes[2]
    ax.bar(steps, [e["bytes"] / e["n_tokens"] for e in manifest], color="C2")
    ax.set_xlabel("step"), ax.set_ylabel("bytes / token"), ax.set_title("trace size on disk")
    fig.tight_layout()
    out = args.out or args.output_dir / "run.png"
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
