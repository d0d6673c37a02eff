"""The MLflow sink: each committed step's Parquet file, statistics and run metadata in one MLflow run.

Layout inside the MLflow run (the same whether the sink or ``wbtrace mirror`` wrote it)::

    artifacts  entropy_trace/run.json, entropy_trace/vocab.parquet
               entropy_trace/steps/step_000050.parquet       (byte-identical to the local file)
               entropy_trace/preview/step_000050.json        (optional, ``preview_table=True``)
    metrics    trace/entropy_p50, trace/share_above, ...     (the manifest line, at the step)
    params     schema_version, model, tokenizer, config.<flattened key>, ...
    tags       wbtrace.trace_id (finds the run again), wandb.run_id (if known)

The default tracking URI is embedded: ``sqlite:///<run_dir>/mlflow.db`` with artifacts in
``<run_dir>/mlflow-artifacts`` (a ``file:`` URI raises in MLflow 3). Only `mlflow.MlflowClient` with an
explicit URI is used: the process-wide ``mlflow.set_tracking_uri`` and ``MLFLOW_*`` variables are left
to the rest of the program.

A dead server must not stall training. MLflow's retry and timeout settings are process-wide
environment variables (7 retries with exponential backoff by default: minutes), so instead of
changing them the sink (1) probes ``/health`` with a 2 s timeout before each remote call and (2) runs
the call in a daemon thread it waits on for at most ``call_timeout`` seconds. After the first failure
the sink is *degraded*: later calls return at once and are counted; ``wbtrace mirror`` fills the gap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from wbtrace.backends.mlflow import (
    ARTIFACT_ROOT,
    STEPS_ARTIFACT_DIR,
    TRACE_ID_TAG,
    WANDB_RUN_TAG,
    check_reachable,
    default_tracking_uri,
    is_remote,
    local_artifact_location,
    make_client,
    preview_artifact_path,
    refuse_file_uri,
    start_call,
)
from wbtrace.errors import WbtraceError, require
from wbtrace.sinks.base import TraceSink, step_metrics
from wbtrace.store import RUN_JSON, VOCAB_FILE

if TYPE_CHECKING:
    from mlflow import MlflowClient

log = logging.getLogger(__name__)

# MLflow's own limits (mlflow.utils.validation), restated so we can warn before it raises.
MAX_KEY_LENGTH = 250
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
_BATCH = 100
_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]")
PREVIEW_ROWS = 16
PREVIEW_TOKENS = 64


# ---------------------------------------------------------------- calls that must not stall training


def call_with_deadline(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run ``fn`` in a daemon thread and wait at most ``timeout`` s (a stuck call is left behind, not joined)."""
    t, result = start_call(fn, what)
    t.join(timeout)
    if t.is_alive():
        raise TimeoutError(f"{what}: no answer from MLflow in {timeout:.0f} s")
    return result()


# ---------------------------------------------------------------- keys, metrics, params


_warned_keys: set[str] = set()


def sanitize_key(key: str) -> str:
    """A key MLflow accepts; warns once per key with the old and the new name when it changes one."""
    new = _BAD_KEY_CHARS.sub("_", key)
    new = re.sub(r"/{2,}", "/", new).strip("/") or "_"
    new = "/".join("_" if part in (".", "..") else part for part in new.split("/"))
    if len(new) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        new = f"{new[: MAX_KEY_LENGTH - 9]}~{digest}"
    if new != key and key not in _warned_keys:
        _warned_keys.add(key)
        warnings.warn(f"MLflow rejects the key {key!r}; logged as {new!r}", stacklevel=3)
    return new


