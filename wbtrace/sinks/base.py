"""The sink interface: what a backend (W&B, MLflow) receives once a step is committed locally.

The writer calls sinks from its background thread, after the step's Parquet file is whole on disk and
named in the manifest. A sink that raises never stops training: the writer counts and warns, and the
local store still has the step (``wbtrace mirror`` catches up later). Shape after Lightning's loggers:
a few abstract methods, no-op defaults, one backend per module, backend imported inside methods.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa

METRIC_PREFIX = "trace/"
# Manifest fields that describe the file or the run, not the step's numbers (docs/format.md).
BOOKKEEPING = frozenset({"step", "file", "bytes", "committed_at", "recovered", "threshold", "schema_version"})


def step_metrics(stats: Mapping[str, Any]) -> dict[str, float]:
    """The metrics every sink logs for a step: ``trace/<key>`` for each number of its manifest line.

    The one definition W&B history and MLflow metrics share (bookkeeping fields and non-numbers left out).
    """
    return {f"{METRIC_PREFIX}{k}": float(v) for k, v in stats.items()
            if k not in BOOKKEEPING and isinstance(v, int | float) and not isinstance(v, bool)}


class TraceSink(ABC):
    """Receives committed steps. Subclasses: `wbtrace.sinks.wandb.WandbSink`, `wbtrace.sinks.mlflow.MlflowSink`."""

    name: str = "sink"

    def log_run(self, run_dir: Path, run_info: dict[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Called once, after ``run.json`` and ``vocab.parquet`` exist in ``run_dir``."""

    @abstractmethod
    def log_step(self, step: int, step_file: Path, stats: dict[str, Any], table: pa.Table) -> None:
        """Log one committed step: its Parquet file, its statistics (the manifest line) and its table."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:  # noqa: B027
        """Trainer scalars (reward, accuracy, timings...) for this step."""

    def finish(self, status: str = "success") -> None:  # noqa: B027
        """Flush and close. ``status`` is ``"success"`` or ``"failed"``."""


class NullSink(TraceSink):
    """A sink that does nothing, explicitly (no catch-all ``__getattr__`` hiding typos)."""

    name = "null"

    def log_step(self, step: int, step_file: Path, stats: dict[str, Any], table: pa.Table) -> None:
        return None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        return None

    def finish(self, status: str = "success") -> None:
        return None
