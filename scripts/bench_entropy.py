"""Benchmark the entropy / log-prob kernels on one CUDA GPU against the baselines, in one process.

    PYTHONUNBUFFERED=1 python scripts/bench_entropy.py            # ~2 minutes on an H100
    OUT=outputs python scripts/bench_entropy.py                   # also writes bench_entropy.{md,json}

Cases: logits [T, V] with V = 151,936 (Qwen2 vocabulary) in bf16 at T = 8192 and 32,768, fp32 at
T = 8192 and 32,768; then hidden states [8192, 1536] through the lm-head. Methods: a device-to-device
copy of the same bytes (the bandwidth floor is half its time: a copy reads and writes them, the kernel only
reads), the naive formula (logsumexp - sum softmax * z, in the input dtype, as verl's eager path),
`torch.compile` of it, the same in float32 over 2048-row chunks (verl's chunked path), and ours
(`wbtrace.kernels`). Times are medians of `triton.testing.do_bench`; "extra" is the peak of
`torch.cuda.max_memory_allocated` above what was allocated before the call (outputs included); errors are
max |ours - float64| over all rows (the float64 reference runs in row chunks); for the hidden-state path
against float64 logits from float64 hidden @ weight (so bf16 rounding of the logits is included), and in
the note against float64 of the bf16 logits (the kernel's own error).

Imports only torch, triton, numpy and `wbtrace.kernels` (loaded without `wbtrace/__init__.py`), so it
runs on a GPU box that has none of wbtrace's other dependencies.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import triton

from wbtrace.kernels import entropy_logprob, entropy_logprob_from_hidden
from wbtrace.kernels.reference import entropy_logprob_chunked, entropy_logprob_float64
from wbtrace.kernels.triton_entropy import entropy_logprob_rows

DEVICE = "cuda"
VOCAB = 151_936
HIDDEN = 1536
MIB = 1 << 20


# ------------------------------------------------------------------------------------------ baselines


def naive(logits, ids):
    """verl's eager formula, in the logits' own dtype."""
    lse = torch.logsumexp(logits, dim=-1)
    p = torch.softmax(logits, dim=-1)
    entropy = lse - (p * logits).sum(-1)
    logprob = logits.gather(-1, ids[:, None])[:, 0] - lse
    return entropy, logprob


def chunked_2048(logits, ids):
    return entropy_logprob_chunked(logits, ids, 1.0, chunk_rows=2048)


def ours(logits, ids):
    return entropy_logprob(logits, ids)


# ------------------------------------------------------------------------------------------- measuring


def timed(fn, rep_ms=300):
    return triton.testing.do_bench(fn, warmup=50, rep=rep_ms, return_mode="median")


def peak_extra_mib(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak / MIB


def max_errors(out, ref):
    entropy, logprob = (t.double() for t in out)
    return (entropy - ref[0]).abs().max().item(), (logprob - ref[1]).abs().max().item()


def time_copy(src):
    dst = torch.empty_like(src)
    return timed(lambda: dst.copy_(src))


def make_logits(n, dtype, seed=0):
    """Realistic mix: most rows peaked (low entropy, as in RL rollouts), some flat, some ordinary."""
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.empty(n, VOCAB, dtype=dtype, device=DEVICE)
    for a in range(0, n, 1024):  # fill in float32 pieces: no full-size float32 temporary for bf16
        piece = torch.randn(min(1024, n - a), VOCAB, device=DEVICE, generator=g) * 2.5
        piece[::4] *= 0.05
        piece[1::4, :64] += 12.0
        x[a:a + 1024] = piece.to(dtype)
    ids = torch.randint(0, VOCAB, (n,), device=DEVICE, generator=g)
    ids[::2] = x[::2].argmax(-1)
    return x, ids


# ---------------------------------------------------------------------------------------------- cases


def logits_case(n, dtype, methods):
    name = f"logits {str(dtype).removeprefix('torch.')} T={n}"
    logits, ids = make_logits(n, dtype)
    ref = entropy_logprob_float64(logits, ids)
    copy_ms = time_copy(logits)
    gbytes = logits.numel() * logits.element_size() / 1e9
    floor_ms = copy_ms / 2
    rows = [dict(case=name, method="bandwidth floor (copy / 2)", ms=floor_ms, extra_mib=None,
                 err_entropy=None, err_logprob=None,
                 note=f"copy {copy_ms:.3f} ms = {2 * gbytes / copy_ms:.2f} TB/s over {gbytes:.2f} GB x2")]
    for label, fn in methods:
        try:
            out = fn(logits, ids)
            errs = max_errors(out, ref)
            del out
            extra = peak_extra_mib(lambda fn=fn: fn(logits, ids))
            ms = timed(lambda fn=fn: fn(logits, ids))
        except Exception as e:  # one failing baseline (OOM, compiler missing) must not lose the run
            torch.cuda.empty_cache()
            rows.append(dict(case=name, method=label, ms=None, extra_mib=None, err_entropy=None,
                             err_logprob=None, note=f"failed: {type(e).__name__}: {str(e)[:80]}"))
            continue
        note = f"{floor_ms / ms:.0%} of floor speed"
        compiled = [r["ms"] for r in rows if "compile" in r["method"] and r["ms"]]
        if label.startswith("ours") and compiled:
            note += f"; {compiled[0] / ms:.1f}x faster than compiled"
        rows.append(dict(case=name, method=label, ms=ms, extra_mib=extra, err_entropy=errs[0],
                         err_logprob=errs[1], note=note))
    return rows


def hidden_case(n):
    name = f"hidden bf16 T={n} H={HIDDEN}"
    g = torch.Generator(device=DEVICE).manual_seed(1)
    hidden = torch.randn(n, HIDDEN, device=DEVICE, generator=g).bfloat16()
    weight = (torch.randn(VOCAB, HIDDEN, device=DEVICE, generator=g) * 0.06).bfloat16()
    ids = torch.randint(0, VOCAB, (n,), device=DEVICE, generator=g)
    ref_h = torch.empty(n, dtype=torch.float64, device=DEVICE)
    ref_lp = torch.empty_like(ref_h)
    w64 = weight.double()
    for a in range(0, n, 512):  # exact float64 logits, 512 rows at a time
        z = hidden[a:a + 512].double() @ w64.T
        ref_h[a:a + 512], ref_lp[a:a + 512] = entropy_logprob_float64(z, ids[a:a + 512])
        del z
    del w64
    matmul = lambda: hidden @ weight.T  # noqa: E731
    fused = lambda: entropy_logprob_from_hidden(hidden, weight, ids)  # noqa: E731
    unchunked = lambda: entropy_logprob(hidden @ weight.T, ids)  # noqa: E731
    logits = matmul()  # the bf16 logits themselves: separates the kernel's error from bf16 rounding
    ref_bf16 = entropy_logprob_float64(logits, ids)
    del logits
    rows = []
    mm_ms = timed(matmul, 500)
    for label, fn in (("bare cuBLAS matmul (logits only)", matmul), ("matmul + ours, whole logits", unchunked),
                      ("ours (from hidden, chunked)", fused)):
        ms = mm_ms if fn is matmul else timed(fn, 500)
        extra = peak_extra_mib(fn)
        note = f"{ms / mm_ms:.2f}x matmul"
        errs = (None, None)
        if fn is not matmul:
            out = fn()
            errs = max_errors(out, (ref_h, ref_lp))
            note += "; vs float64 of the bf16 logits: {:.1e} / {:.1e}".format(*max_errors(out, ref_bf16))
            del out
        rows.append(dict(case=name, method=label, ms=ms, extra_mib=extra, err_entropy=errs[0],
                         err_logprob=errs[1], note=note))
    return rows


def config_sweep(n=8192):
    """Times of the logits kernel for a few (BLOCK_V, num_warps): the default is one of them."""
    return [row for dtype in (torch.bfloat16, torch.float32) for row in sweep_dtype(n, dtype)]


def sweep_dtype(n, dtype):
    logits, ids = make_logits(n, dtype)
    out = []
    for block, warps in ((512, 2), (1024, 2), (1024, 4), (2048, 2), (2048, 4), (2048, 8), (4096, 4), (4096, 8)):
        ms = timed(lambda b=block, w=warps: entropy_logprob_rows(logits, ids, 1.0, block_v=b, num_warps=w), 200)
        out.append(dict(dtype=str(dtype).removeprefix("torch."), block_v=block, num_warps=warps, ms=ms))
    return out


# ---------------------------------------------------------------------------------------------- report


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def markdown(rows, sweep, device):
    lines = [f"Device: {device}; torch {torch.__version__}, triton {triton.__version__}; V = {VOCAB:,}.", "",
             "| case | method | time (ms) | extra memory (MiB) | max err entropy (nats) | max err logprob | note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['method']} | {fmt(r['ms'], '.3f')} | {fmt(r['extra_mib'], '.1f')} | "
                     f"{fmt(r['err_entropy'], '.2e')} | {fmt(r['err_logprob'], '.2e')} | {r['note']} |")
    for dtype in dict.fromkeys(s["dtype"] for s in sweep):
        lines += ["", f"Logits kernel, {dtype} T=8192, ms by (BLOCK_V, num_warps): " + ", ".join(
            f"({s['block_v']}, {s['num_warps']}) {s['ms']:.3f}" for s in sweep if s["dtype"] == dtype)]
    return "\n".join(lines)


def main():
    if not torch.cuda.is_available():
        sys.exit("bench_entropy.py needs a CUDA GPU")
    started = time.time()
    device = torch.cuda.get_device_name()
    compiled = torch.compile(naive, dynamic=False)
    full = [("naive (eager)", naive), ("naive, torch.compile", compiled), ("chunked 2048 rows, fp32", chunked_2048),
            ("ours (Triton)", ours)]
    light = [("chunked 2048 rows, fp32", chunked_2048), ("ours (Triton)", ours)]
    # Each case frees its tensors on return; empty_cache between cases keeps the allocator's pool small.
    rows = logits_case(8192, torch.bfloat16, full)
    torch.cuda.empty_cache()
    rows += logits_case(8192, torch.float32, [m for m in full if m[1] is not compiled])
    torch.cuda.empty_cache()
    rows += logits_case(32768, torch.bfloat16, light)
    torch.cuda.empty_cache()
    rows += logits_case(32768, torch.float32, light)
    torch.cuda.empty_cache()
    rows += hidden_case(8192)
    torch.cuda.empty_cache()
    sweep = config_sweep()
    table = markdown(rows, sweep, device)
    print(table)
    print(f"\n(total {time.time() - started:.0f} s)")
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_entropy.md").write_text(table + "\n")
        (out / "bench_entropy.json").write_text(json.dumps(
            {"device": device, "torch": torch.__version__, "triton": triton.__version__, "rows": rows,
             "sweep": sweep}, indent=1))


if __name__ == "__main__":
    main()
