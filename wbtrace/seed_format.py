"""The seed project's trace format (format_version 2): padded ``.npz`` per step. Read for import, and
written only by the benchmark, as the baseline it replaced.

Layout: ``steps/step_000050.npz`` with float16 ``entropies`` [N, T], bool ``response_mask`` [N, T],
int32 ``responses`` [N, T], ``response_index`` [N], optional ``prompt_length``, ``uid``,
``sample_index``; ``manifest.jsonl``; ``summary.json``; ``latest_step.txt``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from wbtrace.errors import TraceFormatError

_STEP = re.compile(r"^step_(\d+)\.npz$")


def seed_steps(trace_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``steps/step_*.npz``, in step order."""
    found = []
    for p in (trace_dir / "steps").glob("step_*.npz"):
        m = _STEP.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    if not found:
        raise TraceFormatError(f"{trace_dir} is not a seed trace: no steps/step_*.npz")
    return sorted(found)


def read_seed_step(path: Path) -> dict[str, np.ndarray]:
    """All arrays of one seed step file, loaded (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise TraceFormatError(f"{path}: not a readable .npz file ({e})") from None
    for key in ("entropies", "response_mask", "responses"):
        if key not in data:
            raise TraceFormatError(f"{path}: seed step file without {key!r}")
    return data


def seed_step_columns(data: dict[str, np.ndarray]) -> dict[str, Any]:
    """Map a seed step's arrays onto `pack_step` arguments, keeping every array (lossless)."""
    cols: dict[str, Any] = {
        "token_ids": data["responses"],
        "response_mask": data["response_mask"],
        "entropy": data["entropies"],
    }
    n = data["responses"].shape[0]
    if "response_index" in data:
        cols["sample_id"] = data["response_index"]
        cols["response_index"] = data["response_index"]
    if "uid" in data:
        cols["group_id"] = data["uid"].astype(str)
    for key, value in data.items():
        if key not in ("responses", "response_mask", "entropies", "response_index", "uid") and value.shape[:1] == (n,):
            cols[key] = value
    return cols


def write_seed_step(trace_dir: Path, step: int, token_ids: np.ndarray, response_mask: np.ndarray,
                    entropy: np.ndarray, **extra: np.ndarray) -> Path:
    """The seed's synchronous writer (padded ``np.savez_compressed``), kept as the benchmark baseline."""
    steps = trace_dir / "steps"
    steps.mkdir(parents=True, exist_ok=True)
    path = steps / f"step_{step:06d}.npz"
    np.savez_compressed(path, entropies=entropy.astype(np.float16), response_mask=response_mask.astype(bool),
                        responses=token_ids.astype(np.int32),
                        response_index=np.arange(token_ids.shape[0], dtype=np.int32), **extra)
    with open(trace_dir / "manifest.jsonl", "a") as f:
        f.write(json.dumps({"step": step, "file": f"steps/{path.name}"}) + "\n")
    (trace_dir / "summary.json").write_text(json.dumps({"format_version": 2, "latest_step": step}))
    (trace_dir / "latest_step.txt").write_text(str(step))
    return path
