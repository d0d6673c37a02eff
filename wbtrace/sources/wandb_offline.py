"""A W&B offline run directory (``wandb/offline-run-*``) as a source, read with no server.

The `.wandb` file names each ``wbtrace-<run_id>`` artifact version (alias ``step-N``) and its files'
absolute ``local_path``. `WandbSink` keeps those files inside the run dir (``<run dir>/wbtrace/``), so
a run dir copied to another host still pulls: paths are re-rooted on the current run dir, and every
file is checked against the md5 digest the record holds before it is used. A file outside the run dir
is refused (the record is untrusted input).
"""

from __future__ import annotations

import base64
import hashlib
from functools import cached_property
from pathlib import Path

from wbtrace.backends.wandb import RUN_FILES_DIR, alias_step, is_trace_artifact
from wbtrace.backends.wandb_file import ArtifactEntry, ArtifactRecord, iter_artifacts, run_identity
from wbtrace.errors import SourceError, TraceFormatError
from wbtrace.sources.base import RunFiles, StepFile, TraceSource
from wbtrace.sources.pull import safe_join
from wbtrace.store import RUN_JSON, VOCAB_FILE


def find_wandb_file(run_dir: str | Path) -> Path:
    """The ``run-<id>.wandb`` file of an offline run dir (or the file itself)."""
    run_dir = Path(run_dir)
    if run_dir.is_file() and run_dir.suffix == ".wandb":
        return run_dir
    files = sorted(run_dir.glob("*.wandb")) if run_dir.is_dir() else []
    if not files:
        raise SourceError(f"{run_dir}: not a W&B run directory (no .wandb file)")
    return files[0]


def is_offline_run_dir(path: str | Path) -> bool:
    """True for a folder holding a ``.wandb`` file (what ``wbtrace pull`` treats as an offline run)."""
    p = Path(path)
    return (p.is_file() and p.suffix == ".wandb") or (p.is_dir() and any(p.glob("*.wandb")))


def trace_versions(run_dir: str | Path) -> tuple[str | None, dict[int, ArtifactRecord]]:
    """``(run_id, {step: artifact record})`` of the wbtrace artifacts logged in an offline run.

    The log is streamed (history rows are never held): memory follows the number of traced steps.
    """
    path = find_wandb_file(run_dir)
    run_id = run_identity(path)[0]
    versions: dict[int, ArtifactRecord] = {}
    for art in iter_artifacts(path):
        if not is_trace_artifact(art.name):
            continue
        for step in (alias_step(a) for a in art.aliases):
            if step is not None:
                versions[step] = art  # a later record for the same step wins
    return run_id, versions


def _md5_b64(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.b64encode(h.digest()).decode()


def locate(entry: ArtifactEntry, run_dir: Path) -> Path:
    """Where an entry's file is now: under ``run_dir/wbtrace/``, or its recorded path re-rooted on ``run_dir``.

    A ``file://`` reference is read where it points (a shared file system); other references (buckets)
    are for the online source, which lets W&B fetch them.
    """
    if entry.ref and not entry.local_path:
        return _reference(entry)
    candidates = [safe_join(run_dir / RUN_FILES_DIR, entry.path)]
    parts = Path(entry.local_path).parts
    for i, part in enumerate(parts):
        if part.startswith(("offline-run-", "run-")) and i + 1 < len(parts):
            try:
                candidates.append(safe_join(run_dir, str(Path(*parts[i + 1:]))))
            except SourceError:
                pass
    for path in candidates:
        if path.is_file() and _md5_b64(path) == entry.digest:
            return path
    raise SourceError(
        f"{entry.path}: its file is not in {run_dir} (was the run logged with an older wbtrace, "
        f"or copied without its wbtrace/ folder?)"
    )


def _reference(entry: ArtifactEntry) -> Path:
    from urllib.parse import unquote, urlparse

    uri = urlparse(entry.ref)
    if uri.scheme != "file":
        raise SourceError(f"{entry.path}: a reference to {entry.ref}; pull it through W&B (ENTITY/PROJECT/RUN_ID), "
                          "which fetches references with your bucket credentials")
    path = Path(unquote(uri.path))
    if not path.is_file():
        raise SourceError(f"{entry.path}: its reference {entry.ref} is not readable from this host")
    if _md5_b64(path) != entry.digest:
        raise SourceError(f"{entry.path}: {path} changed since it was logged (md5 differs)")
    return path


class WandbOfflineSource(TraceSource):
    """The wbtrace artifacts of an offline run dir (or its ``.wandb`` file), each file checked by digest."""

    missing = "step {missing} not found; steps that exist: {available}"

    def __init__(self, run_dir: str | Path) -> None:
        run_dir = Path(run_dir)
        self.run_dir = (run_dir.parent if run_dir.is_file() else run_dir).resolve()

    @cached_property
    def _versions(self) -> tuple[str | None, dict[int, ArtifactRecord]]:
        run_id, versions = trace_versions(self.run_dir)
        if not versions:
            raise SourceError(f"{self.run_dir}: this W&B run has no wbtrace artifacts")
        return run_id, versions

    @property
    def label(self) -> str:
        return f"W&B offline run {self.run_dir}"

    @property
    def run_id(self) -> str:
        return self._versions[0] or self.run_dir.name

    @property
    def key(self) -> str:
        return f"wandb-offline-{self.run_id}-" + hashlib.sha1(str(self.run_dir).encode()).hexdigest()[:8]

    def steps(self) -> list[int]:
        return sorted(self._versions[1])

    def _files(self, step: int) -> tuple[ArtifactRecord, dict[str, ArtifactEntry]]:
        art = self._versions[1][step]
        files = {e.path: e for e in art.entries}
        if RUN_JSON not in files or VOCAB_FILE not in files or _step_entry(art) is None:
            raise TraceFormatError(f"{art.name}:step-{step}: the artifact lacks its step file, run.json or vocab")
        return art, files

    def run_files(self, scratch: Path) -> RunFiles:
        _, files = self._files(self.steps()[-1])
        return RunFiles(locate(files[RUN_JSON], self.run_dir), locate(files[VOCAB_FILE], self.run_dir))

    def step_file(self, step: int, scratch: Path) -> StepFile:
        art, _ = self._files(step)
        return StepFile(locate(_step_entry(art), self.run_dir), art.metadata)


def _step_entry(art: ArtifactRecord) -> ArtifactEntry | None:
    return next((e for e in art.entries if e.path.startswith("steps/") and e.path.endswith(".parquet")), None)
