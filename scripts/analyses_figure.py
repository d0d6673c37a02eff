"""Draw docs/analyses.png from a trace (default: the committed real-run sample docs/runs/h100-sample).

Four panels, each from `wbtrace.analysis` (the same numbers the CLI and the viewer show):
token-entropy histogram per step with its p80 (arXiv 2506.01939 Fig. 2a), top forking tokens with
their fork share, the step x relative-position heatmap, and Cov(log-prob, advantage) per step beside
the entropy change to the next step (arXiv 2505.22617).

    python scripts/analyses_figure.py [TRACE] [-o docs/analyses.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from wbtrace import TraceStore
from wbtrace.analysis import covariance, forks, positions
from wbtrace.analysis.frames import tokens

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("trace", nargs="?", default=str(ROOT / "docs" / "runs" / "h100-sample"))
    ap.add_argument("-o", "--output", default=str(ROOT / "docs" / "analyses.png"))
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    store = TraceStore(args.trace)
    fig, ax = plt.subplots(2, 2, figsize=(12, 7.5))
    ent = tokens(store, token_columns=("entropy",), response_columns=("step",)).collect()
    for step in store.steps:
        e = ent.filter(ent["step"] == step)["entropy"].to_numpy()
        ax[0, 0].hist(e, bins=60, range=(0, 8), histtype="step", label=f"step {step}: {np.mean(e < 0.01):.0%} < 0.01, "
                      f"p80 {np.percentile(e, 80):.2f}")
    ax[0, 0].set(yscale="log", xlabel="token entropy (nats)", ylabel="tokens", title="Token entropy per step")
    ax[0, 0].legend(fontsize=8)

    top = forks.forks(store, top=12)
    y = np.arange(top.height)[::-1]
    ax[0, 1].barh(y, top["forks"].to_numpy(), color="#f56c28")
    ax[0, 1].set_yticks(y, [f"{t!r}  ({s:.0%})" for t, s in zip(top["text"], top["fork_share"])], fontsize=8)
    ax[0, 1].set(xlabel="occurrences above 0.672 nats (fork share)", title="Top forking tokens, all steps")

    heat = positions.heatmap_matrix(positions.position_heatmap(store, bins=20))
    m = heat.drop("step").to_numpy().astype(float)
    im = ax[1, 0].imshow(m, aspect="auto", cmap="YlOrRd", origin="lower", extent=(0, 1, -0.5, len(m) - 0.5))
    ax[1, 0].set_yticks(range(len(m)), [str(s) for s in heat["step"]])
    ax[1, 0].set(xlabel="relative position in response", ylabel="step", title="Mean entropy by position")
    fig.colorbar(im, ax=ax[1, 0], label="nats")

    cov = covariance.cov_by_step(store)
    steps = cov["step"].to_numpy()
    ax[1, 1].plot(steps, cov["cov_mean"].to_numpy(), "o-", color="#1f6feb", label="mean Cov(log-prob, A), kept tokens")
    ax[1, 1].plot(steps, cov["entropy_change"].to_numpy(), "s--", color="#c81e2d", label="entropy change to next step")
    ax[1, 1].axhline(0, color="#999", lw=0.8)
    ax[1, 1].set(xlabel="step", title="Covariance vs entropy change")
    ax[1, 1].legend(fontsize=8)
    fig.suptitle(f"{store.run_info.get('model', '')}: wbtrace analyses of {Path(args.trace).name}", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.output, dpi=90)
    print(f"wrote {args.output}")  # noqa: T201


if __name__ == "__main__":
    main()
