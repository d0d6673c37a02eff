"""The policy worker: one Ray actor per device that owns a model replica and its optimizer.

It does the three heavy things of a DAPO step on its data shard: ``rollout`` (batched sampling with
the KV cache, HF ``generate`` or ``sampler.FastSampler`` by ``rollout.name``, stopping at the end-of-turn
ids the trainer passes, then the old-log-prob pass that yields per-token entropy and log-prob from raw
logits / temperature), and ``update`` (DAPO's or Archer2.0's clipped policy loss, optionally a KL loss
to a frozen copy of the initial policy; gradients all-reduced over ``torch.distributed``: gloo on CPU,
nccl on GPU). The class is plain Python; the trainer wraps it with
``ray.remote`` so this module imports without Ray.

Arrays cross the Ray boundary as numpy: ``(B, P)`` left-padded prompts, ``(B, T)`` right-padded responses.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
import warnings
from typing import Any

import numpy as np


class PolicyWorker:
    def __init__(self, rank: int, world_size: int, cfg: Any, model_path: str, pad_id: int,
                 eos_ids: list[int]) -> None:
        import torch

        from wbtrace.dapo.model import load_policy

        torch.set_num_threads(max(1, cfg.trainer.cpus_per_worker))
        self.rank, self.world_size, self.cfg = rank, world_size, cfg
        self.pad_id, self.eos_ids = pad_id, list(eos_ids)
        self.device = torch.device("cuda" if cfg.trainer.device == "cuda" else "cpu")
        self.model = load_policy(model_path, seed=cfg.trainer.seed).to(self.device)
        if cfg.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        actor = cfg.actor_rollout_ref.actor
        self.optim = torch.optim.AdamW(self.model.parameters(), lr=actor.lr, weight_decay=actor.weight_decay,
                                       betas=(0.9, 0.999))
        warm = max(actor.warmup_steps, 0)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.optim, lambda s: min(1.0, (s + 1) / (warm + 1)))
        self._tokens: dict[str, list[np.ndarray]] = {}  # per-token update stats of the current epoch
        self.sampler = self._make_sampler()
        self.ref = self._make_ref()

    def _make_sampler(self):
        """What samples: a ``FastSampler`` (``rollout.name=fast``) or the model HF ``generate`` runs on.

        Both hold weights in the compute dtype, synced in place after each update. For ``hf`` in bf16 it
        is a bf16 copy: autocast would re-cast every fp32 weight at every decode step (270 MB for
        SmolLM2-135M). Log-probs and entropy still come from the fp32 master weights under autocast,
        as in training.
        """
        import copy

        import torch

        dtype = torch.bfloat16 if self.cfg.model.compute_dtype == "bfloat16" else torch.float32
        if self.cfg.actor_rollout_ref.rollout.name == "fast":
            from wbtrace.dapo.sampler import FastSampler

            return FastSampler(self.model, dtype, self.device)
        if dtype == torch.float32:
            return self.model
        sampler = copy.deepcopy(self.model).to(dtype).eval()
        sampler.requires_grad_(False)
        return sampler

    def _make_ref(self):
        """The frozen initial policy the KL loss measures against (None without ``use_kl_loss``).

        Copied before any checkpoint is loaded, so a resumed run still compares with the initial model.
        """
        import copy

        if not self.cfg.actor_rollout_ref.actor.use_kl_loss:
            return None
        ref = copy.deepcopy(self.model).eval()
        ref.requires_grad_(False)
        return ref

    def _sync_sampler(self) -> None:
        import torch

        if hasattr(self.sampler, "sync"):
            self.sampler.sync(self.model)
        elif self.sampler is not self.model:
            with torch.no_grad():
                for dst, src in zip(self.sampler.parameters(), self.model.parameters()):
                    dst.copy_(src)

    # ------------------------------------------------------------------ distributed
    def address(self) -> tuple[str, int]:
        """Rank 0's rendezvous address: this node's IP and a free port."""
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        import ray

        return ray.util.get_node_ip_address(), port

    def init_dist(self, addr: str, port: int) -> None:
        import torch
        import torch.distributed as dist

        if self.world_size == 1:
            return
        os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port))
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=self.rank, world_size=self.world_size)
        with torch.no_grad():  # same start everywhere, whatever each rank loaded
            for p in self.model.parameters():
                dist.broadcast(p.data, src=0)
            if self.ref is not None:
                for dst, src in zip(self.ref.parameters(), self.model.parameters()):
                    dst.copy_(src)
        self._sync_sampler()

    def _all_reduce(self, t):
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def _autocast(self):
        import torch

        if self.cfg.model.compute_dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ------------------------------------------------------------------ rollout
    def rollout(self, prompts: np.ndarray, prompt_mask: np.ndarray, seed: int) -> dict[str, Any]:
        """Sample one response per prompt row, then the old-log-prob pass on all of them.

        prompts, prompt_mask: (B, P) left-padded (the driver already repeated each prompt n times).
        Returns responses/response_mask/entropy/logprob (B, T), truncated (B,), and timings.
        """
        import torch

        roll = self.cfg.actor_rollout_ref.rollout
        torch.manual_seed(seed * 1000 + self.rank)
        t0 = time.perf_counter()
        mb = roll.micro_batch_size
        chunks = [self._generate(prompts[i:i + mb], prompt_mask[i:i + mb]) for i in range(0, len(prompts), mb)]
        width = max((c.shape[1] for c, _ in chunks), default=1)
        resp = np.concatenate([np.pad(c, ((0, 0), (0, width - c.shape[1])), constant_values=self.pad_id)
                               for c, _ in chunks]) if chunks else np.zeros((0, 1), np.int64)
        resp_mask, truncated = self._response_mask(resp)
        t1 = time.perf_counter()
        ent, logp = self.log_prob(prompts, prompt_mask, resp, resp_mask)
        t2 = time.perf_counter()
        out = {"responses": resp, "response_mask": resp_mask, "entropy": ent, "logprob": logp,
               "truncated": truncated, "time_generate": t1 - t0, "time_log_prob": t2 - t1}
        if chunks and chunks[0][1] is not None:  # the sampler's own log-probs against the recompute
            gap = np.abs(np.concatenate([lp for _, lp in chunks]) - logp)[resp_mask.astype(bool)]
            out["logprob_gap"] = (float(gap.max()), float(gap.sum()), int(gap.size)) if gap.size else None
        return out

    def _generate(self, prompts: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(B, T) sampled tokens, and their log-probs when the sampler gives them (``fast``)."""
        import torch

        roll = self.cfg.actor_rollout_ref.rollout
        T = self.cfg.data.max_response_length
        if hasattr(self.sampler, "sync"):
            return self.sampler.generate(prompts, mask, T, self.eos_ids, self.pad_id, roll.temperature, roll.top_p)
        ids = torch.as_tensor(prompts, device=self.device)
        self.sampler.eval()
        with torch.inference_mode():
            out = self.sampler.generate(
                input_ids=ids, attention_mask=torch.as_tensor(mask, device=self.device), do_sample=True,
                temperature=roll.temperature, top_p=roll.top_p, top_k=0,
                max_new_tokens=T, pad_token_id=self.pad_id,
                eos_token_id=self.eos_ids, use_cache=True)
        return out[:, ids.shape[1]:].cpu().numpy(), None

    def _response_mask(self, resp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """1 up to and including the first EOS; ``truncated`` when no EOS came before the length limit."""
        is_eos = np.isin(resp, self.eos_ids)
        has_eos = is_eos.any(1)
        first = np.where(has_eos, is_eos.argmax(1), resp.shape[1])
        lengths = np.minimum(first + 1, resp.shape[1])
        mask = (np.arange(resp.shape[1])[None, :] < lengths[:, None]).astype(np.int64)
        return mask, ~has_eos

    def _forward_logits(self, prompts, prompt_mask, resp, resp_mask, model=None):
        """Logits of ``model`` (default: the policy) at the positions predicting each response token: (B, T, V)."""
        import torch

        ids = torch.as_tensor(np.concatenate([prompts, resp], 1), device=self.device)
        att = torch.as_tensor(np.concatenate([prompt_mask, resp_mask], 1), device=self.device)
        pos = (att.cumsum(1) - 1).clamp(min=0)  # left padding: positions start at the first real token
        with self._autocast():
            logits = (model if model is not None else self.model)(
                input_ids=ids, attention_mask=att, position_ids=pos, logits_to_keep=resp.shape[1] + 1,
                use_cache=False).logits
        return logits[:, :-1], torch.as_tensor(resp, device=self.device)

    def log_prob(self, prompts, prompt_mask, resp, resp_mask) -> tuple[np.ndarray, np.ndarray]:
        """Per-token entropy and sampled-token log-prob (float32, (B, T)) from raw logits / temperature."""
        import torch

        from wbtrace.dapo.algo import entropy_and_logprob

        temp = self.cfg.actor_rollout_ref.rollout.temperature
        mb = self.cfg.actor_rollout_ref.rollout.micro_batch_size
        ents, logps = [], []
        self.model.eval()
        with torch.inference_mode():
            for i in range(0, len(resp), mb):
                sl = slice(i, i + mb)
                logits, ids = self._forward_logits(prompts[sl], prompt_mask[sl], resp[sl], resp_mask[sl])
                ent, logp = entropy_and_logprob(logits, ids, temp)
                ents.append(ent.float().cpu().numpy())
                logps.append(logp.float().cpu().numpy())
        empty = np.zeros((0, resp.shape[1]), np.float32)
        return (np.concatenate(ents) if ents else empty), (np.concatenate(logps) if logps else empty)

    # ------------------------------------------------------------------ update
    def update(self, batch: dict[str, np.ndarray], num_mini_batches: int):
        """One PPO pass per epoch over ``num_mini_batches`` mini-batches of this rank's shard.

        batch: prompts/prompt_mask (B, P), responses/response_mask/old_logprob/entropy (B, T), advantages (B,).
        Every rank runs the same number of mini-batches (possibly empty) so the all-reduces line up. The LR
        schedule steps once per call (one training step, as verl), not per optimizer step.
        Returns ``(metrics, tokens)``: tokens holds (B, T) ``ratio``, ``clipped`` and ``high_entropy``
        of the last epoch, rows in batch order (for the trace).
        """
        actor = self.cfg.actor_rollout_ref.actor
        if self.ref is not None:
            batch = {**batch, "ref_logprob": self._ref_logprob(batch)}
        sums: dict[str, float] = {}
        lr = self.sched.get_last_lr()[0]  # the rate this step's optimizer steps use (verl logs the same)
        self.model.train()
        for _ in range(actor.ppo_epochs):
            self._tokens = {"ratio": [], "clipped": [], "high_entropy": []}
            for idx in np.array_split(np.arange(len(batch["advantages"])), num_mini_batches):
                stats = self._mini_batch({k: v[idx] for k, v in batch.items()})
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
        with warnings.catch_warnings():  # torch warns when every optimizer step was skipped (non-finite)
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.sched.step()
        n = actor.ppo_epochs * num_mini_batches
        out = {k: v if k == "actor/skipped_updates" else v / n for k, v in sums.items()}
        out["actor/lr"] = lr
        T = batch["responses"].shape[1]
        tokens = {k: np.concatenate(v) if v else np.zeros((0, T)) for k, v in self._tokens.items()}
        self._sync_sampler()
        return out, tokens

    def _ref_logprob(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        """Log-prob (B, T) of the sampled tokens under the frozen initial policy (for the KL loss)."""
        import torch

        from wbtrace.dapo.algo import entropy_and_logprob

        mb, temp = self.cfg.actor_rollout_ref.rollout.micro_batch_size, self.cfg.actor_rollout_ref.rollout.temperature
        out = [np.zeros((0, batch["responses"].shape[1]), np.float32)]
        with torch.inference_mode():
            for i in range(0, len(batch["responses"]), mb):
                sl = {k: batch[k][i:i + mb] for k in ("prompts", "prompt_mask", "responses", "response_mask")}
                logits, ids = self._forward_logits(sl["prompts"], sl["prompt_mask"], sl["responses"],
                                                   sl["response_mask"], model=self.ref)
                out.append(entropy_and_logprob(logits, ids, temp)[1].float().cpu().numpy())
        return np.concatenate(out)

    def _mini_batch(self, mb: dict[str, np.ndarray]) -> dict[str, float]:
        import torch

        actor = self.cfg.actor_rollout_ref.actor
        # Global normalizer: summed gradients over ranks equal the one-process token-mean gradient.
        token_mode = actor.loss_agg_mode == "token-mean"
        local = float(mb["response_mask"].sum()) if token_mode else float(len(mb["advantages"]))
        denom = float(self._all_reduce(torch.tensor([local], dtype=torch.float64, device=self.device)).item())
        counts = dict.fromkeys(("pg_loss", "kl_loss", "high", "low", "dual", "ratio", "tokens"), 0.0)
        self.optim.zero_grad(set_to_none=False)
        for p in self.model.parameters():  # a rank with an empty mini-batch still all-reduces every grad
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        for i in range(0, len(mb["advantages"]), actor.micro_batch_size):
            micro = {k: v[i:i + actor.micro_batch_size] for k, v in mb.items()}
            self._micro_step(micro, max(denom, 1.0), counts)
        grads = [p.grad for p in self.model.parameters()]
        if self.world_size > 1:
            flat = self._all_reduce(torch.cat([g.reshape(-1) for g in grads]))
            _unflatten_into(flat, grads)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), actor.grad_clip)
        # Same all-reduced gradient on every rank, so every rank makes the same choice (verl skips too).
        finite = bool(torch.isfinite(grad_norm))
        if finite:
            self.optim.step()
        else:
            self.optim.zero_grad(set_to_none=False)
        totals = self._all_reduce(torch.tensor(list(counts.values()), dtype=torch.float64, device=self.device))
        c = dict(zip(counts, totals.tolist()))
        tok = max(c["tokens"], 1.0)
        out = {"actor/pg_loss": c["pg_loss"], "actor/clipfrac": (c["high"] + c["low"]) / tok,
               "actor/clipfrac_high": c["high"] / tok, "actor/clipfrac_low": c["low"] / tok,
               "actor/dual_clipfrac": c["dual"] / tok, "actor/ratio_mean": c["ratio"] / tok,
               "actor/grad_norm": float(grad_norm), "actor/skipped_updates": float(not finite)}
        if self.ref is not None:
            out["actor/kl_loss"] = c["kl_loss"]
        return out

    def _micro_step(self, micro: dict[str, np.ndarray], denom: float, counts: dict[str, float]) -> None:
        import torch

        from wbtrace.dapo import algo

        actor, temp = self.cfg.actor_rollout_ref.actor, self.cfg.actor_rollout_ref.rollout.temperature
        logits, ids = self._forward_logits(micro["prompts"], micro["prompt_mask"], micro["responses"],
                                           micro["response_mask"])
        logp = algo.logprob_of(logits, ids, temp)
        t = lambda k: torch.as_tensor(micro[k], device=self.device)  # noqa: E731
        mask = t("response_mask").float()
        high = self._token_class(logits, ids, t("entropy"), mask)
        loss, st = self._policy_loss(logp, t("old_logprob"), t("advantages").float(), mask, high)
        total = pg = algo.agg_loss(loss, mask, actor.loss_agg_mode, denominator=denom)
        if self.ref is not None:
            kl = algo.agg_loss(algo.kl_penalty(logp, t("ref_logprob"), actor.kl_loss_type), mask,
                               actor.loss_agg_mode, denominator=denom)
            counts["kl_loss"] += float(kl.detach())
            total = pg + actor.kl_loss_coef * kl
        total.backward()
        valid = mask.bool()
        counts["pg_loss"] += float(pg.detach())
        counts["high"] += float(st["clip_high_hit"].sum())
        counts["low"] += float(st["clip_low_hit"].sum())
        counts["dual"] += float(st["dual_clip_hit"].sum())
        counts["ratio"] += float(st["ratio"][valid].sum())
        counts["tokens"] += float(valid.sum())
        self._tokens["ratio"].append(st["ratio"].float().cpu().numpy())
        self._tokens["clipped"].append(st["clipped"].cpu().numpy())
        self._tokens["high_entropy"].append(high.cpu().numpy())

    def _token_class(self, logits, ids, old_entropy, mask):
        """Archer2.0's high-entropy class (N, T): from this forward's entropy (``current``, as Archer2.0's
        dp_actor, which recomputes it in every micro-batch) or from the rollout's old-log-prob pass."""
        import torch

        from wbtrace.dapo import algo

        archer = self.cfg.actor_rollout_ref.actor.archer
        entropy = old_entropy
        if archer.entropy_class == "current":
            with torch.no_grad():
                entropy = algo.entropy_and_logprob(logits.detach(), ids,
                                                   self.cfg.actor_rollout_ref.rollout.temperature)[0]
        return algo.high_entropy_mask(entropy, mask, archer.entropy_quantile)

    def _policy_loss(self, logp, old_logp, adv, mask, high):
        """The per-token loss the config selects: DAPO's, or Archer2.0's (its published or older path)."""
        from wbtrace.dapo import algo

        actor = self.cfg.actor_rollout_ref.actor
        archer = actor.archer
        if archer.enable and archer.loss == "archer":
            return algo.archer_policy_loss(logp, old_logp, adv, mask, high, actor.clip_ratio_low,
                                           actor.clip_ratio_high, archer.clip_ratio_low, archer.clip_ratio_high,
                                           actor.clip_ratio_c, actor.clip_ratio_c)
        low_eps, high_eps = algo.token_clip_bounds(high if archer.enable else None, actor.clip_ratio_low,
                                                   actor.clip_ratio_high, archer.clip_ratio_low,
                                                   archer.clip_ratio_high)
        return algo.policy_loss(logp, old_logp, adv, mask, low_eps, high_eps, actor.clip_ratio_c)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str) -> None:
        import torch

        from wbtrace.store import atomic_output

        if self.rank == 0:
            with atomic_output(path) as tmp:
                torch.save({"model": self.model.state_dict(), "optim": self.optim.state_dict(),
                            "sched": self.sched.state_dict()}, tmp)

    def load(self, path: str) -> None:
        import torch

        state = torch.load(path, map_location=self.device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optim.load_state_dict(state["optim"])
        self.sched.load_state_dict(state["sched"])
        self._sync_sampler()

    def grads(self) -> np.ndarray:
        """The flattened gradients of the last update (after the all-reduce and clipping)."""
        return np.concatenate([p.grad.detach().float().cpu().numpy().ravel() for p in self.model.parameters()])


def _unflatten_into(flat, tensors) -> None:
    """Copy a flat all-reduced buffer back into the gradient tensors it was made from."""
    offset = 0
    for g in tensors:
        n = g.numel()
        g.copy_(flat[offset:offset + n].view_as(g))
        offset += n
