"""MLflow naming rules and connection, shared by `wbtrace.sinks.mlflow`, `wbtrace.mirror` and the MLflow source.

Layout inside an MLflow run::

    artifacts  entropy_trace/run.json, entropy_trace/vocab.parquet
               entropy_trace/steps/step_000050.parquet       (byte-identical to the local file)
               entropy_trace/preview/step_000050.json        (optional)
    metrics    trace/<statistic> at the step
    tags       wbtrace.trace_id (finds the run again), wandb.run_id (if known)

The default tracking URI of a trace is embedded: ``sqlite:///<run_dir>/mlflow.db`` with artifacts in
``<run_dir>/mlflow-artifacts`` (a ``file:`` URI raises in MLflow 3).
"""

from __future__ import annotations

import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from wbtrace.errors import SourceError, WbtraceError, require
from wbtrace.store import step_filename

if TYPE_CHECKING:
    from mlflow import MlflowClient

ARTIFACT_ROOT = "entropy_trace"
STEPS_ARTIFACT_DIR = f"{ARTIFACT_ROOT}/steps"
PREVIEW_ARTIFACT_DIR = f"{ARTIFACT_ROOT}/preview"
TRACE_ID_TAG = "wbtrace.trace_id"
WANDB_RUN_TAG = "wandb.run_id"
URI_PREFIX = "mlflow://"
_REMOTE_SCHEMES = ("http://", "https://")


def step_artifact_path(step: int) -> str:
    return f"{STEPS_ARTIFACT_DIR}/{step_filename(step)}"


def preview_artifact_path(step: int) -> str:
    return f"{PREVIEW_ARTIFACT_DIR}/{step_filename(step).removesuffix('.parquet')}.json"


def default_tracking_uri(run_dir: Path) -> str:
    """The embedded store of a run directory: ``sqlite:///<run_dir>/mlflow.db``."""
    return f"sqlite:///{Path(run_dir).resolve() / 'mlflow.db'}"


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The explicit URI, else ``MLFLOW_TRACKING_URI``; a source has no embedded default to fall back on."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise SourceError("no MLflow tracking URI: pass --tracking-uri URI or set MLFLOW_TRACKING_URI")
    return uri


