"""Torch paths for token entropy and log-prob: the float64 reference and the memory-bounded chunked path.

Shared math (per row of logits `x`, temperature `T`, row max `m`):

    z' = (x - m) / T          (<= 0; `x - m` is exact for nearby values, so huge logits lose nothing)
    s  = sum exp(z')           lse = m / T + log s
    H  = log s - sum(exp(z') * z') / s                      (entropy, nats; no cancellation: both terms >= 0)
    logprob(tok) = z'[tok] - log s

The chunked path computes these in float32 over `rows_per_chunk` rows at a time, so the float32 copy of the
logits never exceeds `CHUNK_ELEMENTS` values. The same per-row statistics (`m`, `log s`, `H`) feed the
backward pass in `wbtrace.kernels.autograd`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# 16M float32 values = 64 MiB per chunk (x3 for the temporaries of one chunk).
CHUNK_ELEMENTS = 1 << 24


def rows_per_chunk(n_rows: int, vocab: int, elements: int = CHUNK_ELEMENTS) -> int:
    """How many rows of a `[n_rows, vocab]` matrix fit in `elements` values (at least 1)."""
    return max(1, min(n_rows, elements // max(1, vocab)))


def row_stats(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float):
    """Float32 statistics of a `[R, V]` chunk: `(entropy, logprob, m, log_s)`, each `[R]`.

    `token_ids` `[R]` must already be in `[0, V)`. Rows with `-inf` entries are fine (masked vocabulary);
    a row that is all `-inf` gives NaN.
    """
    import torch

    x = logits.float()
    m = x.amax(dim=-1, keepdim=True)
    # A fully masked row (max -inf) gives NaN through x - m: its entropy is undefined, and only it is hit.
    z = (x - m) / temperature
    e = torch.exp(z)
    s = e.sum(dim=-1)
    # exp(z) * z is 0 * -inf = NaN on masked entries: those carry no probability, so they contribute 0.
    ez = torch.where(e > 0, e * z, torch.zeros((), dtype=z.dtype, device=z.device))
    log_s = torch.log(s)
    entropy = log_s - ez.sum(dim=-1) / s
    logprob = z.gather(-1, token_ids.long().unsqueeze(-1)).squeeze(-1) - log_s
    return entropy, logprob, m.squeeze(-1), log_s


def entropy_logprob_chunked(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    temperature: float = 1.0,
    chunk_rows: int | None = None,
    return_stats: bool = False,
):
    """Entropy and log-prob of `[N, V]` logits, `chunk_rows` rows at a time; float32 `[N]` outputs.

    With `return_stats`, also returns `(m, log_s)` `[N]`, the row max and log of the shifted sum-exp
    (what the backward pass needs to rebuild the softmax without a second max pass).
    """
    import torch

    n, vocab = logits.shape
    step = chunk_rows or rows_per_chunk(n, vocab)
    outs = [torch.empty(n, dtype=torch.float32, device=logits.device) for _ in range(4)]
    for start in range(0, n, step):
        stop = min(n, start + step)
        for out, part in zip(outs, row_stats(logits[start:stop], token_ids[start:stop], temperature), strict=True):
            out[start:stop] = part
    return tuple(outs) if return_stats else tuple(outs[:2])


def entropy_logprob_float64(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0):
    """Float64 reference `(entropy, logprob)` of `[N, V]` logits, chunked like the float32 path.

    Used by the tests and the benchmark as ground truth; returns float64 `[N]` tensors on the input device.
    """
    import torch

    n, vocab = logits.shape
    step = rows_per_chunk(n, vocab, CHUNK_ELEMENTS // 2)
    entropy = torch.empty(n, dtype=torch.float64, device=logits.device)
    logprob = torch.empty(n, dtype=torch.float64, device=logits.device)
    for start in range(0, n, step):
        z = logits[start:start + step].double() / temperature
        logp = torch.log_softmax(z, dim=-1)
        p = logp.exp()
        entropy[start:start + step] = -torch.where(p > 0, p * logp, torch.zeros((), dtype=z.dtype,
                                                                                device=z.device)).sum(-1)
        ids = token_ids[start:start + step].long().unsqueeze(-1)
        logprob[start:start + step] = logp.gather(-1, ids).squeeze(-1)
    return entropy, logprob


def softmax_grad(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    temperature: float,
    m: torch.Tensor,
    log_s: torch.Tensor,
    entropy: torch.Tensor,
    grad_entropy: torch.Tensor | None,
    grad_logprob: torch.Tensor | None,
) -> torch.Tensor:
    """Gradient w.r.t. a `[R, V]` chunk of logits, float32, from the saved row statistics (all `[R]`).

    d logprob / dz_j = 1[j = tok] - p_j;  d H / dz_j = -p_j (log p_j + H);  then d z / d x = 1 / T.
    """
    import torch

    z = (logits.float() - m.unsqueeze(-1)) / temperature
    logp = z - log_s.unsqueeze(-1)
    p = torch.exp(logp)
    grad = torch.zeros_like(z)
    if grad_entropy is not None:
        zero = torch.zeros((), dtype=z.dtype, device=z.device)
        # Masked entries: p = 0 and logp = -inf; they get no gradient (0 * -inf would be NaN).
        grad -= grad_entropy.unsqueeze(-1) * torch.where(p > 0, p * (logp + entropy.unsqueeze(-1)), zero)
    if grad_logprob is not None:
        grad -= grad_logprob.unsqueeze(-1) * p
        grad.scatter_add_(-1, token_ids.long().unsqueeze(-1), grad_logprob.unsqueeze(-1))
    return grad / temperature
