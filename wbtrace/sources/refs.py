"""`open_source`: what a user types (``PATH``, ``offline-run-*``, ``entity/project/run``, ``mlflow://RUN``)
mapped to one `TraceSource`, with a one-line hint for a path that is near a source but not one."""

from __future__ import annotations

from pathlib import Path

from wbtrace.backends.mlflow import URI_PREFIX
from wbtrace.errors import TraceFormatError
from wbtrace.sources.base import TraceSource
from wbtrace.store import RUN_JSON

TRACE_SUBDIR = "entropy_trace"  # where the trainer puts its trace inside trainer.output_dir


def open_source(ref: str, *, entity: str | None = None, project: str | None = None,
                tracking_uri: str | None = None, kind: str | None = None) -> TraceSource:
    """The source ``ref`` names. Nothing is contacted yet: a source connects on its first question.

    Parameters
    ----------
    ref : str
        A local trace dir, a W&B offline run dir (or its ``.wandb`` file), ``mlflow://RUN_ID``, or a
        W&B run ``[wandb://][ENTITY/]PROJECT/RUN_ID`` (``RUN_ID`` alone with ``project``).
    kind : {"wandb", "mlflow"}, optional
        Force the backend for a bare run id.
    """
    if ref.startswith(URI_PREFIX) or kind == "mlflow":
        from wbtrace.sources.mlflow import MlflowSource

        return MlflowSource(ref.removeprefix(URI_PREFIX).strip("/"), tracking_uri)
    path = Path(ref).expanduser()
    if not ref.startswith("wandb://") and (path.exists() or _looks_like_a_path(ref)):
        return _local(path)
    from wbtrace.sources.wandb_api import WandbApiSource

    return WandbApiSource(ref, entity=entity, project=project)


def _looks_like_a_path(ref: str) -> bool:
    """A ref that cannot be a W&B run: absolute, ``./``/``~``-relative, or under a folder that exists here."""
    first = ref.split("/", 1)[0]
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 3 or ("/" in ref and Path(first).is_dir())


def _local(path: Path) -> TraceSource:
    from wbtrace.sources.wandb_offline import WandbOfflineSource, is_offline_run_dir

    if (path / RUN_JSON).is_file():
        from wbtrace.sources.local import LocalSource

        return LocalSource(path)
    if is_offline_run_dir(path):
        return WandbOfflineSource(path)
    if not path.is_dir():
        raise TraceFormatError(f"{path}: no such trace directory")
    raise TraceFormatError(f"{path} is not a wbtrace trace: no {RUN_JSON}{near_miss_hint(path)}")


def near_miss_hint(path: Path) -> str:
    """`` (...)``: what to type instead for a folder that holds a source one level down, else ``""``."""
    from wbtrace.sources.wandb_offline import is_offline_run_dir

    if (path / TRACE_SUBDIR / RUN_JSON).is_file():
        return f" (the trace is in {path / TRACE_SUBDIR}: pass that)"
    runs = sorted(p for p in [*path.glob("*-run-*"), *path.glob("wandb/*-run-*")] if is_offline_run_dir(p))
    if runs:
        more = f" and {len(runs) - 1} more" if len(runs) > 1 else ""
        return f" (it holds W&B runs: pass one, e.g. {runs[-1]}{more})"
    if (path / "mlflow.db").is_file():
        return f" (it holds an MLflow store: pass mlflow://RUN_ID --tracking-uri sqlite:///{path.resolve()}/mlflow.db)"
    if list((path / "steps").glob("step_*.npz")):
        return " (it looks like a seed .npz trace: convert it with `wbtrace import-npz`)"
    return ""
