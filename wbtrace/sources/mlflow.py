"""An MLflow run as a source: the trace that `MlflowSink` or ``wbtrace mirror`` put in its artifacts.

Reads ``entropy_trace/run.json``, ``entropy_trace/vocab.parquet`` and ``entropy_trace/steps/*.parquet``
(names from `wbtrace.backends.mlflow`). Artifact names are untrusted: only ``step_<digits>.parquet``
names count as steps, and local names are built from the step number.
"""

from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wbtrace.backends.mlflow import ARTIFACT_ROOT, STEPS_ARTIFACT_DIR, connect
from wbtrace.errors import SourceError
from wbtrace.sources.base import RunFiles, StepFile, TraceSource
from wbtrace.store import RUN_JSON, VOCAB_FILE, parse_step_filename

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import FileInfo


def get_run_or_fail(client: MlflowClient, run_id: str, uri: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException as e:
        if getattr(e, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(e).lower():
            raise SourceError(f"no MLflow run {run_id!r} at {uri}") from None
        raise SourceError(f"MLflow at {uri} failed on run {run_id!r}: {str(e).splitlines()[0]}") from None


class _RunArtifacts:
    """A run's artifacts through the client (servers, proxied ``mlflow-artifacts:`` URIs included)."""

    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def list_artifacts(self, path: str):
        return self.client.list_artifacts(self.run_id, path)

    def download_artifacts(self, path: str, dst: str) -> str:
        return self.client.download_artifacts(self.run_id, path, dst)


def artifact_repo(client: MlflowClient, run_id: str, uri: str | None = None, create: bool = False):
    """The run's artifacts (``list_artifacts``, ``download_artifacts``), following a moved embedded store.

    The embedded default (``sqlite:///<run_dir>/mlflow.db``) records absolute ``file://`` artifact
    paths; after the run dir is copied to another machine they point nowhere. Then the artifacts are
    read beside the database, where the sink put them (``<db dir>/mlflow-artifacts/<run>/artifacts``).
    ``create=True`` (mirror) makes that folder, so new artifacts land beside the database too, not in a
    recreated copy of the other machine's path.
    """
    from urllib.parse import urlparse

    root = client.get_run(run_id).info.artifact_uri
    uri = uri or client.tracking_uri
    parsed = urlparse(root)
    if parsed.scheme in ("", "file") and not Path(parsed.path).exists() and uri.startswith("sqlite:///"):
        moved = Path(uri[len("sqlite:///"):]).parent / "mlflow-artifacts" / run_id / "artifacts"
        if create:  # a writer (mirror): never recreate the recorded path of the machine it came from
            moved.mkdir(parents=True, exist_ok=True)
        if moved.is_dir():
            from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

            return LocalArtifactRepository(moved.resolve().as_uri())
    return _RunArtifacts(client, run_id)


def list_step_artifacts(client: MlflowClient, run_id: str) -> dict[int, FileInfo]:
    """``{step: FileInfo}`` of the run's step files (names that are not step files are ignored)."""
    found = {}
    for info in artifact_repo(client, run_id).list_artifacts(STEPS_ARTIFACT_DIR):
        name = info.path.rsplit("/", 1)[-1]
        step = parse_step_filename(name)
        if step is not None and not info.is_dir and info.path == f"{STEPS_ARTIFACT_DIR}/{name}":
            found[step] = info
    return found


class RunArtifactWriter:
    """`log_artifact` / `list_artifacts` in the client's call shape over the artifact store
    `artifact_repo` chose, so mirror writes where pulls read."""

    def __init__(self, client: MlflowClient, run_id: str, uri: str) -> None:
        self._client = client
        self._repo = artifact_repo(client, run_id, uri, create=True)

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        if isinstance(self._repo, _RunArtifacts):
            self._client.log_artifact(run_id, local_path, artifact_path=artifact_path)
        else:
            self._repo.log_artifact(local_path, artifact_path)

    def list_artifacts(self, run_id: str, path: str | None = None):
        return self._repo.list_artifacts(path)


class MlflowSource(TraceSource):
    """The trace in MLflow run ``run_id`` at ``tracking_uri`` (default ``MLFLOW_TRACKING_URI``)."""

    missing = "step {missing} not in {where}; it has steps {available}"

    def __init__(self, run_id: str, tracking_uri: str | None = None) -> None:
        self._run_id = run_id
        self._tracking_uri = tracking_uri

    @cached_property
    def _conn(self) -> tuple[MlflowClient, str, Any]:
        client, uri = connect(self._tracking_uri)
        get_run_or_fail(client, self._run_id, uri)
        repo = artifact_repo(client, self._run_id, uri)
        top = {i.path.rsplit("/", 1)[-1] for i in repo.list_artifacts(ARTIFACT_ROOT)}
        if RUN_JSON not in top:
            raise SourceError(f"MLflow run {self._run_id} has no wbtrace trace (no {ARTIFACT_ROOT}/{RUN_JSON})")
        self._has_vocab = VOCAB_FILE in top
        return client, uri, repo

    @property
    def label(self) -> str:
        return f"MLflow run {self._run_id}"

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def key(self) -> str:
        where = self._tracking_uri or "env"
        return f"mlflow-{self._run_id}-" + hashlib.sha1(where.encode()).hexdigest()[:8]

    @cached_property
    def _listed(self) -> dict[int, FileInfo]:
        client, _, _ = self._conn
        return list_step_artifacts(client, self._run_id)

    def steps(self) -> list[int]:
        return sorted(self._listed)

    def run_files(self, scratch: Path) -> RunFiles:
        _, _, repo = self._conn
        run_json = Path(repo.download_artifacts(f"{ARTIFACT_ROOT}/{RUN_JSON}", str(scratch)))
        vocab = Path(repo.download_artifacts(f"{ARTIFACT_ROOT}/{VOCAB_FILE}", str(scratch))) if self._has_vocab else None
        return RunFiles(run_json, vocab)

    def step_file(self, step: int, scratch: Path) -> StepFile:
        _, _, repo = self._conn
        return StepFile(Path(repo.download_artifacts(self._listed[step].path, str(scratch))), {})
