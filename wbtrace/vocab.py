"""Token id -> display text, stored once per run as ``vocab.parquet`` so export needs no tokenizer.

Byte-level BPE pieces (GPT-2, Qwen, SmolLM2: "Ġ" for a space, "Ċ" for a newline) are mapped back to
the bytes they stand for; SentencePiece pieces ("▁", "<0x0A>") likewise. A piece whose bytes are not
valid UTF-8 on their own (one part of a multi-byte character) is shown as its bytes, ``<0xE2><0x80>``;
joining the ``bytes`` column of consecutive tokens and decoding gives the real text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from wbtrace.schema import read_parquet

VOCAB_SCHEMA = pa.schema([("id", pa.int32()), ("piece", pa.string()), ("text", pa.string()), ("bytes", pa.binary())])
_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printable stand-in character -> byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def piece_bytes(piece: str, byte_level: bool) -> bytes | None:
    """The bytes a vocabulary piece stands for, or None when it is not a byte sequence (special tokens)."""
    if byte_level:
        dec = _byte_decoder()
        if all(ch in dec for ch in piece):
            return bytes(dec[ch] for ch in piece)
        return None
    m = _SP_BYTE.match(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    return piece.replace("▁", " ").encode("utf-8")


def display_text(raw: bytes | None, piece: str) -> str:
    """Readable text for one token: UTF-8 when it decodes, else ``<0xNN>`` per byte; specials as-is."""
    if raw is None:
        return piece
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(f"<0x{b:02X}>" for b in raw)


def _is_byte_level(tokenizer: Any, pieces: Sequence[str]) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None) if backend is not None else None
    if decoder is not None:
        return "ByteLevel" in repr(decoder)
    dec = _byte_decoder()
    sample = [p for p in pieces[:2000] if p]
    return bool(sample) and sum(all(c in dec for c in p) for p in sample) > 0.95 * len(sample)


def build_vocab(tokenizer: Any = None, pieces: Sequence[str] | None = None, byte_level: bool | None = None) -> pa.Table:
    """Build the vocab table from a Hugging Face tokenizer or a list of pieces (index = token id).

    Parameters
    ----------
    tokenizer : transformers tokenizer, optional
        Its ``convert_ids_to_tokens`` gives the pieces; added special tokens keep their text.
    pieces : sequence of str, optional
        Used when no tokenizer is given.
    byte_level : bool, optional
        Force or forbid byte-level BPE decoding; detected when None.

    Examples
    --------
    >>> build_vocab(pieces=["Hello", "Ġworld", "Ċ"]).column("text").to_pylist()
    ['Hello', ' world', '\\n']
    """
    if tokenizer is not None:
        pieces = [p if p is not None else "" for p in tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))]
    if pieces is None:
        raise ValueError("build_vocab needs a tokenizer or a list of pieces")
    if byte_level is None:
        byte_level = _is_byte_level(tokenizer, pieces)
    specials = set(getattr(tokenizer, "all_special_tokens", []) or []) if tokenizer is not None else set()
    raws = [None if p in specials else piece_bytes(p, byte_level) for p in pieces]
    texts = [display_text(r, p) for r, p in zip(raws, pieces)]
    return pa.table(
        [pa.array(np.arange(len(pieces), dtype=np.int32)), pa.array(list(pieces), pa.string()),
         pa.array(texts, pa.string()), pa.array(raws, pa.binary())],
        schema=VOCAB_SCHEMA,
    )


def unknown_text(token_id: int) -> str:
    """How a token id outside the vocabulary is shown, everywhere."""
    return f"<id:{int(token_id)}>"


def texts_for(texts: np.ndarray, ids: Any) -> np.ndarray:
    """Display text of each id from a vocabulary's ``texts`` (object array of str; unknown ids as ``<id:N>``)."""
    ids = np.asarray(ids, dtype=np.int64)
    out = np.empty(len(ids), dtype=object)
    ok = (ids >= 0) & (ids < len(texts))
    out[ok] = texts[ids[ok]]
    for i in np.flatnonzero(~ok):
        out[i] = unknown_text(ids[i])
    return out


