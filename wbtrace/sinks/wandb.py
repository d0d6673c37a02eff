"""The W&B sink: one artifact version per step holding the step, linear history, nothing outside the run dir.

Per committed step it logs

- artifact ``wbtrace-<run_id>`` (type ``entropy-trace``), alias ``step-<N>``, metadata = the step's
  manifest line (step, schema_version, n_tokens, percentiles...). Files: the step's Parquet file,
  ``run.json`` and ``vocab.parquet`` (same digest every version: W&B stores them once), and the step's
  tables as W&B table files: ``preview.table.json`` (responses with coloured HTML tokens) and
  ``heatmap.table.json`` (contrast rows, token by token). Browsing ``wbtrace-<run>:step-N`` in the W&B UI
  shows that step's tokens; the workspace's artifact panel is the per-step token browser.
- history: scalars only (`wbtrace.sinks.wandb_rows.history_scalars`) against ``trace/step``, plus
  ``trace/entropy_hist`` (a `wandb.Histogram` over the whole range). No table is logged with
  ``run.log``: a logged table becomes a ``run_table`` artifact version per step staged in
  ``~/.local/share/wandb``, and INCREMENTAL tables re-log every earlier increment's path in each row
  (a log that grows quadratically with the run).

Every file of an artifact lives in ``<run sync dir>/wbtrace/``: trace files are hard-linked (or copied)
there and added with ``policy="immutable"``; the table files (and their HTML cells), which the SDK
stages in ``~/.local/share/wandb/artifacts/staging``, are moved there and their manifest entries
re-pointed. The offline run dir is then self-contained: copy it anywhere, `wbtrace sync` it, or
`wbtrace pull` from it. ``Artifact.new_file`` is never used directly: its files vanish before sync.

With ``reference_uri`` (the trace dir as readers reach it: ``file:///shared/...``, ``s3://bucket/...``)
the trace files are added as references (`Artifact.add_reference`): W&B keeps their digests, not
their bytes; the small tables are still uploaded.

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
from wbtrace.errors import BadInputError, require
from wbtrace.sinks.base import TraceSink
from wbtrace.sinks.wandb_rows import HEATMAP_COLUMNS, heatmap_rows, history_scalars, preview_rows
from wbtrace.stats import DEFAULT_THRESHOLD
from wbtrace.store import RUN_JSON, VOCAB_FILE, atomic_output, step_relpath

logger = logging.getLogger(__name__)

MAX_METADATA_KEYS = 100  # W&B's limit on artifact metadata keys
PREVIEW_FILE, HEATMAP_FILE = "preview", "heatmap"  # W&B adds ``.table.json``


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
    analyses : bool, default True
        Log the analysis scalars (`wbtrace.analysis.step_scalars`: covariance, group shares, end share,
        fork concentration) the analysis presets draw: ~2 s of the writer thread per 2.4M-token step on the
        loaded 2-core CI machine (the step statistics themselves ~1 s).
    preview_tokens : int, default 1024
        Tokens shown per preview response; the rest is summarised as "... N more tokens".
    reference_uri : str, optional
        URI under which readers reach the trace dir (``file:///shared/traces/run1``, ``s3://bucket/run1``):
        trace files are then added as references instead of uploaded. ``file://`` paths must exist
        when the step is logged (W&B checksums them); for buckets, copy the trace dir there yourself.
    """

    name = "wandb"

    def __init__(self, project: str = "wbtrace", entity: str | None = None, name: str | None = None,
                 config: Mapping[str, Any] | None = None, mode: str | None = None, dir: str | None = None,
                 preview_rows: int = 64, run: Any = None, threshold: float = DEFAULT_THRESHOLD,
                 preview_tokens: int = 1024, reference_uri: str | None = None, analyses: bool = True) -> None:
        wandb = require("wandb", "wandb")  # fail fast with the install hint
        if reference_uri and "://" not in reference_uri:
            raise BadInputError(f"reference_uri {reference_uri!r} is not a URI (file:///..., s3://...)")
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
        self.analyses = bool(analyses)
        self.threshold = float(threshold)
        self.reference_uri = reference_uri.rstrip("/") if reference_uri else None
        self.root = Path(run.settings.sync_dir) / RUN_FILES_DIR
        self._lock = threading.Lock()
        self._trace_row = -1
        self._run_files: dict[str, Path] = {}  # name in the artifact -> file under self.root
        self._run_sources: dict[str, Path] = {}  # name in the artifact -> file in the trace dir
        self._texts: np.ndarray | None = None
        self._finished = False
        run.define_metric("trace/step")
        for glob in ("trace/*", "trace_hist/*", "trace_pos/*"):
            run.define_metric(glob, step_metric="trace/step")

    # ------------------------------------------------------------------ sink interface
    def log_run(self, run_dir: Path, run_info: dict[str, Any]) -> None:
        """Link ``run.json``/``vocab.parquet`` into the W&B run dir and note the trace in the config."""
        self._link_run_files(Path(run_dir))
        self.run.config.update({"wbtrace": {"schema_version": run_info.get("schema_version"),
                                            "wbtrace_version": run_info.get("wbtrace_version")}},
                               allow_val_change=True)

    def log_step(self, step: int, step_file: Path, stats: dict[str, Any], table: pa.Table) -> None:
        """Log the step's artifact version (trace files + its tables) and its history row."""
        wandb = require("wandb", "wandb")
        step_file = Path(step_file)
        if not self._run_sources:  # attached without log_run: the run dir is two levels up
            self._link_run_files(step_file.parent.parent)
        art = wandb.Artifact(artifact_name(self.run_id), type=ARTIFACT_TYPE, metadata=self._metadata(step, stats))
        self._add_trace_files(art, step, step_file)
        self._add_tables(art, step, table)
        data = history_scalars(step, stats, table, analyses=self.analyses)
        hist = data.pop("_hist", None)
        if hist is not None:
            data["trace/entropy_hist"] = wandb.Histogram(np_histogram=hist)
        with self._lock:
            self.run.log_artifact(art, aliases=[step_alias(step)])
            row = max(int(step), int(self.run.step), self._trace_row + 1)
            if row != step:
                logger.info("wbtrace: step %d's trace logged at W&B row %d (the trainer is ahead)", step, row)
            self.run.log(data, step=row)
            self._trace_row = row

    def _add_trace_files(self, art: Any, step: int, step_file: Path) -> None:
        files = {step_relpath(step): step_file, **self._run_sources}
        if self.reference_uri:
            for name in files:
                art.add_reference(f"{self.reference_uri}/{name}", name=name)
            return
        art.add_file(str(_link(step_file, self.root / step_relpath(step))), name=step_relpath(step),
                     policy="immutable")
        for name, path in self._run_files.items():
            art.add_file(str(path), name=name, policy="immutable")

    def _add_tables(self, art: Any, step: int, table: pa.Table) -> None:
        """The preview and heatmap tables as table files of the artifact, kept inside the run dir."""
        wandb = require("wandb", "wandb")
        if not table.num_rows:
            return
        folder = self.root / "tables" / f"step_{int(step):06d}"
        _add_table(art, wandb.Table(columns=HEATMAP_COLUMNS, data=heatmap_rows(table, self._texts)),
                   HEATMAP_FILE, folder)
        if self.preview_rows > 0:
            columns, rows = preview_rows(table, self._texts, self.preview_rows, self.threshold,
                                         self.preview_tokens, f"{artifact_name(self.run_id)}:{step_alias(step)}")
            html_at = columns.index("tokens")
            for r in rows:
                r[html_at] = wandb.Html(r[html_at], inject=False, data_is_not_path=True)
            _add_table(art, wandb.Table(columns=columns, data=rows), PREVIEW_FILE, folder)
        keep_in(art, folder)

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
                self._run_sources[name] = run_dir / name
                if not self.reference_uri:
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


