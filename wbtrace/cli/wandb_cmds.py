"""CLI commands for the W&B side: ``wbtrace sync``, ``wbtrace workspace`` and ``wbtrace charts install``.

Every call that reaches a W&B server is wrapped so a refusal, a timeout or a bad login is one
``Error:`` line with exit code 2 (`_w_and_b`), never a traceback.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import click

from wbtrace.cli.app import main

NO_LOGIN = "not logged in to W&B: run `wandb login` or set WANDB_API_KEY"


@contextlib.contextmanager
def _w_and_b(what: str) -> Iterator[None]:
    """Turn any failure of the W&B client inside the block into a one-line `SourceError`."""
    from wbtrace.errors import SourceError, WbtraceError

    try:
        yield
    except (WbtraceError, click.ClickException):
        raise
    except Exception as e:  # wandb.Error, WandbApiFailedError, requests/pydantic errors...: a server boundary
        first = (str(e).strip().splitlines() or [""])[0][:300]
        if type(e).__name__ == "UsageError" and "api key" in first.lower().replace("_", " "):
            raise SourceError(NO_LOGIN) from None
        raise SourceError(f"{what}: {type(e).__name__}: {first}") from None


def _api(timeout: float) -> Any:
    from wbtrace.sources.wandb_api import make_api

    with _w_and_b("cannot reach W&B"):
        return make_api(timeout)  # logged in? host reachable within 5 s? before wandb waits on its own


_TIMEOUT = click.option("--timeout", type=click.FloatRange(min=1), default=20.0, show_default=True,
                        help="Seconds to wait for the W&B server.")


@main.command("sync", context_settings={"ignore_unknown_options": True})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--prepare-only", is_flag=True, help="Only re-point the log's file paths; do not run `wandb sync`.")
@click.argument("wandb_args", nargs=-1, type=click.UNPROCESSED)
def sync_cmd(run_dir: str, prepare_only: bool, wandb_args: tuple[str, ...]) -> None:
    """Sync an offline W&B run dir copied from another host: fix its file paths, then `wandb sync` it.

    The `.wandb` log names each artifact file by its absolute path on the training host; this
    re-points every one at its copy under RUN_DIR (checked against the log's md5 digest, the original
    log kept as run-<id>.wandb.orig), then runs `wandb sync RUN_DIR WANDB_ARGS...`. Safe to re-run.

    \b
    Example:
        wbtrace sync wandb/offline-run-20260101_120000-abcd1234
        wbtrace sync wandb/offline-run-20260101_120000-abcd1234 --project dapo --entity me
        wbtrace sync wandb/offline-run-20260101_120000-abcd1234 --dry-run
    """
    from wbtrace.sources.wandb_sync import relocate

    dry = "--dry-run" in wandb_args
    r = relocate(run_dir, dry_run=dry)
    refs = f", {r.references} references left as they are" if r.references else ""
    verb = "would re-point" if dry else "re-pointed"
    click.echo(f"{r.wandb_file.name}: {len(r.files)} artifact files found under {run_dir}; "
               f"{verb} {r.moved}{refs}", err=True)
    if prepare_only:
        return
    cmd = [sys.executable, "-m", "wandb", "sync", str(run_dir), *wandb_args]
    rc = subprocess.call(cmd)
    if rc:
        from wbtrace.errors import SourceError

        raise SourceError(f"`wandb sync` exited with code {rc} (its messages are above); re-running is safe")


@main.command("workspace")
@click.option("--entity", envvar="WANDB_ENTITY", required=True, help="W&B entity (default: $WANDB_ENTITY).")
@click.option("--project", envvar="WANDB_PROJECT", required=True, help="W&B project (default: $WANDB_PROJECT).")
@click.option("--name", default="wbtrace", show_default=True, help="Name of the saved view.")
@click.option("--run", "run_id", default=None, help="Run id whose token browser (artifact panels) to add.")
@click.option("--chart-entity", default=None, help="Entity that owns the chart presets (default: --entity).")
@click.option("--json", "as_json", is_flag=True, help="Print the workspace spec as JSON (offline) instead of saving.")
@_TIMEOUT
def workspace_cmd(entity: str, project: str, name: str, run_id: str | None, chart_entity: str | None,
                  as_json: bool, timeout: float) -> None:
    """Build the wbtrace workspace (metric plots, custom charts, token browser); save it or print it.

    The charts use the presets of `wbtrace charts install`: run it first for the same entity.

    \b
    Example:
        wbtrace workspace --entity me --project dapo --run abcd1234 --json > workspace.json
        wbtrace workspace --entity me --project dapo --run abcd1234
    """
    from wbtrace.errors import require

    require("wandb_workspaces", "wandb")
    from weave_panels.workspace import build_workspace, workspace_json

    ws = build_workspace(entity, project, name, run_id=run_id, chart_entity=chart_entity)
    if as_json:
        click.echo(workspace_json(ws))
        return
    _api(timeout)  # a clear error before wandb-workspaces tries the network
    with _w_and_b(f"W&B did not save workspace {name!r}"):
        ws.save()
    click.echo(f"saved workspace {name!r} for {entity}/{project}", err=True)


@main.group("charts")
def charts_group() -> None:
    """W&B custom-chart presets (Vega-Lite) for wbtrace history and tables."""


@charts_group.command("install")
@click.option("--entity", envvar="WANDB_ENTITY", required=True, help="W&B entity that owns the presets.")
@click.option("--access", type=click.Choice(["private", "public"]), default="private", show_default=True)
@_TIMEOUT
def charts_install_cmd(entity: str, access: str, timeout: float) -> None:
    """Register the chart presets (entropy bands, histogram, by position, token heatmap) with W&B.

    A preset that already exists is kept (re-running is safe); each id is printed as `entity/name`,
    the form a workspace panel names it by.

    \b
    Example:
        wbtrace charts install --entity me
    """
    from weave_panels import CHARTS, load_spec

    api = _api(timeout)
    done: list[str] = []
    for preset, chart in CHARTS.items():
        with _w_and_b(f"W&B refused chart {preset} (installed before it: {', '.join(done) or 'none'})"):
            chart_id = _create_or_keep(api, entity, preset, chart.display, access, load_spec(preset))
        done.append(preset)
        click.echo(chart_id)


def _create_or_keep(api: Any, entity: str, preset: str, display: str, access: str, spec: dict) -> str:
    from weave_panels import preset_id

    try:
        return api.create_custom_chart(entity=entity, name=preset, display_name=display, spec_type="vega2",
                                       access=access, spec=spec) or preset_id(entity, preset)
    except Exception as e:
        if "exist" in str(e).lower():  # the server keeps one preset per entity/name
            click.echo(f"{preset_id(entity, preset)} exists: kept", err=True)
            return preset_id(entity, preset)
        raise
