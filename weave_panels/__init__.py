"""W&B chart presets and the workspace for wbtrace runs.

``charts/*.json`` are Vega-Lite specs in W&B's custom-chart format (``"data": {"name": "wandb"}``,
``${field:...}`` / ``${string:...}`` placeholders). `CHARTS` says which logged table and fields each
one reads; `workspace.build_workspace` puts them, the metric line plots and the preview table on one page.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

# preset name -> (display name, table key logged by WandbSink or "history", {spec field: column or metric})
CHARTS: dict[str, tuple[str, str, dict[str, str]]] = {
    "wbtrace-token-heatmap": ("wbtrace: token heatmap", "trace/heatmap",
                              {"response": "response", "position": "position", "entropy": "entropy",
                               "token": "token"}),
    "wbtrace-entropy-bands": ("wbtrace: entropy percentile bands", "history",
                              {"step": "trace/step", "p50": "trace/entropy_p50", "p80": "trace/entropy_p80",
                               "p90": "trace/entropy_p90", "p99": "trace/entropy_p99"}),
    "wbtrace-entropy-by-position": ("wbtrace: entropy by relative position", "trace/position",
                                    {"step": "step", "rel_position": "rel_position",
                                     "entropy_mean": "entropy_mean"}),
    "wbtrace-entropy-histogram": ("wbtrace: entropy histogram across steps", "trace/histogram",
                                  {"step": "step", "bin_start": "bin_start", "bin_end": "bin_end",
                                   "count": "count"}),
}
_FILES = {
    "wbtrace-token-heatmap": "token_heatmap.json",
    "wbtrace-entropy-bands": "entropy_bands.json",
    "wbtrace-entropy-by-position": "entropy_by_position.json",
    "wbtrace-entropy-histogram": "entropy_histogram.json",
}


def load_spec(name: str) -> dict[str, Any]:
    """The Vega-Lite spec of chart preset ``name`` (a key of `CHARTS`)."""
    text = resources.files(__name__).joinpath("charts", _FILES[name]).read_text(encoding="utf-8")
    return json.loads(text)
