"""Import a seed trace (padded .npz steps) into a wbtrace trace directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wbtrace.dirlock import TraceLock
from wbtrace.errors import BadInputError
from wbtrace.schema import pack_step
from wbtrace.seed_format import read_seed_step, seed_step_columns, seed_steps
from wbtrace.store import RUN_JSON, TraceStore
from wbtrace.writer import commit_step, init_run_dir, recover


def import_seed_trace(seed_dir: Path, out_dir: Path, tokenizer: Any = None) -> int:
    """Convert every step of ``seed_dir`` into ``out_dir``; steps already there are kept. Returns steps added."""
    seed_dir, out_dir = Path(seed_dir), Path(out_dir)
    if out_dir.resolve() == seed_dir.resolve():
        raise BadInputError("OUT_DIR must differ from the seed trace directory")
    found = seed_steps(seed_dir)  # raises if this is not a seed trace
    summary = seed_dir / "summary.json"
    info = {"imported_from": str(seed_dir.resolve()), "source_format": "seed-npz",
            "seed_summary": json.loads(summary.read_text()) if summary.exists() else None}
    with TraceLock(out_dir, "wbtrace import-npz"):
        if (out_dir / RUN_JSON).exists():
            _check_same_import(out_dir, seed_dir)
            info = None  # resume an earlier import of this seed trace
        init_run_dir(out_dir, info, tokenizer=tokenizer)
        done = recover(out_dir)
        added = 0
        for step, path in found:
            if step in done:
                continue
            table = pack_step(step, **seed_step_columns(read_seed_step(path)))
            commit_step(out_dir, step, table)
            added += 1
    return added


def _check_same_import(out_dir: Path, seed_dir: Path) -> None:
    """OUT_DIR may only continue an import of this same seed trace: another trace's steps would mix."""
    old = TraceStore(out_dir).run_info.get("imported_from")
    if old is None or Path(old).resolve() != seed_dir.resolve():
        what = f"an import of {old}" if old else "a trace that was not imported from a seed"
        raise BadInputError(f"{out_dir} already holds {what}; import {seed_dir} into a new directory")
