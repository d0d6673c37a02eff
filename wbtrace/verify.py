"""``wbtrace verify``: check every file of a trace and name what is damaged.

A step is *whole* when its file exists, its bytes have the sha256 the manifest recorded at commit,
every Parquet page passes its CRC, and the table is a valid step (`wbtrace.schema.check_table`) with
the response and token counts the manifest says. Anything else is damage, named per step. Leftovers
of an interrupted writer (temp files, a step file the manifest does not name yet) are reported as
notes: the next writer on the directory repairs them (`wbtrace.writer.recover`).

Examples
--------
>>> import tempfile, numpy as np
>>> from wbtrace import TraceWriter
>>> d = tempfile.mkdtemp()
>>> with TraceWriter(d, vocab=["a", "b"]) as w:
...     w.write_step(1, token_ids=np.array([[0, 1]]), response_mask=np.array([[1, 1]]), entropy=np.array([[0.1, 2.0]]))
True
>>> verify_trace(d).ok
True
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from wbtrace.errors import TraceFormatError
from wbtrace.store import MANIFEST, STEPS_DIR, TraceStore, file_sha256, parse_step_filename
from wbtrace.vocab import Vocab


@dataclass
class VerifyReport:
    """What `verify_trace` found: whole steps, damaged ones (``{step: why}``), notes."""

    run_dir: Path
    whole: list[int] = field(default_factory=list)
    damaged: dict[int | str, str] = field(default_factory=dict)  # a step, or a run file's name
    notes: list[str] = field(default_factory=list)
    unverified: list[int] = field(default_factory=list)  # no sha256 recorded (traces from before 0.2)

    @property
    def ok(self) -> bool:
        return not self.damaged


def verify_trace(run_dir: str | os.PathLike) -> VerifyReport:
    """Check ``run.json``, ``vocab.parquet`` and every step the manifest names; see the module docstring."""
    store = TraceStore(run_dir)  # run.json unreadable or of an unknown version: TraceFormatError
    report = VerifyReport(store.run_dir)
    try:
        Vocab.read(store.run_dir / "vocab.parquet")
    except TraceFormatError as e:
        report.damaged["vocab.parquet"] = str(e)
    listed = {e["step"]: e for e in store.manifest}
    for step, entry in listed.items():
        problem = _check_step(store, step, entry, report)
        if problem:
            report.damaged[step] = problem
        else:
            report.whole.append(step)
    _leftovers(store.run_dir, set(listed), report)
    return report


def _check_step(store: TraceStore, step: int, entry: dict, report: VerifyReport) -> str | None:
    path = store.step_path(step)
    if not path.is_file():
        return f"{path.name} is missing"
    want = entry.get("sha256")
    if not isinstance(want, str):
        report.unverified.append(step)
    elif file_sha256(path) != want:
        return f"{path.name}: sha256 differs from the one recorded at commit (bytes changed on disk)"
    try:
        table = store.read_step(step)
    except TraceFormatError as e:
        return str(e).replace(f"{path}: ", f"{path.name}: ", 1)
    for key, got in (("n_responses", table.num_rows),
                     ("n_tokens", sum(len(x) for x in table.column("token_ids").to_pylist()))):
        if isinstance(entry.get(key), int) and entry[key] != got:
            return f"{path.name}: {got} {key[2:]}, the manifest says {entry[key]}"
    return None


def _leftovers(run_dir: Path, listed: set[int], report: VerifyReport) -> None:
    steps_dir = run_dir / STEPS_DIR
    if not (run_dir / MANIFEST).exists() and listed:
        report.notes.append(f"no {MANIFEST}: steps were found from the files on disk")
    manifest = run_dir / MANIFEST
    if manifest.exists() and manifest.stat().st_size and not manifest.read_bytes().endswith(b"\n"):
        report.notes.append(f"{MANIFEST} ends in a torn line (a writer was killed mid-append); the next writer drops it")
    for path in sorted(steps_dir.glob("*")) if steps_dir.is_dir() else []:
        step = parse_step_filename(path.name)
        if step is not None and step not in listed and (run_dir / MANIFEST).exists():
            report.notes.append(f"{path.name} is not in the manifest yet (a writer stopped between the "
                                "rename and the append); the next writer adds it")
        elif path.name.startswith("."):
            report.notes.append(f"{path.name}: a temp file left by an interrupted write; the next writer removes it")
        elif path.name.endswith(".corrupt"):
            report.notes.append(f"{path.name}: a step file recovery set aside as unreadable")
