"""The wbtrace workspace, built with ``wandb-workspaces``: metric line plots, custom charts, token browser.

The charts name their presets ``entity/name`` (`weave_panels.preset_id`): install them first with
``wbtrace charts install``. The per-step token browser is an artifact panel on ``wbtrace-<run_id>``
(W&B's version picker chooses the step; its files tab opens ``preview.table.json`` and
``heatmap.table.json``), plus the latest step's preview opened as a table: it needs ``--run``, since
artifact collections are named after the run.

`build_workspace` needs no network; `workspace_json` serialises it (``wbtrace workspace --json``) and
`load_workspace_json` reads that back; ``Workspace.save()`` (``wbtrace workspace`` without ``--json``)
needs a W&B login.
"""

from __future__ import annotations

from typing import Any

from weave_panels import CHARTS, history_keys, preset_id

STAT_PLOTS = [
    ("Entropy percentiles", ["trace/entropy_p50", "trace/entropy_p80", "trace/entropy_p90", "trace/entropy_p99"]),
    ("Mean entropy", ["trace/entropy_mean", "trace/entropy_mean_correct", "trace/entropy_mean_incorrect"]),
    ("Share of tokens above threshold", ["trace/share_above"]),
    ("Response length", ["trace/response_length_mean"]),
    ("Reward and accuracy", ["trace/reward_mean", "trace/accuracy"]),
]


def build_workspace(entity: str, project: str, name: str = "wbtrace", run_id: str | None = None,
                    chart_entity: str | None = None) -> Any:
    """A `wandb_workspaces.workspaces.Workspace` for ``entity/project`` (no network).

    ``chart_entity`` owns the presets (default ``entity``); ``run_id`` adds that run's token browser.
    """
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    owner = chart_entity or entity
    lines = [wr.LinePlot(title=title, x="trace/step", y=list(ys)) for title, ys in STAT_PLOTS]
    charts = [wr.CustomChart(query={"history": {"keys": history_keys(preset)}}, chart_name=preset_id(owner, preset),
                             chart_fields=dict(chart.fields), chart_strings={"title": chart.display})
              for preset, chart in CHARTS.items() if chart.source == "history"]
    sections = [ws.Section(name="wbtrace: entropy over training", panels=lines, is_open=True),
                ws.Section(name="wbtrace: charts", panels=charts, is_open=True)]
    browser: list[Any] = [wr.MarkdownPanel(markdown=_HELP)]
    if run_id:
        from wbtrace.sinks.wandb import artifact_name

        art = artifact_name(run_id)
        browser = [wr.WeavePanelArtifact(artifact=art, tab="files"),
                   wr.WeavePanelArtifactVersionedFile(artifact=art, version="latest", file="preview.table.json"),
                   *browser]
    sections.append(ws.Section(name="wbtrace: tokens, step by step", panels=browser, is_open=True))
    return ws.Workspace(entity=entity, project=project, name=name, sections=sections)


_HELP = """**wbtrace** keeps every traced step as artifact version `wbtrace-<run_id>:step-N`: its Parquet file,
`preview.table.json` (responses, tokens coloured by entropy) and `heatmap.table.json` (the best and worst
response of the groups whose rewards differ most, token by token). Pick the step in the artifact panel's
version menu, or open *Artifacts > wbtrace-<run_id>* in the run page.
Pull a step for analysis: `wbtrace pull ENTITY/PROJECT/RUN_ID --step N`.
Colours: white = sure, yellow to dark red = rising entropy (nats); underlined = above the forking threshold."""


def workspace_json(workspace: Any) -> str:
    """The workspace as the JSON view spec W&B stores (`wandb_workspaces`' internal ``View`` model)."""
    return workspace._to_model().model_dump_json(by_alias=True, exclude_none=True, indent=2)


def load_workspace_json(text: str) -> Any:
    """Read `workspace_json` output back into a `Workspace`."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces.workspaces import internal

    return ws.Workspace._from_model(internal.View.model_validate_json(text))
