"""The W&B sink: one artifact version per step, per-step statistics in history, a token-heatmap preview.

Per committed step it logs

- artifact ``wbtrace-<run_id>`` (type ``entropy-trace``), alias ``step-<N>``, metadata = the step's
  manifest line (step, schema_version, n_tokens, percentiles...), files = the step's Parquet file plus
  ``run.json`` and ``vocab.parquet`` (same digest every version: W&B stores them once);
- history ``trace/<statistic>`` against ``trace/step``, ``trace/entropy_hist`` (a histogram) and
  ``trace/position`` (mean entropy by relative position);
- ``trace/preview``: a `wandb.Table` of at most ``preview_rows`` responses with reward, correctness,
  mean/max entropy, length, top forking tokens and an HTML column colouring every (escaped) token.

Files are hard-linked (or copied) into ``<run sync dir>/wbtrace/`` and added with ``policy="immutable"``:
offline, the default ``"mutable"`` policy copies them to ``~/.local/share/wandb`` (outside the run dir),
which breaks ``wandb sync`` on another host; inside the run dir the offline run is self-contained and is
itself a ``wbtrace pull`` source. ``Artifact.new_file`` is never used: its files vanish before sync.

The writer calls `log_step` from its background thread, possibly after the trainer has logged later
steps. W&B drops a row whose step is below the current one, so trace rows go to
``max(step, run.step, last trace row + 1)`` and the charts use ``trace/step`` as their x axis.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from wbtrace.backends.wandb import ARTIFACT_TYPE, RUN_FILES_DIR, artifact_name, step_alias
from wbtrace.errors import require
from wbtrace.render_html import token_spans_html
from wbtrace.sinks.base import TraceSink, step_metrics
from wbtrace.stats import DEFAULT_THRESHOLD
from wbtrace.store import RUN_JSON, VOCAB_FILE, atomic_output, step_relpath

logger = logging.getLogger(__name__)

MAX_METADATA_KEYS = 100  # W&B's limit on artifact metadata keys


class WandbSink(TraceSink):
    """Log committed steps to a W&B run (online or offline).

    Parameters
    ----------
    project : str, default "wbtrace"
    entity, name, config, mode, dir : optional
        Passed to `wandb.init` when ``run`` is None. ``mode="offline"`` for air-gapped clusters.
    preview_rows : int, default 64
        Responses per step in the ``trace/preview`` table (each HTML cell is one file in W&B); 0 = none.
    run : wandb Run, optional
        Log into this run instead of creating one; the sink then leaves finishing it to its owner.
    threshold : float, default 0.672
        Entropy at which a token counts as forking (underlined in the preview, ``share_above``).
    preview_tokens : int, default 2048
        Tokens shown per preview response; the rest is summarised as "... N more tokens".
    """

    name = "wandb"

    def __init__(self, project: str = "wbtrace", entity: str | None = None, name: str | None = None,
                 config: Mapping[str, Any] | None = None, mode: str | None = None, dir: str | None = None,
                 preview_rows: int = 64, run: Any = None, threshold: float = DEFAULT_THRESHOLD,
                 preview_tokens: int = 2048) -> None:
        wandb = require("wandb", "wandb")  # fail fast with the install hint
        self._own_run = run is None
        if run is None:
            if dir is not None:
                Path(dir).mkdir(parents=True, exist_ok=True)
            run = wandb.init(project=project, entity=entity, name=name, config=dict(config or {}),
                             mode=mode, dir=dir, reinit="create_new")
        self.run = run
        self.run_id: str = run.id
        self.preview_rows = int(preview_rows)
        self.preview_tokens = int(preview_tokens)
        self.threshold = float(threshold)
        self.root = Path(run.settings.sync_dir) / RUN_FILES_DIR
        self._lock = threading.Lock()
        self._trace_row = -1
        self._run_files: dict[str, Path] = {}
        self._texts: np.ndarray | None = None
        self._finished = False
        # Incremental tables keep every step's rows: the "across steps" charts read them.
        self._tables = {key: wandb.Table(columns=cols, log_mode="INCREMENTAL") for key, cols in
                        (("trace/histogram", ["step", "bin_start", "bin_end", "count"]),
                         ("trace/position", ["step", "rel_position", "entropy_mean"]))}
        run.define_metric("trace/step")
        run.define_metric("trace/*", step_metric="trace/step")

    # ------------------------------------------------------------------ sink interface
    def log_run(self, run_dir: Path, run_info: dict[str, Any]) -> None:
        """Link ``run.json``/``vocab.parquet`` into the W&B run dir and note the trace in the config."""
        self._link_run_files(Path(run_dir))
        self.run.config.update({"wbtrace": {"schema_version": run_info.get("schema_version"),
                                            "wbtrace_version": run_info.get("wbtrace_version")}},
                               allow_val_change=True)

    def log_step(self, step: int, step_file: Path, stats: dict[str, Any], table: pa.Table) -> None:
        """Log the step's artifact version, its statistics and its preview table."""
        wandb = require("wandb", "wandb")
        step_file = Path(step_file)
        if not self._run_files:  # attached without log_run: the run dir is two levels up
            self._link_run_files(step_file.parent.parent)
        local = _link(step_file, self.root / step_relpath(step))
        art = wandb.Artifact(artifact_name(self.run_id), type=ARTIFACT_TYPE, metadata=self._metadata(step, stats))
        art.add_file(str(local), name=step_relpath(step), policy="immutable")
        for name, path in self._run_files.items():
            art.add_file(str(path), name=name, policy="immutable")
        data = self._history(step, stats, table)
        with self._lock:
            self.run.log_artifact(art, aliases=[step_alias(step)])
            row = max(int(step), int(self.run.step), self._trace_row + 1)
            if row != step:
                logger.info("wbtrace: step %d's trace logged at W&B row %d (the trainer is ahead)", step, row)
            self.run.log(data, step=row)
            self._trace_row = row

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Trainer scalars; a step below W&B's current row goes to that row rather than being dropped."""
        with self._lock:
            row = max(int(step), int(self.run.step))
            self.run.log(dict(metrics), step=row)

    def finish(self, status: str = "success") -> None:
        """Finish the run if this sink created it; safe to call twice, never raises."""
        if self._finished:
            return
        self._finished = True
        if not self._own_run:
            return
        try:
            self.run.finish(exit_code=0 if status == "success" else 1)
            if self.run.settings.mode in ("offline", "dryrun"):
                self._wait_for_offline_log()
        except Exception as e:  # finishing must never turn a finished training into a crash
            logger.warning("wbtrace: finishing the W&B run failed: %s: %s", type(e).__name__, e)

    def _wait_for_offline_log(self, timeout_s: float = 15.0) -> None:
        """Wait until the offline ``.wandb`` file holds the run's exit record.

        ``run.finish`` can return before W&B's service has flushed the file; a `wbtrace pull` (or a copy
        of the run dir) right after training would then see a truncated log without the last steps.
        """
        import time

        from wbtrace.backends.wandb_file import iter_records

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for path in Path(self.run.settings.sync_dir).glob("*.wandb"):
                if any(r.WhichOneof("record_type") == "exit" for r in iter_records(path)):
                    return
            time.sleep(0.1)
        logger.warning("wbtrace: the offline W&B log was not complete after %.0f s", timeout_s)

    # ------------------------------------------------------------------ helpers
    def _link_run_files(self, run_dir: Path) -> None:
        for name in (RUN_JSON, VOCAB_FILE):
            if (run_dir / name).exists():
                self._run_files[name] = _link(run_dir / name, self.root / name)
        if (run_dir / VOCAB_FILE).exists():
            from wbtrace.vocab import Vocab

            self._texts = Vocab.read(run_dir / VOCAB_FILE).texts

    def _metadata(self, step: int, stats: Mapping[str, Any]) -> dict[str, Any]:
        from wbtrace.schema import SCHEMA_VERSION

        meta = {k: v for k, v in stats.items() if _is_scalar(v)}
        meta.update({"step": int(step), "schema_version": SCHEMA_VERSION, "run_id": self.run_id})
        if len(meta) > MAX_METADATA_KEYS:
            keep = ["step", "schema_version", "run_id", *[k for k in meta if k not in
                                                           ("step", "schema_version", "run_id")]]
            dropped = keep[MAX_METADATA_KEYS:]
            logger.warning("wbtrace: W&B keeps at most %d metadata keys; dropped %s", MAX_METADATA_KEYS, dropped)
            meta = {k: meta[k] for k in keep[:MAX_METADATA_KEYS]}
        return meta

    def _history(self, step: int, stats: Mapping[str, Any], table: pa.Table) -> dict[str, Any]:
        wandb = require("wandb", "wandb")
        from wbtrace.stats import histogram, position_profile

        data: dict[str, Any] = {"trace/step": int(step)}
        data.update(step_metrics(stats))
        if table.num_rows:
            counts, edges = histogram(table, bins=HIST_BINS, max_entropy=HIST_MAX)
            data["trace/entropy_hist"] = wandb.Histogram(np_histogram=(counts, edges))
            for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True):
                self._tables["trace/histogram"].add_data(int(step), float(lo), float(hi), int(c))
            profile = position_profile(table)
            for i, p in enumerate(profile):
                if p is not None:
                    self._tables["trace/position"].add_data(int(step), (i + 0.5) / len(profile), p)
            data.update(self._tables)
            data["trace/heatmap"] = wandb.Table(columns=HEATMAP_COLUMNS, data=heatmap_rows(table, self._texts))
        if self.preview_rows > 0 and table.num_rows:
            data["trace/preview"] = self._preview(table)
        return data

    def _preview(self, table: pa.Table) -> Any:
        wandb = require("wandb", "wandb")
        columns, rows = preview_rows(table, self._texts, self.preview_rows, self.threshold, self.preview_tokens)
        html_at = columns.index("tokens")
        for row in rows:
            row[html_at] = wandb.Html(row[html_at], inject=False, data_is_not_path=True)
        return wandb.Table(columns=columns, data=rows)


