"""Trace schema v1: the columns of a step table and how padded trainer arrays become one.

A step is one Parquet file with one row per response (not per token: smaller and faster) and list
columns for per-token data, unpadded. Entropy and log-prob are float16 by default: entropy in float32
barely compresses (3.5 of 4 bytes) and float16 keeps ~3 significant digits, plenty for nats.

Examples
--------
>>> import numpy as np
>>> from wbtrace.schema import pack_step
>>> table = pack_step(
...     7,
...     token_ids=np.array([[5, 6, 7], [8, 9, 0]]),
...     response_mask=np.array([[1, 1, 1], [1, 1, 0]]),
...     entropy=np.array([[0.5, 2.0, 0.01], [1.0, 0.0, 9.9]]),
... )
>>> table.num_rows, table["token_ids"].to_pylist()
(2, [[5, 6, 7], [8, 9]])
>>> table["response_length"].to_pylist()
[3, 2]
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from wbtrace.errors import BadInputError

log = logging.getLogger("wbtrace")
SCHEMA_VERSION = 1
METADATA_KEY = b"wbtrace.schema_version"
TOKEN_COLUMNS = ("token_ids", "entropy", "logprob")

# Per-response columns with a fixed type; anything else in **extra is typed from its values.
KNOWN_SCALARS: dict[str, pa.DataType] = {
    "step": pa.int32(),
    "sample_id": pa.int32(),
    "group_id": pa.string(),
    "prompt_index": pa.int32(),
    "response_length": pa.int32(),
    "kept": pa.bool_(),
    "reward": pa.float32(),
    "advantage": pa.float32(),
    "correct": pa.bool_(),
    "score": pa.float32(),
    "truncated": pa.bool_(),
    "prompt_text": pa.string(),
    "response_text": pa.string(),
}
FLOAT_DTYPES = {"float16": np.float16, "float32": np.float32}


def read_parquet(source: str | Path | pa.NativeFile, columns: list[str] | None = None, **options: Any) -> pa.Table:
    """One Parquet file (a path or an open Arrow file) as a table; ``options`` go to `pq.ParquetFile`.
    Not ``pq.read_table``: that goes through ``pyarrow.dataset``, which imports pandas (0.15-0.5 s of
    every command's start-up on 2 cores)."""
    import pyarrow.parquet as pq

    with pq.ParquetFile(source, **options) as f:
        return f.read(columns=columns)


def to_numpy(x: Any, name: str, dtype: Any = None) -> np.ndarray:
    """Copy an array-like (numpy, torch on any device, nested lists) into a fresh numpy array.

    A copy, because the caller may reuse its buffers as soon as ``write_step`` returns. ``dtype``
    converts first (on the GPU for a CUDA tensor), so fewer bytes cross to the host.
    """
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        import torch

        t = x.detach()
        if dtype is not None:
            t = t.to(getattr(torch, np.dtype(dtype).name))
        elif t.dtype == torch.bfloat16:
            t = t.float()  # numpy has no bfloat16
        out = t.cpu().numpy()
        return out.copy() if t.data_ptr() == x.data_ptr() else out
    try:
        return np.array(x, dtype=dtype, copy=True)
    except (ValueError, TypeError, OverflowError) as e:
        raise BadInputError(f"{name}: cannot be read as an array ({e})") from None


def _check_shape(name: str, arr: np.ndarray, shape: tuple[int, ...]) -> None:
    if arr.shape != shape:
        raise BadInputError(f"{name} has shape {list(arr.shape)}, expected {list(shape)}")


def _list_column(values: np.ndarray, mask: np.ndarray, offsets: pa.Array, dtype: Any) -> pa.ListArray:
    flat = values[mask].astype(dtype, copy=False)
    return pa.ListArray.from_arrays(offsets, pa.array(flat))


def _scalar_column(name: str, values: Any, n: int) -> pa.Array:
    arr = values if isinstance(values, np.ndarray) else to_numpy(values, name)
    if arr.ndim != 1 or len(arr) != n:
        raise BadInputError(f"{name} has shape {list(arr.shape)}, expected [{n}] (one value per response)")
    typ = KNOWN_SCALARS.get(name)
    if typ == pa.string() or (typ is None and arr.dtype.kind in "OUS"):
        return pa.array([None if v is None else str(v) for v in arr.tolist()], type=pa.string())
    try:
        if typ is not None:  # object arrays (a None among the values) become nulls of the declared type
            return pa.array(arr.tolist() if arr.dtype.kind == "O" else arr, type=typ, from_pandas=True)
        return pa.array(arr.astype(np.float32) if arr.dtype == np.float64 else arr)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        raise BadInputError(f"{name}: values do not fit {typ or arr.dtype} ({e})") from None


def _ragged_column(name: str, values: Sequence[Any], n: int) -> pa.Array:
    """A per-response variable-length list (e.g. prompt_token_ids given as a list of arrays)."""
    if len(values) != n:
        raise BadInputError(f"{name} has {len(values)} entries, expected {n}")
    arrays = [to_numpy(v, name).ravel() for v in values]
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    flat = np.concatenate(arrays) if arrays else np.zeros(0)
    if flat.dtype.kind in "iu":
        flat = flat.astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat))


