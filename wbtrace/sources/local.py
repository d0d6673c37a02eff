"""The local store as a source: a trace dir on disk (what the writer, ``pull`` or ``import-npz`` made)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from wbtrace.sources.base import RunFiles, StepFile, TraceSource
from wbtrace.store import RUN_JSON, VOCAB_FILE, TraceStore


class LocalSource(TraceSource):
    """Steps of the trace dir ``run_dir``, read in place."""

    def __init__(self, run_dir: str | Path) -> None:
        self.store = TraceStore(run_dir)

    @property
    def label(self) -> str:
        return str(self.store.run_dir)

    @property
    def run_id(self) -> str:
        return str(self.store.run_info.get("trace_id") or self.store.run_dir.resolve().name)

    @property
    def key(self) -> str:
        return "local-" + hashlib.sha1(str(self.store.run_dir.resolve()).encode()).hexdigest()[:12]

    def steps(self) -> list[int]:
        return self.store.steps

    def run_files(self, scratch: Path) -> RunFiles:
        vocab = self.store.run_dir / VOCAB_FILE
        return RunFiles(self.store.run_dir / RUN_JSON, vocab if vocab.is_file() else None)

    def step_file(self, step: int, scratch: Path) -> StepFile:
        line = next((e for e in self.store.manifest if e["step"] == step), {})
        return StepFile(self.store.step_path(step), line)