def local_artifact_location(tracking_uri: str) -> str | None:
    """For a sqlite store, ``mlflow-artifacts/`` next to the database (MLflow's default is ``./mlruns``
    in whatever the current directory is); None for servers, whose own artifact root applies."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///"):].split("?", 1)[0])
    return (db.resolve().parent / "mlflow-artifacts").as_uri()


def is_remote(uri: str) -> bool:
    return uri.startswith(_REMOTE_SCHEMES)


def refuse_file_uri(tracking_uri: str | None) -> None:
    if tracking_uri is not None and tracking_uri.startswith("file:"):
        raise WbtraceError(f"{tracking_uri}: MLflow 3 refuses file: stores; use sqlite:///PATH/mlflow.db or a server")


def make_client(tracking_uri: str) -> MlflowClient:
    mlflow = require("mlflow", "mlflow")
    refuse_file_uri(tracking_uri)
    _check_db_driver(tracking_uri)
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _check_db_driver(tracking_uri: str) -> None:
    """A database URI (``postgresql://``, ``mysql://``) whose driver is missing fails here, in one line,
    not deep inside MLflow's first call. SQLAlchemy imports the driver when the engine is made (no connection)."""
    if tracking_uri.split(":", 1)[0].split("+", 1)[0] not in ("postgresql", "postgres", "mysql", "mssql"):
        return
    from sqlalchemy import create_engine

    try:
        create_engine(tracking_uri).dispose()
    except ImportError as e:
        raise WbtraceError(f"{tracking_uri}: its database driver is not installed: pip install {e.name}") from None
    except Exception as e:  # noqa: BLE001  (sqlalchemy's ArgumentError and friends: a malformed URI)
        raise WbtraceError(f"{tracking_uri}: not a usable database URI ({e})") from None


def check_reachable(tracking_uri: str, timeout: float = 2.0) -> None:
    """Raise `SourceError` in at most ``timeout`` seconds if a server URI does not answer ``/health``."""
    if not is_remote(tracking_uri):
        return
    url = f"{tracking_uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            if r.status == 200:
                return
            reason = f"HTTP {r.status}"
    except urllib.error.HTTPError as e:
        reason = f"HTTP {e.code}"
    except OSError as e:
        reason = str(getattr(e, "reason", e))
    raise SourceError(f"cannot reach the MLflow server at {tracking_uri} ({reason})")


def connect(tracking_uri: str | None, create: bool = False) -> tuple[MlflowClient, str]:
    """A client for the URI (default ``MLFLOW_TRACKING_URI``), after a 2 s reachability probe
    (MLflow's own retries take minutes); a server's client is a `WatchedClient`.

    ``create=False`` (readers: pull) refuses a ``sqlite:///`` path with no database, which MLflow would
    create empty; writers (mirror) pass True.
    """
    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///") and not create:
        db = Path(uri[len("sqlite:///"):].split("?", 1)[0])
        if not db.is_file():  # reading must not create an empty store at a mistyped path
            raise SourceError(f"{uri}: no MLflow database at {db}")
    check_reachable(uri)
    client = make_client(uri)
    return (WatchedClient(client, uri) if is_remote(uri) else client), uri


@contextmanager
def mlflow_errors() -> Iterator[None]:
    """MLflow's own exceptions (HTTP 5xx after its retries, a refused request) as one-line `SourceError`s
    (nothing to catch where mlflow is not installed: a W&B pull)."""
    try:
        from mlflow.exceptions import MlflowException
    except ImportError:
        yield
        return
    try:
        yield
    except MlflowException as e:
        raise SourceError(f"MLflow failed: {e.message if hasattr(e, 'message') else e}") from None


def start_call(fn: Callable[[], object], name: str) -> tuple[threading.Thread, Callable[[], object]]:
    """Start ``fn`` in a daemon thread; return it and ``result()``, which re-raises its error in the caller.

    A call stuck on a dead server is left behind, never joined: the caller decides how long to wait.
    """
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            box["error"] = e

    def result() -> object:
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box.get("value")

    t = threading.Thread(target=target, daemon=True, name=f"wbtrace-mlflow-{name}")
    t.start()
    return t, result


class WatchedClient:
    """An `MlflowClient` whose calls give up, in one line, once the server stops answering.

    A killed server makes MLflow retry each request for minutes (7 retries with backoff, set by
    process-wide variables we leave alone). Each call runs in a daemon thread while ``/health`` is
    probed every ``probe_every`` s; ``misses`` failed probes in a row end the wait with `SourceError`.
    A slow upload to a live server is never cut short. What landed before stays: rerunning the
    command resumes (mirror and pull skip what is there).
    """

    def __init__(self, client: MlflowClient, uri: str, probe_every: float = 3.0, misses: int = 2) -> None:
        self._client, self._uri = client, uri
        self._probe_every, self._misses = probe_every, misses

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)  # a typo still raises AttributeError here
        if not callable(attr):
            return attr
        return lambda *args, **kwargs: self._call(name, lambda: attr(*args, **kwargs))

    def _call(self, name: str, fn: Callable[[], object]):
        t, result = start_call(fn, name)
        start, missed = time.monotonic(), 0
        while t.is_alive():
            t.join(self._probe_every)
            if not t.is_alive():
                break
            try:
                check_reachable(self._uri, timeout=2.0)
                missed = 0
            except SourceError:
                missed += 1
            if missed >= self._misses:
                raise SourceError(
                    f"the MLflow server at {self._uri} stopped answering during {name} (gave up after "
                    f"{time.monotonic() - start:.0f} s); what was copied is kept: rerun the same command to finish"
                )
        return result()

