"""Autograd wrappers: gradients of entropy and log-prob that never keep a `[N, V]` float32 softmax.

The forward pass (Triton or chunked torch) saves only per-row statistics (`m`, `log s`, entropy, each `[N]`)
next to the inputs it already holds; the backward pass rebuilds the softmax one chunk of rows at a time.
For the hidden-state path the logits themselves are recomputed per chunk (one extra matmul), so neither
pass keeps the `[T, V]` logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from wbtrace.kernels.reference import rows_per_chunk, softmax_grad

if TYPE_CHECKING:
    import torch


def _function_classes():
    """Build the `torch.autograd.Function` subclasses lazily so importing this module needs no torch."""
    import torch

    class LogitsEntropyLogprob(torch.autograd.Function):
        """(logits [N, V], ids [N]) -> (entropy [N], logprob [N]); `forward_fn` picks Triton or torch."""

        @staticmethod
        def forward(ctx, logits, token_ids, temperature, forward_fn):
            entropy, logprob, m, log_s = forward_fn(logits, token_ids, temperature)
            ctx.save_for_backward(logits, token_ids, m, log_s, entropy)
            ctx.temperature = temperature
            ctx.set_materialize_grads(False)
            return entropy, logprob

        @staticmethod
        def backward(ctx, grad_entropy, grad_logprob):
            logits, token_ids, m, log_s, entropy = ctx.saved_tensors
            grad = torch.empty_like(logits)
            if grad_entropy is None and grad_logprob is None:
                return grad.zero_(), None, None, None
            step = rows_per_chunk(*logits.shape)
            for a in range(0, logits.shape[0], step):
                b = slice(a, a + step)
                grad[b] = softmax_grad(
                    logits[b], token_ids[b], ctx.temperature, m[b], log_s[b], entropy[b],
                    None if grad_entropy is None else grad_entropy[b],
                    None if grad_logprob is None else grad_logprob[b],
                )
            return grad, None, None, None

    class HiddenEntropyLogprob(torch.autograd.Function):
        """(hidden [T, H], weight [V, H], bias [V] | None, ids [T]) -> (entropy [T], logprob [T])."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, token_ids, temperature, forward_fn):
            entropy, logprob, m, log_s = forward_fn(hidden, weight, bias, token_ids, temperature)
            ctx.save_for_backward(hidden, weight, bias, token_ids, m, log_s, entropy)
            ctx.temperature = temperature
            ctx.set_materialize_grads(False)
            return entropy, logprob

        @staticmethod
        def backward(ctx, grad_entropy, grad_logprob):
            hidden, weight, bias, token_ids, m, log_s, entropy = ctx.saved_tensors
            grads = _hidden_backward(ctx, hidden, weight, bias, token_ids, m, log_s, entropy,
                                     grad_entropy, grad_logprob)
            return (*grads, None, None, None)

    return LogitsEntropyLogprob, HiddenEntropyLogprob


def _hidden_backward(ctx, hidden, weight, bias, token_ids, m, log_s, entropy, grad_entropy, grad_logprob):
    """Chunked backward of the hidden-state path: recompute logits per chunk, then two matmuls."""
    import torch

    need_h, need_w, need_b = ctx.needs_input_grad[:3]
    grad_h = torch.zeros_like(hidden) if need_h else None
    # Weight/bias gradients accumulate over chunks: float32 so thousands of chunks do not lose bits.
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
    grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
    if grad_entropy is None and grad_logprob is None:
        return _cast(grad_h, hidden), _cast(grad_w, weight), _cast(grad_b, bias)
    step = rows_per_chunk(hidden.shape[0], weight.shape[0])
    for a in range(0, hidden.shape[0], step):
        b = slice(a, a + step)
        logits = hidden[b] @ weight.T
        if bias is not None:
            logits += bias
        gz = softmax_grad(
            logits, token_ids[b], ctx.temperature, m[b], log_s[b], entropy[b],
            None if grad_entropy is None else grad_entropy[b],
            None if grad_logprob is None else grad_logprob[b],
        )
        del logits
        if need_h:
            grad_h[b] = (gz.to(weight.dtype) @ weight).to(hidden.dtype)
        if need_w:
            grad_w += gz.T @ hidden[b].float()
        if need_b:
            grad_b += gz.sum(0)
    return _cast(grad_h, hidden), _cast(grad_w, weight), _cast(grad_b, bias)


def _cast(grad, like):
    return None if grad is None else grad.to(like.dtype)


_CLASSES = None


def apply_logits(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float, forward_fn: Callable):
    """Differentiable `(entropy, logprob)` of `[N, V]` logits through `forward_fn` (returns 4 row stats)."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _function_classes()
    return _CLASSES[0].apply(logits, token_ids, temperature, forward_fn)


def apply_hidden(hidden, weight, bias, token_ids, temperature: float, forward_fn: Callable):
    """Differentiable `(entropy, logprob)` from hidden states `[T, H]` and lm-head `weight` `[V, H]`."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _function_classes()
    return _CLASSES[1].apply(hidden, weight, bias, token_ids, temperature, forward_fn)