def _fit_value(kind: str, key: str, value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    warnings.warn(f"MLflow {kind} {key!r} is {len(value)} characters, over MLflow's {limit}: "
                  f"logged as its first {limit - 3} characters + '...'", stacklevel=3)
    return value[: limit - 3] + "..."


def mlflow_step_metrics(stats: Mapping[str, Any]) -> dict[str, float]:
    """`wbtrace.sinks.base.step_metrics` with keys MLflow accepts (a source's extra manifest keys may not be)."""
    return {sanitize_key(k): v for k, v in step_metrics(stats).items()}


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif value is not None:
        out[prefix] = value if isinstance(value, str) else json.dumps(value, default=str)


def run_params(run_info: Mapping[str, Any]) -> dict[str, str]:
    """run.json flattened into MLflow params (``config.actor.lr``...), keys sanitized, values within limits."""
    flat: dict[str, str] = {}
    _flatten("", dict(run_info), flat)
    return {sanitize_key(k): _fit_value("param", k, v, MAX_PARAM_LENGTH) for k, v in flat.items()}


def trace_id(run_info: Mapping[str, Any]) -> str:
    """A stable id for a trace: its own id if run.json has one, else a hash of run.json's content."""
    for key in ("trace_id", "run_id", "id"):
        if isinstance(run_info.get(key), str) and run_info[key]:
            return run_info[key]
    canonical = json.dumps(run_info, sort_keys=True, default=str).encode()
    return hashlib.sha256(canonical).hexdigest()[:16]


def read_run_info(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


# ---------------------------------------------------------------- the run and what goes into it


def get_or_create_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        # Another process created it between our lookup and our create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_or_create_run(client: MlflowClient, experiment_id: str, tid: str, run_name: str | None = None,
                       tags: Mapping[str, str] | None = None) -> str:
    """The run tagged with trace id ``tid`` in the experiment (a resume or a re-mirror), or a new one."""
    found = client.search_runs([experiment_id], filter_string=f"tags.`{TRACE_ID_TAG}` = '{tid}'",
                               max_results=1, order_by=["attributes.start_time ASC"])
    if found:
        return found[0].info.run_id
    all_tags = {TRACE_ID_TAG: tid, **{sanitize_key(k): str(v) for k, v in (tags or {}).items()}}
    return client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id


def log_run_metadata(client: MlflowClient, run_id: str, run_info: Mapping[str, Any],
                     tags: Mapping[str, str] | None = None) -> None:
    """Params from run.json and tags; params already on the run are skipped (MLflow params are write-once)."""
    from mlflow.entities import Param, RunTag

    run = client.get_run(run_id)
    params = {k: v for k, v in run_params(run_info).items() if k not in run.data.params}
    run_tags = {sanitize_key(k): _fit_value("tag", k, str(v), MAX_TAG_LENGTH) for k, v in (tags or {}).items()}
    param_list = [Param(k, v) for k, v in params.items()]
    tag_list = [RunTag(k, v) for k, v in run_tags.items() if run.data.tags.get(k) != v]
    for i in range(0, max(len(param_list), len(tag_list)), _BATCH):
        client.log_batch(run_id, params=param_list[i:i + _BATCH], tags=tag_list[i:i + _BATCH])


def log_run_files(client: MlflowClient, run_id: str, run_dir: Path) -> None:
    for name in (RUN_JSON, VOCAB_FILE):
        if (Path(run_dir) / name).is_file():
            client.log_artifact(run_id, str(Path(run_dir) / name), artifact_path=ARTIFACT_ROOT)


def log_step_file(client: MlflowClient, run_id: str, step_file: Path) -> None:
    client.log_artifact(run_id, str(step_file), artifact_path=STEPS_ARTIFACT_DIR)


def log_metric_dict(client: MlflowClient, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    entries = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()]
    for i in range(0, len(entries), 1000):
        client.log_batch(run_id, metrics=entries[i:i + 1000])


def preview_rows(table: pa.Table, vocab: Any = None) -> dict[str, list]:
    """A step's preview (`wbtrace.preview`) as columns for `MlflowClient.log_table` (text capped per row)."""
    from wbtrace.preview import preview_columns, preview_sample

    sub = preview_sample(table, PREVIEW_ROWS)
    cols = preview_columns(sub)
    ids = [t[:PREVIEW_TOKENS] for t in sub["token_ids"].to_pylist()]
    if vocab is not None:
        cols["text"] = [vocab.decode(t) for t in ids]
    else:
        cols["token_ids"] = [json.dumps(t) for t in ids]
    return cols


# ---------------------------------------------------------------- the sink


class MlflowSink(TraceSink):
    """Mirror committed steps into an MLflow run (embedded sqlite by default, or any tracking server).

    Parameters
    ----------
    tracking_uri : str, optional
        ``http://host:5000``, ``sqlite:///path.db``... Default: ``sqlite:///<run_dir>/mlflow.db``.
    run_dir : Path, optional
        The trace directory; given by the writer through `log_run` when not passed here.
    experiment : str, default "wbtrace"
    run_name : str, optional
    tags : dict, optional
        Extra run tags.
    preview_table : bool, default False
        Also log the first responses of each step as ``entropy_trace/preview/step_XXXXXX.json``.
    wandb_run_id : str, optional
        Tagged as ``wandb.run_id`` to link the two runs.
    call_timeout : float, default 10
        Longest wait for one remote call; then the sink degrades (see the module docstring).
    """

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, run_dir: Path | None = None, experiment: str = "wbtrace",
                 run_name: str | None = None, tags: dict | None = None, preview_table: bool = False,
                 wandb_run_id: str | None = None, call_timeout: float = 10.0) -> None:
        require("mlflow", "mlflow")  # fail fast with the install hint
        refuse_file_uri(tracking_uri)
        self.tracking_uri = tracking_uri
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.experiment = experiment
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.preview_table = preview_table
        self.wandb_run_id = wandb_run_id
        self.call_timeout = call_timeout
        self.run_id: str | None = None
        self.errors = 0
        self.skipped = 0
        self.degraded: str | None = None
        self._client: MlflowClient | None = None
        self._vocab: Any = None
        # The writer thread (log_run/log_step) and the trainer (log_metrics) both reach _ensure_run first
        # thing; without the lock both found no run and each created one.
        self._run_lock = threading.Lock()

    # -- plumbing

    def _call(self, what: str, fn: Callable[[], Any]) -> None:
        """Run one unit of MLflow work; the first failure degrades the sink, later calls are skipped."""
        if self.degraded is not None:
            self.skipped += 1
            return
        try:
            if self.tracking_uri is not None and is_remote(self.tracking_uri):
                check_reachable(self.tracking_uri)
                call_with_deadline(fn, self.call_timeout, what)
            else:
                fn()
        except Exception as e:
            self.errors += 1
            self.degraded = f"{what}: {e}"
            raise WbtraceError(
                f"MLflow sink disabled after {what} failed ({e}); the local trace keeps every step: "
                f"run `{self.recovery_command()}` later"
            ) from e

    def recovery_command(self) -> str:
        """The ``wbtrace mirror`` command that fills this sink's gaps, with its tracking URI: mirror's own
        default is the trace's embedded store, so without it the command would write somewhere else."""
        import shlex

        cmd = f"wbtrace mirror {shlex.quote(str(self.run_dir or 'RUN_DIR'))} mlflow://{self.run_id or ''}"
        if self.tracking_uri is not None and (self.run_dir is None
                                              or self.tracking_uri != default_tracking_uri(self.run_dir)):
            cmd += f" --tracking-uri {shlex.quote(self.tracking_uri)}"
        return cmd

    def _ensure_run(self) -> MlflowClient:
        with self._run_lock:
            return self._ensure_run_locked()

    def _ensure_run_locked(self) -> MlflowClient:
        if self._client is not None and self.run_id is not None:
            return self._client
        if self.run_dir is None:
            raise WbtraceError("MlflowSink needs run_dir (or a log_run call) to find its trace")
        if self.tracking_uri is None:
            self.tracking_uri = default_tracking_uri(self.run_dir)
        client = make_client(self.tracking_uri)
        exp_id = get_or_create_experiment(client, self.experiment, local_artifact_location(self.tracking_uri))
        tid = trace_id(read_run_info(self.run_dir))
        self.run_id = find_or_create_run(client, exp_id, tid, self.run_name, self._run_tags())
        self._client = client
        return client

    def _run_tags(self) -> dict[str, str]:
        tags = dict(self.tags)
        if self.wandb_run_id:
            tags[WANDB_RUN_TAG] = self.wandb_run_id
        return tags

    # -- the TraceSink interface

    def log_run(self, run_dir: Path, run_info: dict[str, Any]) -> None:
        self.run_dir = Path(run_dir)

        def work() -> None:
            client = self._ensure_run()
            log_run_metadata(client, self.run_id, run_info, self._run_tags())
            log_run_files(client, self.run_id, self.run_dir)

        self._call("log_run", work)

    def log_step(self, step: int, step_file: Path, stats: dict[str, Any], table: pa.Table) -> None:
        if self.run_dir is None:
            self.run_dir = Path(step_file).parent.parent

        def work() -> None:
            client = self._ensure_run()
            log_step_file(client, self.run_id, Path(step_file))
            log_metric_dict(client, self.run_id, mlflow_step_metrics(stats), step)
            if self.preview_table:
                client.log_table(self.run_id, data=preview_rows(table, self._load_vocab()),
                                 artifact_file=preview_artifact_path(step))

        self._call(f"step {step}", work)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        clean = {sanitize_key(k): float(v) for k, v in metrics.items() if v is not None}
        self._call(f"metrics at step {step}",
                   lambda: log_metric_dict(self._ensure_run(), self.run_id, clean, step))

    def finish(self, status: str = "success") -> None:
        if self.degraded is not None:
            warnings.warn(f"MLflow sink: {self.errors} failed and {self.skipped} skipped calls "
                          f"(first: {self.degraded}); fill the gap with `{self.recovery_command()}`", stacklevel=2)
            return
        if self.run_id is None:
            return
        state = "FINISHED" if status == "success" else "FAILED"
        self._call("finish", lambda: self._client.set_terminated(self.run_id, status=state))

    def _load_vocab(self) -> Any:
        if self._vocab is None and self.run_dir is not None and (self.run_dir / VOCAB_FILE).exists():
            from wbtrace.vocab import Vocab

            self._vocab = Vocab.read(self.run_dir / VOCAB_FILE)
        return self._vocab
