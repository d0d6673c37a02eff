"""The one `pull` loop: steps of any `TraceSource` into the local trace layout, verified, with a manifest.

Every source (local, W&B offline run dir, W&B API, MLflow) ends here, so a pulled trace has the exact
layout the local store reads (``run.json``, ``vocab.parquet``, ``manifest.jsonl``,
``steps/step_%06d.parquet``) and ``wbtrace ls/stats/show/export`` work on it. Destination names are
built here from step numbers, never taken from the source: artifact file names are untrusted. Files
land whole or not at all (`wbtrace.store.atomic_write`, each step read back as Parquet before its
rename), and pulling more steps later into the same folder merges the manifest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from wbtrace.dirlock import TraceLock
from wbtrace.errors import SourceError, TraceFormatError
from wbtrace.sources.base import TraceSource
from wbtrace.steps import StepSelection
from wbtrace.store import (
    MANIFEST,
    RUN_JSON,
    STEPS_DIR,
    VOCAB_FILE,
    append_manifest,
    atomic_write,
    clean_temp_files,
    file_sha256,
    read_manifest,
    step_relpath,
)

Progress = Callable[[int, int], None]  # (done, total)


def pull(source: TraceSource, selection: StepSelection | None = None, dest: str | Path | None = None,
         progress: Progress | None = None, only_new: bool = False) -> Path:
    """Copy the selected steps (default: all) of ``source`` into the local trace dir ``dest``; return it.

    ``dest`` defaults to ``./wbtrace-<run_id>``; pulling into an existing folder of the same run merges.
    A step the folder already holds whole (its file has the sha256 its manifest line records) is not
    downloaded again, and ``only_new`` skips every step the folder holds. Each step's manifest line is
    appended as the step lands, so an interrupted pull keeps what it brought and a rerun resumes. The
    folder is locked while pulling (`wbtrace.dirlock`): a pull into a trace being written is refused. A
    missing step raises `SourceError` naming the steps that exist; a folder this pull created is removed
    if the pull fails before any step landed.
    """
    wanted = (selection or StepSelection()).resolve(source.steps(), source.label, error=SourceError,
                                                     missing=source.missing)
    dest = Path(dest if dest is not None else default_dest(source.run_id))
    created = not dest.exists()
    try:
        with TraceLock(dest, "wbtrace pull"):
            out = LocalTraceDir(dest)
            todo = [s for s in wanted if not (s in out.steps if only_new else out.holds_whole(s))]
            _pull_steps(source, out, todo, progress)
    except BaseException:
        if created and not any((dest / STEPS_DIR).glob("step_*.parquet")):
            shutil.rmtree(dest, ignore_errors=True)  # nothing landed: leave no half-made folder
        raise
    return dest


def _pull_steps(source: TraceSource, out: LocalTraceDir, steps: list[int], progress: Progress | None) -> None:
    with tempfile.TemporaryDirectory(prefix="wbtrace-pull-") as tmp:
        for i, step in enumerate(steps, 1):
            scratch = Path(tmp) / str(step)
            scratch.mkdir()
            got = source.step_file(step, scratch)
            if i == 1:  # after the first step: a W&B artifact carries the run files with it
                run_json, vocab = source.run_files(scratch)
                out.add_run_files(run_json, vocab if vocab is not None else empty_vocab())
            out.add_step(step, got.path, got.stats)
            shutil.rmtree(scratch, ignore_errors=True)
            if progress:
                progress(i, len(steps))


def empty_vocab() -> bytes:
    """A trace written without a tokenizer has no vocab.parquet; the local layout still wants one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wbtrace.vocab import build_vocab

    buf = pa.BufferOutputStream()
    pq.write_table(build_vocab(pieces=[]), buf)
    return buf.getvalue().to_pybytes()


