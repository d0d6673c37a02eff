"""The MLflow source: bring a trace that `MlflowSink` or ``wbtrace mirror`` put in an MLflow run back home.

Reads ``entropy_trace/run.json``, ``entropy_trace/vocab.parquet`` and ``entropy_trace/steps/*.parquet``
from the run's artifacts and writes the local layout through `wbtrace.sources.pull.LocalTraceDir`
(manifest rebuilt from the files with `wbtrace.stats.step_stats`). Artifact names are untrusted: only
``step_<digits>.parquet`` names count as steps, and local names are built from the step number.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from wbtrace.errors import SourceError
from wbtrace.sinks.mlflow import ARTIFACT_ROOT, STEPS_ARTIFACT_DIR, check_reachable, is_remote, make_client
from wbtrace.store import RUN_JSON, VOCAB_FILE, format_steps, parse_step_filename

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import FileInfo

Progress = Callable[[int, int], None]


def resolve_tracking_uri(tracking_uri: str | None) -> str:
    """The explicit URI, else ``MLFLOW_TRACKING_URI``; a source has no embedded default to fall back on."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise SourceError("no MLflow tracking URI: pass --tracking-uri URI or set MLFLOW_TRACKING_URI")
    return uri


def connect(tracking_uri: str | None, create: bool = False) -> tuple[MlflowClient, str]:
    """A client for the URI, after a 2 s reachability probe (MLflow's own retries take minutes).

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
    """MLflow's own exceptions (HTTP 5xx after its retries, a refused request) as one-line `SourceError`s."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        raise SourceError(f"MLflow failed: {e.message if hasattr(e, 'message') else e}") from None


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
        box: dict[str, object] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
                box["error"] = e

        t = threading.Thread(target=target, daemon=True, name=f"wbtrace-mlflow-{name}")
        start, missed = time.monotonic(), 0
        t.start()
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
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box.get("value")


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


def artifact_repo(client: MlflowClient, run_id: str, uri: str | None = None):
    """The run's artifacts (``list_artifacts``, ``download_artifacts``), following a moved embedded store.

    The embedded default (``sqlite:///<run_dir>/mlflow.db``) records absolute ``file://`` artifact
    paths; after the run dir is copied to another machine they point nowhere. Then the artifacts are
    read beside the database, where the sink put them (``<db dir>/mlflow-artifacts/<run>/artifacts``).
    """
    from urllib.parse import urlparse

    root = client.get_run(run_id).info.artifact_uri
    uri = uri or client.tracking_uri
    parsed = urlparse(root)
    if parsed.scheme in ("", "file") and not Path(parsed.path).exists() and uri.startswith("sqlite:///"):
        moved = Path(uri[len("sqlite:///"):]).parent / "mlflow-artifacts" / run_id / "artifacts"
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


def _empty_vocab() -> bytes:
    """A trace written without a tokenizer has no vocab.parquet; the local layout still wants one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from wbtrace.vocab import build_vocab

    buf = pa.BufferOutputStream()
    pq.write_table(build_vocab(pieces=[]), buf)
    return buf.getvalue().to_pybytes()


def pull_mlflow(run_id: str, steps: list[int] | None, dest: Path, tracking_uri: str | None = None,
                progress: Progress | None = None) -> Path:
    """Download steps of an MLflow run into a local trace dir and return it.

    Parameters
    ----------
    run_id : str
        The MLflow run that holds ``entropy_trace/``.
    steps : list of int or None
        Steps to pull; None pulls every step the run has.
    dest : Path
        Local trace dir (created; pulling more steps later merges into it).
    tracking_uri : str, optional
        Default: ``MLFLOW_TRACKING_URI``.
    """
    from wbtrace.sources.pull import LocalTraceDir

    client, uri = connect(tracking_uri)
    get_run_or_fail(client, run_id, uri)
    repo = artifact_repo(client, run_id, uri)
    top = {i.path.rsplit("/", 1)[-1] for i in repo.list_artifacts(ARTIFACT_ROOT)}
    if RUN_JSON not in top:
        raise SourceError(f"MLflow run {run_id} has no wbtrace trace (no {ARTIFACT_ROOT}/{RUN_JSON})")
    listed = list_step_artifacts(client, run_id)
    available = sorted(listed)
    wanted = available if steps is None else sorted(set(int(s) for s in steps))
    missing = [s for s in wanted if s not in set(available)]
    if missing:
        raise SourceError(f"step {format_steps(missing)} not in MLflow run {run_id}; "
                          f"it has steps {format_steps(available)}")
    out = LocalTraceDir(dest)
    with tempfile.TemporaryDirectory(prefix="wbtrace-mlflow-") as tmp:
        files = {}
        for name in (RUN_JSON, VOCAB_FILE):
            if name in top:
                files[name] = Path(repo.download_artifacts(f"{ARTIFACT_ROOT}/{name}", tmp))
        run_json = files[RUN_JSON].read_bytes()
        vocab = files[VOCAB_FILE].read_bytes() if VOCAB_FILE in files else _empty_vocab()
        out.add_run_files(run_json, vocab)
        for i, step in enumerate(wanted, 1):
            local = Path(repo.download_artifacts(listed[step].path, tmp))
            out.add_step(step, local)
            local.unlink()
            if progress:
                progress(i, len(wanted))
    return out.close()
