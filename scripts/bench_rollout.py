"""Rollout throughput (not a test): HF ``generate`` (``rollout.name=hf``) against the fast sampler
(``rollout.name=fast``) on the same prompts, in one process on one GPU.

    python scripts/bench_rollout.py --gguf $WBTRACE_GGUF --out bench.json      # every case below
    python scripts/bench_rollout.py --cases smollm2:64x256 --out bench.json

Cases: SmolLM2-135M-Instruct (real weights, chat prompts of the trainer) at 64 x 256 and 512 x 1024
new tokens, and a model of Qwen2.5-1.5B's published config with random weights at 512 x 1024
(throughput does not depend on the weights). Every row decodes the full length (no stop ids), so both
samplers do the same work. Per case: tokens/s, ms per decode step, peak GPU memory, the ratio, and the
floor of one decode step: the bytes it must read (bf16 weights once + the KV cache filled so far) over
the copy bandwidth measured here, or its FLOPs over the measured bf16 matmul rate, whichever is larger.
Correctness on the GPU: greedy tokens of the fast sampler against HF generate under the trainer's
numerics (fp32 weights, bf16 autocast) and in plain bf16 (equal until rounding flips a near-tie), and
the fast sampler's sampled log-probs against the trainer's recompute (fp32 weights, bf16 autocast).
"""

from __future__ import annotations

import argparse
import copy
import json
import time

QWEN25_15B = dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                  num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                  rms_norm_eps=1e-6, tie_word_embeddings=True, use_sliding_window=False)
CASES = {"smollm2:64x256": ("smollm2", 64, 256), "smollm2:512x1024": ("smollm2", 512, 1024),
         "qwen2.5-1.5b:512x1024": ("qwen", 512, 1024)}


def ceilings() -> tuple[float, float]:
    """Measured device copy bandwidth (bytes read + written per s) and bf16 matmul rate (FLOP/s)."""
    import torch

    src = torch.randn(2**29, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    dst = torch.empty_like(src)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)

    def timed(fn, n=10):
        fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
        return (time.perf_counter() - t) / n

    bw = 2 * src.numel() * 2 / timed(lambda: dst.copy_(src))
    flops = 2 * 8192**3 / timed(lambda: a @ b)
    return bw, flops


def load(kind: str, gguf: str):
    import torch

    from wbtrace.dapo.model import load_policy, load_tokenizer, prepare_model

    if kind == "smollm2":
        path = prepare_model("smollm2", gguf)
        return load_policy(path).cuda(), load_tokenizer(path)
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(**QWEN25_15B)).cuda(), None


def prompts(tok, B: int, vocab: int):
    """The trainer's chat prompts (SmolLM2) or random ids of similar lengths, left-padded."""
    import numpy as np

    from wbtrace.dapo.config import load_config
    from wbtrace.dapo.data import PromptStream
    from wbtrace.dapo.rollout import encode_prompts, left_pad

    if tok is not None:
        rows = encode_prompts(PromptStream([], [1, 2, 3], 0).take(B), tok, load_config("h100"))
        return left_pad(rows, max(map(len, rows)), tok.pad_token_id)
    rng = np.random.default_rng(0)
    rows = [rng.integers(10, vocab, rng.integers(40, 80)).tolist() for _ in range(B)]
    return left_pad(rows, max(map(len, rows)), 0)


def floor_ms(model, B: int, P: int, T: int, bw: float, flops: float) -> float:
    """Mean over the decode steps of max(bytes / bw, flops / rate); bytes: weights once + KV filled."""
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())
    D = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_per_slot = c.num_hidden_layers * 2 * c.num_key_value_heads * D * 2 * B  # bytes, bf16
    mean_len = P + T / 2
    byte_time = (2 * n_params + kv_per_slot * mean_len) / (bw / 2)  # bw counts read + write
    attn_flops = 4 * c.num_hidden_layers * c.num_attention_heads * D * mean_len * B
    return 1000 * max(byte_time, (2 * n_params * B + attn_flops) / flops)


def timed(fn):
    import torch

    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def run_hf(model, ids, mask, T: int):
    import torch

    a, m = torch.as_tensor(ids, device="cuda"), torch.as_tensor(mask, device="cuda")

    def go(n):
        with torch.inference_mode():
            return model.generate(input_ids=a, attention_mask=m, do_sample=True, temperature=1.0, top_k=0,
                                  top_p=1.0, max_new_tokens=n)

    _, t1 = timed(lambda: go(1))  # prefill + one token (warm)
    _, tT = timed(lambda: go(T))
    return tT, (tT - t1) / (T - 1)


def run_fast(fast, ids, mask, T: int):
    _, setup = timed(lambda: fast.generate(ids, mask, T, [], 0))  # compile + capture of every bucket
    fast.generate(ids, mask, T, [], 0)
    fast.profile = True
    _, tT = timed(lambda: fast.generate(ids, mask, T, [], 0))
    fast.profile = False
    t = fast.last_timing
    return tT, t["decode_s"] / t["decode_steps"], setup, t["prefill_s"]