def _step_line(path: Path, step: int, given: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest line of a pulled step: statistics recomputed from the file, the source's extras kept."""
    import pyarrow.parquet as pq

    from wbtrace.stats import DEFAULT_THRESHOLD, step_stats

    try:
        table = pq.read_table(path)
    except Exception as e:  # any pyarrow failure means the download is not a step file
        raise TraceFormatError(f"step {step}: the downloaded file is not readable Parquet ({e})") from None
    given = given if isinstance(given, Mapping) else {}  # metadata comes from the source: untrusted
    threshold = given.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold > 0:
        threshold = DEFAULT_THRESHOLD
    line = {k: v for k, v in given.items()
            if isinstance(k, str) and not k.startswith("_") and k != "schema_version"}
    digest = file_sha256(path)
    if isinstance(given.get("sha256"), str) and given["sha256"] != digest:
        raise SourceError(f"step {step}: the downloaded file does not match the sha256 its writer recorded "
                          f"({digest[:12]}... != {given['sha256'][:12]}...); nothing was written, pull it again")
    line.update({"step": step, "file": step_relpath(step), "bytes": path.stat().st_size, "sha256": digest})
    line.update(step_stats(table, float(threshold)))
    return line


class LocalTraceDir:
    """Writes pulled files into a local trace dir; call `add_run_files`, `add_step` (any number), `close`.

    ``stats`` given to `add_step` (e.g. an artifact's metadata, which the sinks fill from the manifest
    line) become the step's manifest line; ``step``, ``file``, ``bytes``, ``n_responses`` and
    ``n_tokens`` are always recomputed from the file itself.
    """

    def __init__(self, dest: str | Path) -> None:
        self.dest = Path(dest)
        self.dest.mkdir(parents=True, exist_ok=True)
        has_steps = (self.dest / MANIFEST).exists() or any((self.dest / STEPS_DIR).glob("step_*.parquet"))
        if has_steps and not (self.dest / RUN_JSON).exists():
            raise SourceError(f"{self.dest} has steps but no {RUN_JSON}: not a trace a pull can merge into; "
                              "choose another --dest")
        for folder in (self.dest, self.dest / STEPS_DIR):  # what a killed pull left half-written
            clean_temp_files(folder)
        self._lines: dict[int, dict[str, Any]] = self._read_manifest()

    @property
    def steps(self) -> set[int]:
        """Steps the folder already holds (named in its manifest, file present)."""
        return {s for s in self._lines if (self.dest / step_relpath(s)).is_file()}

    def holds_whole(self, step: int) -> bool:
        """The folder has ``step`` and its bytes are the ones its manifest line records (sha256)."""
        line, path = self._lines.get(step), self.dest / step_relpath(step)
        return bool(line) and isinstance(line.get("sha256"), str) and path.is_file() \
            and file_sha256(path) == line["sha256"]

    def _read_manifest(self) -> dict[int, dict[str, Any]]:
        return {e["step"]: e for e in read_manifest(self.dest / MANIFEST) if isinstance(e.get("step"), int)}

    def add_run_files(self, run_json: bytes | Path, vocab: bytes | Path) -> None:
        """Write ``run.json`` and ``vocab.parquet``; refuse a folder that holds a different run."""
        new = run_json.read_bytes() if isinstance(run_json, Path) else run_json
        try:
            json.loads(new)
        except ValueError:
            raise TraceFormatError("the source's run.json is not JSON") from None
        old_path = self.dest / RUN_JSON
        if old_path.exists() and old_path.read_bytes() != new:
            raise SourceError(f"{self.dest} already holds a different run: choose another --dest")
        for name, content in ((RUN_JSON, new), (VOCAB_FILE, vocab)):
            if isinstance(content, Path):
                atomic_write(self.dest / name, src=content)
            else:
                atomic_write(self.dest / name, data=content)

    def add_step(self, step: int, src: bytes | Path, stats: Mapping[str, Any] | None = None) -> Path:
        """Write one step's Parquet file (a path to copy, or bytes), then append its manifest line."""
        step = int(step)
        dest = self.dest / step_relpath(step)
        check = lambda tmp: _step_line(tmp, step, stats or {})  # noqa: E731 (validates before the rename)
        if isinstance(src, Path):
            line = atomic_write(dest, src=src, check=check)
        else:
            line = atomic_write(dest, data=src, check=check)
        append_manifest(self.dest, line)  # the step counts as pulled once its line is on disk
        self._lines[step] = line
        return dest

    def close(self) -> Path:
        """The trace dir (every line is appended as its step lands: nothing is left to write)."""
        return self.dest


def default_dest(run_id: str) -> Path:
    """``./wbtrace-<run_id>``; the id comes from the source, so it must be a plain name."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", run_id or "") or run_id in (".", ".."):
        raise SourceError(f"run id {run_id!r} is not a plain name: pass --dest")
    return Path(f"wbtrace-{run_id}")


def safe_join(root: str | Path, name: str) -> Path:
    """``root/name`` for an untrusted relative ``name``; raises if it would leave ``root``."""
    root = Path(root).resolve()
    target = (root / name).resolve()
    if os.path.isabs(name) or not target.is_relative_to(root):
        raise SourceError(f"refusing a file name that leaves its folder: {name!r}")
    return target