def _extra_column(name: str, value: Any, mask: np.ndarray, offsets: pa.Array) -> pa.Array:
    n, t = mask.shape
    if isinstance(value, (list, tuple)) and value and not np.isscalar(value[0]) and value[0] is not None:
        return _ragged_column(name, value, n)
    arr = to_numpy(value, name)
    if arr.ndim == 2:
        _check_shape(name, arr, (n, t))
        dtype = np.float32 if arr.dtype.kind == "f" else (np.int32 if arr.dtype.kind in "iu" else arr.dtype)
        return _list_column(arr, mask, offsets, dtype)
    return _scalar_column(name, arr, n)


def pack_step(
    step: int,
    token_ids: Any,
    response_mask: Any,
    entropy: Any,
    logprob: Any = None,
    *,
    logprob_dtype: str = "float16",
    dropped: list[str] | None = None,
    flags: list[str] | None = None,
    **columns: Any,
) -> pa.Table:
    """Pack padded ``[N, T]`` trainer arrays into a schema-v1 step table (one row per response).

    Parameters
    ----------
    step : int
        Training step, >= 0.
    token_ids, response_mask, entropy : array-like, shape (N, T)
        Response token ids, 1 where a position is a real response token, and per-token entropy in
        nats. Only masked positions are kept, in order.
    logprob : array-like, shape (N, T), optional
        Log-prob of each sampled token under the old policy.
    logprob_dtype : {"float16", "float32"}, default "float16"
        float32 costs about 3.5 more bytes per token.
    dropped : list, optional
        When given, an extra column that does not fit (wrong shape or type) is left out and its
        problem appended here, instead of failing the whole step. The core columns always raise.
    flags : list, optional
        Receives what was stored but looks wrong: rows whose mask has holes (compacting them loses the
        gaps' positions), NaN log-probs. Without it these are logged as warnings.
    **columns
        Per-response ``[N]`` values (``reward``, ``advantage``, ``group_id``, ``prompt_index``, ``kept``,
        ``correct``, ``score``, ``truncated``, ``prompt_text`` ... or any new name), per-token ``[N, T]``
        arrays (stored as list columns, e.g. ``ratio``), or a list of N arrays (``prompt_token_ids``).
        ``None`` values are skipped.

    Returns
    -------
    pyarrow.Table
        Columns ``step, sample_id, group_id, prompt_index, response_length, kept, ...,
        token_ids, entropy, logprob, ...``; schema metadata carries the schema version.
    """
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
        raise BadInputError(f"step must be a non-negative integer, got {step!r}")
    ids, mask, flat_entropy = _checked_core(step, token_ids, response_mask, entropy)
    found = _mask_flags(mask)
    n = ids.shape[0]
    lengths = mask.sum(axis=1, dtype=np.int32)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    offsets_arr = pa.array(offsets)

    cols: dict[str, pa.Array] = {
        "step": pa.array(np.full(n, step, dtype=np.int32)),
        "sample_id": _scalar_column("sample_id", columns.pop("sample_id", np.arange(n, dtype=np.int32)), n),
    }
    for name in ("group_id", "prompt_index"):
        value = columns.pop(name, None)
        cols[name] = (_scalar_column(name, value, n) if value is not None
                      else pa.nulls(n, KNOWN_SCALARS[name]))
    cols["response_length"] = pa.array(lengths)
    kept = columns.pop("kept", None)
    cols["kept"] = _scalar_column("kept", np.ones(n, dtype=bool) if kept is None else kept, n)
    for name in ("reward", "advantage"):
        value = columns.pop(name, None)
        if value is not None and to_numpy(value, name).ndim == 2:
            value = _masked_row_mean(to_numpy(value, name), mask, name)  # token-level, constant in GRPO
        cols[name] = _scalar_column(name, value, n) if value is not None else pa.nulls(n, pa.float32())

    token_cols: dict[str, pa.Array] = {
        "token_ids": _list_column(ids, mask, offsets_arr, np.int32),
        "entropy": pa.ListArray.from_arrays(offsets_arr, pa.array(flat_entropy.astype(np.float16))),
    }
    if logprob is not None:
        lp = logprob if isinstance(logprob, np.ndarray) else to_numpy(logprob, "logprob")
        _check_shape("logprob", lp, ids.shape)
        token_cols["logprob"] = _list_column(lp, mask, offsets_arr, FLOAT_DTYPES[logprob_dtype])
        nan = int(np.count_nonzero(np.isnan(token_cols["logprob"].values.to_numpy(zero_copy_only=False))))
        if nan:
            found.append(f"logprob has {nan} NaN values among response tokens (stored as NaN)")
    for name, value in columns.items():
        if value is None:
            continue
        target = token_cols if _is_token_level(value, ids.shape) else cols
        try:
            target[name] = _extra_column(name, value, mask, offsets_arr)
        except BadInputError as e:
            if dropped is None:
                raise
            dropped.append(str(e))
    _report_flags(step, found, flags)
    table = pa.table({**cols, **token_cols})
    return table.replace_schema_metadata({METADATA_KEY: str(SCHEMA_VERSION).encode()})


