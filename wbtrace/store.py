"""The local trace store: one run directory, read side, and the file layout every other part shares.

Layout of a run directory::

    run.json                      schema version, wbtrace version, model, tokenizer, trainer config
    vocab.parquet                 token id -> display text (see wbtrace.vocab)
    manifest.jsonl                one line per committed step, with its statistics
    steps/step_000050.parquet     one file per step, one row per response (see wbtrace.schema)

The manifest names only whole files: the writer renames a step file into place, then appends its line.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from wbtrace.errors import BadInputError, TraceFormatError
from wbtrace.schema import SCHEMA_VERSION, check_table, read_parquet
from wbtrace.steps import StepSelection, format_steps
from wbtrace.vocab import Vocab

log = logging.getLogger(__name__)

RUN_JSON = "run.json"
VOCAB_FILE = "vocab.parquet"
MANIFEST = "manifest.jsonl"
STEPS_DIR = "steps"
TEMP_MARK = ".tmp-"
_STEP_RE = re.compile(r"^step_(\d+)\.parquet$")


def step_filename(step: int) -> str:
    """``step_000050.parquet``: zero-padded so files sort in step order."""
    return f"step_{step:06d}.parquet"


def step_relpath(step: int) -> str:
    return f"{STEPS_DIR}/{step_filename(step)}"


def parse_step_filename(name: str) -> int | None:
    m = _STEP_RE.match(name)
    return int(m.group(1)) if m else None


def read_manifest(path: Path) -> list[dict[str, Any]]:
    """Manifest lines, skipping a torn last line (a crash in the middle of an append)."""
    if not path.exists():
        return []
    entries = []
    for i, line in enumerate(path.read_bytes().decode("utf-8", errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if isinstance(entry, dict):
            entries.append(entry)
        else:
            log.warning("%s: line %d is not a JSON object (torn write?); ignored", path, i + 1)
    return entries


# Manifest values that are numbers (step statistics, sizes); readers do arithmetic on them.
# (entropy_by_position is a list: `wbtrace stats` checks its items itself)
_NUMERIC_KEY = re.compile(r"^(n_|entropy_(?!by_position$)|reward_|share_|accuracy$|threshold$|bytes$|"
                          r"response_length_mean$)")


def clean_manifest_entry(entry: dict[str, Any], source: Path | str = MANIFEST) -> dict[str, Any] | None:
    """``entry`` as readers may use it, or None when it names no step.

    The manifest may come from someone else's trace: a statistic that is not a finite number is dropped
    (readers show it as missing) and a ``file`` that is not a relative path inside ``steps/`` is replaced
    by the step's standard name, so no reader does arithmetic on a string or opens a path outside the trace.
    """
    step = entry.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return None
    out = dict(entry)
    for key, value in entry.items():
        if _NUMERIC_KEY.match(key) and value is not None and not _is_number(value):
            log.warning("%s: step %d: %s is %r, not a number; ignored", source, step, key, value)
            del out[key]
    file = out.get("file")
    if file is not None and (not isinstance(file, str) or parse_step_filename(Path(file).name) is None
                             or Path(file).parent != Path(STEPS_DIR)):
        out["file"] = step_relpath(step)
    return out


def _is_number(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes: what the manifest records per step, and what verify/pull/mirror compare."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def temp_path(path: Path) -> Path:
    """The one temporary name of an output being written: ``.<name>.tmp-<pid>-<thread>`` beside it.

    Hidden (readers skip dot-files), unique per writer thread, and matched by `clean_temp_files`.
    """
    return path.with_name(f".{path.name}{TEMP_MARK}{os.getpid()}-{threading.get_ident()}")


def clean_temp_files(folder: Path) -> int:
    """Remove what a crashed writer left half-written in ``folder`` (see `temp_path`); returns how many."""
    found = list(Path(folder).glob(f".*{TEMP_MARK}*")) if Path(folder).is_dir() else []
    for tmp in found:
        tmp.unlink(missing_ok=True)
    return len(found)


@contextmanager
def atomic_output(path: str | os.PathLike, fsync: bool = True, parents: bool = True) -> Iterator[Path]:
    """Yield a path to write ``path``'s content to; on success it is in place, whole.

    A regular file (or a new one) is written whole or not at all: the content goes to `temp_path` in the
    same directory, is fsynced, then renamed over ``path``; on any error the temporary file is removed
    and ``path`` is untouched. A symlink is followed (the file it names is replaced, the link stays a
    link). A device or FIFO (``-o /dev/null``, a named pipe) is written through: renaming over it
    would replace ``/dev/null`` with a regular file. A directory is refused. ``parents=False`` leaves a
    missing folder an error (a mistyped output path is not created).
    """
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.is_dir():
        raise BadInputError(f"{path} is a directory: give a file name")
    if path.exists() and not path.is_file():
        yield path
        return
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = temp_path(path)
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def clean_stale_temps(path: Path) -> int:
    """Remove temp files of ``path`` whose writer process is gone (``kill -9`` leaves them); returns how many.

    Outputs outside a trace (``export -o``, ``view -o``) have no recovery pass, so the next write of the
    same output does it. A temp of a live process (another export running) is left alone.
    """
    removed = 0
    for tmp in path.parent.glob(f".{glob.escape(path.name)}{TEMP_MARK}*") if path.parent.is_dir() else []:
        pid = tmp.name[len(f".{path.name}{TEMP_MARK}"):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def atomic_write(path: Path, data: bytes | None = None, src: Path | None = None,
                 check: Callable[[Path], Any] | None = None) -> Any:
    """Write ``data`` (or a copy of the file ``src``) to ``path`` with `atomic_output`.

    ``check(temp_path)`` runs before the rename and its result is returned, so a bad download never
    replaces a good file.
    """
    with atomic_output(path) as tmp:
        if src is not None:
            shutil.copyfile(src, tmp)
        else:
            tmp.write_bytes(data or b"")
        return check(tmp) if check is not None else None


def append_manifest(run_dir: Path, entry: dict[str, Any]) -> None:
    """Append one manifest line, flushed to disk before the step counts as committed."""
    with open(run_dir / MANIFEST, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, separators=(",", ":")) + "\n")
        f.flush()
        os.fsync(f.fileno())


class TraceStore:
    """Read access to a local trace directory.

    Parameters
    ----------
    run_dir : str or Path
        A directory with ``run.json`` (written by `wbtrace.TraceWriter`, ``wbtrace pull`` or
        ``wbtrace import-npz``).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from wbtrace import TraceWriter, TraceStore
    >>> d = tempfile.mkdtemp()
    >>> with TraceWriter(d, vocab=["a", "b", "c"]) as w:
    ...     w.write_step(1, token_ids=np.array([[0, 1], [2, 0]]), response_mask=np.array([[1, 1], [1, 0]]),
    ...                  entropy=np.array([[0.1, 2.0], [0.5, 0.0]]))
    True
    >>> store = TraceStore(d)
    >>> store.steps
    [1]
    >>> store.read_step(1).column("token_ids").to_pylist()
    [[0, 1], [2]]
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        if not self.run_dir.is_dir():
            raise TraceFormatError(f"{self.run_dir}: no such trace directory")
        if not (self.run_dir / RUN_JSON).is_file():
            hint = ""
            if list((self.run_dir / STEPS_DIR).glob("step_*.npz")):
                hint = " (it looks like a seed .npz trace: convert it with `wbtrace import-npz`)"
            raise TraceFormatError(f"{self.run_dir} is not a wbtrace trace: no {RUN_JSON}{hint}")
        version = self.run_info.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise TraceFormatError(
                f"{self.run_dir / RUN_JSON}: schema version {version!r} is not one this wbtrace reads "
                f"(1..{SCHEMA_VERSION}); upgrade wbtrace"
            )

    @cached_property
    def run_info(self) -> dict[str, Any]:
        try:
            info = json.loads((self.run_dir / RUN_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # ValueError: bad JSON or bytes that are not UTF-8
            raise TraceFormatError(f"{self.run_dir / RUN_JSON}: unreadable ({e})") from None
        if not isinstance(info, dict):
            raise TraceFormatError(f"{self.run_dir / RUN_JSON}: not a JSON object")
        return info

    @property
    def manifest(self) -> list[dict[str, Any]]:
        """Committed steps' manifest lines, in step order, one per step (see `clean_manifest_entry`)."""
        entries = (clean_manifest_entry(e, self.run_dir / MANIFEST) for e in read_manifest(self.run_dir / MANIFEST))
        by_step = {e["step"]: e for e in entries if e is not None}
        return [by_step[s] for s in sorted(by_step)]

    @property
    def steps(self) -> list[int]:
        """Steps whose files are committed: named in the manifest (or, with no manifest, present on disk)."""
        manifest = self.manifest
        if manifest:
            return [e["step"] for e in manifest if (self.run_dir / e.get("file", step_relpath(e["step"]))).exists()]
        found = (parse_step_filename(p.name) for p in (self.run_dir / STEPS_DIR).glob("step_*.parquet"))
        return sorted(s for s in found if s is not None)

    @cached_property
    def vocab(self) -> Vocab:
        return Vocab.read(self.run_dir / VOCAB_FILE)

    def step_path(self, step: int) -> Path:
        return self.run_dir / step_relpath(step)

    def select(self, selection: StepSelection | None = None) -> list[int]:
        """Steps to work on: those of ``selection`` (each explicit one must exist), or all."""
        return (selection or StepSelection()).resolve(self.steps, self.run_dir)

    def read_step(self, step: int, columns: list[str] | None = None) -> pa.Table:
        """One step as a `pyarrow.Table` (one row per response); ``columns`` selects a subset.

        Every page's CRC is checked (the writer stores them); a whole-file read also checks the file's
        sha256 against the manifest, which catches what page checksums miss (a flip in the footer).
        """
        path = self.step_path(step)
        if not path.exists():
            raise BadInputError(f"step {step} not in {self.run_dir}; it has steps {format_steps(self.steps)}")
        try:
            data = path.read_bytes() if columns is None else None
            source = path if data is None else pa.BufferReader(data)
            table = read_parquet(source, columns, page_checksum_verification=True)
        except (pa.ArrowException, OSError) as e:
            raise TraceFormatError(f"{path}: corrupt or truncated Parquet file ({e})") from None
        if data is not None:
            self._check_digest(step, path, hashlib.sha256(data).hexdigest())
        check_table(table, str(path), partial=columns is not None)
        return table

    def recorded_sha256(self, step: int) -> str | None:
        """The sha256 the manifest recorded for ``step`` when it was committed (None for older traces)."""
        if step not in self._digests:
            self.__dict__.pop("_digests", None)  # a live trace: the step may have landed since
        digest = self._digests.get(step)
        return digest if isinstance(digest, str) else None

    @cached_property
    def _digests(self) -> dict[int, Any]:
        return {e["step"]: e.get("sha256") for e in self.manifest}

    def _check_digest(self, step: int, path: Path, got: str) -> None:
        want = self.recorded_sha256(step)
        if want is not None and got != want:
            raise TraceFormatError(f"{path}: corrupt: its bytes changed since it was committed (sha256 {got[:12]}..., "
                                   f"the manifest has {want[:12]}...); `wbtrace verify {self.run_dir}` lists all damage")

    def iter_steps(self, steps: Iterable[int] | None = None, columns: list[str] | None = None
                   ) -> Iterator[tuple[int, pa.Table]]:
        """Yield ``(step, table)`` one step at a time, so memory holds one step, not the run."""
        for step in (self.steps if steps is None else steps):
            yield step, self.read_step(step, columns)
