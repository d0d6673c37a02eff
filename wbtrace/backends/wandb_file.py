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

import io
import json
import logging
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from wbtrace.errors import TraceFormatError, require

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
MAGIC, IDENT, VERSION = b":W&B", 0xBEE1, 0
BLOCK_SIZE = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_payloads(source: bytes | BinaryIO, *, name: str = ".wandb file") -> Iterator[bytes]:
    """Yield each whole record payload of a `.wandb` file (its bytes or an open binary file).

    A file is read one 32 KiB block at a time, so memory stays flat however long the run; iteration
    stops cleanly at a truncated tail.
    """
    f = io.BytesIO(source) if isinstance(source, bytes | bytearray | memoryview) else source
    block = f.read(BLOCK_SIZE)
    _check_header(block, name)
    pos, offset, parts = HEADER.size, 0, []
    while block:
        nxt = f.read(BLOCK_SIZE) if len(block) == BLOCK_SIZE else b""
        for kind, payload in _chunks(block, pos, offset, bool(nxt.strip(b"\x00")), name):
            if kind is None:  # end of the written data
                nxt = b""
                break
            if kind not in (FULL, FIRST, MIDDLE, LAST) or (kind in (MIDDLE, LAST)) != bool(parts):
                raise TraceFormatError(f"{name}: bad chunk type {kind} near byte {offset}: the file is corrupt")
            parts.append(payload)
            if kind in (FULL, LAST):
                yield b"".join(parts)
                parts = []
        block, pos, offset = nxt, 0, offset + len(block)
    if parts:
        logger.info("%s: dropped a record cut off by a truncated tail", name)


def _chunks(block: bytes, pos: int, offset: int, more: bool, name: str) -> Iterator[tuple[int | None, bytes]]:
    """``(type, payload)`` of each chunk of one block; ``(None, b"")`` where the written data ends."""
    while len(block) - pos >= CHUNK.size:
        crc, length, kind = CHUNK.unpack_from(block, pos)
        if crc == 0 and length == 0 and kind == 0:  # zero-filled tail of a preallocated/killed file
            yield None, b""
            return
        start, end = pos + CHUNK.size, pos + CHUNK.size + length
        if end > len(block):
            yield None, b""  # truncated mid-chunk: the writer was killed
            return
        payload = block[start:end]
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            if not more and not block[end:].strip(b"\x00"):
                yield None, b""  # a torn last write
                return
            raise TraceFormatError(f"{name}: bad checksum at byte {offset + pos}: the file is corrupt")
        yield kind, payload
        pos = end


def write_payloads(payloads: Iterable[bytes], out: BinaryIO) -> None:
    """Write record payloads as a `.wandb` file: the inverse of `iter_payloads` (same blocks, padding, crc)."""
    out.write(HEADER.pack(MAGIC, IDENT, VERSION))
    pos = HEADER.size
    for payload in payloads:
        rest, first = memoryview(payload), True
        while True:
            room = BLOCK_SIZE - pos % BLOCK_SIZE
            if room < CHUNK.size:  # pad the block tail; a chunk header never straddles blocks
                out.write(b"\x00" * room)
                pos += room
                continue
            n = min(len(rest), room - CHUNK.size)
            last = n == len(rest)
            kind = (FULL if last else FIRST) if first else (LAST if last else MIDDLE)
            chunk = bytes(rest[:n])
            out.write(CHUNK.pack(zlib.crc32(chunk, zlib.crc32(bytes([kind]))), n, kind))
            out.write(chunk)
            pos += CHUNK.size + n
            rest, first = rest[n:], False
            if last:
                break


def _check_header(data: bytes, name: str) -> None:
    if len(data) < HEADER.size:
        raise TraceFormatError(f"{name}: too short to be a .wandb file ({len(data)} bytes)")
    magic, ident, version = HEADER.unpack_from(data, 0)
    if magic != MAGIC or ident != IDENT:
        raise TraceFormatError(f"{name}: not a .wandb file (bad header {data[:7]!r})")
    if version != VERSION:
        raise TraceFormatError(f"{name}: unsupported .wandb version {version} (expected {VERSION})")


def iter_records(path: str | Path) -> Iterator[Any]:
    """Yield the ``Record`` protos of a `.wandb` file, in order, stopping cleanly at a truncated tail."""
    pb = require("wandb.proto.wandb_internal_pb2", "wandb")
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise TraceFormatError(f"cannot read {path}: {e.strerror}") from None
    with f:
        for payload in iter_payloads(f, name=str(path)):
            yield parse_record(pb, payload, path)


def parse_record(pb: Any, payload: bytes, path: str | Path) -> Any:
    """One payload as a ``Record``; a payload with a good crc that is not a Record is corruption."""
    record = pb.Record()
    try:
        record.ParseFromString(payload)
    except Exception as e:  # protobuf's DecodeError
        raise TraceFormatError(f"{path}: a record does not parse ({e})") from None
    return record


@dataclass
class ArtifactEntry:
    """One file of an artifact record: its name inside the artifact and where it was on disk.

    A reference entry (``Artifact.add_reference``) has a ``ref`` URI (``file://``, ``s3://``...) and no
    ``local_path``: W&B stores only its digest, the bytes stay where the URI points.
    """

    path: str
    local_path: str
    digest: str
    size: int
    ref: str = ""


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


def iter_artifacts(path: str | Path) -> Iterator[ArtifactRecord]:
    """The artifact records of a `.wandb` file, streamed (history rows are skipped, not kept)."""
    for record in iter_records(path):
        if record.WhichOneof("record_type") == "artifact":
            yield _artifact(record.artifact)


def run_identity(path: str | Path) -> tuple[str | None, str | None, str | None]:
    """``(run_id, project, entity)`` from the first run record of a `.wandb` file."""
    for record in iter_records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run.run_id or None, record.run.project or None, record.run.entity or None
    return None, None, None


def item_key(item: Any) -> str:
    """A history item's key: ``key``, or the nested key parts joined by ``/`` (newer SDKs)."""
    return item.key or "/".join(item.nested_key)


def _artifact(a: Any) -> ArtifactRecord:
    try:
        metadata = json.loads(a.metadata) if a.metadata else {}
    except json.JSONDecodeError:
        metadata = {}
    if a.manifest.manifest_file_path:  # only manifests of > 100k files go to a side file
        raise TraceFormatError(f"artifact {a.name}: its manifest is in a separate file, which wbtrace does not read")
    entries = [ArtifactEntry(e.path, e.local_path, e.digest, int(e.size), e.ref) for e in a.manifest.contents]
    return ArtifactRecord(a.name, a.type, list(a.aliases), metadata, entries)


def _json_or_raw(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
