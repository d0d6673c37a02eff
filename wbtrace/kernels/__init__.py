"""Per-token entropy and sampled-token log-prob, exact and memory-bounded: the two public entry points.

`entropy_logprob(logits, token_ids)` and `entropy_logprob_from_hidden(hidden, weight, token_ids)` pick
their path by themselves: CUDA tensors with Triton installed go through the fused one-pass kernel
(`triton_entropy`), everything else through the chunked float32 torch path (`reference`). Both return
float32, both are differentiable (`autograd`), and neither keeps a float32 copy of the whole logits.

Entropy is in nats at the given temperature (logits are divided by it first, as verl does).
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

from wbtrace.errors import BadInputError

if TYPE_CHECKING:
    import torch

__all__ = ["entropy_logprob", "entropy_logprob_from_hidden", "triton_available"]

# Logits of one hidden-state chunk: 512 MiB on GPU keeps cuBLAS efficient (~1.7k rows at V=152k, bf16)
# and stays under the 600 MiB target; 64 MiB on CPU, where float32 temporaries triple it.
GPU_CHUNK_BYTES = 512 << 20
CPU_CHUNK_BYTES = 64 << 20


@functools.cache
def triton_available() -> bool:
    """True when `triton` imports (the CUDA fast path is then used for CUDA tensors)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def entropy_logprob(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0):
    """Entropy of softmax(logits / T) and log-prob of the sampled token, for every position.

    Parameters
    ----------
    logits : torch.Tensor, `[..., V]`, float32 / bfloat16 / float16 (float64 takes the torch path)
    token_ids : torch.Tensor, `[...]`, integer, values in `[0, V)`
    temperature : float, default 1.0

    Returns
    -------
    (entropy, logprob) : two float32 tensors shaped like `token_ids`, on the logits' device.
        Differentiable w.r.t. `logits` when grad is enabled. On the Triton path ids are not checked
        (that would cost a host sync): an id outside `[0, V)` gives a NaN log-prob there.
    """
    import torch

    _check_logits(logits, token_ids, temperature)
    fast = _use_triton(logits)
    if not fast:
        _check_id_range(token_ids, logits.shape[-1])
    stats = _triton_stats() if fast else _torch_stats
    grad = torch.is_grad_enabled() and logits.requires_grad
    entropy, logprob = [], []
    for x, ids in _as_rows(logits, token_ids.reshape(-1)):
        if fast and x.stride(-1) != 1:
            x = x.contiguous()
        if grad:
            from wbtrace.kernels.autograd import apply_logits

            h, lp = apply_logits(x, ids, float(temperature), stats)
        else:
            h, lp = stats(x, ids, float(temperature))[:2]
        entropy.append(h)
        logprob.append(lp)
    return _join(entropy, token_ids.shape), _join(logprob, token_ids.shape)


def entropy_logprob_from_hidden(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
):
    """Entropy and sampled-token log-prob of softmax((hidden @ weight.T + bias) / T), chunk by chunk.

    Parameters
    ----------
    hidden : torch.Tensor, `[T, H]` (or `[..., H]`)
    weight : torch.Tensor, `[V, H]`, the lm-head weight, same dtype and device as `hidden`
    token_ids : torch.Tensor, `[T]` (shaped like `hidden` without its last dim)
    bias : torch.Tensor, `[V]`, optional
    temperature : float, default 1.0

    Returns
    -------
    (entropy, logprob) : float32 tensors shaped like `token_ids`. The `[T, V]` logits are never all kept
        (at most one chunk of `GPU_CHUNK_BYTES`), in the forward pass and in the backward pass.
    """
    import torch

    _check_hidden(hidden, weight, bias, token_ids, temperature)
    vocab = weight.shape[0]
    fast = _use_triton(hidden)
    if not fast:
        _check_id_range(token_ids, vocab)
    h2 = hidden.reshape(-1, hidden.shape[-1])
    ids = token_ids.reshape(-1)
    budget = GPU_CHUNK_BYTES if hidden.is_cuda else CPU_CHUNK_BYTES
    forward = functools.partial(_hidden_stats, logits_stats=_triton_stats() if fast else _torch_stats,
                                budget_bytes=budget)
    tracked = (hidden, weight) if bias is None else (hidden, weight, bias)
    if torch.is_grad_enabled() and any(t.requires_grad for t in tracked):
        from wbtrace.kernels.autograd import apply_hidden

        entropy, logprob = apply_hidden(h2, weight, bias, ids, float(temperature), forward)
    else:
        entropy, logprob = forward(h2, weight, bias, ids, float(temperature))[:2]
    return entropy.reshape(token_ids.shape), logprob.reshape(token_ids.shape)