def _is_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, str | int | bool)


def _add_table(art: Any, table: Any, name: str, folder: Path) -> None:
    """Write ``table`` as ``<folder>/<name>.table.json`` and add it to ``art`` under ``<name>.table.json``.

    What ``Artifact.add`` does, without its two staged copies of the JSON (one of which it orphans in
    ``~/.local/share/wandb``); media cells (HTML) are added by ``to_json`` and moved by `keep_in`.
    """
    import json

    payload = json.dumps(table.to_json(art), sort_keys=True)
    path = folder / f"{name}.table.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(payload, encoding="utf-8")
    art.add_file(str(path), name=path.name, policy="immutable")


def keep_in(art: Any, folder: Path) -> None:
    """Move every file of ``art`` that lies outside the run dir (SDK staging, temp dirs) into ``folder``.

    The SDK copies table files and HTML cells to ``~/.local/share/wandb/artifacts/staging`` (or a temp
    dir) as it adds them; an offline run dir copied to another host would lack them. The copy keeps the
    entry's digest; the staged copy, which only this artifact uses, is removed.
    """
    from wandb.sdk.artifacts.staging import get_staging_dir

    root = folder.parent.parent.resolve()
    staging = Path(get_staging_dir()).resolve()
    for entry in art.manifest.entries.values():
        if not entry.local_path or Path(entry.local_path).resolve().is_relative_to(root):
            continue
        src = Path(entry.local_path)
        dest = folder / entry.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        entry.local_path = str(dest)
        if src.resolve().is_relative_to(staging):
            src.unlink(missing_ok=True)


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
