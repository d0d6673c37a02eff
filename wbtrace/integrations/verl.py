"""verl integration: keep the per-token entropies verl computes in its old-log-prob pass and pops.

verl's ``RayPPOTrainer.fit`` (and the DAPO recipe's ``RayDAPOTrainer``) call
``self._compute_old_log_prob(batch)``, which returns a ``DataProto`` with ``old_log_probs`` and
``entropys``; the trainer reduces ``entropys`` to the ``actor/entropy`` scalar and pops it. `attach`
wraps two methods of one trainer instance (no fork, no subclass):

* ``_compute_old_log_prob``: keeps a reference to the batch it was given and to the returned
  ``entropys`` / ``old_log_probs`` tensors before the pop (verl never writes into them in place, so a
  reference is enough: no copy, no device sync on the driver);
* ``_update_actor``: by then the batch also holds ``token_level_scores``, ``advantages`` and the reward
  manager's extra info (``acc``); the step is built and handed to the `TraceWriter` (asynchronous)
  under ``trainer.global_steps``.

Dynamic sampling (DAPO ``algorithm.filter_groups``) drops zero-variance groups *before* the old-log-prob
pass in the default recipe (``use_kl_in_reward=False``): those responses never get entropies and are not
in the trace. With ``use_kl_in_reward=True`` the recipe computes old log-probs on every generation batch
and filters afterwards: rows whose entropies exist but that did not reach the actor update are written
with ``kept=False`` (their advantages were never computed: null).

Checked with verl 0.9.1 (``verl.trainer.ppo.ray_trainer``) and the DAPO recipe of verl-project/verl-recipe.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from wbtrace.errors import BadInputError, require

log = logging.getLogger("wbtrace")

VERL_VERSIONS_CHECKED = ("0.9.1",)


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        t = x.detach()
        return (t.float() if str(t.dtype) == "torch.bfloat16" else t).cpu().numpy()
    return np.asarray(x)


def _first_seen_index(labels: np.ndarray) -> np.ndarray:
    """Per-row index of its label in order of first appearance, shape (N,): the prompt index of a group."""
    _, first, inverse = np.unique(labels.astype(str), return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int32)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first), dtype=np.int32)
    return rank[inverse.reshape(-1)]


def _response_mask(td: Any, responses: np.ndarray) -> np.ndarray:
    if "response_mask" in td.keys():
        return _np(td["response_mask"])
    if "attention_mask" in td.keys():  # verl's compute_response_mask: the response tail of the attention mask
        return _np(td["attention_mask"])[:, -responses.shape[1]:]
    raise BadInputError("batch has neither 'response_mask' nor 'attention_mask'")


def step_from_dataproto(batch: Any, entropys: Any = None, *, kept: Any = None) -> dict[str, np.ndarray]:
    """Build the `TraceWriter.write_step` arrays of one step from a verl ``DataProto``.

    Parameters
    ----------
    batch : verl.protocol.DataProto
        Needs ``responses`` (N, T) and ``response_mask`` (or ``attention_mask``); uses when present
        ``old_log_probs`` (N, T), ``token_level_scores`` (N, T), ``advantages`` (N, T), and in
        ``non_tensor_batch`` ``uid`` (the GRPO group), ``acc`` and ``score`` (reward extra info).
    entropys : tensor (N, T), optional
        The entropies verl popped; default ``batch.batch["entropys"]``.
    kept : array (N,), optional
        False for rows dropped by dynamic sampling; default all True.

    Returns
    -------
    dict of numpy arrays
        ``token_ids, response_mask, entropy`` (N, T) and, where the batch has them, ``logprob`` (N, T),
        ``reward`` (sum of token-level scores), ``advantage`` (masked mean), ``group_id``,
        ``prompt_index``, ``correct`` (acc > 0.5), ``score``, ``truncated``, ``kept`` (N,).
    """
    td = batch.batch
    responses = _np(td["responses"])
    if entropys is None:
        if "entropys" not in td.keys():
            raise BadInputError("batch has no 'entropys' (verl pops them after the old-log-prob pass): pass entropys=")
        entropys = td["entropys"]
    mask = _response_mask(td, responses)
    out: dict[str, np.ndarray] = {"token_ids": responses, "response_mask": mask, "entropy": _np(entropys)}
    if "old_log_probs" in td.keys():
        out["logprob"] = _np(td["old_log_probs"])
    if "token_level_scores" in td.keys():
        out["reward"] = _np(td["token_level_scores"]).sum(-1).astype(np.float32)
    if "advantages" in td.keys():
        m = mask.astype(np.float64)
        adv = (_np(td["advantages"]) * m).sum(-1) / np.maximum(m.sum(-1), 1.0)  # constant per row in GRPO
        out["advantage"] = adv.astype(np.float32)
    extra = batch.non_tensor_batch
    if "uid" in extra:
        out["group_id"] = np.asarray(extra["uid"]).astype(str)
        out["prompt_index"] = _first_seen_index(out["group_id"])
    if "acc" in extra:
        out["correct"] = np.asarray(extra["acc"]).astype(np.float64) > 0.5
    if "score" in extra:
        out["score"] = np.asarray(extra["score"]).astype(np.float32)
    out["truncated"] = mask.astype(bool).sum(-1) == mask.shape[1]  # verl's clip ratio: hit max length
    out["kept"] = np.ones(len(responses), dtype=bool) if kept is None else np.asarray(kept, dtype=bool)
    return out


def _row_keys(batch: Any) -> list[bytes]:
    """One key per row: group uid (or prompt ids) + response ids. Equal keys have equal entropies."""
    responses = _np(batch.batch["responses"])
    if "uid" in batch.non_tensor_batch:
        prefix = [str(u).encode() for u in batch.non_tensor_batch["uid"]]
    else:
        prompts = _np(batch.batch["input_ids"])
        prefix = [row.tobytes() for row in prompts]
    return [p + b"|" + row.tobytes() for p, row in zip(prefix, responses, strict=True)]


def _concat(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate step dicts row-wise, padding per-token arrays to the longest T; missing keys -> NaN/None."""
    if len(parts) == 1:
        return parts[0]
    t = max(p["token_ids"].shape[1] for p in parts)
    out: dict[str, np.ndarray] = {}
    for key in {k for p in parts for k in p}:
        chunks = []
        for p in parts:
            n = len(p["token_ids"])
            v = p.get(key)
            if v is None:
                v = np.full(n, np.nan, dtype=np.float32) if key in ("reward", "advantage", "score") else \
                    np.full(n, None, dtype=object)
            elif v.ndim == 2 and v.shape[1] < t:
                v = np.pad(v, ((0, 0), (0, t - v.shape[1])))
            chunks.append(v)
        out[key] = np.concatenate(chunks)
    return out


