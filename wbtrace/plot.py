"""Static plots of a trace over training steps (PNG/SVG/PDF via matplotlib), from the manifest alone.

Panels: token-entropy percentile bands (p50-p99, p80-p90) with the mean; share of tokens above the
threshold; mean entropy of correct vs incorrect responses; reward and accuracy. Panels whose data the
trace does not have (no rewards, no correctness) are left out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wbtrace.errors import BadInputError, require
from wbtrace.stats import DEFAULT_THRESHOLD
from wbtrace.store import TraceStore, atomic_output
from wbtrace.textsafe import terminal_text


def _series(manifest: list[dict[str, Any]], key: str) -> list[float]:
    """One value per step; a step without it (no tokens, no rewards) is NaN: a gap in the line."""
    return [float("nan") if e.get(key) is None else float(e[key]) for e in manifest]


def _has(manifest: list[dict[str, Any]], *keys: str) -> bool:
    return any(e.get(k) is not None for e in manifest for k in keys)


def plot_trace(store: TraceStore, out: Path, steps: list[int] | None = None) -> Path:
    """Write the trace's over-training plots to ``out`` (format from its suffix); returns ``out``."""
    mpl = require("matplotlib", "plot")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    manifest = [e for e in store.manifest if steps is None or e["step"] in set(steps)]
    if not manifest:
        raise BadInputError(f"{store.run_dir}: no steps to plot")
    fmt = Path(out).suffix.lstrip(".").lower()
    from matplotlib.backend_bases import FigureCanvasBase

    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise BadInputError(f"{out}: cannot write a {fmt or 'suffix-less'} image; use one of "
                            f"{', '.join('.' + k for k in sorted(supported))}")
    panels = [_entropy_panel, _share_panel]
    if _has(manifest, "entropy_mean_correct"):
        panels.append(_correct_panel)
    if _has(manifest, "reward_mean", "accuracy"):
        panels.append(_reward_panel)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.4), dpi=90, squeeze=False)
    x = [e["step"] for e in manifest]
    for ax, panel in zip(axes[0], panels):
        panel(ax, x, manifest)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    title = terminal_text(f"{store.run_dir.name}  ({store.run_info.get('model') or 'model ?'})")
    fig.suptitle(title[:200], fontsize=10)  # trace text: controls shown as escapes, a 10 kB name cut
    fig.tight_layout()
    with atomic_output(out) as tmp:  # whole or not at all; /dev/stdout or a FIFO written through
        fig.savefig(tmp, format=fmt)
    plt.close(fig)
    return out


def _entropy_panel(ax, x, manifest) -> None:
    for lo, hi, alpha in (("p50", "p99", 0.18), ("p80", "p90", 0.4)):
        ax.fill_between(x, _series(manifest, f"entropy_{lo}"), _series(manifest, f"entropy_{hi}"),
                        color="C3", alpha=alpha, linewidth=0, label=f"{lo}-{hi}")
    ax.plot(x, _series(manifest, "entropy_mean"), color="k", lw=1.2, label="mean")
    ax.set_ylabel("nats")
    ax.set_title("token entropy")
    ax.legend(fontsize=8)


def _share_panel(ax, x, manifest) -> None:
    threshold = manifest[-1].get("threshold") or DEFAULT_THRESHOLD
    ax.plot(x, [100 * v for v in _series(manifest, "share_above")], color="C0")
    ax.set_ylabel("% of tokens")
    ax.set_title(f"share above {threshold:g} nats")


def _correct_panel(ax, x, manifest) -> None:
    ax.plot(x, _series(manifest, "entropy_mean_correct"), color="C2", label="correct")
    ax.plot(x, _series(manifest, "entropy_mean_incorrect"), color="C3", label="incorrect")
    ax.set_ylabel("mean entropy (nats)")
    ax.set_title("correct vs incorrect")
    ax.legend(fontsize=8)


def _reward_panel(ax, x, manifest) -> None:
    if _has(manifest, "reward_mean"):
        ax.plot(x, _series(manifest, "reward_mean"), color="C1", label="reward")
    if _has(manifest, "accuracy"):
        ax.plot(x, _series(manifest, "accuracy"), color="C4", label="accuracy")
    ax.set_title("reward")
    ax.legend(fontsize=8)