def _checked_core(step: int, token_ids: Any, response_mask: Any, entropy: Any
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids [N, T], bool mask [N, T], entropy of the masked tokens)``, or `BadInputError`."""
    ids = token_ids if isinstance(token_ids, np.ndarray) else to_numpy(token_ids, "token_ids")
    if ids.ndim != 2:
        raise BadInputError(f"token_ids has shape {list(ids.shape)}, expected [N, T]")
    mask = response_mask if isinstance(response_mask, np.ndarray) else to_numpy(response_mask, "response_mask")
    _check_shape("response_mask", mask, ids.shape)
    mask = mask.astype(bool, copy=False)
    ids = _checked_ids(step, ids, mask)
    ent = entropy if isinstance(entropy, np.ndarray) else to_numpy(entropy, "entropy")
    _check_shape("entropy", ent, ids.shape)
    flat = ent[mask]
    bad = int(np.count_nonzero(~np.isfinite(flat)))
    if bad:
        raise BadInputError(f"step {step}: entropy has {bad} NaN/inf values among response tokens")
    if flat.size and float(flat.min()) < -1e-3:
        raise BadInputError(f"step {step}: entropy has negative values (min {float(flat.min()):.4g})")
    return ids, mask, flat


def _checked_ids(step: int, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Token ids as integers, checked: stored as int32, a negative id or one above 2**31 - 1 would be wrong."""
    flat = ids[mask]
    if ids.dtype.kind == "f" and np.array_equal(flat, np.round(flat)):
        ids, flat = ids.astype(np.int64), flat.astype(np.int64)
    if ids.dtype.kind not in "iu":
        raise BadInputError(f"step {step}: token_ids must be integers, got {ids.dtype}")
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) > np.iinfo(np.int32).max):
        raise BadInputError(f"step {step}: token_ids among response tokens range {int(flat.min())}.."
                            f"{int(flat.max())}; ids must be in [0, 2**31 - 1]")
    return ids


def _mask_flags(mask: np.ndarray) -> list[str]:
    """Rows whose response tokens are not one contiguous run (``1 0 1``): compaction closes the gaps."""
    if mask.shape[1] < 2:
        return []
    starts = mask[:, 0].astype(np.int32) + (mask[:, 1:] & ~mask[:, :-1]).sum(axis=1, dtype=np.int32)
    holes = int(np.count_nonzero(starts > 1))
    return [f"response_mask has gaps in {holes} rows; their tokens are stored contiguously (positions after "
            "a gap shift)"] if holes else []


def _report_flags(step: int, found: list[str], flags: list[str] | None) -> None:
    if flags is not None:
        flags.extend(found)
        return
    for message in found:
        log.warning("wbtrace: step %d: %s", step, message)


def _is_token_level(value: Any, shape: tuple[int, int]) -> bool:
    return getattr(value, "shape", None) is not None and tuple(value.shape) == shape and len(shape) == 2


