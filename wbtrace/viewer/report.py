"""Assemble the self-contained HTML report: template + inlined vega/vega-lite/vega-embed + viewer JS + data.

Nothing in the page loads from the network: the vendored libraries (``static/``, MIT/BSD licensed,
licenses alongside) are inlined, and a Content-Security-Policy forbids any other origin. Data sits in
``<script type="application/json">`` blocks with ``<``, ``>`` and ``&`` escaped, so no token text can
close the block; the JS builds every DOM node with ``textContent``.
"""

from __future__ import annotations

import json
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

from wbtrace import palette, stats, textsafe
from wbtrace.steps import StepSelection
from wbtrace.store import TraceStore, atomic_output
from wbtrace.viewer.charts import chart_specs
from wbtrace.viewer.data import run_summary, step_payload, used_token_ids, vocab_payload

log = logging.getLogger(__name__)

VENDOR = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
# Inline-file budget: beyond this many tokens a single HTML file gets slow to open; use --serve.
MAX_INLINE_TOKENS = 4_500_000
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_JSON_ESCAPE_RE = re.compile("[<>&\u2028\u2029]")


def static_text(name: str) -> str:
    return resources.files("wbtrace.viewer").joinpath("static", name).read_text(encoding="utf-8")


def json_for_script(obj: Any) -> str:
    """JSON that is safe inside a ``<script type="application/json">`` element, whatever its strings hold."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return _JSON_ESCAPE_RE.sub(lambda m: _JSON_ESCAPES[m.group(0)], text)


def _script_js(code: str) -> str:
    # A literal "</script" inside inlined code would end the element early.
    return "<script>" + re.sub(r"</(script)", r"<\\/\1", code, flags=re.IGNORECASE) + "</script>"


def _json_block(element_id: str, obj: Any) -> str:
    return f'<script type="application/json" id="{element_id}">{json_for_script(obj)}</script>'


def resolve_steps(store: TraceStore, spec: str | StepSelection | None,
                  budget: int | None = MAX_INLINE_TOKENS) -> list[int]:
    """Steps to include (`wbtrace.steps` grammar); with none given, all within ``budget`` tokens.

    Over budget, the latest steps whose tokens fit are chosen (at least one).
    """
    selection = spec if isinstance(spec, StepSelection) else StepSelection.parse(*([spec] if spec else []))
    if not selection.empty or budget is None:
        return store.select(selection)
    have = store.select()
    tokens = {e["step"]: int(e.get("n_tokens", 0)) for e in store.manifest}
    chosen, total = [], 0
    for s in reversed(have):
        total += tokens.get(s, 0)
        if chosen and total > budget:
            log.warning("trace has %d steps; the report holds the latest %d (pass --steps or use --serve "
                        "for the rest)", len(have), len(chosen))
            break
        chosen.append(s)
    return sorted(chosen)


def default_threshold(store: TraceStore) -> float:
    """The threshold the trace's statistics used (manifest), else the paper's 0.672."""
    for entry in reversed(store.manifest):
        if isinstance(entry.get("threshold"), (int, float)):
            return float(entry["threshold"])
    return stats.DEFAULT_THRESHOLD


def render_page(meta: dict[str, Any], blocks: list[str]) -> str:
    """The HTML page: template with CSS, vendored JS, viewer JS, and data blocks inlined."""
    title = "wbtrace: " + Path(meta.get("run_dir", "trace")).name
    page = static_text("template.html")
    vendor = "\n".join(_script_js(static_text(name)) for name in VENDOR)
    data = _json_block("wbtrace-meta", meta) + "\n" + "\n".join(blocks)
    # One pass of replacements whose values are never searched again (token text cannot inject a marker).
    parts = {"@@TITLE@@": _html_text(title), "@@CSS@@": static_text("viewer.css"), "@@VENDOR@@": vendor,
             "@@DATA@@": data, "@@APP@@": _script_js(static_text("viewer.js"))}
    return re.sub("@@(TITLE|CSS|VENDOR|DATA|APP)@@", lambda m: parts[m.group(0)], page)


def _html_text(s: str) -> str:
    import html

    return html.escape(s, quote=True)


def build_meta(store: TraceStore, steps: list[int], threshold: float, specs: dict, mode: str,
               compare: TraceStore | None = None) -> dict[str, Any]:
    from wbtrace.viewer.analyses import compare_payload, run_analyses

    meta = run_summary(store, steps, threshold, specs)
    meta["analyses"] = run_analyses(store, steps, threshold, specs)
    meta["compare"] = compare_payload(store, compare, threshold, specs) if compare is not None else None
    # the JS heatmap interpolates these stops exactly like wbtrace.palette.entropy_rgb
    meta.update({"mode": mode, "color_scale": {"stops": [[h, list(rgb)] for h, rgb in palette.STOPS]},
                 # the CSV download guards formulas with the CLI's own rule (wbtrace.textsafe.csv_cell)
                 "csv_guard": {"start": textsafe.CSV_FORMULA_START, "safe": textsafe.CSV_SAFE}})
    return meta


def build_report(trace_dir: str | Path, steps: str | StepSelection | None = None, threshold: float | None = None,
                 compare: str | Path | None = None) -> str:
    """The self-contained HTML report of ``trace_dir`` as a string (see `write_report`)."""
    store = TraceStore(trace_dir)
    other = TraceStore(compare) if compare is not None else None
    chosen = resolve_steps(store, steps)
    total = sum(int(e.get("n_tokens", 0)) for e in store.manifest if e["step"] in set(chosen))
    if total > MAX_INLINE_TOKENS:
        log.warning("%d tokens in one HTML file will be slow to open; `wbtrace view --serve` loads steps lazily",
                    total)
    threshold = default_threshold(store) if threshold is None else threshold
    specs = chart_specs()
    # step payloads first: each read checks its file whole (wbtrace.store.read_step), so a broken step is
    # one clear error before the analyses scan the same files
    steps_blocks = [_json_block(f"wbtrace-step-{s}", step_payload(store, s, threshold, specs)) for s in chosen]
    meta = build_meta(store, chosen, threshold, specs, mode="file", compare=other)
    blocks = [_json_block("wbtrace-vocab", vocab_payload(store, used_token_ids(store, chosen))), *steps_blocks]
    return render_page(meta, blocks)


def write_report(trace_dir: str | Path, out: str | Path, steps: str | StepSelection | None = None,
                 threshold: float | None = None, compare: str | Path | None = None) -> Path:
    """Write the self-contained HTML report of ``trace_dir`` to ``out`` and return its path.

    Parameters
    ----------
    trace_dir : str or Path
        A trace run directory (``run.json``, ``manifest.jsonl``, ``steps/``).
    out : str or Path
        The HTML file to write (parent directories are created).
    steps : str, optional
        ``"7"``, ``"1,5,9"``, ``"A:B"`` or ``"last"``; default: the latest steps within ~4.5M tokens.
    threshold : float, optional
        Entropy threshold (nats) for "forking" tokens; default: the trace's own (0.672).
    compare : str or Path, optional
        A second trace to show beside this one (the Compare tab).
    """
    html_text = build_report(trace_dir, steps, threshold, compare)  # first: a mistyped trace dir creates nothing
    out = Path(out)
    with atomic_output(out) as tmp:
        tmp.write_text(html_text, encoding="utf-8")
    return out
