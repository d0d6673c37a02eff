"""The data a report carries: run-level summary (over steps) and one compact payload per step.

Per-token arrays travel as base64 of little-endian buffers (int32 token ids and offsets, float16
entropy and log-prob): 512 x 8k tokens is ~23 MB of base64 instead of ~100 MB of JSON numbers, and
the browser decodes them into typed arrays without parsing a number per token.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wbtrace import stats
from wbtrace.store import TraceStore
from wbtrace.viewer.charts import bind_spec

# Per-response columns shipped to the list view (when the step has them).
RESPONSE_COLUMNS = ("sample_id", "group_id", "prompt_index", "reward", "advantage", "score", "response_length",
                    "kept", "correct", "truncated")
OVER_STEPS = ("entropy_mean", "entropy_p50", "entropy_p80", "entropy_p90", "entropy_p99", "share_above",
              "entropy_mean_correct", "entropy_mean_incorrect", "reward_mean", "response_length_mean",
              "n_responses", "n_tokens")


def b64(arr: np.ndarray, dtype: str) -> str:
    """Base64 of ``arr`` as little-endian ``dtype`` (``"<i4"``, ``"<f2"``)."""
    return base64.b64encode(np.ascontiguousarray(arr, dtype=dtype).tobytes()).decode("ascii")


def _clean(v: Any) -> Any:
    """JSON-safe scalar: NaN/inf become null (JSON has no NaN)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _flat(table: pa.Table, name: str) -> np.ndarray:
    return pc.list_flatten(table.column(name).combine_chunks()).to_numpy(zero_copy_only=False)


def _response_stats(table: pa.Table, threshold: float) -> dict[str, list]:
    """Mean, max and count above threshold of each response's entropy, rounded for the page."""
    summary = stats.response_entropy(table, threshold)
    return {"entropy_mean": [_clean(round(float(x), 5)) for x in summary["entropy_mean"]],
            "entropy_max": [_clean(round(float(x), 4)) for x in summary["entropy_max"]],
            "n_high": summary["n_above"].tolist()}


def _columns(table: pa.Table) -> dict[str, list]:
    cols = {}
    for name in RESPONSE_COLUMNS + ("prompt_text",):
        if name in table.column_names and table.column(name).null_count < table.num_rows:
            cols[name] = [_clean(v) for v in table.column(name).to_pylist()]
    if "sample_id" not in cols:
        cols["sample_id"] = list(range(table.num_rows))
    return cols


def _token_label(text: str, token_id: int) -> str:
    """A token as an axis label: whitespace made visible, id appended (two ids can share a text)."""
    shown = text.replace(" ", "\u2423").replace("\n", "\u21b5").replace("\t", "\u21e5") or "\u2205"
    return f"{shown} #{token_id}"


def step_charts(store: TraceStore, table: pa.Table, cols: dict[str, list], threshold: float,
                specs: dict[str, dict], step: int) -> dict[str, dict]:
    """The per-step Vega-Lite charts, bound to this step's numbers (from `wbtrace.stats`)."""
    counts, edges = stats.histogram(table, bins=60)
    hist = [{"bin_start": float(a), "bin_end": float(b), "count": int(c)}
            for a, b, c in zip(edges[:-1], edges[1:], counts, strict=True)]
    prof = stats.position_profile(table, bins=20)
    position = [{"step": step, "rel_position": (i + 0.5) / len(prof), "entropy_mean": v}
                for i, v in enumerate(prof) if v is not None]
    forks = [{"token": _token_label(store.vocab.text(f["token_id"]), f["token_id"]), "count": f["count"],
              "entropy": round(f["entropy_mean"], 4)} for f in stats.forking_tokens(table, threshold, top=15)]
    out = {
        "entropy_histogram": bind_spec(specs["entropy_histogram"], hist,
                                       strings={"title": f"Entropy histogram, step {step}"}),
        "entropy_by_position": bind_spec(specs["entropy_by_position"], position,
                                         strings={"title": f"Entropy by relative position, step {step}"}),
        "forking_tokens": bind_spec(specs["forking_tokens"], forks,
                                    strings={"title": f"Top forking tokens (H > {threshold:g}), step {step}"}),
    }
    if "correct" in cols:
        box = [{"outcome": "correct" if c else "incorrect", "entropy": h}
               for c, h in zip(cols["correct"], cols["entropy_mean"], strict=True) if c is not None and h is not None]
        out["entropy_correct_box"] = bind_spec(specs["entropy_correct_box"], box,
                                               strings={"title": f"Correct vs incorrect, step {step}"})
    return out


