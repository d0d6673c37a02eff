"""TraceWriter: what a trainer calls every step. Asynchronous, atomic, resumable, never fatal.

``write_step`` copies the caller's arrays (one device-to-host copy) and puts them on a bounded queue;
a background thread packs the Parquet file, renames it into place, appends the manifest line and
hands the committed step to the sinks (W&B, MLflow). Rules:

* Tracing never kills or stalls training: every error becomes a warning and a counter in the
  `WriterReport` that ``close()`` returns; when the queue is full for ``max_block_s`` the step is
  dropped (counted), rather than blocking the training loop longer.
* A step file appears whole or not at all (temp file + fsync + rename); the manifest names only
  whole files. A new writer on the same directory cleans temp files, adds manifest lines for whole
  files a crash left unnamed, repairs a torn manifest tail, and skips steps already committed.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import json
import logging
import os
import queue
import subprocess
import sys
import threading
import uuid
import weakref
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wbtrace.dirlock import TraceLock
from wbtrace.errors import BadInputError
from wbtrace.schema import SCHEMA_VERSION, pack_step, read_parquet, to_numpy
from wbtrace.sinks.base import TraceSink
from wbtrace.stats import DEFAULT_THRESHOLD, step_stats
from wbtrace.store import (
    MANIFEST,
    RUN_JSON,
    STEPS_DIR,
    VOCAB_FILE,
    TraceStore,
    append_manifest,
    atomic_output,
    atomic_write,
    clean_temp_files,
    file_sha256,
    parse_step_filename,
    read_manifest,
    step_relpath,
)
from wbtrace.vocab import build_vocab

log = logging.getLogger("wbtrace")
_STOP = object()


@dataclass
class WriterReport:
    """What a writer did: returned by `TraceWriter.close` and readable any time as ``writer.report``."""

    written: int = 0
    skipped: int = 0  # steps already in the trace (written twice, or re-run after a resume)
    rejected: int = 0  # bad input: shapes, NaN/inf entropy
    dropped: int = 0  # queue full for longer than max_block_s
    errors: int = 0  # I/O or unexpected errors while writing
    columns_dropped: int = 0  # optional columns that did not fit; their steps were written without them
    sink_errors: Counter = field(default_factory=Counter)
    last_step: int | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        # a skipped step was not written: the caller's data for it is not in the trace
        return not (self.skipped or self.rejected or self.dropped or self.errors or self.columns_dropped
                    or sum(self.sink_errors.values()))


def write_parquet_atomic(table: pa.Table, path: Path, compression: str = "zstd",
                         compression_level: int | None = None) -> int:
    """Write a step table to ``path`` whole or not at all; returns its size in bytes.

    Entropy/log-prob lists use PLAIN encoding: DuckDB cannot read BYTE_STREAM_SPLIT float16, and a
    float16 dictionary (up to 65,536 values) costs more than it saves.
    """
    plain = [f"{c}.list.element" for c in table.column_names
             if pa.types.is_list(table.schema.field(c).type) and pa.types.is_floating(table.schema.field(c).type.value_type)]
    dictionary = [c for c in ("group_id",) if c in table.column_names]
    # Min/max statistics help readers skip row groups by step or sample; on token lists they cost time.
    scalars = [c for c in table.column_names if not pa.types.is_list(table.schema.field(c).type)]
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp, compression=compression, compression_level=compression_level,
                       use_dictionary=dictionary, column_encoding={c: "PLAIN" for c in plain},
                       write_statistics=scalars, row_group_size=max(table.num_rows, 1),
                       write_page_checksum=True)  # a reader detects a flipped bit in any page
    return path.stat().st_size


def commit_step(run_dir: Path, step: int, table: pa.Table, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Write a packed step table into ``run_dir`` and name it in the manifest; returns the manifest entry."""
    rel = step_relpath(step)
    stats = step_stats(table, threshold)  # before the file exists: a failure here leaves nothing behind
    nbytes = write_parquet_atomic(table, run_dir / rel)
    entry = {"step": step, "file": rel, "bytes": nbytes, "sha256": file_sha256(run_dir / rel), **stats,
             "committed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    append_manifest(run_dir, entry)
    return entry


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def init_run_dir(run_dir: Path, run_info: dict[str, Any] | None = None, tokenizer: Any = None,
                 vocab: Sequence[str] | pa.Table | None = None, resume: bool | None = None) -> dict[str, Any]:
    """Create ``run.json`` (kept as is if present, after a version check) and ``vocab.parquet``.

    A directory that already holds a trace is continued only when it is the same run (`other_run_problem`);
    ``resume=True`` continues it regardless, ``resume=False`` refuses any directory with steps.
    """
    from wbtrace import __version__

    table = None
    if tokenizer is not None or vocab is not None:
        table = vocab if isinstance(vocab, pa.Table) else build_vocab(tokenizer=tokenizer, pieces=vocab)
    problem = other_run_problem(run_dir, run_info, table, resume)
    if problem:
        raise BadInputError(problem)
    (run_dir / STEPS_DIR).mkdir(parents=True, exist_ok=True)
    if (run_dir / RUN_JSON).exists():
        info = TraceStore(run_dir).run_info  # checks the schema version
    else:
        # trace_id: mirrors find their run by it; a hash of the rest would collide for two traces made
        # in the same second with the same settings.
        info = {"schema_version": SCHEMA_VERSION, "trace_id": uuid.uuid4().hex, "wbtrace_version": __version__,
                "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "git_commit": _git_commit(),
                "tokenizer": getattr(tokenizer, "name_or_path", None), **(run_info or {})}
        atomic_write(run_dir / RUN_JSON, json.dumps(info, indent=2, default=str).encode())
    if not (run_dir / VOCAB_FILE).exists() and table is not None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        atomic_write(run_dir / VOCAB_FILE, sink.getvalue().to_pybytes())
    return info


def other_run_problem(run_dir: Path, run_info: dict[str, Any] | None, vocab: pa.Table | None,
                      resume: bool | None = None) -> str | None:
    """Why ``run_dir`` must not take this run's steps, or None when it may (new, or the same run resumed).

    The same run: no recorded ``model`` or ``trace_id`` that differs from ``run_info``'s, and the same token
    texts as the vocabulary given. Config changes (more steps, a new learning rate) are a resume. Another
    run's steps would be skipped as "already there", and the new ones decoded with the old vocabulary.
    """
    from wbtrace.vocab import Vocab

    has_steps = (run_dir / MANIFEST).exists() or any((run_dir / STEPS_DIR).glob("step_*.parquet"))
    if not (run_dir / RUN_JSON).exists():
        return (f"{run_dir} has steps but no {RUN_JSON}: it is not a trace this writer can continue; "
                "write to a new directory") if has_steps else None
    if resume is False and has_steps:
        return f"{run_dir} already holds a trace (resume=False): write to a new directory"
    if resume:
        return None
    old = TraceStore(run_dir).run_info
    for key in ("trace_id", "model"):
        mine, theirs = (run_info or {}).get(key), old.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            return (f"{run_dir} holds another run ({key} {theirs!r}, this one is {mine!r}); write to a new "
                    "directory, or pass resume=True if it is the same run")
    if vocab is not None and (run_dir / VOCAB_FILE).exists():
        if list(Vocab.read(run_dir / VOCAB_FILE).texts) != vocab.column("text").to_pylist():
            return (f"{run_dir} holds another run (its vocabulary differs from this tokenizer's); write to a "
                    "new directory, or pass resume=True if it is the same run")
    return None


def recover(run_dir: Path, threshold: float = DEFAULT_THRESHOLD) -> set[int]:
    """Make a directory left by a crashed writer consistent; return its committed steps.

    Temp files are removed (never whole), a torn manifest tail is dropped, and whole step files the
    manifest does not name (crash between rename and append) get their line. Unreadable step files
    are renamed ``*.corrupt``, never deleted.
    """
    steps_dir = run_dir / STEPS_DIR
    clean_temp_files(run_dir)
    clean_temp_files(steps_dir)
    manifest = run_dir / MANIFEST
    if manifest.exists() and manifest.stat().st_size and not manifest.read_bytes().endswith(b"\n"):
        good = [json.dumps(e, separators=(",", ":")) + "\n" for e in read_manifest(manifest)]
        atomic_write(manifest, "".join(good).encode())
        log.warning("%s: dropped a torn last line", manifest)
    committed = {e["step"] for e in read_manifest(manifest)
                 if isinstance(e.get("step"), int) and (run_dir / step_relpath(e["step"])).exists()}
    for path in sorted(steps_dir.glob("step_*.parquet")):
        step = parse_step_filename(path.name)
        if step is None or step in committed:
            continue
        try:
            stats = step_stats(read_parquet(path), threshold)
        except Exception as e:  # unreadable, or not a step table: keep the bytes, out of the way
            path.rename(path.with_name(path.name + ".corrupt"))
            log.warning("%s: unreadable (%s); renamed to *.corrupt", path, e)
            continue
        append_manifest(run_dir, {"step": step, "file": step_relpath(step), "bytes": path.stat().st_size,
                                  "sha256": file_sha256(path), **stats, "recovered": True})
        committed.add(step)
    return committed


_ARRAYS = frozenset({"token_ids", "response_mask", "entropy", "logprob", "reward", "advantage", "group_id",
                      "prompt_index", "kept"})


def _snapshot(value: Any, name: str, dtypes: dict[str, Any]) -> Any:
    """Copy a value the caller owns, in the dtype it is stored in (half the bytes of int64/float32).

    A list of arrays under an extra name (``prompt_token_ids``) stays a list, even when the arrays
    happen to have one length: stacking it would make it look token-level.
    """
    if name not in _ARRAYS and isinstance(value, (list, tuple)) and value and hasattr(value[0], "__len__") \
            and not isinstance(value[0], str):
        return [to_numpy(v, name) for v in value]
    return to_numpy(value, name, dtypes.get(name))


class TraceWriter:
    """Write one trace (a run directory) step by step, in the background.

    Parameters
    ----------
    run_dir : str or Path
        Created if missing. An existing trace is resumed: committed steps are kept and skipped.
    tokenizer : transformers tokenizer, optional
        Builds ``vocab.parquet`` (token id -> text) so readers need no tokenizer.
    vocab : list of str or pyarrow.Table, optional
        The vocabulary pieces instead of a tokenizer.
    run_info : dict, optional
        Stored in ``run.json``: model, trainer config, anything JSON-serialisable.
    resume : bool, optional
        None (default): a directory holding this run (same model, trace id, vocabulary) is continued, one
        holding another run raises `BadInputError`. True: continue whatever it holds. False: refuse a
        directory that has steps.
    sinks : sequence of TraceSink, default ()
        Receive every committed step (W&B, MLflow); their errors are counted, never raised.
    queue_size : int, default 4
        Steps waiting to be written; bounds host memory.
    max_block_s : float, default 30.0
        Longest ``write_step`` waits on a full queue before dropping the step.
    logprob_dtype : {"float16", "float32"}, default "float16"
    threshold : float, default 0.672
        Entropy threshold of the ``share_above`` statistic.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> w = TraceWriter(tempfile.mkdtemp(), vocab=["x", "y"])
    >>> w.write_step(3, token_ids=np.array([[0, 1]]), response_mask=np.array([[1, 1]]),
    ...              entropy=np.array([[0.2, 1.5]]), reward=np.array([1.0]))
    True
    >>> report = w.close()
    >>> report.written, report.last_step
    (1, 3)
    """

    def __init__(self, run_dir: str | os.PathLike, *, tokenizer: Any = None,
                 vocab: Sequence[str] | pa.Table | None = None, run_info: dict[str, Any] | None = None,
                 sinks: Sequence[TraceSink] = (), queue_size: int = 4, max_block_s: float = 30.0,
                 logprob_dtype: str = "float16", threshold: float = DEFAULT_THRESHOLD,
                 resume: bool | None = None) -> None:
        if logprob_dtype not in ("float16", "float32"):
            raise BadInputError(f"logprob_dtype must be 'float16' or 'float32', got {logprob_dtype!r}")
        self.run_dir = Path(run_dir)
        # one writer per directory, held until close(); a second writer is refused here, at construction
        self._dirlock = TraceLock(self.run_dir, "TraceWriter").acquire()
        try:
            self.run_info = init_run_dir(self.run_dir, run_info, tokenizer, vocab, resume)
        except BaseException:
            self._dirlock.release()
            raise
        self.sinks = list(sinks)
        self.max_block_s = max_block_s
        self.logprob_dtype = logprob_dtype
        self.threshold = threshold
        self.report = WriterReport()
        self._lock = threading.Lock()
        self._put_lock = threading.Lock()
        self._committed = recover(self.run_dir, threshold)
        self._pending: set[int] = set()
        self.report.last_step = max(self._committed, default=None)
        self._queue: queue.Queue = queue.Queue(maxsize=max(queue_size, 1))
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="wbtrace-writer", daemon=True)
        self._thread.start()
        atexit.register(_close_at_exit, weakref.ref(self))

    # ------------------------------------------------------------------ caller side
    @property
    def last_step(self) -> int | None:
        """The highest committed step (None for a new trace): where a resumed trainer goes on."""
        with self._lock:
            return max(self._committed, default=None)

    def write_step(self, step: int, token_ids: Any, response_mask: Any, entropy: Any, logprob: Any = None,
                   reward: Any = None, advantage: Any = None, group_id: Any = None, prompt_index: Any = None,
                   kept: Any = None, **extra: Any) -> bool:
        """Queue one step of padded ``[N, T]`` arrays (numpy or torch, any device); True if queued.

        Per-response values are ``[N]``; ``advantage`` may be token-level ``[N, T]`` (its masked mean
        is stored). ``**extra`` adds columns: ``[N]`` -> per-response, ``[N, T]`` -> per-token lists.
        Never raises: problems are logged and counted in ``writer.report``.
        """
        try:
            return self._enqueue(step, dict(token_ids=token_ids, response_mask=response_mask, entropy=entropy,
                                            logprob=logprob, reward=reward, advantage=advantage,
                                            group_id=group_id, prompt_index=prompt_index, kept=kept, **extra))
        except BadInputError as e:
            self._problem("rejected", f"step {step}: {e}; step not written")
        except Exception as e:  # never into the training loop
            self._problem("errors", f"step {step}: {type(e).__name__}: {e}; step not written")
        return False

    def _enqueue(self, step: int, arrays: dict[str, Any]) -> bool:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 0 <= step < 2**31:
            raise BadInputError(f"step must be an integer in [0, 2**31), got {step!r}")
        step = int(step)
        with self._lock:  # one block: a step cannot be both checked and claimed by two threads
            if self._closed:
                raise BadInputError("writer is closed")
            if step in self._committed or step in self._pending:
                self.report.skipped += 1
                if self.report.skipped <= 3:  # counted in the report; the log need not repeat it per step
                    log.warning("wbtrace: step %d is already in %s; this write is skipped (committed steps are "
                                "never replaced)", step, self.run_dir)
                return False
            self._pending.add(step)
        try:
            return self._put(step, arrays)
        except BaseException:
            with self._lock:
                self._pending.discard(step)
            raise

    def _put(self, step: int, arrays: dict[str, Any]) -> bool:
        # float16 keeps NaN/inf, so the background thread still rejects them; ids fit int32 in any vocab.
        dtypes = {"token_ids": np.int32, "response_mask": np.bool_, "entropy": np.float16,
                  "logprob": np.float16 if self.logprob_dtype == "float16" else np.float32}
        snap = {k: _snapshot(v, k, dtypes) for k, v in arrays.items() if v is not None}
        shape = getattr(snap.get("token_ids"), "shape", None)
        for name in ("response_mask", "entropy", "logprob"):
            if name in snap and (shape is None or len(shape) != 2 or snap[name].shape != shape):
                raise BadInputError(f"{name} has shape {list(snap[name].shape)}, token_ids has {list(shape or [])}")
        try:
            with self._put_lock:  # nothing is queued behind the stop sentinel
                if self._closed:
                    raise BadInputError("writer is closed")
                self._queue.put((step, snap), timeout=self.max_block_s)
        except queue.Full:
            with self._lock:
                self._pending.discard(step)
            self._problem("dropped", f"step {step}: writer queue full for {self.max_block_s:.0f}s; step dropped")
            return False
        return True

    def _problem(self, counter: str, message: str) -> None:
        with self._lock:
            setattr(self.report, counter, getattr(self.report, counter) + 1)
            if len(self.report.messages) < 100:
                self.report.messages.append(message)
        log.warning("wbtrace: %s", message)

    def flush(self) -> None:
        """Block until every queued step is written and sent to the sinks."""
        self._queue.join()

    def close(self, status: str = "success") -> WriterReport:
        """Drain the queue, finish the sinks and return the report. Safe to call twice."""
        with self._lock:  # no write_step can slip in behind the stop sentinel
            first = not self._closed
            self._closed = True
        if first:
            with self._put_lock:
                self._queue.put(_STOP)
            self._thread.join()
            for sink in self.sinks:
                self._call_sink(sink, "finish", status)
            self._dirlock.release()
            r = self.report
            if not r.ok:
                log.warning("wbtrace: %d steps written to %s; %d rejected, %d dropped, %d errors, sink errors %s",
                            r.written, self.run_dir, r.rejected, r.dropped, r.errors, dict(r.sink_errors))
        return self.report

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("failed" if exc_type else "success")

    # ------------------------------------------------------------------ background thread
    def _run(self) -> None:
        for sink in self.sinks:
            self._call_sink(sink, "log_run", self.run_dir, self.run_info)
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._commit(*item)
            finally:
                self._queue.task_done()

    def _commit(self, step: int, arrays: dict[str, Any]) -> None:
        try:
            dropped: list[str] = []  # a bad optional column costs that column, not the step
            table = pack_step(step, logprob_dtype=self.logprob_dtype, dropped=dropped, **arrays)
            for problem in dropped:
                self._problem("columns_dropped", f"step {step}: {problem}; column left out, step written")
            entry = commit_step(self.run_dir, step, table, self.threshold)
        except Exception as e:
            with self._lock:
                self._pending.discard(step)
            if isinstance(e, BadInputError):
                self._problem("rejected", f"{e}; step not written")
            else:
                self._problem("errors", f"step {step}: {type(e).__name__}: {e}; step not written")
            return
        with self._lock:
            self._pending.discard(step)
            self._committed.add(step)
            self.report.written += 1
            self.report.last_step = max(self._committed)
        for sink in self.sinks:
            self._call_sink(sink, "log_step", step, self.run_dir / entry["file"], entry, table)

    def _call_sink(self, sink: TraceSink, method: str, *args: Any) -> None:
        try:
            getattr(sink, method)(*args)
        except Exception as e:
            name = getattr(sink, "name", type(sink).__name__)
            with self._lock:
                self.report.sink_errors[name] += 1
                n = self.report.sink_errors[name]
            if n <= 3 or n % 100 == 0:  # a dead server must not flood the training log
                log.warning("wbtrace: sink %s failed in %s (%d so far): %s: %s", name, method, n,
                            type(e).__name__, e)


def _close_at_exit(ref: weakref.ref) -> None:
    writer = ref()
    if writer is not None:  # an uncaught exception ended the program: tell the sinks the run failed
        writer.close("failed" if getattr(sys, "last_value", None) is not None else "success")


__all__ = ["TraceWriter", "WriterReport", "commit_step"]