def step_from_pending(batch: Any, pending: Sequence[tuple[Any, Any]]) -> dict[str, np.ndarray]:
    """The arrays of one step: rows of ``batch`` (kept) plus rows whose entropies were computed but dropped.

    ``pending`` holds ``(batch_seen_by_old_log_prob, entropys)`` for each old-log-prob call of the step.
    """
    if len(pending) == 1 and pending[0][0] is batch:  # RayPPOTrainer, DAPO default: union() kept the object
        return step_from_dataproto(batch, pending[0][1])
    where: dict[bytes, tuple[int, int]] = {}
    for i, (seen, _) in enumerate(pending):
        for r, key in enumerate(_row_keys(seen)):
            where.setdefault(key, (i, r))
    keys = _row_keys(batch)
    missing = sum(k not in where for k in keys)
    if missing:
        raise BadInputError(f"{missing} of {len(keys)} rows reached the actor update without entropies")
    ents = [_np(e) for _, e in pending]
    t = max(e.shape[1] for e in ents)
    entropy = np.zeros((len(keys), t), dtype=np.float32)
    for row, key in enumerate(keys):
        i, r = where[key]
        entropy[row, : ents[i].shape[1]] = ents[i][r]
    parts = [step_from_dataproto(batch, entropy[:, : _np(batch.batch["responses"]).shape[1]])]
    kept_keys = set(keys)
    for (seen, ent), seen_keys in zip(pending, (_row_keys(s) for s, _ in pending), strict=True):
        dropped = [r for r, k in enumerate(seen_keys) if k not in kept_keys]
        if dropped:
            part = step_from_dataproto(seen[dropped], _np(ent)[dropped], kept=np.zeros(len(dropped), bool))
            part.pop("advantage", None)  # advantages are computed after filtering: not for these rows
            parts.append(part)
    return _concat(parts)


