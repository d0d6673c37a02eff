"""W&B chart presets and the workspace for wbtrace runs.

``charts/*.json`` are Vega-Lite specs in W&B's custom-chart format (``"data": {"name": "wandb"}``,
``${field:...}`` / ``${string:...}`` placeholders), written for the Vega-Lite W&B's frontend bundles
(5.6; it forces ``autosize: fit``). `CHARTS` says where each one's rows come from: ``history`` (the
run's history rows, one per step, with the keys `WandbSink` logs) or a table file of the step's
artifact (``heatmap.table.json``). Every spec encodes the run (``${field:run}``, W&B's ``name``
column) so a project workspace with several runs compares them; entropy colours use wbtrace's one
scale (`wbtrace.palette`). `workspace.build_workspace` puts them on one page; W&B names a preset
``entity/name``, which is what a panel's ``panelDefId`` must say (`preset_id`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from wbtrace.sinks.wandb_rows import HIST_BINS, POSITION_BINS, hist_key, pos_key

RUN_FIELD = "name"  # the run's display name: a column of every row W&B passes to a custom chart


@dataclass(frozen=True)
class Chart:
    """One preset: its file, title, where its rows come from, and ``{spec field: column}``."""

    file: str
    display: str
    source: str  # "history" or the table file inside the step artifact
    fields: dict[str, str]
    history_keys: tuple[str, ...] = field(default=())


CHARTS: dict[str, Chart] = {
    "wbtrace-entropy-bands": Chart(
        "entropy_bands.json", "wbtrace: entropy percentile bands", "history",
        {"step": "trace/step", "p50": "trace/entropy_p50", "p80": "trace/entropy_p80",
         "p90": "trace/entropy_p90", "p99": "trace/entropy_p99", "run": RUN_FIELD}),
    "wbtrace-entropy-histogram": Chart(
        "entropy_histogram.json", "wbtrace: entropy histogram across steps", "history",
        {"step": "trace/step", "run": RUN_FIELD}, tuple(hist_key(i) for i in range(HIST_BINS))),
    "wbtrace-entropy-by-position": Chart(
        "entropy_by_position.json", "wbtrace: entropy by relative position", "history",
        {"step": "trace/step", "run": RUN_FIELD}, tuple(pos_key(i) for i in range(POSITION_BINS))),
    # The analyses (wbtrace.analysis.step_scalars, logged by the sink as trace/<key>; docs/analyses.md).
    "wbtrace-cov-entropy": Chart(
        "cov_entropy_change.json", "wbtrace: covariance vs entropy change", "history",
        {"step": "trace/step", "cov_mean": "trace/cov_mean", "entropy_mean": "trace/cov_entropy_mean",
         "run": RUN_FIELD}),
    "wbtrace-position-heatmap": Chart(
        "position_heatmap.json", "wbtrace: entropy by step and position", "history",
        {"step": "trace/step", "run": RUN_FIELD}, tuple(pos_key(i) for i in range(POSITION_BINS))),
    "wbtrace-forks-trend": Chart(
        "forks_trend.json", "wbtrace: forking-token concentration", "history",
        {"step": "trace/step", "top_share": "trace/forks_top_share", "top_fork_share": "trace/forks_top_fork_share",
         "run": RUN_FIELD}),
    "wbtrace-group-shares": Chart(
        "group_shares.json", "wbtrace: all-correct / all-wrong groups", "history",
        {"step": "trace/step", "share_all_correct": "trace/share_all_correct",
         "share_all_wrong": "trace/share_all_wrong", "share_zero_spread": "trace/share_zero_spread",
         "run": RUN_FIELD}),
    "wbtrace-token-heatmap": Chart(
        "token_heatmap.json", "wbtrace: token heatmap", "heatmap.table.json",
        {"row": "row", "label": "label", "position": "position", "token": "token", "entropy": "entropy",
         "run": RUN_FIELD}),
}


def preset_id(entity: str, name: str) -> str:
    """The id W&B gives preset ``name`` of ``entity`` (what ``create_custom_chart`` returns)."""
    return f"{entity}/{name}"


def load_spec(name: str) -> dict[str, Any]:
    """The Vega-Lite spec of chart preset ``name`` (a key of `CHARTS`)."""
    text = resources.files(__name__).joinpath("charts", CHARTS[name].file).read_text(encoding="utf-8")
    return json.loads(text)


def history_keys(name: str) -> list[str]:
    """The history keys chart ``name`` reads (its mapped fields plus the folded keys), sorted."""
    chart = CHARTS[name]
    keys = {v for k, v in chart.fields.items() if k != "run"} | set(chart.history_keys)
    return sorted(keys)


def bind(name: str, rows: list[dict[str, Any]], width: int = 560, height: int = 320) -> dict[str, Any]:
    """Preset ``name`` as W&B draws it: fields mapped as the workspace maps them, ``rows`` inline (each with
    the run's ``name``), ``autosize: fit`` at the panel's size. For tests and the docs' pictures."""
    from wbtrace.viewer.charts import bind_spec

    chart = CHARTS[name]
    spec = bind_spec(load_spec(name), rows, fields=dict(chart.fields), strings={"title": chart.display})
    spec.update({"autosize": {"type": "fit", "contains": "padding"}, "width": width, "height": height})
    return spec
