"""TraceWriter: what a trainer calls every step. Asynchronous, atomic, resumable, never fatal.

``write_step`` only hands the step over: it copies numpy / CPU-tensor buffers (a memcpy, or nothing
with ``copy=False``), starts pinned non-blocking device-to-host copies of CUDA tensors, and queues
them. A background thread waits for those copies, converts dtypes, validates, samples, packs the
Parquet file, renames it into place, appends the manifest line and hands the committed step to the
sinks (W&B, MLflow). Rules:

* Tracing never kills or stalls training: every error becomes a warning and a counter in the
  `WriterReport` that ``close()`` returns, and ``TraceWriter(...)`` itself does not raise on an
  unwritable path or a full disk (the writer is then disabled and says so in its report).
* Full-queue policy: at most ``queue_size`` steps wait for the writer (that bounds host memory).
  When all slots are taken, ``write_step`` waits at most ``max_wait_ms`` (default 100 ms) for one, then
  drops the step and counts it in ``report.dropped``; it never blocks for seconds.
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

from wbtrace.analysis.policy import policy_stats
from wbtrace.dirlock import TraceLock
from wbtrace.errors import BadInputError
from wbtrace.sampling import TraceSampling, choose_rows, group_codes
from wbtrace.schema import SCHEMA_VERSION, pack_step, read_parquet, to_numpy
from wbtrace.sinks.base import TraceSink
from wbtrace.stats import DEFAULT_THRESHOLD, step_summary
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
    rejected: int = 0  # bad input: shapes, NaN/inf entropy, token ids outside int32
    dropped: int = 0  # queue full for longer than max_wait_ms
    errors: int = 0  # I/O or unexpected errors while writing (or the trace dir could not be set up)
    columns_dropped: int = 0  # optional columns that did not fit; their steps were written without them
    flagged: int = 0  # stored but suspicious (mask with gaps, NaN log-probs): see messages
    sampled_out: int = 0  # steps the sampling settings leave out (not a problem)
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


def commit_step(run_dir: Path, step: int, table: pa.Table, threshold: float = DEFAULT_THRESHOLD,
                full: pa.Table | None = None, sampling: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write a packed step table into ``run_dir`` and name it in the manifest; returns the manifest entry.

    ``full``: the whole step when ``table`` is a sample of it; the manifest's statistics are the whole
    step's (exact), and ``sampling`` says what the file holds.
    """
    rel = step_relpath(step)
    stats = step_summary(table if full is None else full, threshold)  # before the file: a failure leaves nothing
    # nested, so sinks (which log a line's numbers as metrics) leave them to the trainer's own metrics
    stats["policy"] = policy_stats(table if full is None else full)
    if sampling is not None:
        stats["sampling"] = sampling
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
            stats = step_summary(read_parquet(path), threshold)
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
# Converted on the GPU before the copy (fewer bytes over PCIe, nothing lost). Token ids are not: they
# are range-checked as given, in the writer thread, and a cast on the device would hide the overflow.
_DEVICE_DTYPES = {"response_mask": "bool", "entropy": "float16"}


