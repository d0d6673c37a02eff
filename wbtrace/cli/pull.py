"""CLI command ``wbtrace pull``: bring steps from W&B (online or an offline run dir) or MLflow."""

from __future__ import annotations

from pathlib import Path

import click

from wbtrace.cli.app import main
from wbtrace.cli.options import step_options
from wbtrace.steps import StepSelection


@main.command("pull")
@click.argument("source")
@step_options(all_flag=True, default="none: choose steps")
@click.option("--dest", type=click.Path(file_okay=False, path_type=Path),
              help="Local trace dir to write (default ./wbtrace-<run_id>); pulling again merges into it.")
@click.option("--entity", envvar="WANDB_ENTITY", help="W&B entity (default: $WANDB_ENTITY, then your default).")
@click.option("--project", envvar="WANDB_PROJECT", help="W&B project (default: $WANDB_PROJECT).")
@click.option("--source", "kind", type=click.Choice(["wandb", "mlflow"]), default=None,
              help="Where SOURCE lives (default: mlflow for mlflow://RUN_ID, else wandb).")
@click.option("--tracking-uri", envvar="MLFLOW_TRACKING_URI", help="MLflow tracking URI (MLflow sources).")
def pull_cmd(source: str, steps: StepSelection, dest: Path | None, entity: str | None, project: str | None,
             kind: str | None, tracking_uri: str | None) -> None:
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
    from wbtrace.errors import BadInputError
    from wbtrace.sources.pull import pull
    from wbtrace.sources.refs import open_source
    from wbtrace.steps import format_steps
    from wbtrace.store import TraceStore

    if steps.empty:
        raise BadInputError("choose steps: --step N (repeatable), --steps A:B or --all")
    src = open_source(source, entity=entity, project=project, tracking_uri=tracking_uri, kind=kind)
    from wbtrace.backends.mlflow import mlflow_errors

    with progress_bar() as bar, mlflow_errors():
        task = bar.add_task(f"pulling {source}", total=None)
        out = pull(src, steps, dest, progress=lambda done, total: bar.update(task, completed=done, total=total))
    click.echo(f"pulled {out}: steps {format_steps(TraceStore(out).steps)}", err=True)
