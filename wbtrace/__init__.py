"""wbtrace: keep the per-token entropy and log-probs of RL rollouts, step by step.

``TraceWriter`` writes a trace (one Parquet file per step) from a training loop; ``TraceStore`` reads
one back. Everything else (sinks, sources, CLI, trainer) is imported on demand, so ``import wbtrace``
needs only pyarrow and numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from wbtrace.sampling import TraceSampling
    from wbtrace.store import TraceStore
    from wbtrace.writer import TraceWriter

__all__ = ["TraceSampling", "TraceWriter", "TraceStore", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `wbtrace.kernels` can be imported on a GPU box with torch alone.
    if name == "TraceWriter":
        from wbtrace.writer import TraceWriter

        return TraceWriter
    if name == "TraceStore":
        from wbtrace.store import TraceStore

        return TraceStore
    if name == "TraceSampling":
        from wbtrace.sampling import TraceSampling

        return TraceSampling
    raise AttributeError(f"module 'wbtrace' has no attribute {name!r}")