def correctness(model, bf16, fast, ids, mask, T: int = 64) -> dict:
    """Greedy agreement with HF generate (both bf16) and the sampled log-probs' gap to the trainer's
    recompute (fp32 master weights under bf16 autocast)."""
    import numpy as np
    import torch

    a, m = torch.as_tensor(ids, device="cuda"), torch.as_tensor(mask, device="cuda")
    greedy, _ = fast.generate(ids, mask, T, [], 0, greedy=True)
    row = {}
    for name, ref, autocast in (("autocast", model, True), ("bf16", bf16, False)):
        model.generation_config.eos_token_id, model.generation_config.pad_token_id = None, 0
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            hf = ref.generate(input_ids=a, attention_mask=m, do_sample=False, max_new_tokens=T)[:, ids.shape[1]:]
        differs = greedy != hf.cpu().numpy()
        first = np.where(differs.any(1), differs.argmax(1), T)
        row[f"greedy_vs_hf_{name}_rows_identical"] = float((first == T).mean())
        row[f"greedy_vs_hf_{name}_first_difference_mean"] = float(first.mean())
    tokens, logp = fast.generate(ids, mask, T, [], 0)
    full = torch.as_tensor(np.concatenate([ids, tokens], 1), device="cuda")
    att = torch.as_tensor(np.concatenate([mask, np.ones_like(tokens)], 1), device="cuda")
    def recompute(ref, autocast: bool):
        out = []
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            for i in range(0, len(full), 64):
                lg = ref(input_ids=full[i:i + 64], attention_mask=att[i:i + 64],
                         position_ids=(att[i:i + 64].cumsum(1) - 1).clamp(min=0)).logits
                lg = lg[:, ids.shape[1] - 1:-1].float()
                out.append(lg.log_softmax(-1).gather(-1, torch.as_tensor(tokens[i:i + 64], device="cuda")[..., None])
                           [..., 0].cpu().numpy())
        return np.concatenate(out)

    trainer = recompute(model, True)
    gap = np.abs(trainer - logp)
    yardstick = np.abs(trainer - recompute(bf16, False))  # HF itself: autocast vs plain bf16 weights
    return {**row, "greedy_tokens": T, "logprob_gap_max": float(gap.max()), "logprob_gap_mean": float(gap.mean()),
            "logprob_gap_p99": float(np.quantile(gap, 0.99)), "hf_autocast_vs_bf16_gap_max": float(yardstick.max()),
            "hf_autocast_vs_bf16_gap_mean": float(yardstick.mean())}


def bench_case(name: str, gguf: str, bw: float, flops: float) -> dict:
    import torch

    from wbtrace.dapo.sampler import FastSampler

    kind, B, T = CASES[name]
    model, tok = load(kind, gguf)
    ids, mask = prompts(tok, B, model.config.vocab_size)
    row = {"case": name, "batch": B, "new_tokens": T, "prompt_width": int(ids.shape[1]),
           "floor_ms_per_step": floor_ms(model, B, ids.shape[1], T, bw, flops)}
    bf16 = copy.deepcopy(model).to(torch.bfloat16).eval()
    bf16.generation_config.eos_token_id, bf16.generation_config.pad_token_id = None, 0  # every row runs T
    fast = FastSampler(model, torch.bfloat16, "cuda")
    if name == "smollm2:64x256":
        row.update(correctness(model, bf16, fast, ids, mask))
    del model
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    tT, step, setup, prefill = run_fast(fast, ids, mask, T)
    row.update(fast_s=tT, fast_ms_per_step=1000 * step, fast_tokens_per_s=B * T / tT, fast_setup_s=setup,
               fast_prefill_s=prefill, fast_graphs=fast.use_graphs, fast_compiled=fast.compiled,
               fast_peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    del fast
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    tT, step = run_hf(bf16, ids, mask, T)
    row.update(hf_s=tT, hf_ms_per_step=1000 * step, hf_tokens_per_s=B * T / tT,
               hf_peak_gib=torch.cuda.max_memory_allocated() / 2**30)
    row["speedup"] = row["fast_tokens_per_s"] / row["hf_tokens_per_s"]
    row["fast_over_floor"] = row["fast_ms_per_step"] / row["floor_ms_per_step"]
    return row


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", default="")
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--out", default="bench_rollout.json")
    args = ap.parse_args()
    bw, flops = ceilings()
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_TBps": bw / 1e12,
            "bf16_TFLOPs": flops / 1e12}
    import transformers

    info["transformers"] = transformers.__version__
    print(json.dumps(info), flush=True)
    rows = []
    for name in args.cases.split(","):
        try:
            rows.append(bench_case(name, args.gguf, bw, flops))
        except Exception as e:  # noqa: BLE001 - one failing case must not lose the others' numbers
            rows.append({"case": name, "error": f"{type(e).__name__}: {e}"[:500]})
        print(json.dumps(rows[-1]), flush=True)
        with open(args.out, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)
        torch.cuda.empty_cache()
    print("| case | hf tok/s | fast tok/s | speedup | hf ms/step | fast ms/step | floor ms/step | fast/floor |")
    for r in rows:
        if "error" not in r:
            print(f"| {r['case']} | {r['hf_tokens_per_s']:.0f} | {r['fast_tokens_per_s']:.0f} | {r['speedup']:.1f}x"
                  f" | {r['hf_ms_per_step']:.2f} | {r['fast_ms_per_step']:.3f} | {r['floor_ms_per_step']:.3f}"
                  f" | {r['fast_over_floor']:.1f}x |")


if __name__ == "__main__":
    main()
