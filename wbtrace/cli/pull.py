"""CLI command ``wbtrace pull``: bring steps from W&B (online or an offline run dir) or MLflow."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from wbtrace.cli.app import main

if TYPE_CHECKING:
    from wbtrace.sources.pull import Progress, StepSpec


def _mlflow_steps(spec: StepSpec, run_id: str, tracking_uri: str | None) -> list[int] | None:
    """`pull_mlflow` takes explicit steps or None (all); a range is resolved against the run's steps."""
    if spec.only_explicit:
        return list(spec.steps)
    if spec.all and not spec.ranges:
        return None
    from wbtrace.sources.mlflow import connect, list_step_artifacts

    client, _ = connect(tracking_uri)
    return spec.resolve(list_step_artifacts(client, run_id))


@main.command("pull")
@click.argument("source")
@click.option("--step", "steps", type=int, multiple=True, metavar="N", help="A step (repeatable).")
@click.option("--steps", "step_ranges", multiple=True, metavar="A:B", help="Inclusive step range, e.g. 10:50.")
@click.option("--all", "all_steps", is_flag=True, help="Every step the run has.")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              help="Local trace dir to write (default ./wbtrace-<run_id>); pulling again merges into it.")
@click.option("--entity", envvar="WANDB_ENTITY", help="W&B entity (default: $WANDB_ENTITY, then your default).")
@click.option("--project", envvar="WANDB_PROJECT", help="W&B project (default: $WANDB_PROJECT).")
@click.option("--source", "kind", type=click.Choice(["wandb", "mlflow"]), default=None,
              help="Where SOURCE lives (default: mlflow for mlflow://RUN_ID, else wandb).")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI (MLflow sources).")
def pull_cmd(source: str, steps: tuple[int, ...], step_ranges: tuple[str, ...], all_steps: bool,
             dest: Path | None, entity: str | None, project: str | None, kind: str | None,
             tracking_uri: str | None) -> None:
    """Download steps of a W&B or MLflow run into a local trace dir.

    SOURCE is a W&B run (RUN_ID or ENTITY/PROJECT/RUN_ID), a W&B offline run dir
    (wandb/offline-run-*: read with no server), or mlflow://RUN_ID. The result works with
    ls, stats, show, export and view.

    \b
    Example:
        wbtrace pull 3xk9q2ab --step 50
        wbtrace pull me/dapo/3xk9q2ab --steps 10:50 --dest traces/dapo
        wbtrace pull wandb/offline-run-20250101_120000-3xk9q2ab --all
        wbtrace pull mlflow://0a1b2c3d --step 5 --tracking-uri http://127.0.0.1:5000
    """
    from wbtrace.cli.options import progress_bar
    from wbtrace.sources.pull import StepSpec

    spec = StepSpec.parse(steps, step_ranges, all_steps)
    with progress_bar() as bar:
        task = bar.add_task(f"pulling {source}", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        out = _pull(source, spec, dest, entity, project, kind, tracking_uri, progress)
    from wbtrace.store import TraceStore, format_steps

    click.echo(f"pulled {out}: steps {format_steps(TraceStore(out).steps)}", err=True)


def _pull(source: str, spec: StepSpec, dest: Path | None, entity: str | None, project: str | None,
          kind: str | None, tracking_uri: str | None, progress: Progress) -> Path:
    if source.startswith("mlflow://") or kind == "mlflow":
        from wbtrace.sources.mlflow import mlflow_errors, pull_mlflow

        run_id = source.removeprefix("mlflow://")
        with mlflow_errors():
            wanted = _mlflow_steps(spec, run_id, tracking_uri)
            return pull_mlflow(run_id, wanted, dest or Path(f"wbtrace-{run_id}"), tracking_uri, progress=progress)
    from wbtrace.sources.wandb_offline import is_offline_run_dir, pull_offline

    if os.path.exists(source):
        if not is_offline_run_dir(source):
            raise click.UsageError(f"{source} is not a W&B run dir (no .wandb file)")
        return pull_offline(source, spec, dest, progress=progress)
    from wbtrace.sources.wandb_api import pull_wandb

    return pull_wandb(source, spec, dest, entity=entity, project=project, progress=progress)
