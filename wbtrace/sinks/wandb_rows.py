"""What the W&B sink shows of a step, built from the step's Arrow columns in O(what is shown).

- `history_scalars`: the per-step numbers for W&B history: the manifest statistics, the entropy
  histogram over the whole range (``trace_hist/bNN``: 0.5-nat bins, the last one an overflow bin) and
  mean entropy by relative position (``trace_pos/dN``). Scalars only, so every history row costs the
  same whatever the step: the ``.wandb`` log grows linearly with the run (INCREMENTAL tables re-log every
  earlier increment's path in each row).
- `heatmap_rows`: a few responses chosen for contrast (the best and the worst of the prompt groups
  whose rewards differ most), each with sample_id, group_id, reward and correctness, first tokens only.
- `preview_rows`: up to N responses spread over the step, with an HTML column of coloured tokens.

Only the rows shown are taken from the table (``Table.take``) and each list is cut to the tokens shown
(``pc.list_slice``) before anything becomes a Python object: a 17M-token step costs what 8 x 256 tokens
cost, plus one vectorised pass for the histogram and the position profile.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wbtrace.preview import preview_columns, preview_sample
from wbtrace.render_html import token_spans_html
from wbtrace.sinks.base import step_metrics
from wbtrace.stats import DEFAULT_THRESHOLD
from wbtrace.vocab import texts_for

HIST_WIDTH, HIST_BINS = 0.5, 24  # 0-12 nats; the last bin takes everything from 11.5 up (ln 151,936 = 11.93)
POSITION_BINS = 10
HIST_PREFIX, POS_PREFIX = "trace_hist/b", "trace_pos/d"
HEATMAP_COLUMNS = ["row", "label", "sample_id", "group_id", "reward", "correct", "position", "token", "entropy"]
PREVIEW_COLUMNS = ["step", "sample_id", "group_id", "reward", "correct", "entropy_mean", "entropy_max",
                   "length", "top_forking", "artifact", "tokens"]


def hist_key(i: int) -> str:
    return f"{HIST_PREFIX}{i:02d}"


def pos_key(i: int) -> str:
    return f"{POS_PREFIX}{i}"


def flat_entropy(table: pa.Table) -> pa.Array:
    """Every token's entropy of a step as one flat Arrow array, as stored (float16 in the trace format)."""
    col = table.column("entropy")
    return pc.list_flatten(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)


def entropy_histogram(ent: pa.Array | np.ndarray) -> tuple[np.ndarray, float | None]:
    """Token counts in `HIST_BINS` bins of `HIST_WIDTH` nats (the last one open-ended) and the max; NaN
    is not counted. float16 (the trace's type) takes one hashing pass: the distinct bit patterns (at most
    65,536) are counted by Arrow, then each pattern is binned once."""
    if isinstance(ent, pa.Array) and ent.type == pa.float16():
        vc = pc.value_counts(ent.view(pa.uint16()))
        patterns = vc.field("values").to_numpy(zero_copy_only=False).astype(np.uint16)
        per_value = vc.field("counts").to_numpy(zero_copy_only=False)
        values = patterns.view(np.float16).astype(np.float32)
    else:
        values = np.asarray(ent, dtype=np.float32)
        per_value = np.ones(values.size, dtype=np.int64)
    keep = np.isfinite(values)
    values, per_value = values[keep], per_value[keep]
    b = np.clip(values * np.float32(1 / HIST_WIDTH), 0, HIST_BINS - 1).astype(np.int64)
    counts = np.bincount(b, weights=per_value, minlength=HIST_BINS).astype(np.int64)
    return counts, (float(values.max()) if values.size else None)


def hist_edges(top: float | None = None) -> np.ndarray:
    """Bin edges of `entropy_histogram`; the overflow bin ends at ``top`` (the step's max) when larger."""
    edges = np.arange(HIST_BINS + 1, dtype=np.float64) * HIST_WIDTH
    if top is not None and top > edges[-1]:
        edges[-1] = top
    return edges