# ---------------------------------------------------------------------------------------------- paths


def _use_triton(t: torch.Tensor) -> bool:
    import torch

    return t.is_cuda and t.dtype in (torch.float32, torch.bfloat16, torch.float16) and triton_available()


def _triton_stats():
    from wbtrace.kernels.triton_entropy import entropy_logprob_rows

    return entropy_logprob_rows


def _torch_stats(logits, token_ids, temperature):
    from wbtrace.kernels.reference import entropy_logprob_chunked

    return entropy_logprob_chunked(logits, token_ids, temperature, return_stats=True)


def _hidden_stats(hidden, weight, bias, token_ids, temperature, *, logits_stats, budget_bytes):
    import torch

    from wbtrace.kernels.hidden import hidden_row_stats

    with torch.no_grad():
        return hidden_row_stats(hidden, weight, bias, token_ids, temperature, logits_stats, budget_bytes)


def _as_rows(logits, ids):
    """Split `[..., V]` logits into 2-D `[N, V]` views (no copy), with the matching slices of flat `ids`.

    A sliced batch such as `logits[:, :-1]` cannot be viewed as one `[N, V]` matrix: it is walked
    along its first dimension instead of being copied.
    """
    vocab = logits.shape[-1]
    try:
        return [(logits.view(-1, vocab), ids)]
    except RuntimeError:
        per = ids.numel() // max(1, logits.shape[0])
        return [piece for i in range(logits.shape[0])
                for piece in _as_rows(logits[i], ids[i * per:(i + 1) * per])]


def _join(parts, shape):
    import torch

    out = parts[0] if len(parts) == 1 else torch.cat(parts)
    return out.reshape(shape)


# ----------------------------------------------------------------------------------------- validation


def _check_temperature(temperature) -> None:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise BadInputError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_tensors(x, token_ids, what: str) -> None:
    import torch

    if not isinstance(x, torch.Tensor) or not isinstance(token_ids, torch.Tensor):
        raise BadInputError(f"{what} and token_ids must be torch tensors")
    if not x.is_floating_point():
        raise BadInputError(f"{what} must be floating point, got {x.dtype}")
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise BadInputError(f"token_ids must be integers, got {token_ids.dtype}")
    if x.dim() < 1 or tuple(token_ids.shape) != tuple(x.shape[:-1]):
        raise BadInputError(f"token_ids shape {tuple(token_ids.shape)} must be {what} shape "
                            f"{tuple(x.shape)} without its last dimension")
    if token_ids.device != x.device:
        raise BadInputError(f"token_ids on {token_ids.device} but {what} on {x.device}")


def _check_logits(logits, token_ids, temperature) -> None:
    _check_tensors(logits, token_ids, "logits")
    _check_temperature(temperature)
    if logits.shape[-1] == 0:
        raise BadInputError("logits have an empty vocabulary dimension")


def _check_hidden(hidden, weight, bias, token_ids, temperature) -> None:
    _check_tensors(hidden, token_ids, "hidden")
    _check_temperature(temperature)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1] or weight.shape[0] == 0:
        raise BadInputError(f"weight must be [V, H] with H = {hidden.shape[-1]}, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise BadInputError(f"bias must be [V] = [{weight.shape[0]}], got {tuple(bias.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != hidden.dtype or t.device != hidden.device):
            raise BadInputError(f"{name} is {t.dtype} on {t.device}, hidden is {hidden.dtype} on {hidden.device}")


def _check_id_range(token_ids, vocab: int) -> None:
    if token_ids.numel() == 0:
        return
    lo, hi = int(token_ids.min()), int(token_ids.max())
    if lo < 0 or hi >= vocab:
        raise BadInputError(f"token_ids must be in [0, {vocab}), got values from {lo} to {hi}")
