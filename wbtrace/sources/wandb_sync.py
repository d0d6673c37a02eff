"""Make a moved offline W&B run dir syncable: re-point the artifact files its `.wandb` log names.

An artifact record keeps each file's absolute ``local_path`` and wandb-core opens it as it is
(``core/pkg/artifacts/saver.go``); a run dir copied to another host, or to another path, would sync its
history and no artifact. `relocate` rewrites those paths to where the files are now, inside the run
dir, after checking each file against the digest the record holds (`wandb_offline.locate`). Every other
record is copied byte for byte; the file is replaced atomically and the first original is kept as
``run-<id>.wandb.orig``. Running it again is a no-op. `wandb sync` then uploads everything.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from wbtrace.backends.wandb_file import ArtifactEntry, iter_payloads, parse_record, write_payloads
from wbtrace.errors import SourceError, require


@dataclass
class Relocation:
    """What `relocate` did: the `.wandb` file, how many entries moved, the files now named."""

    wandb_file: Path
    moved: int = 0
    files: list[Path] = field(default_factory=list)
    references: int = 0


def relocate(run_dir: str | Path, *, dry_run: bool = False) -> Relocation:
    """Re-point every artifact file of an offline run's `.wandb` log at its copy under ``run_dir``.

    Raises `SourceError` (nothing written) when a file is missing or differs from its digest.
    """
    from wbtrace.sources.wandb_offline import find_wandb_file

    pb = require("wandb.proto.wandb_internal_pb2", "wandb")
    path = find_wandb_file(run_dir)
    run_dir = path.parent.resolve()
    result = Relocation(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")

    def rewritten() -> Iterator[bytes]:
        with open(path, "rb") as f:
            for payload in iter_payloads(f, name=str(path)):
                record = parse_record(pb, payload, path)
                if record.WhichOneof("record_type") == "artifact" and _relocate_record(record.artifact, run_dir,
                                                                                         result):
                    payload = record.SerializeToString()
                yield payload

    try:  # streamed: memory stays flat however long the run
        with open(os.devnull if dry_run else tmp, "wb") as out:
            write_payloads(rewritten(), out)
            if not dry_run:
                out.flush()
                os.fsync(out.fileno())
        if result.moved and not dry_run:
            backup = path.with_name(path.name + ".orig")
            if not backup.exists():
                shutil.copy2(path, backup)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return result


def _relocate_record(art: object, run_dir: Path, result: Relocation) -> bool:
    from wbtrace.sources.wandb_offline import locate

    changed = False
    if art.manifest.manifest_file_path:  # type: ignore[attr-defined]
        raise SourceError(f"artifact {art.name}: manifest in a side file (> 100k files), not supported")  # type: ignore[attr-defined]
    for e in art.manifest.contents:  # type: ignore[attr-defined]
        if e.ref and not e.local_path:
            result.references += 1
            continue
        entry = ArtifactEntry(e.path, e.local_path, e.digest, int(e.size), e.ref)
        try:
            here = locate(entry, run_dir)
        except SourceError:
            raise SourceError(f"artifact {art.name} ({art.type}): file {e.path} is not in {run_dir} "  # type: ignore[attr-defined]
                              f"(recorded at {e.local_path}); was the run logged outside its run dir?") from None
        result.files.append(here)
        if str(here) != e.local_path:
            e.local_path = str(here)
            result.moved += 1
            changed = True
    return changed