def position_means(table: pa.Table, bins: int = POSITION_BINS) -> list[float | None]:
    """Mean entropy by relative position in the response: token p of a length-L response is in decile
    ``p * bins // L``, so each (response, decile) is a contiguous run of the flat column, summed in one
    pass (``np.add.reduceat``) with no per-token index arrays."""
    col = table.column("entropy").combine_chunks()
    lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
    ent = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32)
    if not ent.size:
        return [None] * bins
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    # first position of decile d in a response of length L: ceil(d * L / bins)
    edges = -(-(np.arange(bins + 1)[None, :] * lengths[:, None]) // bins) + starts[:, None]
    seg_start, seg_len = edges[:, :-1].ravel(), np.diff(edges, axis=1).ravel()
    at = np.minimum(seg_start, ent.size - 1)  # reduceat needs indices inside the array
    # float32 sums per run (a few thousand tokens each: exact to ~1e-6), float64 across runs
    sums = np.add.reduceat(ent, at).astype(np.float64)
    counts = seg_len.astype(np.float64)
    if not np.isfinite(sums.sum()):  # NaN/inf tokens: leave them out of sums and counts
        finite = np.isfinite(ent)
        sums = np.add.reduceat(np.where(finite, ent, 0), at).astype(np.float64)
        counts = np.add.reduceat(finite.astype(np.int64), at).astype(np.float64)
    sums[seg_len == 0] = 0  # reduceat returns the element itself for an empty run
    counts[seg_len == 0] = 0
    sums, counts = sums.reshape(-1, bins).sum(axis=0), counts.reshape(-1, bins).sum(axis=0)
    return [float(x / c) if c else None for x, c in zip(sums, counts, strict=True)]


def history_scalars(step: int, stats: Mapping[str, Any], table: pa.Table, analyses: bool = True) -> dict[str, Any]:
    """The step's history row (scalars only), plus ``_hist`` = (counts, edges) for a `wandb.Histogram`;
    with ``analyses`` also `analysis_scalars`."""
    data: dict[str, Any] = {"trace/step": int(step)}
    data.update({k: v for k, v in step_metrics(stats).items() if math.isfinite(v)})
    if not table.num_rows:
        return data
    counts, top = entropy_histogram(flat_entropy(table))
    data.update({hist_key(i): int(c) for i, c in enumerate(counts)})
    data.update({pos_key(i): p for i, p in enumerate(position_means(table)) if p is not None})
    data["_hist"] = (counts, hist_edges(top))
    if analyses:
        data.update(analysis_scalars(table))
    return data


def analysis_scalars(table: pa.Table) -> dict[str, float]:
    """``trace/<key>`` for `wbtrace.analysis.step_scalars` (covariance, group shares, end share, fork
    concentration: the analysis presets' rows); a step they cannot analyse logs none of them."""
    from wbtrace.analysis.step_scalars import step_scalars

    try:
        return {f"trace/{k}": v for k, v in step_scalars(table).items()}
    except Exception as e:  # noqa: BLE001  (an analysis must never cost the step its history row)
        logging.getLogger(__name__).warning("analysis scalars skipped for this step: %s", e)
        return {}


def _numpy(table: pa.Table, name: str, fill: Any) -> np.ndarray | None:
    if name not in table.column_names:
        return None
    col = table.column(name)
    return (pc.fill_null(col, fill) if col.null_count else col).to_numpy(zero_copy_only=False)


def contrast_rows(table: pa.Table, n_groups: int = 4) -> np.ndarray:
    """Row indices for the heatmap: the best and worst response of the ``n_groups`` groups whose rewards
    differ most (ties: first groups), ordered group by group; evenly spread rows when there is no reward."""
    n = table.num_rows
    reward, group = _numpy(table, "reward", float("nan")), _numpy(table, "group_id", "")
    if reward is None or group is None or not n:
        return np.unique(np.linspace(0, n - 1, min(2 * n_groups, n)).astype(np.int64)) if n else np.array([], int)
    reward = np.where(np.isfinite(reward), reward, -np.inf)
    _, gid = np.unique(group.astype(str), return_inverse=True)
    order = np.lexsort((-reward, gid))  # by group, best first
    firsts = np.flatnonzero(np.r_[True, gid[order][1:] != gid[order][:-1]])
    lasts = np.r_[firsts[1:] - 1, len(order) - 1]
    best, worst = order[firsts], order[lasts]
    spread = np.where(np.isfinite(reward[worst]), reward[best] - reward[worst], 0.0)
    pick = np.argsort(-spread, kind="stable")[:n_groups]
    pick.sort()
    return _dedupe(np.column_stack([best[pick], worst[pick]]).ravel())


def _dedupe(idx: np.ndarray) -> np.ndarray:
    _, first = np.unique(idx, return_index=True)
    return idx[np.sort(first)]


def _take(table: pa.Table, idx: np.ndarray, max_tokens: int, names: tuple[str, ...]) -> dict[str, list[Any]]:
    """Python lists of the named columns for rows ``idx``, list columns cut to ``max_tokens``."""
    sub = table.select([c for c in names if c in table.column_names]).take(pa.array(idx, pa.int64()))
    out = {}
    for name in sub.column_names:
        col = sub.column(name).combine_chunks()
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            col = pc.list_slice(col, 0, max_tokens)
        out[name] = col.to_pylist()
    return out


def _label(sample_id: Any, group_id: Any, reward: Any, correct: Any) -> str:
    mark = {True: " ok", False: " wrong"}.get(correct, "")
    r = f" r={reward:.2f}" if isinstance(reward, float) and math.isfinite(reward) else ""
    return f"g{group_id} #{sample_id}{r}{mark}"


def heatmap_rows(table: pa.Table, texts: np.ndarray | None, n_groups: int = 4, n_tokens: int = 256
                 ) -> list[list[Any]]:
    """Long-format rows (`HEATMAP_COLUMNS`) for the token heatmap: contrast rows x first ``n_tokens`` tokens.

    At most ``2 * n_groups * n_tokens`` (2,048) rows: a table W&B shows whole.
    """
    idx = contrast_rows(table, n_groups)
    if not idx.size:
        return []
    cols = _take(table, idx, n_tokens, ("sample_id", "group_id", "reward", "correct", "token_ids", "entropy"))
    none = [None] * len(idx)
    rows = []
    for r in range(len(idx)):
        meta = [cols.get(k, none)[r] for k in ("sample_id", "group_id", "reward", "correct")]
        label = _label(*meta)
        ids, ent = cols["token_ids"][r] or [], cols["entropy"][r] or []
        rows += [[r, label, *meta, pos, w, None if h is None or math.isnan(h) else float(h)]
                 for pos, (w, h) in enumerate(zip(token_texts(texts, ids), ent, strict=False))]
    return rows


def preview_rows(table: pa.Table, texts: np.ndarray | None, n_rows: int, threshold: float = DEFAULT_THRESHOLD,
                 max_tokens: int = 1024, artifact: str = "") -> tuple[list[str], list[list[Any]]]:
    """Columns and rows (Python values; ``tokens`` is HTML) of the preview of up to ``n_rows`` responses.

    Rows are spread evenly over the step so every group has a chance to appear; ``artifact`` names the
    step's artifact version (``wbtrace-<run>:step-N``) in each row.
    """
    if not table.num_rows or n_rows <= 0:
        return list(PREVIEW_COLUMNS), []
    sub = preview_sample(table, n_rows)
    idx = np.arange(sub.num_rows)
    ent_col = sub.column("entropy").combine_chunks()
    cols = _take(sub, np.arange(len(idx)), max_tokens, ("step", "sample_id", "group_id", "reward", "correct",
                                                         "response_length"))
    ids, ent, offsets = _cut_flat(sub, max_tokens)
    words_all = token_texts(texts, ids)
    full_len = pc.list_value_length(ent_col).fill_null(0).to_pylist()  # before the cut to max_tokens
    summary = preview_columns(sub)
    mean, top = summary["entropy_mean"], summary["entropy_max"]
    none = [None] * len(idx)
    rows = []
    for i in range(len(idx)):
        lo, hi = offsets[i], offsets[i + 1]
        words, h = words_all[lo:hi], ent[lo:hi]
        rows.append([*(cols.get(k, none)[i] for k in ("step", "sample_id", "group_id", "reward", "correct")),
                     mean[i], top[i], cols.get("response_length", full_len)[i],
                     _top_forking(words, h, threshold), artifact,
                     _response_html(words, h.tolist(), threshold, full_len[i])])
    return list(PREVIEW_COLUMNS), rows


def _cut_flat(sub: pa.Table, max_tokens: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids and entropies (float32) of every row of ``sub``, each cut to ``max_tokens``, flat, with
    the row offsets."""
    out = []
    for name in ("token_ids", "entropy"):
        col = pc.list_slice(sub.column(name).combine_chunks(), 0, max_tokens)
        out.append(pc.list_flatten(col).to_numpy(zero_copy_only=False))
        lengths = pc.list_value_length(col).fill_null(0).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return out[0], out[1].astype(np.float32), offsets


def token_texts(texts: np.ndarray | None, ids: Any) -> list[str]:
    """Display text of each token id (`wbtrace.vocab.texts_for`: ``<id:N>`` for one the vocabulary lacks)."""
    ids = np.asarray([-1 if t is None else t for t in ids] if isinstance(ids, list) else ids, dtype=np.int64)
    return [str(t) for t in texts_for(np.array([], dtype=object) if texts is None else texts, ids)]


def _top_forking(words: list[str], h: np.ndarray, threshold: float, top: int = 5) -> str:
    order = [i for i in np.argsort(-np.nan_to_num(h, nan=-1.0), kind="stable")[:top] if h[i] >= threshold]
    return " | ".join(f"{words[i]!r} {h[i]:.2f}" for i in order)


def _response_html(words: list[str], ent: list[float | None], threshold: float, full_len: int) -> str:
    body = token_spans_html(words, [float("nan") if x is None else x for x in ent], threshold=threshold,
                            wrap=False)
    more = full_len - len(words)
    if more > 0:
        body += f"<i> ... {more} more tokens</i>"
    return f'<div style="font-family:monospace;white-space:pre-wrap;line-height:1.6">{body}</div>'
