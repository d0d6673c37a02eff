"""The source interface: where a trace can be read from, reduced to a few primitives.

Shaped like httpx's transports: a backend (the local store, a W&B offline run dir, the W&B API,
MLflow) answers ``steps()``, ``run_files(scratch)`` and ``step_file(step, scratch)``; everything else
(choosing steps, progress, verification, the manifest, where files land) is `wbtrace.sources.pull.pull`'s,
written once. Primitives may download into ``scratch`` (a private folder the caller removes after the
step) or return a file that already exists; either way the caller only reads it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from wbtrace.steps import MISSING


class StepFile(NamedTuple):
    """One step as a source gives it: its Parquet file and the statistics the source recorded."""

    path: Path
    stats: Mapping[str, Any]


class RunFiles(NamedTuple):
    """``run.json`` and ``vocab.parquet`` (None: the trace was written without a tokenizer)."""

    run_json: Path
    vocab: Path | None


class TraceSource(ABC):
    """A trace's steps, read through three primitives. Subclasses: `wbtrace.sources.local.LocalSource`,
    `wbtrace.sources.wandb_offline.WandbOfflineSource`, `wbtrace.sources.wandb_api.WandbApiSource`,
    `wbtrace.sources.mlflow.MlflowSource`."""

    #: How a missing step is reported (``{missing}``, ``{where}``, ``{available}``).
    missing: str = MISSING

    @property
    @abstractmethod
    def label(self) -> str:
        """The source in messages, e.g. ``W&B run me/dapo/3xk9q2ab``."""

    @property
    @abstractmethod
    def run_id(self) -> str:
        """The run's id at the source (a pull's default folder is ``./wbtrace-<run_id>``)."""

    @property
    @abstractmethod
    def key(self) -> str:
        """A file-name-safe id of this source, stable across calls (names its local cache)."""

    @abstractmethod
    def steps(self) -> list[int]:
        """The steps the source holds, in order; raises `SourceError` if the source is unreachable or no trace."""

    @abstractmethod
    def run_files(self, scratch: Path) -> RunFiles:
        """The run's ``run.json`` and ``vocab.parquet``."""

    @abstractmethod
    def step_file(self, step: int, scratch: Path) -> StepFile:
        """One step's Parquet file (``step`` is one of `steps`)."""
