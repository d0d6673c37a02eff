"""CLI commands for the W&B side: ``wbtrace workspace`` and ``wbtrace charts install``."""

from __future__ import annotations

import click

from wbtrace.cli.app import main


@main.command("workspace")
@click.option("--entity", envvar="WANDB_ENTITY", required=True, help="W&B entity (default: $WANDB_ENTITY).")
@click.option("--project", envvar="WANDB_PROJECT", required=True, help="W&B project (default: $WANDB_PROJECT).")
@click.option("--name", default="wbtrace", show_default=True, help="Name of the saved view.")
@click.option("--json", "as_json", is_flag=True, help="Print the workspace spec as JSON (offline) instead of saving.")
def workspace_cmd(entity: str, project: str, name: str, as_json: bool) -> None:
    """Build the wbtrace workspace (metric plots, preview table, custom charts); save it or print it.

    \b
    Example:
        wbtrace workspace --entity me --project dapo --json > workspace.json
        wbtrace workspace --entity me --project dapo
    """
    from wbtrace.errors import SourceError, require

    require("wandb_workspaces", "wandb")
    from weave_panels.workspace import build_workspace, workspace_json

    ws = build_workspace(entity, project, name)
    if as_json:
        click.echo(workspace_json(ws))
        return
    from wbtrace.sources.wandb_api import make_api

    make_api()  # logged in and reachable, in bounded time, before wandb_workspaces tries
    wandb = require("wandb", "wandb")
    try:
        ws.save()
    except wandb.errors.CommError as e:
        raise SourceError(f"W&B refused the workspace: {e}") from None
    click.echo(f"saved workspace {name!r} for {entity}/{project}", err=True)


@main.group("charts")
def charts_group() -> None:
    """W&B custom-chart presets (Vega-Lite) for wbtrace tables."""


@charts_group.command("install")
@click.option("--entity", envvar="WANDB_ENTITY", required=True, help="W&B entity that owns the presets.")
@click.option("--access", type=click.Choice(["private", "public"]), default="private", show_default=True)
def charts_install_cmd(entity: str, access: str) -> None:
    """Register the chart presets (token heatmap, entropy bands, by position, histogram) with W&B.

    \b
    Example:
        wbtrace charts install --entity me
    """
    from wbtrace.errors import SourceError, require

    wandb = require("wandb", "wandb")
    from wbtrace.sources.wandb_api import make_api
    from weave_panels import CHARTS, load_spec

    api = make_api()
    for preset, (display, _key, _fields) in CHARTS.items():
        try:
            chart_id = api.create_custom_chart(entity=entity, name=preset, display_name=display,
                                               spec_type="vega2", access=access, spec=load_spec(preset))
        except wandb.errors.Error as e:
            raise SourceError(f"W&B refused chart {preset}: {e}") from None
        click.echo(f"installed {chart_id}")