HIST_BINS, HIST_MAX = 20, 4.0  # fixed bins (nats) so steps line up in the histogram-across-steps chart
HEATMAP_COLUMNS = ["response", "position", "token", "entropy"]


def heatmap_rows(table: pa.Table, texts: np.ndarray | None, n_rows: int = 8, n_tokens: int = 256
                 ) -> list[list[Any]]:
    """Long-format rows (response, position, token, entropy) for the token-heatmap chart.

    Capped at ``n_rows`` x ``n_tokens`` (2,048 rows by default): W&B keeps 10,000 rows per logged table.
    """
    rows = []
    ids = table.column("token_ids").to_pylist()[:n_rows]
    ent = table.column("entropy").to_pylist()[:n_rows]
    for r, (row_ids, row_ent) in enumerate(zip(ids, ent, strict=True)):
        words = _texts(texts, (row_ids or [])[:n_tokens])
        rows += [[r, pos, w, None if h is None else float(h)]
                 for pos, (w, h) in enumerate(zip(words, row_ent or [], strict=False))]
    return rows


PREVIEW_COLUMNS = ["step", "sample_id", "group_id", "reward", "correct", "entropy_mean", "entropy_max",
                   "length", "top_forking", "tokens"]


def preview_rows(table: pa.Table, texts: np.ndarray | None, n_rows: int, threshold: float = DEFAULT_THRESHOLD,
                 max_tokens: int = 2048) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows (Python values; ``tokens`` is HTML) of the preview of up to ``n_rows`` responses
    (`wbtrace.preview`: rows spread evenly over the step)."""
    from wbtrace.preview import preview_columns, preview_sample

    sub = preview_sample(table, n_rows)
    cols = preview_columns(sub)
    ids_col, ent_col = sub.column("token_ids").to_pylist(), sub.column("entropy").to_pylist()
    none = [None] * sub.num_rows
    rows = []
    for i in range(sub.num_rows):
        ids, ent = ids_col[i] or [], ent_col[i] or []
        words = _texts(texts, ids)
        rows.append([*(cols.get(k, none)[i] for k in ("step", "sample_id", "group_id", "reward", "correct",
                                                      "entropy_mean", "entropy_max")),
                     cols["response_length"][i] if "response_length" in cols else len(ids),
                     _top_forking(words, np.asarray(ent, dtype=np.float32), threshold),
                     _response_html(words, ent, threshold, max_tokens)])
    return list(PREVIEW_COLUMNS), rows


def _texts(texts: np.ndarray | None, ids: list[int]) -> list[str]:
    from wbtrace.vocab import texts_for

    return [str(t) for t in texts_for(np.array([], dtype=object) if texts is None else texts, ids)]


def _top_forking(words: list[str], h: np.ndarray, threshold: float, top: int = 5) -> str:
    order = [i for i in np.argsort(-h, kind="stable")[:top] if h[i] >= threshold]
    return " | ".join(f"{words[i]!r} {h[i]:.2f}" for i in order)


def _response_html(words: list[str], ent: list[float], threshold: float, max_tokens: int) -> str:
    body = token_spans_html(words[:max_tokens], ent[:max_tokens], threshold=threshold, wrap=False)
    more = len(words) - max_tokens
    if more > 0:
        body += f"<i> ... {more} more tokens</i>"
    return f'<div style="font-family:monospace;white-space:pre-wrap;line-height:1.6">{body}</div>'


def _is_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool)


def _link(src: Path, dest: Path) -> Path:
    """Hard-link ``src`` to ``dest`` (copy across filesystems); an identical existing file is kept."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        if os.path.samefile(src, dest) or (dest.stat().st_size == src.stat().st_size
                                           and dest.read_bytes() == src.read_bytes()):
            return dest
        dest.unlink()
    with atomic_output(dest, fsync=False) as tmp:  # a link or a copy of a file already synced
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copy2(src, tmp)
    return dest
