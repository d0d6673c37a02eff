"""Pull steps from a W&B offline run directory (``wandb/offline-run-*``), with no server.

The `.wandb` file names each ``wbtrace-<run_id>`` artifact version (alias ``step-N``) and its files'
absolute ``local_path``. `WandbSink` keeps those files inside the run dir (``<run dir>/wbtrace/``), so
a run dir copied to another host still pulls: paths are re-rooted on the current run dir, and every
file is checked against the md5 digest the record holds before it is used. A file outside the run dir
is refused (the record is untrusted input).
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from wbtrace.errors import SourceError, TraceFormatError
from wbtrace.sources.pull import LocalTraceDir, Progress, StepSpec, default_dest, safe_join
from wbtrace.sources.wandb_file import ArtifactEntry, ArtifactRecord, iter_artifacts, run_identity
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
        if not art.name.startswith("wbtrace-"):
            continue
        for alias in art.aliases:
            if alias.startswith("step-") and alias[5:].isdigit():
                versions[int(alias[5:])] = art  # a later record for the same step wins
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
    candidates = [safe_join(run_dir / "wbtrace", entry.path)]
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


def pull_offline(run_dir: str | Path, spec: StepSpec, dest: str | Path | None = None,
                 progress: Progress | None = None) -> Path:
    """Pull steps from an offline run dir into a local trace dir (default ``./wbtrace-<run_id>``)."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        run_dir = run_dir.parent
    run_dir = run_dir.resolve()
    run_id, versions = trace_versions(run_dir)
    if not versions:
        raise SourceError(f"{run_dir}: this W&B run has no wbtrace artifacts")
    steps = spec.resolve(versions)
    out = LocalTraceDir(dest if dest is not None else default_dest(run_id))
    for i, step in enumerate(steps, 1):
        art = versions[step]
        files = {e.path: e for e in art.entries}
        step_entry = next((e for e in art.entries if e.path.startswith("steps/") and e.path.endswith(".parquet")),
                          None)
        if step_entry is None or RUN_JSON not in files or VOCAB_FILE not in files:
            raise TraceFormatError(f"{art.name}:step-{step}: the artifact lacks its step file, run.json or vocab")
        if i == 1:
            out.add_run_files(locate(files[RUN_JSON], run_dir), locate(files[VOCAB_FILE], run_dir))
        out.add_step(step, locate(step_entry, run_dir), art.metadata)
        if progress:
            progress(i, len(steps))
    return out.close()
