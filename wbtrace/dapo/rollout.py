"""One step's rollout on the driver: prompts -> sharded generation on the workers -> rewards ->
advantages -> dynamic sampling, refilling with more generation batches until enough groups are kept.

A step's batch is a dict of numpy arrays with one row per response: ``prompts``/``prompt_mask`` (N, P)
left-padded, ``responses``/``response_mask``/``entropy``/``logprob`` (N, T) right-padded, and (N,)
``group``, ``prompt_index``, ``truncated``, ``score``, ``acc``, ``reward``, ``advantage``, ``kept``.
Every generated response stays in the batch (``kept`` false for filtered groups) so the trace has them.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from wbtrace.dapo import algo
from wbtrace.dapo.config import DapoConfig
from wbtrace.dapo.data import PromptStream
from wbtrace.dapo.rewards import math_reward, toy_reward

PER_TOKEN = ("responses", "response_mask", "entropy", "logprob")


def encode_prompts(problems: list[dict[str, Any]], tok: Any, cfg: DapoConfig) -> list[list[int]]:
    """Token ids of each prompt (chat template when the tokenizer has one), left-truncated."""
    use_chat = cfg.data.prompt_format == "chat" or (cfg.data.prompt_format == "auto" and tok.chat_template)
    out = []
    for p in problems:
        if use_chat:
            msgs = p.get("messages") or [{"role": "user", "content": p["question"]}]
            ids = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=True, return_dict=False)
        else:
            ids = tok(f"Question: {p['question']}\nAnswer:", add_special_tokens=False)["input_ids"]
        out.append(list(ids)[-cfg.data.max_prompt_length:])
    return out


def left_pad(rows: list[list[int]] | np.ndarray, width: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """(B, width) ids and mask, real tokens at the right end."""
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        r = list(r)[-width:] if width else []
        if r:
            ids[i, width - len(r):] = r
            mask[i, width - len(r):] = 1
    return ids, mask


def generate(workers: list[Any], prompt_ids: list[list[int]], n: int, pad: int, T: int, seed: int):
    """Repeat each prompt n times, shard the rows over the workers, gather (N, T) arrays and timings."""
    import ray

    rows = [ids for ids in prompt_ids for _ in range(n)]
    prompts, pmask = left_pad(rows, max(len(r) for r in rows), pad)
    shards = np.array_split(np.arange(len(rows)), len(workers))
    outs = ray.get([w.rollout.remote(prompts[s], pmask[s], seed) for w, s in zip(workers, shards)])
    batch: dict[str, Any] = {"prompts": prompts, "prompt_mask": pmask}
    for k in PER_TOKEN:
        fill = pad if k == "responses" else 0
        batch[k] = np.concatenate([_right_pad(o[k], T, fill) for o in outs])
    batch["truncated"] = np.concatenate([o["truncated"] for o in outs])
    timings = {k: max(o[k] for o in outs) for k in ("time_generate", "time_log_prob")}
    timings["logprob_gaps"] = [o["logprob_gap"] for o in outs if o.get("logprob_gap")]
    return batch, timings


def _right_pad(a: np.ndarray, T: int, fill: float) -> np.ndarray:
    return np.pad(a[:, :T], ((0, 0), (0, T - min(a.shape[1], T))), constant_values=fill)


def score(batch: dict[str, Any], problems: list[dict[str, Any]], n: int, tok: Any, cfg: DapoConfig) -> None:
    """Add (N,) ``score``, ``acc``, ``reward`` (score + overlong penalty) and ``response_text``."""
    import torch

    lengths = batch["response_mask"].sum(1)
    texts = [tok.decode(r[:m], skip_special_tokens=True) for r, m in zip(batch["responses"], lengths)]
    results = []
    for i, text in enumerate(texts):
        p = problems[i // n]
        if cfg.reward_model.reward_fn == "toy":
            results.append(toy_reward(batch["responses"][i][:lengths[i]].tolist(), p["index"]))
        else:
            results.append(math_reward(text, p["answer"]))
    batch["score"] = np.array([s for s, _ in results], dtype=np.float32)
    batch["acc"] = np.array([ok for _, ok in results], dtype=bool)
    ob = cfg.reward_model.overlong_buffer
    penalty = (algo.overlong_penalty(torch.as_tensor(lengths), cfg.data.max_response_length, ob.len,
                                     ob.penalty_factor).numpy() if ob.enable else 0.0)
    batch["reward"] = batch["score"] + penalty
    batch["response_text"] = texts


def collect_step(workers: list[Any], stream: PromptStream, tok: Any, cfg: DapoConfig, step: int):
    """Generate batches until ``train_batch_size`` groups survive dynamic sampling (or the batch limit).

    Returns the concatenated batch of every generated response, with ``kept`` marking the groups that
    train (the first ``train_batch_size`` surviving ones), and metrics of the rollout.
    """
    import torch

    n, fg = cfg.actor_rollout_ref.rollout.n, cfg.algorithm.filter_groups
    B = cfg.data.gen_batch_size or cfg.data.train_batch_size
    parts, timings, kept_groups, gen_batches = [], {"time_generate": 0.0, "time_log_prob": 0.0}, 0, 0
    gaps: list[tuple[float, float, int]] = []
    t_reward = 0.0
    while kept_groups < cfg.data.train_batch_size:
        problems = stream.take(B)
        prompt_ids = encode_prompts(problems, tok, cfg)
        batch, t = generate(workers, prompt_ids, n, tok.pad_token_id,
                            cfg.data.max_response_length, seed=cfg.trainer.seed + step * 100 + gen_batches)
        for k in timings:
            timings[k] += t[k]
        gaps += t["logprob_gaps"]
        t0 = time.perf_counter()
        score(batch, problems, n, tok, cfg)
        t_reward += time.perf_counter() - t0
        batch["group"] = np.repeat(np.arange(B) + gen_batches * B, n)
        batch["prompt_index"] = np.repeat([p["index"] for p in problems], n)
        batch["prompt_token_ids"] = [ids for ids in prompt_ids for _ in range(n)]
        batch["prompt_text"] = [p["question"] for p in problems for _ in range(n)]
        metric = batch["acc"].astype(np.float32) if fg.metric == "acc" else batch["score"]
        batch["kept"] = algo.dynamic_sampling_keep(metric, batch["group"]) if fg.enable else np.ones(B * n, bool)
        batch["advantage"] = algo.grpo_advantages(torch.as_tensor(batch["reward"]), torch.as_tensor(
            batch["group"]), cfg.algorithm.norm_adv_by_std).numpy()
        parts.append(batch)
        kept_groups += int(batch["kept"].sum()) // n
        gen_batches += 1
        if fg.max_num_gen_batches and gen_batches >= fg.max_num_gen_batches:
            break
    out = concat(parts, tok.pad_token_id)
    if fg.enable:  # with filtering off every generated group trains, as in verl's DAPO recipe
        _trim_kept(out, n, cfg.data.train_batch_size)
    metrics = {"filter/num_gen_batches": gen_batches, "filter/kept_groups": int(out["kept"].sum()) // n,
               "filter/filtered_groups": gen_batches * B - kept_groups, "timing/generate": timings["time_generate"],
               "timing/log_prob": timings["time_log_prob"], "timing/reward": t_reward}
    if gaps:  # rollout.name=fast: how far the sampler's log-probs are from the trainer's recompute
        metrics["rollout/logprob_gap_max"] = max(g[0] for g in gaps)
        metrics["rollout/logprob_gap_mean"] = sum(g[1] for g in gaps) / max(sum(g[2] for g in gaps), 1)
    return out, metrics


def _trim_kept(batch: dict[str, Any], n: int, train_batch_size: int) -> None:
    """Keep only the first ``train_batch_size`` surviving groups (DAPO trims the overflow)."""
    kept_groups = [g for g in dict.fromkeys(batch["group"][batch["kept"]].tolist())]
    extra = set(kept_groups[train_batch_size:])
    if extra:
        batch["kept"] &= ~np.isin(batch["group"], list(extra))


def concat(parts: list[dict[str, Any]], pad: int) -> dict[str, Any]:
    """Concatenate generation batches; prompts are re-left-padded to the widest batch."""
    P = max(p["prompts"].shape[1] for p in parts)
    out: dict[str, Any] = {}
    for k in parts[0]:
        if k in ("prompts", "prompt_mask"):
            fill = pad if k == "prompts" else 0
            out[k] = np.concatenate([np.pad(p[k], ((0, 0), (P - p[k].shape[1], 0)), constant_values=fill)
                                     for p in parts])
        elif isinstance(parts[0][k], list):
            out[k] = [x for p in parts for x in p[k]]
        else:
            out[k] = np.concatenate([p[k] for p in parts])
    return out
