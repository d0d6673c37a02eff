"""Pictures of the W&B panels for docs/wandb.md, rendered from the presets and a real trace.

Rows are made by the sink's own functions (`wbtrace.sinks.wandb_rows`) from a trace dir (default the
committed docs/runs/h100-sample); each preset is bound as W&B binds it (`weave_panels.bind`) and drawn
by Vega 5.22 / Vega-Lite 5.6 (tests/vega5, what W&B bundles) in headless Chromium. The preview is drawn
as W&B shows its HTML cells.

Usage: ``python scripts/render_wandb_charts.py [TRACE_DIR] [--out docs/wandb]``
"""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VEGA5 = ROOT / "tests" / "vega5"
CHROMIUM = "/usr/bin/chromium"


def chart_rows(trace: Path, run_name: str) -> tuple[list[dict], list[dict], tuple[list[str], list[list]], int]:
    from wbtrace import TraceStore
    from wbtrace.sinks.wandb_rows import HEATMAP_COLUMNS, heatmap_rows, history_scalars, preview_rows

    store = TraceStore(trace)
    stats = {e["step"]: e for e in store.manifest}
    history, last = [], store.steps[-1]
    for step in store.steps:
        row = history_scalars(step, stats[step], store.read_step(step))
        row.pop("_hist", None)
        history.append({**row, "name": run_name})
    table = store.read_step(last)
    heat = [{**dict(zip(HEATMAP_COLUMNS, r, strict=True)), "name": run_name} for r in heatmap_rows(table, store.vocab.texts)]
    preview = preview_rows(table, store.vocab.texts, 6, max_tokens=120, artifact=f"wbtrace-<run>:step-{last}")
    return history, heat, preview, last


def preview_page(columns: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = [html.escape(f"{v:.3g}" if isinstance(v, float) else str(v)) for v in r[:-1]] + [r[-1]]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    style = ("body{font:12px sans-serif;margin:8px}table{border-collapse:collapse}td,th{border:1px solid #ddd;"
             "padding:3px 5px;vertical-align:top}td:last-child{max-width:520px}th{background:#f5f5f5}")
    return f"<html><head><style>{style}</style></head><body><table id='c'><tr>{head}</tr>{''.join(body)}</table></body></html>"


def main() -> None:
    from playwright.sync_api import sync_playwright

    from weave_panels import bind

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace", nargs="?", default=str(ROOT / "docs" / "runs" / "h100-sample"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "wandb"))
    ap.add_argument("--run-name", default="h100-dapo")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    history, heat, (pcols, prows), last = chart_rows(Path(args.trace), args.run_name)
    charts = {"entropy_bands": ("wbtrace-entropy-bands", history), "entropy_histogram": ("wbtrace-entropy-histogram", history),
              "entropy_by_position": ("wbtrace-entropy-by-position", history),
              "token_heatmap": ("wbtrace-token-heatmap", heat),
              "cov_entropy": ("wbtrace-cov-entropy", history), "position_heatmap": ("wbtrace-position-heatmap", history),
              "forks_trend": ("wbtrace-forks-trend", history), "group_shares": ("wbtrace-group-shares", history)}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 900, "height": 700}, device_scale_factor=1.5)
        for file, (preset, rows) in charts.items():
            page.set_content("<html><body style='margin:0;background:white'><div id='c'></div></body></html>")
            page.add_script_tag(path=str(VEGA5 / "vega-5.22.1.min.js"))
            page.add_script_tag(path=str(VEGA5 / "vega-lite-5.6.1.min.js"))
            spec = bind(preset, rows, width=760, height=260 if file in ("token_heatmap", "position_heatmap") else 300)
            page.evaluate("""async (spec) => {
                const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), {renderer: 'svg', container: '#c'});
                await view.runAsync(); }""", spec)
            page.locator("#c").screenshot(path=str(out / f"{file}.png"))
            print(out / f"{file}.png")
        page.set_content(preview_page(pcols, prows))
        page.locator("#c").screenshot(path=str(out / "preview.png"))
        print(out / "preview.png", f"(step {last})")
        browser.close()


if __name__ == "__main__":
    main()