class VerlTracer:
    """The hooks `attach` installs on one verl trainer; ``tracer.writer`` is the `TraceWriter`."""

    def __init__(self, trainer: Any, writer: Any) -> None:
        self.trainer = trainer
        self.writer = writer
        self._pending: list[tuple[Any, Any]] = []

    def install(self) -> VerlTracer:
        for name in ("_compute_old_log_prob", "_update_actor", "fit"):
            if not callable(getattr(self.trainer, name, None)):
                raise BadInputError(f"{type(self.trainer).__name__} has no method {name}: verl "
                                    f"{'/'.join(VERL_VERSIONS_CHECKED)} expected")
        t = self.trainer
        t._compute_old_log_prob = self._wrap_old_log_prob(t._compute_old_log_prob)
        t._update_actor = self._wrap_update_actor(t._update_actor)
        t.fit = self._wrap_fit(t.fit)
        return self

    def _wrap_old_log_prob(self, original):
        @functools.wraps(original)
        def wrapper(batch, *args, **kwargs):
            result = original(batch, *args, **kwargs)
            out = result[0] if isinstance(result, tuple) else result  # 0.9: (DataProto, mfu)
            td = getattr(out, "batch", None)
            if td is not None and "entropys" in td.keys():
                self._pending.append((batch, td["entropys"]))
            return result

        return wrapper

    def _wrap_update_actor(self, original):
        @functools.wraps(original)
        def wrapper(batch, *args, **kwargs):
            self.record(batch)
            return original(batch, *args, **kwargs)

        return wrapper

    def _wrap_fit(self, original):
        @functools.wraps(original)
        def wrapper(*args, **kwargs):
            try:
                result = original(*args, **kwargs)
            except BaseException:
                self.writer.close("failed")
                raise
            self.writer.close("success")
            return result

        return wrapper

    def record(self, batch: Any) -> None:
        """Write the step of ``batch`` (called just before the actor update). Never raises."""
        pending, self._pending = self._pending, []
        step = int(getattr(self.trainer, "global_steps", 0))
        if not pending:
            log.info("wbtrace: step %d has no entropies (bypass mode or entropy off); not traced", step)
            return
        try:
            arrays = step_from_pending(batch, pending)
        except Exception as e:  # tracing must never stop training
            log.warning("wbtrace: step %d not traced: %s: %s", step, type(e).__name__, e)
            return
        self.writer.write_step(step, **arrays)


def attach(trainer: Any, output_dir: str | os.PathLike | None = None, *, sinks: Sequence[Any] = (),
           writer: Any = None, run_info: dict[str, Any] | None = None) -> VerlTracer:
    """Trace a verl ``RayPPOTrainer`` / ``RayDAPOTrainer``: call after construction, before ``fit()``.

    Parameters
    ----------
    trainer : verl RayPPOTrainer or subclass
    output_dir : path, optional
        Run directory of the trace (ignored when ``writer`` is given).
    sinks : sequence of TraceSink, default ()
        W&B / MLflow sinks for the new writer.
    writer : TraceWriter, optional
        Use this writer instead of making one.
    run_info : dict, optional
        Extra ``run.json`` fields; the trainer's config is added when it converts to a dict.

    Returns
    -------
    VerlTracer
        ``.writer`` is closed when ``trainer.fit()`` returns or raises.
    """
    require("verl", "verl")
    if writer is None:
        if output_dir is None:
            raise BadInputError("attach() needs output_dir= or writer=")
        from wbtrace.writer import TraceWriter

        info = {"trainer": f"verl.{type(trainer).__name__}", **_config_info(trainer), **(run_info or {})}
        writer = TraceWriter(output_dir, tokenizer=getattr(trainer, "tokenizer", None), run_info=info, sinks=sinks)
    return VerlTracer(trainer, writer).install()


def _config_info(trainer: Any) -> dict[str, Any]:
    config = getattr(trainer, "config", None)
    if config is None:
        return {}
    try:
        from omegaconf import OmegaConf

        cfg = OmegaConf.to_container(config, resolve=True)
    except Exception:  # a plain dict or an unresolvable interpolation: keep what is there
        cfg = config if isinstance(config, dict) else None
    model = (((cfg or {}).get("actor_rollout_ref") or {}).get("model") or {}).get("path")
    return {"config": cfg, "model": model}


__all__ = ["attach", "step_from_dataproto", "step_from_pending", "VerlTracer", "VERL_VERSIONS_CHECKED"]