def step_payload(store: TraceStore, step: int, threshold: float, specs: dict[str, dict],
                 with_vocab: bool = False) -> dict[str, Any]:
    """Everything the viewer shows about one step, JSON-ready (per-token data as base64 buffers)."""
    table = store.read_step(step)
    lengths = pc.list_value_length(table.column("token_ids").combine_chunks()).fill_null(0)
    offsets = np.concatenate([[0], np.cumsum(lengths.to_numpy(zero_copy_only=False))]).astype(np.int64)
    ids = _flat(table, "token_ids")
    ent = _flat(table, "entropy").astype(np.float16)
    cols = _columns(table)
    cols.update(_response_stats(table, threshold))
    payload: dict[str, Any] = {
        "step": step, "n": table.num_rows, "n_tokens": int(ids.size), "threshold": threshold,
        "columns": cols,
        "offsets": b64(offsets, "<i4"), "token_ids": b64(ids, "<i4"), "entropy": b64(ent, "<f2"),
        "logprob": b64(_flat(table, "logprob").astype(np.float16), "<f2") if "logprob" in table.column_names
        else None,
        "charts": step_charts(store, table, cols, threshold, specs, step),
        **token_extras(table),
    }
    from wbtrace.viewer.analyses import step_groups, step_prompt_keys

    payload["groups"] = step_groups(store, step)
    keys = step_prompt_keys(store, step)
    if keys is not None:
        payload["columns"]["prompt_key"] = keys
    if with_vocab:
        payload["vocab"] = vocab_payload(store, np.unique(ids))
    return payload


def token_extras(table: pa.Table) -> dict[str, str | None]:
    """The trainer's per-token ``ratio`` (float32, NaN where no update ran), ``clipped`` and ``high_entropy``
    (uint8 0/1) as base64 buffers, or None where the step lacks them."""
    out: dict[str, str | None] = {"ratio": None, "clipped": None, "high_entropy": None}
    if "ratio" in table.column_names:
        out["ratio"] = b64(_flat(table, "ratio").astype(np.float32), "<f4")
    for name in ("clipped", "high_entropy"):
        if name in table.column_names:
            flat = pc.fill_null(pc.list_flatten(table.column(name).combine_chunks()), False)
            out[name] = b64(flat.to_numpy(zero_copy_only=False).astype(np.uint8), "u1")
    return out


def vocab_payload(store: TraceStore, ids: np.ndarray) -> dict[str, Any]:
    """Display text of the token ids a report uses (only those: a full vocabulary can be 150k strings)."""
    ids = np.asarray(ids, dtype=np.int64)
    return {"ids": b64(ids, "<i4"), "texts": store.vocab.texts_for(ids).tolist()}


def used_token_ids(store: TraceStore, steps: list[int]) -> np.ndarray:
    """Sorted unique token ids over ``steps``."""
    seen = [np.unique(_flat(t, "token_ids")) for _, t in store.iter_steps(steps, columns=["token_ids"])]
    return np.unique(np.concatenate(seen)) if seen else np.zeros(0, dtype=np.int64)


def run_summary(store: TraceStore, steps: list[int], threshold: float, specs: dict[str, dict]) -> dict[str, Any]:
    """Run-level data: run info, the per-step statistics of every step, and the over-training charts."""
    rows = []
    for entry in store.manifest:
        if not all(k in entry for k in ("entropy_p50", "entropy_p99")):
            # an older manifest line without statistics: compute them the one way wbtrace does
            entry = {**entry, **stats.step_stats(store.read_step(entry["step"]), threshold)}
        rows.append({"step": entry["step"], **{k: _clean(entry.get(k)) for k in OVER_STEPS}})
    pct = [{"step": r["step"], "p50": r["entropy_p50"], "p80": r["entropy_p80"], "p90": r["entropy_p90"],
            "p99": r["entropy_p99"]} for r in rows]
    share = [{"step": r["step"], "share_above": r["share_above"]} for r in rows]
    charts = {
        "entropy_percentiles": bind_spec(specs["entropy_percentiles"], pct,
                                         strings={"title": "Token entropy percentiles (p50/p80/p90/p99)"}),
        "share_above": bind_spec(specs["share_above"], share),
    }
    ci = [{"step": r["step"], "correct": r["entropy_mean_correct"], "incorrect": r["entropy_mean_incorrect"]}
          for r in rows if r["entropy_mean_correct"] is not None or r["entropy_mean_incorrect"] is not None]
    if ci:
        charts["entropy_correct_incorrect"] = bind_spec(specs["entropy_correct_incorrect"], ci)
    info = store.run_info
    return {"run": {k: info.get(k) for k in ("model", "tokenizer", "wbtrace_version", "run_name", "git_commit")
                    if info.get(k) is not None},
            "run_dir": str(store.run_dir), "steps": steps, "all_steps": [r["step"] for r in rows],
            "manifest": rows, "threshold": threshold, "charts": charts}
