"""``wbtrace mirror``: copy a local trace into an MLflow run, idempotently, with the MLflow sink's own calls.

Any other source is first pulled (`wbtrace.sources.pull.pull`, in ``wbtrace.cli.mirror``): a mirror is
"pull from a source, push through a sink".

The run is found again by the trace's id (tag ``wbtrace.trace_id``), so re-running the mirror, or
running it after a training run whose MLflow sink went down, uploads only what is missing: step
files absent from the run (or of another size), and metric values absent at their step. Nothing is
logged twice, so metric histories hold one point per step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from wbtrace.backends.mlflow import (
    ARTIFACT_ROOT,
    TRACE_ID_TAG,
    WANDB_RUN_TAG,
    connect,
    local_artifact_location,
)
from wbtrace.errors import SourceError
from wbtrace.sinks.mlflow import (
    find_or_create_run,
    get_or_create_experiment,
    log_metric_dict,
    log_run_metadata,
    log_step_file,
    mlflow_step_metrics,
    trace_id,
)
from wbtrace.sources.mlflow import RunArtifactWriter, get_run_or_fail, list_step_artifacts
from wbtrace.steps import StepSelection
from wbtrace.store import RUN_JSON, VOCAB_FILE, TraceStore

if TYPE_CHECKING:
    from mlflow import MlflowClient

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class MirrorReport:
    """What one mirror pass did."""

    run_id: str
    tracking_uri: str
    uploaded: list[int] = field(default_factory=list)
    already_there: list[int] = field(default_factory=list)
    metrics_logged: int = 0
    run_files: list[str] = field(default_factory=list)


def _target_run(client: MlflowClient, uri: str, store: TraceStore, run_id: str | None, experiment: str,
                run_name: str | None, tags: dict[str, str]) -> str:
    """The given run (checked to hold this trace or none), else the run tagged with the trace id."""
    tid = trace_id(store.run_info)
    if run_id is None:
        exp_id = get_or_create_experiment(client, experiment, local_artifact_location(uri))
        return find_or_create_run(client, exp_id, tid, run_name, tags)
    run = get_run_or_fail(client, run_id, uri)
    other = run.data.tags.get(TRACE_ID_TAG)
    if other is not None and other != tid:
        raise SourceError(f"MLflow run {run_id} holds trace {other}, not {tid} ({store.run_dir}); "
                          "mirror into a new run with mlflow:// instead")
    if other is None:
        client.set_tag(run_id, TRACE_ID_TAG, tid)
    return run_id


def _logged_steps(client: MlflowClient, run_id: str, keys: set[str]) -> dict[str, set[int]]:
    return {k: {m.step for m in client.get_metric_history(run_id, k)} for k in sorted(keys)}


def _sync_run_files(client: MlflowClient, run_id: str, store: TraceStore) -> list[str]:
    remote = {i.path.rsplit("/", 1)[-1]: i.file_size for i in client.list_artifacts(run_id, ARTIFACT_ROOT)
              if not i.is_dir}
    done = []
    for name in (RUN_JSON, VOCAB_FILE):
        path = store.run_dir / name
        if path.is_file() and remote.get(name) != path.stat().st_size:
            client.log_artifact(run_id, str(path), artifact_path=ARTIFACT_ROOT)
            done.append(name)
    return done


def mirror_trace(run_dir: str | Path, tracking_uri: str | None = None, run_id: str | None = None,
                 experiment: str = "wbtrace", run_name: str | None = None, wandb_run_id: str | None = None,
                 progress: Progress | None = None, steps: StepSelection | None = None) -> MirrorReport:
    """Copy the local trace at ``run_dir`` into MLflow; returns what was uploaded.

    Parameters
    ----------
    run_dir : Path
        A local trace dir.
    tracking_uri : str, optional
        Default: ``MLFLOW_TRACKING_URI``.
    run_id : str, optional
        Mirror into this existing run; default: the run of ``experiment`` tagged with this trace's id,
        created (named ``run_name``) if there is none.
    wandb_run_id : str, optional
        Tagged as ``wandb.run_id``.
    progress : callable(done, total), optional
    steps : StepSelection, optional
        The steps to mirror (default: every committed step).
    """
    store = TraceStore(run_dir)
    client, uri = connect(tracking_uri, create=True)
    tags = {WANDB_RUN_TAG: wandb_run_id} if wandb_run_id else {}
    rid = _target_run(client, uri, store, run_id, experiment, run_name, tags)
    report = MirrorReport(run_id=rid, tracking_uri=uri)
    log_run_metadata(client, rid, store.run_info, tags)
    files = RunArtifactWriter(client, rid, uri)  # a moved embedded store: beside its database
    report.run_files = _sync_run_files(files, rid, store)
    remote = list_step_artifacts(client, rid)
    chosen = set(store.select(steps))
    manifest = [e for e in store.manifest if e["step"] in chosen]
    wanted = {e["step"]: mlflow_step_metrics(e) for e in manifest}
    history = _logged_steps(client, rid, {k for m in wanted.values() for k in m})
    for i, entry in enumerate(manifest, 1):
        step = entry["step"]
        path = store.step_path(step)
        if step in remote and remote[step].file_size == path.stat().st_size:
            report.already_there.append(step)
        else:
            log_step_file(files, rid, path)
            report.uploaded.append(step)
        missing = {k: v for k, v in wanted[step].items() if step not in history[k]}
        if missing:
            log_metric_dict(client, rid, missing, step)
            report.metrics_logged += len(missing)
        if progress:
            progress(i, len(manifest))
    if client.get_run(rid).info.status == "RUNNING":
        # every file and metric is there now: a run mirror created (or a sink left open) is done
        client.set_terminated(rid, status="FINISHED")
    return report
