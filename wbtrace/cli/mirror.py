"""CLI command ``wbtrace mirror SRC DST``: pull a trace from any source, push it through the MLflow sink's rules."""

from __future__ import annotations

import tempfile
from contextlib import ExitStack
from pathlib import Path

import click

from wbtrace.cli.app import main
from wbtrace.cli.options import progress_bar, step_options
from wbtrace.errors import BadInputError
from wbtrace.steps import StepSelection

_URI_SCHEMES = ("http://", "https://", "sqlite:///", "postgresql", "mysql", "databricks")


def parse_target(dst: str) -> tuple[str | None, str | None]:
    """``mlflow://RUN_ID`` -> (run id, None); ``mlflow://`` -> (None, None); a tracking URI -> (None, URI)."""
    if dst in ("mlflow", "mlflow:", "mlflow://"):
        return None, None
    if dst.startswith("mlflow://"):
        run_id = dst[len("mlflow://"):].strip("/")
        if not run_id.isalnum():
            raise BadInputError(f"{dst!r}: expected mlflow://RUN_ID (letters and digits)")
        return run_id, None
    if dst.startswith(_URI_SCHEMES):
        return None, dst
    raise BadInputError(f"{dst!r} is not an MLflow target: use mlflow://, mlflow://RUN_ID or a tracking URI")


def local_trace(src: str, steps: StepSelection, tmp: ExitStack) -> tuple[Path, str | None, bool]:
    """``(trace dir, W&B run id, is_local)``: any other source is first pulled into a temporary dir."""
    from wbtrace.sources.local import LocalSource
    from wbtrace.sources.pull import pull
    from wbtrace.sources.refs import open_source
    from wbtrace.sources.wandb_api import WandbApiSource
    from wbtrace.sources.wandb_offline import WandbOfflineSource

    source = open_source(src)
    if isinstance(source, LocalSource):
        return source.store.run_dir, None, True
    scratch = Path(tmp.enter_context(tempfile.TemporaryDirectory(prefix="wbtrace-mirror-"))) / "trace"
    wandb_run_id = source.run_id if isinstance(source, WandbApiSource | WandbOfflineSource) else None
    return pull(source, steps, scratch), wandb_run_id, False


@main.command("mirror")
@click.argument("src")
@click.argument("dst", default="mlflow://")
@click.option("--tracking-uri", metavar="URI",
              help="MLflow tracking URI. Default: $MLFLOW_TRACKING_URI, or for a local trace its embedded "
                   "store (sqlite:///SRC/mlflow.db).")
@click.option("--experiment", default="wbtrace", show_default=True, help="Experiment of a new run.")
@click.option("--run-name", metavar="NAME", help="Name of a new run.")
@step_options
def mirror_cmd(src: str, dst: str, tracking_uri: str | None, experiment: str, run_name: str | None,
               steps: StepSelection) -> None:
    """Copy a trace into MLflow; re-running uploads only what is missing.

    SRC is a local trace dir, a W&B offline run dir or a W&B run [wandb://]ENTITY/PROJECT/RUN_ID. DST is
    mlflow:// (the run tagged with the trace's id, created if needed) or mlflow://RUN_ID.

    \b
    Example:
        wbtrace mirror outputs/demo/entropy_trace mlflow:// --tracking-uri http://127.0.0.1:5000
        wbtrace mirror wandb/offline-run-20250101_000000-abc123 mlflow://0f3c9e2d1b8a4c6e
    """
    import os

    from wbtrace.backends.mlflow import default_tracking_uri, mlflow_errors
    from wbtrace.mirror import mirror_trace

    run_id, uri_from_dst = parse_target(dst)
    with ExitStack() as stack:
        trace_dir, wandb_run_id, is_local = local_trace(src, steps, stack)
        uri = tracking_uri or uri_from_dst or os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None and is_local:
            uri = default_tracking_uri(trace_dir)
        with progress_bar() as bar, mlflow_errors():
            task = bar.add_task("mirroring", total=None)
            report = mirror_trace(trace_dir, uri, run_id=run_id, experiment=experiment, run_name=run_name,
                                  wandb_run_id=wandb_run_id, steps=steps,
                                  progress=lambda done, total: bar.update(task, completed=done, total=total))
    click.echo(f"MLflow run {report.run_id} at {report.tracking_uri}: uploaded {len(report.uploaded)} step "
               f"files, {len(report.already_there)} already there, {report.metrics_logged} metric values logged")