class Vocab:
    """Lookup of display text by token id; unknown ids show as ``<id:N>``.

    Examples
    --------
    >>> v = Vocab(build_vocab(pieces=["a", "Ġb"]))
    >>> v.text(1), v.text(99), v.decode([0, 1])
    (' b', '<id:99>', 'a b')
    """

    def __init__(self, table: pa.Table | None) -> None:
        self.table = table
        self._n = table.num_rows if table is not None else 0

    # Python lists of ~150k strings take ~50 ms to build: only on first use (export reads `texts_arrow`).
    @cached_property
    def texts(self) -> np.ndarray:
        """Display text by id (object array of str)."""
        return np.array(self.table.column("text").to_pylist() if self._n else [], dtype=object)

    @cached_property
    def texts_arrow(self) -> pa.Array:
        """Display text by id as one Arrow string array, straight from the file."""
        return self.table.column("text").combine_chunks() if self._n else pa.array([], pa.string())

    @cached_property
    def _bytes(self) -> list[bytes | None]:
        if self._n and "bytes" in self.table.column_names:
            return self.table.column("bytes").to_pylist()
        return [None] * self._n

    def __len__(self) -> int:
        return self._n

    @classmethod
    def read(cls, path: Path) -> Vocab:
        """The vocabulary in ``path`` (none when the file is missing: tokens show as ``<id:N>``)."""
        from wbtrace.errors import TraceFormatError

        if not Path(path).exists():
            return cls(None)
        try:
            table = read_parquet(path)
        except (pa.ArrowException, OSError) as e:
            raise TraceFormatError(f"{path}: corrupt or truncated vocabulary file ({e})") from None
        text = table.schema.field("text").type if "text" in table.column_names else None
        if text is None or not (pa.types.is_string(text) or pa.types.is_large_string(text)):
            raise TraceFormatError(f"{path}: not a wbtrace vocabulary (needs a string column 'text')")
        if "bytes" in table.column_names and not pa.types.is_binary(table.schema.field("bytes").type):
            table = table.drop_columns(["bytes"])  # decode() falls back to the text
        return cls(table)

    def text(self, token_id: int) -> str:
        return self.texts[token_id] if 0 <= token_id < len(self.texts) else unknown_text(token_id)

    def texts_for(self, ids: np.ndarray) -> np.ndarray:
        """Vectorised `text` for an array of ids (object array of str)."""
        return texts_for(self.texts, ids)

    def arrow_texts(self, ids: pa.Array, vocab_texts: pa.Array | None = None) -> pa.Array:
        """`text` for an Arrow array of ids, with Arrow kernels (``vocab_texts``: `texts` as Arrow, if at hand)."""
        import pyarrow.compute as pc

        if vocab_texts is None:
            vocab_texts = self.texts_arrow
        n = len(vocab_texts)
        valid = pc.and_(pc.greater_equal(ids, 0), pc.less(ids, n))
        if n and pc.all(valid).as_py():
            return pc.take(vocab_texts, ids)  # the common case: no string building per row
        texts = pc.take(vocab_texts, pc.if_else(valid, ids, 0)) if n else pa.nulls(len(ids), pa.string())
        prefix, suffix = unknown_text(0).split("0")
        unknown = pc.binary_join_element_wise(prefix, pc.cast(ids, pa.string()), suffix, "")
        return pc.if_else(valid, texts, unknown)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a token sequence, multi-byte characters split across tokens joined correctly."""
        parts: list[bytes] = []
        for i in ids:
            raw = self._bytes[i] if 0 <= i < len(self._bytes) else None
            parts.append(raw if raw is not None else self.text(int(i)).encode("utf-8"))
        return b"".join(parts).decode("utf-8", errors="replace")
