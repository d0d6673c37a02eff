"""Vega-Lite chart specs of the viewer, in W&B custom-chart form, and the binding that renders them here.

A W&B custom chart is a Vega-Lite spec whose data is ``{"name": "wandb"}`` and whose fields are
``${field:NAME}`` placeholders (``${string:NAME}`` for text). `bind_spec` turns such a spec into a
plain one with inline values, so one chart definition serves W&B and the offline viewer. Where the W&B
presets in ``weave_panels/charts/`` draw the same view from the same rows (`WEAVE_FILES`) they are
used as they are; the other charts are defined below in the same W&B form.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PLACEHOLDER = re.compile(r"\$\{(field|string):([^}]+)\}")
SCHEMA = "https://vega.github.io/schema/vega-lite/v6.json"
WANDB_DATA = {"name": "wandb"}


def bind_spec(spec: dict[str, Any], values: list[dict[str, Any]], fields: dict[str, str] | None = None,
              strings: dict[str, str] | None = None) -> dict[str, Any]:
    """A copy of W&B custom-chart ``spec`` with ``{"name": "wandb"}`` data replaced by ``values``.

    ``${field:x}`` becomes ``fields[x]`` (default ``x``: the viewer names its columns like the
    placeholders), ``${string:x}`` becomes ``strings[x]`` (default empty).

    Examples
    --------
    >>> spec = {"data": {"name": "wandb"}, "mark": "line", "title": "${string:title}",
    ...         "encoding": {"x": {"field": "${field:step}"}}}
    >>> bound = bind_spec(spec, [{"s": 1}], fields={"step": "s"}, strings={"title": "H"})
    >>> bound["data"], bound["encoding"]["x"]["field"], bound["title"]
    ({'values': [{'s': 1}]}, 's', 'H')
    """
    fields, strings = fields or {}, strings or {}

    def sub(match: re.Match) -> str:
        kind, name = match.group(1), match.group(2)
        return fields.get(name, name) if kind == "field" else strings.get(name, "")

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            if node == WANDB_DATA:
                return {"values": values}
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str):
            return _PLACEHOLDER.sub(sub, node)
        return node

    return walk(copy.deepcopy(spec))


# Steps are integers: without a format Vega prints them as "12.000000" in tooltips.
STEP_TOOLTIP = [{"field": "${field:step}", "type": "quantitative", "title": "step", "format": "d"}]


def _line_fold(title: str, keys: list[str], y_title: str, colors: list[str]) -> dict[str, Any]:
    """Several columns over steps as coloured lines (fold to long form, so W&B needs one table)."""
    return {
        "$schema": SCHEMA, "title": title, "data": WANDB_DATA, "width": "container", "height": 190,
        "transform": [{"fold": [f"${{field:{k}}}" for k in keys], "as": ["series", "value"]}],
        "mark": {"type": "line", "point": {"size": 18}},
        "encoding": {
            "x": {"field": "${field:step}", "type": "quantitative", "title": "step", "axis": {"format": "d"}},
            "y": {"field": "value", "type": "quantitative", "title": y_title},
            "color": {"field": "series", "type": "nominal", "title": None,
                      "scale": {"domain": [f"${{field:{k}}}" for k in keys], "range": colors}},
            "tooltip": STEP_TOOLTIP + [{"field": "series", "type": "nominal", "title": "series"},
                                       {"field": "value", "type": "quantitative", "title": y_title, "format": ".4f"}],
        },
    }


def _percentile_bands() -> dict[str, Any]:
    spec = _line_fold("Token entropy percentiles", ["p50", "p80", "p90", "p99"], "entropy (nats)",
                      ["#fec44f", "#f56c28", "#c81e2d", "#6e0a6e"])
    band = {"mark": {"type": "area", "opacity": 0.12, "color": "#c81e2d"},
            "encoding": {"x": {"field": "${field:step}", "type": "quantitative", "axis": {"format": "d"}},
                         "y": {"field": "${field:p50}", "type": "quantitative"},
                         "y2": {"field": "${field:p99}"}}}
    lines = {k: spec.pop(k) for k in ("transform", "mark", "encoding")}
    spec["layer"] = [band, lines]
    return spec


def _histogram() -> dict[str, Any]:
    return {
        "$schema": SCHEMA, "title": "${string:title}", "data": WANDB_DATA, "width": "container", "height": 190,
        "mark": {"type": "bar", "color": "#f56c28", "tooltip": True},
        "encoding": {
            "x": {"field": "${field:bin_start}", "type": "quantitative", "bin": {"binned": True},
                  "title": "token entropy (nats)"},
            "x2": {"field": "${field:bin_end}"},
            "y": {"field": "${field:count}", "type": "quantitative", "scale": {"type": "symlog"},
                  "title": "tokens (symlog)"},
        },
    }


def _by_position() -> dict[str, Any]:
    return {
        "$schema": SCHEMA, "title": "${string:title}", "data": WANDB_DATA, "width": "container", "height": 190,
        "mark": {"type": "line", "point": True, "color": "#c81e2d", "tooltip": True},
        "encoding": {
            "x": {"field": "${field:rel_position}", "type": "quantitative", "title": "relative position in response",
                  "axis": {"format": "%"}},
            "y": {"field": "${field:entropy_mean}", "type": "quantitative", "title": "mean entropy (nats)"},
        },
    }


def _correct_box() -> dict[str, Any]:
    return {
        "$schema": SCHEMA, "title": "${string:title}", "data": WANDB_DATA, "width": "container", "height": 190,
        "mark": {"type": "boxplot", "extent": 1.5},
        "encoding": {
            "x": {"field": "${field:outcome}", "type": "nominal", "title": None},
            "y": {"field": "${field:entropy}", "type": "quantitative", "title": "response mean entropy (nats)"},
            "color": {"field": "${field:outcome}", "type": "nominal", "legend": None,
                      "scale": {"domain": ["correct", "incorrect"], "range": ["#2b8a3e", "#c81e2d"]}},
        },
    }


def _forking_tokens() -> dict[str, Any]:
    return {
        "$schema": SCHEMA, "title": "${string:title}", "data": WANDB_DATA, "width": "container", "height": 190,
        "mark": {"type": "bar", "tooltip": True},
        "encoding": {
            "y": {"field": "${field:token}", "type": "nominal", "sort": "-x", "title": None},
            "x": {"field": "${field:count}", "type": "quantitative", "title": "count above threshold"},
            "color": {"field": "${field:entropy}", "type": "quantitative", "title": "mean H",
                      "scale": {"scheme": "yelloworangered"}},
        },
    }


def _compare_entropy() -> dict[str, Any]:
    return {
        "$schema": SCHEMA, "title": "${string:title}", "data": WANDB_DATA, "width": "container", "height": 220,
        "mark": {"type": "line", "point": {"size": 18}},
        "encoding": {
            "x": {"field": "${field:step}", "type": "quantitative", "title": "step", "axis": {"format": "d"}},
            "y": {"field": "${field:entropy_mean}", "type": "quantitative", "title": "mean entropy (nats)"},
            "color": {"field": "${field:run}", "type": "nominal", "title": "run",
                      "scale": {"domain": ["a", "b"], "range": ["#c81e2d", "#1f6feb"]}},
            "tooltip": STEP_TOOLTIP + [{"field": "${field:run}", "type": "nominal"},
                                       {"field": "${field:entropy_mean}", "type": "quantitative", "format": ".4f"}],
        },
    }


def _static(file: str) -> Any:
    """An analysis chart kept as a JSON file in W&B form (``static/charts/``), drawn from long rows."""
    from importlib import resources

    def load() -> dict[str, Any]:
        spec = json.loads(resources.files("wbtrace.viewer").joinpath("static", "charts", file).read_text("utf-8"))
        return {**spec, "$schema": SCHEMA}  # written for W&B's Vega-Lite 5.6; the viewer ships 6

    return load


BUILTIN: dict[str, Any] = {
    "entropy_percentiles": _percentile_bands,
    "share_above": lambda: _line_fold("Share of tokens above threshold", ["share_above"], "share",
                                      ["#c81e2d"]),
    "entropy_correct_incorrect": lambda: _line_fold("Mean entropy: correct vs incorrect",
                                                    ["correct", "incorrect"], "mean entropy (nats)",
                                                    ["#2b8a3e", "#c81e2d"]),
    "entropy_histogram": _histogram,
    "entropy_by_position": _by_position,
    "entropy_correct_box": _correct_box,
    "forking_tokens": _forking_tokens,
    "forks_trend": _static("forks_trend.json"),
    "cov_entropy_change": _static("cov_entropy_change.json"),
    "position_heatmap": _static("position_heatmap.json"),
    "group_shares": _static("group_shares.json"),
    "compare_entropy": _compare_entropy,
}


# Viewer chart -> W&B preset file in weave_panels/charts/ that draws the same thing from the same columns.
# None now: the W&B presets read W&B's wide history rows (one per step, one key per histogram bin or
# position decile, folded in the spec) and encode the run for multi-run panels; the viewer draws one
# trace from long rows, with its own legends. (Both colour entropy with wbtrace.palette.)
WEAVE_FILES: dict[str, str] = {}


def panels_dir() -> Path:
    """``weave_panels/charts/`` of a source checkout (``weave_panels`` sits next to the ``wbtrace`` package)."""
    return Path(__file__).resolve().parents[2] / "weave_panels" / "charts"


def load_spec(name: str, directory: Path | None = None) -> dict[str, Any]:
    """The W&B-form spec ``name``: the shared ``weave_panels/charts`` preset when there is one, else built-in."""
    path = (directory or panels_dir()) / WEAVE_FILES.get(name, f"{name}.json")
    if name in WEAVE_FILES and path.is_file():
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            log.warning("%s unreadable (%s); using the built-in %s chart", path, e, name)
        else:
            # W&B pins Vega-Lite v4 in presets; the viewer ships v6 and sizes charts to their grid cell.
            spec.update({"$schema": SCHEMA, "width": spec.get("width", "container"), "height": spec.get("height", 190)})
            return spec
    return BUILTIN[name]()


def chart_specs(directory: Path | None = None) -> dict[str, dict[str, Any]]:
    """Every chart the viewer draws, by name, still in W&B form (`bind_spec` adds the data)."""
    return {name: load_spec(name, directory) for name in BUILTIN}
