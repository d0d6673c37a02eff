"""The W&B chart presets, compiled by Vega-Lite 5.6 (what W&B's frontend bundles; vendored in tests/vega5)
and rendered in headless Chromium from rows made by the sink's own functions, for two runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wbtrace import TraceStore, TraceWriter, palette
from wbtrace.sinks.wandb_rows import HEATMAP_COLUMNS, heatmap_rows, history_scalars
from wbtrace.stats import step_stats
from wbtrace.synthetic import make_step
from weave_panels import CHARTS, bind

VEGA5 = Path(__file__).parent / "vega5"
RUNS = ("run-a", "run-b")
STEPS = (1, 2, 3)


def _tables(root: Path) -> dict[tuple[str, int], object]:
    out = {}
    for r, run in enumerate(RUNS):
        with TraceWriter(root / run, vocab=[f"t{i}" for i in range(300)]) as w:
            for step in STEPS:
                arrays = make_step(16, 48, 300, seed=10 * r + step, group_size=4, min_len=8)
                arrays["entropy"] = arrays["entropy"] * (1 + 3 * r)  # run-b reaches the overflow bin
                w.write_step(step, **arrays)
        store = TraceStore(root / run)
        out.update({(run, step): store.read_step(step) for step in STEPS})
    return out


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    tables = _tables(tmp_path_factory.mktemp("charts"))
    history = {run: [] for run in RUNS}
    heat = {run: [] for run in RUNS}
    for (run, step), table in tables.items():
        row = history_scalars(step, step_stats(table), table)
        row.pop("_hist")
        history[run].append({**row, "name": run})
        if step == STEPS[-1]:
            heat[run] = [{**dict(zip(HEATMAP_COLUMNS, r, strict=True)), "name": run} for r in heatmap_rows(table, None)]
    n_tokens = sum(int(t.column("response_length").to_numpy().sum()) for t in tables.values())
    return {"history": [r for run in RUNS for r in history[run]], "heatmap": [r for run in RUNS for r in heat[run]],
            "n_tokens": n_tokens}


@pytest.fixture(scope="module")
def vega_page(browser):
    page = browser.new_page()
    page.set_content("<html><body></body></html>")
    page.add_script_tag(path=str(VEGA5 / "vega-5.22.1.min.js"))
    page.add_script_tag(path=str(VEGA5 / "vega-lite-5.6.1.min.js"))
    assert page.evaluate("[vega.version, vegaLite.version]") == ["5.22.1", "5.6.1"]
    yield page
    page.close()


RENDER = """async (spec) => {
  const warnings = [];
  const logger = {level() { return this; }, warn(...a) { warnings.push(a.join(' ')); return this; },
                  info() { return this; }, debug() { return this; },
                  error(...a) { throw new Error(a.join(' ')); }};
  const compiled = vegaLite.compile(spec, {logger});
  const view = new vega.View(vega.parse(compiled.spec), {renderer: 'none'});
  await view.runAsync();
  const marks = [];
  const walk = (node, role) => {
    if (!node) return;
    if (node.marktype && node.items) {
      for (const it of node.items) {
        if (it.datum && node.role !== 'axis' && !(node.name || '').includes('legend'))
          marks.push({type: node.marktype, name: node.name || '', fill: it.fill || null, datum: it.datum});
        if (it.items) for (const c of it.items) walk(c);
      }
    }
  };
  walk(view.scenegraph().root);
  return {warnings, marks: marks.map(m => ({...m, datum: JSON.parse(JSON.stringify(m.datum))}))};
}"""


def _render(page, name: str, values: list[dict]) -> dict:
    out = page.evaluate(RENDER, bind(name, json.loads(json.dumps(values))))
    assert not [w for w in out["warnings"] if "autosize" not in w.lower()], out["warnings"]
    return out


def _data_marks(out: dict, marktype: str) -> list[dict]:
    return [m for m in out["marks"] if m["type"] == marktype and "marks" in m["name"]]


def test_histogram_keeps_every_token_of_both_runs(vega_page, rows):
    out = _render(vega_page, "wbtrace-entropy-histogram", rows["history"])
    cells = _data_marks(out, "rect")
    assert sum(c["datum"]["tokens"] for c in cells) == rows["n_tokens"]  # the whole range, no mass lost
    assert {c["datum"]["name"] for c in cells} == set(RUNS)
    assert max(c["datum"]["bin_start"] for c in cells) == 11.5  # run-b's tail lands in the overflow bin


def test_bands_and_position_draw_each_run(vega_page, rows):
    bands = _render(vega_page, "wbtrace-entropy-bands", rows["history"])
    areas = _data_marks(bands, "area")
    assert {(a["name"], a["datum"]["name"]) for a in areas} == {(f"layer_{i}_marks", r) for i in (0, 1) for r in RUNS}
    pos = _render(vega_page, "wbtrace-entropy-by-position", rows["history"])
    lines = _data_marks(pos, "line")
    assert {(li["datum"]["name"], li["datum"]["trace/step"]) for li in lines} == {(r, s) for r in RUNS for s in STEPS}


def test_heatmap_cells_use_the_palette_for_both_runs(vega_page, rows):
    out = _render(vega_page, "wbtrace-token-heatmap", rows["heatmap"])
    cells = _data_marks(out, "rect")
    assert len(cells) == len(rows["heatmap"]) and {c["datum"]["name"] for c in cells} == set(RUNS)
    assert {c["datum"]["response"].split(" | ")[0] for c in cells} == set(RUNS)
    for c in cells[::97]:
        rgb = np.array(palette.entropy_rgb(c["datum"]["entropy"]))
        got = np.array([int(x) for x in c["fill"].strip("rgb()").split(",")])
        assert np.abs(got - rgb).max() <= 1, (c["datum"]["entropy"], c["fill"])


def test_analysis_presets_draw_the_sinks_analysis_scalars(vega_page, rows):
    """The analysis presets read the trace/<key> scalars `wbtrace.analysis.step_scalars` gives the sink."""
    hist = rows["history"]
    by = {(r["name"], r["trace/step"]): r for r in hist}
    cov = _data_marks(_render(vega_page, "wbtrace-cov-entropy", hist), "symbol")
    want = {(r, s, by[(r, s)]["trace/cov_mean"], by[(r, s + 1)]["trace/cov_entropy_mean"] - by[(r, s)]["trace/cov_entropy_mean"])
            for r in RUNS for s in STEPS[:-1]}  # the last step has no next step
    got = {(m["datum"]["name"], m["datum"]["trace/step"], m["datum"]["trace/cov_mean"], m["datum"]["entropy_change"])
           for m in cov}
    assert {g[:2] for g in got} == {w[:2] for w in want}
    for g in sorted(got):
        w = next(x for x in want if x[:2] == g[:2])
        assert g[2:] == pytest.approx(w[2:])
    heat = _data_marks(_render(vega_page, "wbtrace-position-heatmap", hist), "rect")
    assert len(heat) == len(RUNS) * len(STEPS) * 10
    cell = next(c for c in heat if c["datum"]["name"] == "run-b" and c["datum"]["trace/step"] == 2
                and c["datum"]["decile"] == 30)
    assert cell["datum"]["entropy_mean"] == pytest.approx(by[("run-b", 2)]["trace_pos/d3"])
    forks = _data_marks(_render(vega_page, "wbtrace-forks-trend", hist), "line")
    assert {(m["datum"]["name"], m["datum"]["series"]) for m in forks} == {
        (r, k) for r in RUNS for k in ("trace/forks_top_share", "trace/forks_top_fork_share")}
    shares = _data_marks(_render(vega_page, "wbtrace-group-shares", hist), "line")
    assert {(m["datum"]["name"], m["datum"]["groups"]) for m in shares} == {
        (r, g) for r in RUNS for g in ("all_correct", "all_wrong", "zero_spread")}


def test_every_preset_is_checked_here():
    assert set(CHARTS) == {"wbtrace-entropy-histogram", "wbtrace-entropy-bands", "wbtrace-entropy-by-position",
                           "wbtrace-token-heatmap", "wbtrace-cov-entropy", "wbtrace-position-heatmap",
                           "wbtrace-forks-trend", "wbtrace-group-shares"}
