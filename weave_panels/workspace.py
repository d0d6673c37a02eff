"""The wbtrace workspace, built with ``wandb-workspaces``: metric line plots, the preview table, charts.

`build_workspace` needs no network; `workspace_json` serialises it (``wbtrace workspace --json``) and
`load_workspace_json` reads that back; ``Workspace.save()`` (``wbtrace workspace`` without ``--json``)
needs a W&B login.
"""

from __future__ import annotations

from typing import Any

from weave_panels import CHARTS

STAT_PLOTS = [
    ("Entropy percentiles", ["trace/entropy_p50", "trace/entropy_p80", "trace/entropy_p90", "trace/entropy_p99"]),
    ("Mean entropy", ["trace/entropy_mean", "trace/entropy_mean_correct", "trace/entropy_mean_incorrect"]),
    ("Share of tokens above threshold", ["trace/share_above"]),
    ("Response length", ["trace/response_length_mean"]),
    ("Reward and accuracy", ["trace/reward_mean", "trace/accuracy"]),
]


def build_workspace(entity: str, project: str, name: str = "wbtrace") -> Any:
    """A `wandb_workspaces.workspaces.Workspace` for ``entity/project`` (no network)."""
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    lines = [wr.LinePlot(title=title, x="trace/step", y=list(ys)) for title, ys in STAT_PLOTS]
    charts = [wr.CustomChart(query=_query(key, fields), chart_name=preset,
                             chart_fields=dict(fields), chart_strings={"title": display})
              for preset, (display, key, fields) in CHARTS.items()]
    tables = [wr.WeavePanelSummaryTable(table_name="trace/preview"),
              wr.MarkdownPanel(markdown=_HELP)]
    return ws.Workspace(
        entity=entity, project=project, name=name,
        sections=[ws.Section(name="wbtrace: entropy over training", panels=lines, is_open=True),
                  ws.Section(name="wbtrace: charts", panels=charts, is_open=True),
                  ws.Section(name="wbtrace: token preview", panels=tables, is_open=True)],
    )


def _query(key: str, fields: dict[str, str]) -> dict[str, Any]:
    if key == "history":  # over steps: the run history, not one logged table
        return {"history": {"keys": sorted(set(fields.values()))}}
    return {"summaryTable": {"tableKey": key}}


_HELP = """**wbtrace** keeps per-token entropy for every step as artifact `wbtrace-<run_id>:step-N`.
Pull a step for offline analysis: `wbtrace pull ENTITY/PROJECT/RUN_ID --step N`.
Token colours: white = sure, red = high entropy (forking token); underlined = above the threshold."""


def workspace_json(workspace: Any) -> str:
    """The workspace as the JSON view spec W&B stores (`wandb_workspaces`' internal ``View`` model)."""
    return workspace._to_model().model_dump_json(by_alias=True, exclude_none=True, indent=2)


def load_workspace_json(text: str) -> Any:
    """Read `workspace_json` output back into a `Workspace`."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces.workspaces import internal

    return ws.Workspace._from_model(internal.View.model_validate_json(text))
