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
import urllib.error
import urllib.request
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
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


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


def connect(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    """A client for the URI (default ``MLFLOW_TRACKING_URI``), after a 2 s reachability probe
    (MLflow's own retries take minutes)."""
    uri = resolve_tracking_uri(tracking_uri)
    check_reachable(uri)
    return make_client(uri), uri
