"""Entropy and log-prob from hidden states and the lm-head weight, never keeping the `[T, V]` logits.

Rows are processed in chunks sized so one chunk of logits stays under a byte budget: one matmul per chunk
(cuBLAS on GPU), then the logits kernel (Triton on CUDA, chunked torch elsewhere). When even a small
chunk of rows would not fit (huge vocabularies), the vocabulary is split too and the per-block
statistics are merged like the online softmax (running max, rescaled sum-exp and sum p*z).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# Below this many rows per matmul, cuBLAS loses efficiency: split the vocabulary instead.
MIN_ROWS = 64
ROW_ALIGN = 128


def chunk_rows(n_rows: int, vocab: int, element_size: int, budget_bytes: int) -> int:
    """Rows per chunk: equal chunks (no ragged tail wave), aligned to 128, at most `budget_bytes` of logits."""
    max_rows = max(1, budget_bytes // (vocab * element_size))
    if max_rows >= n_rows:
        return n_rows
    n_chunks = math.ceil(n_rows / max_rows)
    rows = math.ceil(n_rows / n_chunks)
    aligned = math.ceil(rows / ROW_ALIGN) * ROW_ALIGN
    return aligned if aligned <= max_rows else rows


def _logits(hidden, weight, bias):
    import torch

    return hidden @ weight.T if bias is None else torch.addmm(bias, hidden, weight.T)


def hidden_row_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    token_ids: torch.Tensor,
    temperature: float,
    logits_stats: Callable,
    budget_bytes: int,
):
    """`(entropy, logprob, m, log_s)`, float32 `[T]`, from `hidden` `[T, H]` and `weight` `[V, H]`.

    `logits_stats(logits [R, V], ids [R], temperature)` returns the same four row statistics for a chunk.
    """
    import torch

    n, vocab = hidden.shape[0], weight.shape[0]
    elem = hidden.element_size()
    if vocab * elem * min(n, MIN_ROWS) > budget_bytes:
        return _vocab_split_stats(hidden, weight, bias, token_ids, temperature, budget_bytes)
    step = chunk_rows(n, vocab, elem, budget_bytes)
    outs = [torch.empty(n, dtype=torch.float32, device=hidden.device) for _ in range(4)]
    for a in range(0, n, step):
        b = slice(a, a + step)
        logits = _logits(hidden[b], weight, bias)
        for out, part in zip(outs, logits_stats(logits, token_ids[b], temperature), strict=True):
            out[b] = part
        del logits
    return tuple(outs)


def _vocab_split_stats(hidden, weight, bias, token_ids, temperature, budget_bytes):
    """Like `hidden_row_stats`, for vocabularies too large for MIN_ROWS full rows: blocks of V merged."""
    import torch

    n, vocab = hidden.shape[0], weight.shape[0]
    rows = min(n, MIN_ROWS)
    vblock = max(1, budget_bytes // (rows * hidden.element_size()))
    outs = [torch.empty(n, dtype=torch.float32, device=hidden.device) for _ in range(4)]
    for a in range(0, n, rows):
        r = slice(a, a + rows)
        ids = token_ids[r].long()
        acc = None
        for v0 in range(0, vocab, vblock):
            v1 = min(vocab, v0 + vblock)
            x = _logits(hidden[r], weight[v0:v1], None if bias is None else bias[v0:v1]).float()
            acc = _merge(acc, _block_stats(x, ids - v0, temperature), temperature)
        m, s, acc_ez, x_tok = acc
        log_s = torch.log(s)
        outs[0][r] = log_s - acc_ez / s
        outs[1][r] = (x_tok - m) / temperature - log_s
        outs[2][r], outs[3][r] = m, log_s
    return tuple(outs)


def _block_stats(x, local_ids, temperature):
    """Per-row `(m, s, sum e*z', sampled logit or nan)` of a float32 block `[R, Vb]`; z' = (x - m) / T."""
    import torch

    m = x.amax(-1)
    z = (x - m.unsqueeze(-1)) / temperature
    e = torch.exp(z)
    ez = torch.where(e > 0, e * z, torch.zeros((), dtype=z.dtype, device=z.device)).sum(-1)
    inside = (local_ids >= 0) & (local_ids < x.shape[1])
    x_tok = x.gather(-1, local_ids.clamp(0, x.shape[1] - 1).unsqueeze(-1)).squeeze(-1)
    return m, e.sum(-1), ez, torch.where(inside, x_tok, torch.full_like(x_tok, float("nan")))


def _merge(acc, block, temperature):
    """Combine two partial row statistics; sum e*z' is re-expressed against the new max."""
    import torch

    if acc is None:
        return block
    zero = torch.zeros((), dtype=block[1].dtype, device=block[1].device)

    def rescale(m, s, ez, m_new):
        shift = (m - m_new) / temperature
        alpha = torch.exp(shift)
        # s = 0 (all masked so far): shift may be -inf or NaN; the part contributes nothing.
        return (torch.where(s > 0, alpha * s, zero),
                torch.where(s > 0, alpha * (ez + shift * s), zero))

    m_new = torch.maximum(acc[0], block[0])
    s_a, ez_a = rescale(acc[0], acc[1], acc[2], m_new)
    s_b, ez_b = rescale(block[0], block[1], block[2], m_new)
    x_tok = torch.where(torch.isnan(block[3]), acc[3], block[3])
    return m_new, s_a + s_b, ez_a + ez_b, x_tok
