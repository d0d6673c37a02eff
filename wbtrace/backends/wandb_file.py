"""Reader for the `.wandb` binary log that an (offline) W&B run writes, with no server and no wandb service.

Layout (wandb 0.31, checked by hand; the SDK ships no Python reader any more):

- a 7-byte header ``struct "<4sHB"``: magic ``b":W&B"``, 0xBEE1, version 0;
- then 32 KiB blocks of chunks. Each chunk has a 7-byte header ``"<IHB"`` (crc32, length, type) and a
  payload; type 1 FULL holds a whole record, 2 FIRST / 3 MIDDLE / 4 LAST split one record across blocks.
  A block tail shorter than 7 bytes is zero padding. The crc covers the type byte then the payload:
  ``zlib.crc32(payload, zlib.crc32(bytes([type])))``;
- each whole payload is a ``wandb.proto.wandb_internal_pb2.Record``.

A run killed mid-write leaves a truncated tail: iteration stops cleanly at the last whole record.
A bad crc in the middle of the file is corruption and raises `TraceFormatError`.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wbtrace.errors import TraceFormatError, require

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
MAGIC, IDENT, VERSION = b":W&B", 0xBEE1, 0
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(data: bytes, *, name: str = ".wandb file") -> Iterator[bytes]:
    """Yield each whole record payload of a `.wandb` file's bytes; stop at a truncated tail."""
    _check_header(data, name)
    pos, parts = HEADER.size, []
    while True:
        room = BLOCK_SIZE - pos % BLOCK_SIZE
        if room < CHUNK.size:  # block tail padding
            pos += room
            continue
        if pos + CHUNK.size > len(data):
            break
        crc, length, kind = CHUNK.unpack_from(data, pos)
        if crc == 0 and length == 0 and kind == 0:  # zero-filled tail of a preallocated/killed file
            break
        start, end = pos + CHUNK.size, pos + CHUNK.size + length
        if end > len(data) or length > room - CHUNK.size:
            break  # truncated mid-chunk: the writer was killed
        payload = data[start:end]
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            if end >= len(data) - BLOCK_SIZE and _rest_is_empty(data, end):
                break  # a torn last write
            raise TraceFormatError(f"{name}: bad checksum at byte {pos}: the file is corrupt")
        if kind not in (FULL, FIRST, MIDDLE, LAST) or (kind in (MIDDLE, LAST)) != bool(parts):
            raise TraceFormatError(f"{name}: bad chunk type {kind} at byte {pos}: the file is corrupt")
        pos = end
        parts.append(payload)
        if kind in (FULL, LAST):
            yield b"".join(parts)
            parts = []
    if parts:
        logger.info("%s: dropped a record cut off by a truncated tail", name)


def _check_header(data: bytes, name: str) -> None:
    if len(data) < HEADER.size:
        raise TraceFormatError(f"{name}: too short to be a .wandb file ({len(data)} bytes)")
    magic, ident, version = HEADER.unpack_from(data, 0)
    if magic != MAGIC or ident != IDENT:
        raise TraceFormatError(f"{name}: not a .wandb file (bad header {data[:7]!r})")
    if version != VERSION:
        raise TraceFormatError(f"{name}: unsupported .wandb version {version} (expected {VERSION})")


def _rest_is_empty(data: bytes, end: int) -> bool:
    return not data[end:].strip(b"\x00")


def iter_records(path: str | Path) -> Iterator[Any]:
    """Yield the ``Record`` protos of a `.wandb` file, in order, stopping cleanly at a truncated tail."""
    pb = require("wandb.proto.wandb_internal_pb2", "wandb")
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TraceFormatError(f"cannot read {path}: {e.strerror}") from None
    for payload in iter_payloads(data, name=str(path)):
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except Exception as e:  # protobuf's DecodeError: a payload with a good crc that is not a Record
            raise TraceFormatError(f"{path}: a record does not parse ({e})") from None
        yield record


@dataclass
class ArtifactEntry:
    """One file of an artifact record: its name inside the artifact and where it was on disk."""

    path: str
    local_path: str
    digest: str
    size: int


@dataclass
class ArtifactRecord:
    """The parts of an ``artifact`` record that `pull` needs."""

    name: str
    type: str
    aliases: list[str]
    metadata: dict[str, Any]
    entries: list[ArtifactEntry] = field(default_factory=list)


@dataclass
class RunLog:
    """What a `.wandb` file says about a run: id, project, artifacts, history rows."""

    run_id: str | None = None
    project: str | None = None
    entity: str | None = None
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def read_run_log(path: str | Path) -> RunLog:
    """Parse a `.wandb` file into a `RunLog` (run record, artifact records, history rows)."""
    log = RunLog()
    for record in iter_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            log.run_id = record.run.run_id or log.run_id
            log.project = record.run.project or log.project
            log.entity = record.run.entity or log.entity
        elif kind == "artifact":
            log.artifacts.append(_artifact(record.artifact))
        elif kind == "history":
            log.history.append({item_key(i): _json_or_raw(i.value_json) for i in record.history.item})
    return log


def item_key(item: Any) -> str:
    """A history item's key: ``key``, or the nested key parts joined by ``/`` (newer SDKs)."""
    return item.key or "/".join(item.nested_key)


def _artifact(a: Any) -> ArtifactRecord:
    try:
        metadata = json.loads(a.metadata) if a.metadata else {}
    except json.JSONDecodeError:
        metadata = {}
    entries = [ArtifactEntry(e.path, e.local_path, e.digest, int(e.size)) for e in a.manifest.contents]
    return ArtifactRecord(a.name, a.type, list(a.aliases), metadata, entries)


def _json_or_raw(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