class _DeviceCopy:
    """A CUDA tensor on its way to a pinned host buffer: the copy is queued on the tensor's stream
    and ``wait()`` (writer thread) blocks on its event, so the caller never waits for the GPU."""

    __slots__ = ("host", "event")

    def __init__(self, t: Any, dtype: str | None) -> None:
        import torch

        with torch.cuda.device(t.device):
            if dtype is not None:
                t = t.to(getattr(torch, dtype))
            elif t.dtype == torch.bfloat16:
                t = t.float()  # numpy has no bfloat16
            # pinned blocks come from torch's caching host allocator: steady-state steps reuse them
            self.host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            self.host.copy_(t, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record(torch.cuda.current_stream(t.device))

    def wait(self) -> np.ndarray:
        self.event.synchronize()
        return self.host.numpy()


def _handoff(value: Any, name: str, copy: bool, dtypes: dict[str, str]) -> Any:
    """What ``write_step`` keeps of a value the caller owns: as little work as makes it safe to keep.

    numpy and CPU tensors are copied (one memcpy, no conversion) unless ``copy`` is False (the caller
    gives them up); CUDA tensors start a non-blocking copy to pinned memory; lists are copied shallowly.
    """
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        t = value.detach()
        if t.device.type == "cuda":
            return _DeviceCopy(t, dtypes.get(name))
        return t.clone() if copy else t
    if isinstance(value, np.ndarray):
        return value.copy() if copy else value
    if isinstance(value, (list, tuple)):
        return [_handoff(v, name, copy, dtypes) if hasattr(v, "__array__") or hasattr(v, "detach") else v
                for v in value]
    return value


def _to_host(value: Any, name: str) -> Any:
    """Writer-thread side of `_handoff`: numpy arrays (a list of arrays under an extra name stays a list,
    even when they happen to have one length: stacking it would make it look token-level)."""
    if isinstance(value, _DeviceCopy):
        return value.wait()
    if isinstance(value, list):
        value = [v.wait() if isinstance(v, _DeviceCopy) else v for v in value]
        if name not in _ARRAYS and value and hasattr(value[0], "__len__") and not isinstance(value[0], str):
            return [to_numpy(v, name) for v in value]
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and value.device.type == "cpu":  # ours already (cloned in the hand-off)
        return (value.float() if str(value.dtype) == "torch.bfloat16" else value).numpy()
    return to_numpy(value, name)


class TraceWriter:
    """Write one trace (a run directory) step by step, in the background.

    Parameters
    ----------
    run_dir : str or Path
        Created if missing. An existing trace is resumed: committed steps are kept and skipped. If it
        cannot be set up (unwritable, full disk), the writer is disabled and says so in its report; a
        directory that is not a trace this wbtrace can extend raises `TraceFormatError` (a setup error).
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
        Steps handed over but not yet written; bounds host memory.
    max_wait_ms : float, default 100
        Longest ``write_step`` waits for a free queue slot before dropping the step (counted in
        ``report.dropped``).
    copy : bool, default True
        Copy numpy arrays and CPU tensors in ``write_step`` (one memcpy). False hands them over: the
        caller must not write into them afterwards, and the hand-off costs nothing. CUDA tensors are
        always copied (pinned, non-blocking).
    sampling : TraceSampling, optional
        Which steps and which groups of responses to store (default: everything); see
        `wbtrace.sampling`.
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
                 sinks: Sequence[TraceSink] = (), queue_size: int = 4, max_wait_ms: float = 100.0,
                 copy: bool = True, sampling: TraceSampling | None = None,
                 logprob_dtype: str = "float16", threshold: float = DEFAULT_THRESHOLD,
                 resume: bool | None = None) -> None:
        if logprob_dtype not in ("float16", "float32"):
            raise BadInputError(f"logprob_dtype must be 'float16' or 'float32', got {logprob_dtype!r}")
        self.run_dir = Path(run_dir)
        self.sinks = list(sinks)
        self.max_wait_ms = float(max_wait_ms)
        self.copy = copy
        self.sampling = sampling or TraceSampling()
        self.logprob_dtype = logprob_dtype
        self.threshold = threshold
        self.report = WriterReport()
        self._lock = threading.Lock()
        self._put_lock = threading.Lock()
        self._pending: set[int] = set()
        self._seen_first = False
        self.disabled: str | None = None  # why nothing is written, when the directory could not be set up
        self._dirlock: TraceLock | None = None
        try:
            # one writer per directory, held until close(); a second writer is refused here, at construction
            self._dirlock = TraceLock(self.run_dir, "TraceWriter").acquire()
            self.run_info = init_run_dir(self.run_dir, run_info, tokenizer, vocab, resume)
            self._committed = recover(self.run_dir, threshold)
        except OSError as e:  # unwritable, full disk: never into the training loop, not even from here
            self._release_dirlock()
            self.run_info, self._committed = dict(run_info or {}), set()
            self.disabled = f"{self.run_dir}: cannot write the trace ({type(e).__name__}: {e}); tracing is off"
            self._problem("errors", self.disabled)
        except BaseException:  # a setup error (another writer, another run): said at construction
            self._release_dirlock()
            raise
        self.report.last_step = max(self._committed, default=None)
        # Slots, not the queue, bound memory: a slot is taken before the hand-off copies anything and
        # given back once the step is written and sent to the sinks.
        self._slots = threading.BoundedSemaphore(max(queue_size, 1))
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="wbtrace-writer", daemon=True)
        if not self.disabled:
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
        """Hand over one step of padded ``[N, T]`` arrays (numpy or torch, any device); True if queued.

        Per-response values are ``[N]``; ``advantage`` may be token-level ``[N, T]`` (its masked mean
        is stored). ``**extra`` adds columns: ``[N]`` -> per-response, ``[N, T]`` -> per-token lists.
        Returns within ``max_wait_ms`` plus the hand-off copy. Never raises: problems are logged and
        counted in ``writer.report``; False also for a step the sampling settings leave out.
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
            if self.disabled:
                self.report.errors += 1  # said once, at construction
                return False
            if step in self._committed or step in self._pending:
                self.report.skipped += 1
                if self.report.skipped <= 3:  # counted in the report; the log need not repeat it per step
                    log.warning("wbtrace: step %d is already in %s; this write is skipped (committed steps are "
                                "never replaced)", step, self.run_dir)
                return False
            first = not (self._committed or self._pending or self._seen_first)
            self._seen_first = True
            if not self.sampling.keeps_step(step, first):
                self.report.sampled_out += 1
                return False
            self._pending.add(step)
        try:
            return self._put(step, arrays)
        except BaseException:
            with self._lock:
                self._pending.discard(step)
            raise

    def _put(self, step: int, arrays: dict[str, Any]) -> bool:
        shape = getattr(arrays["token_ids"], "shape", None)
        for name in ("response_mask", "entropy", "logprob"):  # cheap: shapes only, values are checked later
            got = getattr(arrays.get(name), "shape", None)
            if shape is not None and got is not None and tuple(got) != tuple(shape):
                raise BadInputError(f"{name} has shape {list(got)}, token_ids has {list(shape)}")
        if not self._slots.acquire(timeout=self.max_wait_ms / 1000):
            with self._lock:
                self._pending.discard(step)
            self._problem("dropped", f"step {step}: the writer is {self._queue.qsize()} steps behind; waited "
                          f"{self.max_wait_ms:g} ms for a slot, step dropped (raise queue_size or sample steps)")
            return False
        try:
            dtypes = {**_DEVICE_DTYPES, "logprob": self.logprob_dtype}
            snap = {k: _handoff(v, k, self.copy, dtypes) for k, v in arrays.items() if v is not None}
            with self._put_lock:  # nothing is queued behind the stop sentinel
                if self._closed:
                    raise BadInputError("writer is closed")
                self._queue.put((step, snap))
        except BaseException:
            self._slots.release()
            raise
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
            if self._thread.is_alive():  # not started when the directory could not be set up
                with self._put_lock:
                    self._queue.put(_STOP)
                self._thread.join()
            for sink in self.sinks:
                self._call_sink(sink, "finish", status)
            self._release_dirlock()
            r = self.report
            if not r.ok or r.flagged:
                log.warning("wbtrace: %d steps written to %s; %d rejected, %d dropped, %d errors, %d flagged, "
                            "sink errors %s", r.written, self.run_dir, r.rejected, r.dropped, r.errors, r.flagged,
                            dict(r.sink_errors))
        return self.report

    def _release_dirlock(self) -> None:
        if self._dirlock is not None:
            self._dirlock.release()
            self._dirlock = None

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
                step, arrays = item
                item = None  # the arrays are freed once packed, not when the sinks are done
                self._commit(step, arrays)
            finally:
                if item is not _STOP:
                    self._slots.release()
                self._queue.task_done()

    def _commit(self, step: int, arrays: dict[str, Any]) -> None:
        try:
            dropped: list[str] = []  # a bad optional column costs that column, not the step
            flags: list[str] = []
            host = {k: _to_host(v, k) for k, v in arrays.items()}
            arrays.clear()
            table = pack_step(step, logprob_dtype=self.logprob_dtype, dropped=dropped, flags=flags, **host)
            del host
            for problem in dropped:
                self._problem("columns_dropped", f"step {step}: {problem}; column left out, step written")
            for problem in flags:
                self._problem("flagged", f"step {step}: {problem}")
            stored, sampling = self._sample(step, table)
            entry = commit_step(self.run_dir, step, stored, self.threshold,
                                full=table if stored is not table else None, sampling=sampling)
            del table
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
            self._call_sink(sink, "log_step", step, self.run_dir / entry["file"], entry, stored)

    def _sample(self, step: int, table: pa.Table) -> tuple[pa.Table, dict[str, Any] | None]:
        """The rows to store (whole groups, `wbtrace.sampling`) and the manifest's ``sampling`` entry."""
        s = self.sampling
        if not s.samples_rows:
            return table, (s.record() if s.every_n_steps > 1 else None)
        groups = next((table.column(c) for c in ("group_id", "prompt_index")
                       if table.column(c).null_count < table.num_rows), None)
        lengths = table.column("response_length").to_numpy(zero_copy_only=False)
        rows, info = choose_rows(s, step, group_codes(groups, table.num_rows), lengths)
        return (table if len(rows) == table.num_rows else table.take(pa.array(rows))), info

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


__all__ = ["TraceSampling", "TraceWriter", "WriterReport", "commit_step"]