def _masked_row_mean(values: np.ndarray, mask: np.ndarray, name: str) -> np.ndarray:
    _check_shape(name, values, mask.shape)
    counts = np.maximum(mask.sum(axis=1), 1)
    return (np.where(mask, values, 0).sum(axis=1) / counts).astype(np.float32)


def check_table(table: pa.Table, source: str = "table", partial: bool = False) -> None:
    """Raise `TraceFormatError` unless ``table`` is a schema-v1 step table a reader can trust.

    Checked: the core columns and their types, one value per token in every per-token list (entropy,
    log-prob, extras) for each response, and entropy finite and >= 0 (what the writer guarantees). A file
    from someone else's trace that breaks one of these is reported as such instead of crashing a reader
    later. ``partial`` (a column subset was read) checks only the columns present.
    """
    from wbtrace.errors import TraceFormatError

    meta = table.schema.metadata or {}
    try:
        version = int(meta.get(METADATA_KEY, b"1"))
    except ValueError:
        raise TraceFormatError(f"{source}: unreadable schema version {meta.get(METADATA_KEY)!r}") from None
    if version > SCHEMA_VERSION:
        raise TraceFormatError(
            f"{source}: schema version {version} is newer than this wbtrace understands ({SCHEMA_VERSION}); "
            "upgrade wbtrace"
        )
    for name in ("step", "sample_id", "token_ids", "entropy"):
        if name not in table.column_names and not partial:
            raise TraceFormatError(f"{source}: not a wbtrace step table (no column {name!r})")
    problem = _type_problem(table.schema) or _length_problem(table) or _entropy_problem(table)
    if problem:
        raise TraceFormatError(f"{source}: {problem}")


def check_schema(schema: pa.Schema, source: str = "table") -> None:
    """Raise `TraceFormatError` when a known column has the wrong type: the part of `check_table` that a
    file's footer alone answers (readers that scan many files lazily call it per file)."""
    from wbtrace.errors import TraceFormatError

    problem = _type_problem(schema)
    if problem:
        raise TraceFormatError(f"{source}: {problem}")


def _kind(typ: pa.DataType) -> str:
    for kind, test in (("integer", pa.types.is_integer), ("float", pa.types.is_floating), ("bool", pa.types.is_boolean),
                       ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t))):
        if test(typ):
            return kind
    return str(typ)


def _type_problem(schema: pa.Schema) -> str | None:
    want = {"token_ids": "list<integer>", "entropy": "list<float>", "logprob": "list<float>",
            **{k: _kind(t) for k, t in KNOWN_SCALARS.items()}}
    for field in schema:
        if field.name not in want:
            continue
        typ = field.type
        got = f"list<{_kind(typ.value_type)}>" if pa.types.is_list(typ) or pa.types.is_large_list(typ) else _kind(typ)
        if got != want[field.name] and not (want[field.name] == "float" and got == "integer"):
            return f"column {field.name!r} is {typ}, expected {want[field.name]}"
    return None


def _length_problem(table: pa.Table) -> str | None:
    import pyarrow.compute as pc

    if "token_ids" not in table.column_names:
        return None
    want = pc.list_value_length(table.column("token_ids")).fill_null(0)
    for field in table.schema:
        typ = field.type
        if field.name in ("token_ids", "prompt_token_ids") or not (pa.types.is_list(typ) or pa.types.is_large_list(typ)):
            continue
        got = pc.list_value_length(table.column(field.name)).fill_null(0)
        bad = pc.not_equal(got, want)
        if pc.any(bad).as_py():
            row = pc.index(bad, True).as_py()
            return (f"response {row} has {got[row].as_py()} {field.name} values for "
                    f"{want[row].as_py()} tokens (every per-token list has one value per token)")
    return None


def _entropy_problem(table: pa.Table) -> str | None:
    import pyarrow.compute as pc

    if "entropy" not in table.column_names or not table.num_rows:
        return None
    flat = pc.list_flatten(table.column("entropy")).cast(pa.float32())
    finite = pc.is_finite(flat)
    bad = len(flat) - pc.sum(finite.cast(pa.int64())).as_py() if len(flat) else 0
    if bad:
        return f"entropy has {bad} NaN/inf values"
    low = pc.min(flat).as_py() if len(flat) else None
    if low is not None and low < 0:
        return f"entropy has negative values (min {low:.4g})"
    return None
