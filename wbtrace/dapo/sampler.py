"""The RL rollout sampler behind ``actor_rollout_ref.rollout.name=fast`` (Llama and Qwen2 families).

HF ``generate`` is launch-bound on a GPU (tens of ms per decode step whatever the batch). This sampler
decodes with its own forward pass over a static KV cache, so one decode step is a fixed sequence of
kernels that is captured once in a CUDA graph and replayed:

- weights: a fused copy (q|k|v and gate|up stacked) in the compute dtype, refreshed in place from the
  policy after each update (``sync``): no reload, and the captured graphs stay valid;
- numerics of the trainer's bf16 autocast pass over fp32 master weights: matmuls in the compute dtype,
  the residual stream, norms, rotary embedding and the embedding lookup in float32, so the sampled
  tokens' log-probs match the recompute up to the rounding of the matmuls' kernels;
- prompts: left-padded rows share one cache slot per step; each row's rotary position counts only its
  real tokens and an additive mask hides its padding, so a padded row decodes as it would alone;
- sampling on the GPU inside the graph: temperature, top-p, Gumbel-max draw, per-row stop at the first
  stop id (later tokens are pad), and the sampled token's log-prob at the temperature;
- graphs: one per attention-length bucket (the step attends over the first L cache slots only), all in
  one memory pool; the pointwise work between the matmuls is fused by ``torch.compile`` when it works.

On CPU the same step runs eagerly (no graphs, no compile), so CI tests the same code.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SUPPORTED = ("llama", "qwen2")
BUCKET = 128  # cache slots per attention-length bucket (and the cache size's rounding)
STOP_CHECK_EVERY = 16  # decode steps between host reads of "all rows done" (each read waits for the GPU)


def unsupported_reason(config: Any) -> str | None:
    """Why the fast sampler cannot run this model config (None when it can)."""
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED:
        return f"model_type {kind!r} is not one of {', '.join(SUPPORTED)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"hidden_act {config.hidden_act!r} is not silu"
    if getattr(config, "mlp_bias", False):
        return "mlp_bias=True is not supported"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention is not supported"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) in ("dynamic", "longrope"):
        return f"rope_type {rope.get('rope_type', rope.get('type'))!r} changes with length"
    return None


# ----------------------------------------------------------------------------- the math (pure functions)
def rms_norm(x, w, eps: float):
    import torch

    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return w * xf.to(x.dtype)


def _rotate_half(x):
    import torch

    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), -1)


def pre_attention(x, pos, ln, wqkv, bqkv, inv_freq, rope_scale: float, eps: float, nq: int, nkv: int):
    """x (B, Q, H), pos (B, Q) -> rotated q (B, nq, Q, D), k and v (B, nkv, Q, D)."""
    import torch
    import torch.nn.functional as F

    B, Q, _ = x.shape
    D = inv_freq.shape[0] * 2
    qkv = F.linear(rms_norm(x, ln, eps).to(wqkv.dtype), wqkv, bqkv)
    q, k, v = qkv.split([nq * D, nkv * D, nkv * D], -1)
    q = q.view(B, Q, nq, D).transpose(1, 2)
    k = k.view(B, Q, nkv, D).transpose(1, 2)
    v = v.view(B, Q, nkv, D).transpose(1, 2)
    freqs = pos[..., None].float() * inv_freq.float()
    emb = torch.cat((freqs, freqs), -1)
    cos, sin = (emb.cos() * rope_scale)[:, None], (emb.sin() * rope_scale)[:, None]  # float32, as HF under autocast
    q = (q.float() * cos + _rotate_half(q).float() * sin).to(v.dtype)
    k = (k.float() * cos + _rotate_half(k).float() * sin).to(v.dtype)
    return q, k, v


def post_attention(x, attn, wo, bo, ln, wgu, wd, eps: float):
    """Residual + o_proj, then the SiLU-gated MLP block: (B, Q, H), the residual stream in float32."""
    import torch.nn.functional as F

    x = x + F.linear(attn, wo, bo)
    gate, up = F.linear(rms_norm(x, ln, eps).to(wgu.dtype), wgu).chunk(2, -1)
    return x + F.linear(F.silu(gate) * up, wd)


def decode_attention(q, k, v, bias):
    """One new token per row: q (B, nq, 1, D) against k/v (B, nkv, L, D), bias (B, L) additive.

    The nq / nkv query heads sharing a kv head ride as that head's "query positions": no k/v copies.
    """
    import torch.nn.functional as F

    B, nq, _, D = q.shape
    nkv = k.shape[1]
    out = F.scaled_dot_product_attention(q.reshape(B, nkv, nq // nkv, D), k, v, attn_mask=bias[:, None, None, :])
    return out.reshape(B, 1, nq * D)


def head_and_sample(x, norm, lm_head, eps: float, inv_temp: float, top_p: float, greedy: bool, noise, done,
                    stops, pad: int):
    """Last hidden (B, 1, H) -> next token (B,), its log-prob at the temperature (B,), new done (B,)."""
    import torch
    import torch.nn.functional as F

    logits = F.linear(rms_norm(x[:, -1], norm, eps).to(lm_head.dtype), lm_head).float()
    scaled = logits * inv_temp
    logp_all = scaled - torch.logsumexp(scaled, -1, keepdim=True)
    if greedy:
        tok = logits.argmax(-1)
    else:
        if top_p < 1.0:
            scaled = _top_p_filter(scaled, top_p)
        tok = (scaled - torch.log(-torch.log(noise))).argmax(-1)  # Gumbel-max: a draw from softmax(scaled)
    logp = torch.where(done, 0.0, logp_all.gather(-1, tok[:, None])[:, 0])
    tok = torch.where(done, torch.full_like(tok, pad), tok)
    return tok, logp, done | (tok[:, None] == stops[None, :]).any(-1)


def _top_p_filter(scaled, top_p: float):
    """Keep the smallest set of most likely tokens whose probability reaches top_p (at least one)."""
    import torch

    sorted_logits, order = scaled.sort(-1, descending=True)
    probs = sorted_logits.softmax(-1)
    drop_sorted = (probs.cumsum(-1) - probs) > top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return scaled.masked_fill(drop, float("-inf"))


# ----------------------------------------------------------------------------- weights
@dataclass
class Layer:
    ln1: Any
    wqkv: Any
    bqkv: Any
    wo: Any
    bo: Any
    ln2: Any
    wgu: Any
    wd: Any


def _fused_layers(model: Any, dtype: Any, device: Any) -> list[Layer]:
    """Matmul weights (and biases) in ``dtype``, norm weights in float32."""
    import torch

    def t(*parts, dtype=dtype):
        parts = [p for p in parts if p is not None]
        return torch.cat([p.detach() for p in parts]).to(device=device, dtype=dtype) if parts else None

    f32 = torch.float32

    out = []
    for layer in model.model.layers:
        a, m = layer.self_attn, layer.mlp
        qkv_bias = None if a.q_proj.bias is None else (a.q_proj.bias, a.k_proj.bias, a.v_proj.bias)
        out.append(Layer(ln1=t(layer.input_layernorm.weight, dtype=f32), wqkv=t(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight),
                         bqkv=t(*qkv_bias) if qkv_bias else None, wo=t(a.o_proj.weight), bo=t(a.o_proj.bias),
                         ln2=t(layer.post_attention_layernorm.weight, dtype=f32), wgu=t(m.gate_proj.weight, m.up_proj.weight),
                         wd=t(m.down_proj.weight)))
    return out


@dataclass
class State:
    """Static buffers of one (batch, cache size, output length) shape; graphs read and write only these."""

    key: tuple
    k: list
    v: list
    bias: Any  # (B, S) additive mask: 0 where a row may attend, -inf elsewhere
    cur: Any  # (B,) token fed to the next step
    pos: Any  # (B,) its rotary position
    slot: Any  # (1,) cache slot it is written to (the same for every row)
    col: Any  # (1,) output column of the token the step produces
    done: Any
    out: Any  # (B, T) sampled tokens
    logp: Any  # (B, T) their log-probs
    stops: Any
    graphs: dict
    pool: Any = None


class FastSampler:
    """Static-cache sampler for one policy model; ``generate`` returns (tokens, log-probs) as numpy."""

    def __init__(self, model: Any, dtype: Any, device: Any, use_graphs: bool | None = None,
                 compile: bool | None = None) -> None:
        import torch

        reason = unsupported_reason(model.config)
        if reason:
            raise ValueError(f"fast sampler: {reason}")
        c = model.config
        self.device, self.dtype = torch.device(device), dtype
        cuda = self.device.type == "cuda"
        self.use_graphs = cuda if use_graphs is None else use_graphs
        self.nq, self.nkv = c.num_attention_heads, c.num_key_value_heads
        self.eps = float(c.rms_norm_eps)
        rotary = model.model.rotary_emb
        self.inv_freq = rotary.inv_freq.detach().to(self.device, torch.float32).clone()
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))
        self.layers = _fused_layers(model, dtype, self.device)
        # float32 lookup table (a row per token read), the output projection in the compute dtype
        self.embed = model.model.embed_tokens.weight.detach().to(self.device, torch.float32).clone()
        self.lm_head = model.lm_head.weight.detach().to(self.device, dtype).clone()
        self.norm = model.model.norm.weight.detach().to(self.device, torch.float32).clone()
        self.fns = {"pre": pre_attention, "post": post_attention, "head": head_and_sample}
        self.compiled = False
        if cuda if compile is None else compile:
            self.fns = {k: torch.compile(f, dynamic=False, fullgraph=True) for k, f in self.fns.items()}
            self.compiled = True
        self.state: State | None = None
        self.profile, self.last_timing = False, {}

    # ------------------------------------------------------------------ weights
    def sync(self, model: Any) -> None:
        """Copy the policy's current weights into this sampler's buffers, in place."""
        import torch

        fresh = _fused_layers(model, self.dtype, self.device)
        with torch.no_grad():
            for dst, src in zip(self.layers, fresh):
                for name in Layer.__dataclass_fields__:
                    if getattr(dst, name) is not None:
                        getattr(dst, name).copy_(getattr(src, name))
            self.embed.copy_(model.model.embed_tokens.weight)
            self.lm_head.copy_(model.lm_head.weight)
            self.norm.copy_(model.model.norm.weight)

    # ------------------------------------------------------------------ generate
    def generate(self, prompts: Any, mask: Any, max_new_tokens: int, stop_ids: list[int], pad_id: int,
                 temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False):
        """prompts, mask: (B, P) left-padded. Returns tokens (B, T) int64 and their log-probs (B, T)
        float32 (at ``temperature``, before top-p), pad / 0 after each row's first stop id."""
        import torch

        with torch.inference_mode():
            ids = torch.as_tensor(prompts, device=self.device)
            att = torch.as_tensor(mask, device=self.device).bool()
            B, P = ids.shape
            Bp = -(-B // 8) * 8  # rows rounded up: fewer shapes, fewer graphs
            T = max_new_tokens
            S = -(-(P + T) // BUCKET) * BUCKET
            opts = (1.0 / temperature if temperature > 0 else 1.0, float(top_p), bool(greedy or temperature <= 0), pad_id)
            st = self._state((Bp, S, T, tuple(stop_ids), opts))
            if Bp > B:
                ids = torch.cat([ids, ids.new_full((Bp - B, P), pad_id)])
                att = torch.cat([att, att.new_zeros((Bp - B, P))])
            t0 = self._clock()
            self._uncompile_on_error(self._prefill, st, ids, att, opts, B)
            t1 = self._clock()
            steps = 0
            for i in range(T - 1):
                self._decode(st, P + i, opts)
                steps += 1
                if (i + 1) % STOP_CHECK_EVERY == 0 and bool(st.done.all()):
                    break
            if self.profile:
                self.last_timing = {"prefill_s": t1 - t0, "decode_s": self._clock() - t1, "decode_steps": steps}
            return st.out[:B].cpu().numpy().copy(), st.logp[:B].float().cpu().numpy().copy()

    def _clock(self) -> float:
        """Wall time, after the GPU caught up when profiling (``profile=True``: benchmarks only)."""
        import time

        import torch

        if self.profile and self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def _uncompile_on_error(self, fn, *args):
        """Call ``fn``; if torch.compile fails on this machine, warn once and go on with eager functions."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - a compiler failure must cost speed, not the run
            if not self.compiled:
                raise
            log.warning("fast sampler: torch.compile failed (%s); running the step uncompiled",
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            self.fns = {"pre": pre_attention, "post": post_attention, "head": head_and_sample}
            self.compiled = False
            return fn(*args)

    def _state(self, key: tuple) -> State:
        import torch

        if self.state is not None and self.state.key == key:
            return self.state
        self.state = None  # free the old shape's cache and graphs first
        Bp, S, T, stops, opts = key
        D = self.inv_freq.shape[0] * 2
        dev, dt = self.device, self.dtype

        def cache():
            return [torch.zeros(Bp, self.nkv, S, D, device=dev, dtype=dt) for _ in self.layers]

        self.state = State(key=key, k=cache(), v=cache(), bias=torch.zeros(Bp, S, device=dev, dtype=dt),
                           cur=torch.zeros(Bp, dtype=torch.long, device=dev),
                           pos=torch.zeros(Bp, dtype=torch.long, device=dev),
                           slot=torch.zeros(1, dtype=torch.long, device=dev),
                           col=torch.zeros(1, dtype=torch.long, device=dev),
                           done=torch.zeros(Bp, dtype=torch.bool, device=dev),
                           out=torch.zeros(Bp, T, dtype=torch.long, device=dev),
                           logp=torch.zeros(Bp, T, dtype=torch.float32, device=dev),
                           stops=torch.tensor(list(stops) or [-1], dtype=torch.long, device=dev), graphs={})
        return self.state

    def _prefill(self, st: State, ids: Any, att: Any, opts: tuple, B: int) -> None:
        """Run the prompts through every layer (eager), fill cache slots [0, P), sample token 0."""
        import torch

        Bp, P = ids.shape
        pos = (att.long().cumsum(1) - 1).clamp(min=0)
        causal = torch.ones(P, P, dtype=torch.bool, device=self.device).tril()
        eye = torch.eye(P, dtype=torch.bool, device=self.device)
        allowed = ((causal & att[:, None, :]) | eye)[:, None]  # a padding row attends to itself: no NaN
        x = torch.nn.functional.embedding(ids, self.embed)
        g = self.nq // self.nkv
        for i, L in enumerate(self.layers):
            q, k, v = pre_attention(x, pos, L.ln1, L.wqkv, L.bqkv, self.inv_freq, self.rope_scale, self.eps,
                                    self.nq, self.nkv)
            st.k[i][:, :, :P] = k
            st.v[i][:, :, :P] = v
            attn = torch.nn.functional.scaled_dot_product_attention(
                q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=allowed)
            x = post_attention(x, attn.transpose(1, 2).reshape(Bp, P, -1), L.wo, L.bo, L.ln2, L.wgu, L.wd, self.eps)
        st.bias.fill_(float("-inf"))
        st.bias[:, :P].masked_fill_(att, 0.0)
        st.out.fill_(opts[3])
        st.logp.zero_()
        st.done.zero_()
        st.done[B:] = True  # the rows added to round the batch up
        noise = self._noise(st)
        tok, lp, done = self.fns["head"](x[:, -1:], self.norm, self.lm_head, self.eps, *opts[:3], noise, st.done,
                                         st.stops, opts[3])
        st.out[:, 0], st.logp[:, 0] = tok, lp
        st.done.copy_(done)
        st.cur.copy_(tok)
        st.pos.copy_(att.sum(1))
        st.slot.fill_(P)
        st.col.fill_(1)

    def _noise(self, st: State):
        import torch

        return torch.rand(st.cur.shape[0], self.embed.shape[0], device=self.device).clamp_(1e-20, 1.0 - 1e-7)

    def _step(self, st: State, L: int, opts: tuple) -> None:
        """One decode step over cache slots [0, L): reads and writes only ``st``'s buffers."""
        import torch

        st.bias.index_fill_(1, st.slot, 0.0)
        x = torch.nn.functional.embedding(st.cur, self.embed)[:, None]
        pos = st.pos[:, None]
        bias = st.bias[:, :L]
        pre, post = self.fns["pre"], self.fns["post"]
        for i, w in enumerate(self.layers):
            q, k, v = pre(x, pos, w.ln1, w.wqkv, w.bqkv, self.inv_freq, self.rope_scale, self.eps, self.nq, self.nkv)
            st.k[i].index_copy_(2, st.slot, k)
            st.v[i].index_copy_(2, st.slot, v)
            attn = decode_attention(q, st.k[i][:, :, :L], st.v[i][:, :, :L], bias)
            x = post(x, attn, w.wo, w.bo, w.ln2, w.wgu, w.wd, self.eps)
        tok, lp, done = self.fns["head"](x, self.norm, self.lm_head, self.eps, *opts[:3], self._noise(st), st.done,
                                         st.stops, opts[3])
        st.out.index_copy_(1, st.col, tok[:, None])
        st.logp.index_copy_(1, st.col, lp[:, None])
        st.done.copy_(done)
        st.cur.copy_(tok)
        st.pos.add_(1)
        st.slot.add_(1)
        st.col.add_(1)

    def _decode(self, st: State, slot: int, opts: tuple) -> None:
        L = min(st.bias.shape[1], -(-(slot + 1) // BUCKET) * BUCKET)
        if not self.use_graphs:
            self._step(st, L, opts)
            return
        graph = st.graphs.get(L) or self._capture(st, L, opts)
        if graph is None:  # capture failed: this sampler runs eagerly from now on
            self._step(st, L, opts)
        else:
            graph.replay()

    def _capture(self, st: State, L: int, opts: tuple):
        """Warm up (compiles on first use), restore the state the warm-up moved, capture the step."""
        import torch

        saved = {n: getattr(st, n).clone() for n in ("bias", "cur", "pos", "slot", "col", "done", "out", "logp")}
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._uncompile_on_error(self._step, st, L, opts)
                    self._restore(st, saved)
            torch.cuda.current_stream().wait_stream(side)
            self._restore(st, saved)
            if st.pool is None:
                st.pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=st.pool):
                self._step(st, L, opts)
            self._restore(st, saved)
        except Exception as e:  # noqa: BLE001 - a model or torch build the graphs do not cover still samples
            log.warning("fast sampler: CUDA graph capture failed (%s); decoding without graphs",
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
            self.use_graphs = False
            self._restore(st, saved)
            return None
        st.graphs[L] = graph
        return graph

    @staticmethod
    def _restore(st: State, saved: dict) -> None:
        for n, t in saved.items():
            getattr(st, n).copy_(t)
