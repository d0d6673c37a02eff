"""DAPO's math as free functions on tensors: advantages, the clipped policy loss, Archer2.0's policy
loss and high-entropy mask, the KL penalty, dynamic sampling, overlong shaping, and the differentiable
log-prob of the update pass.

Shapes: ``N`` responses, ``T`` response tokens (right-padded), ``V`` vocabulary. Masks are 1 on real
response tokens. Every function is tested on hand-written tensors in ``tests/test_dapo_algo.py``.
"""

from __future__ import annotations

import numpy as np
import torch


def grpo_advantages(scores: torch.Tensor, group_ids: torch.Tensor, norm_by_std: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """GRPO outcome advantages: ``(score - group mean) / (group std + eps)`` (std unbiased, as verl).

    scores: (N,) float; group_ids: (N,) int. A group of one response gets advantage 0.
    """
    adv = torch.zeros_like(scores, dtype=torch.float32)
    for g in torch.unique(group_ids):
        idx = group_ids == g
        s = scores[idx].float()
        if s.numel() < 2:
            continue
        centered = s - s.mean()
        adv[idx] = centered / (s.std() + eps) if norm_by_std else centered
    return adv


def dynamic_sampling_keep(metric: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """DAPO dynamic sampling: keep groups whose ``metric`` (acc or score) has non-zero spread.

    metric, group_ids: (N,). Returns a bool (N,) mask, True for responses of kept groups.
    """
    keep = np.zeros(len(metric), dtype=bool)
    for g in np.unique(group_ids):
        idx = group_ids == g
        keep[idx] = len(metric[idx]) > 1 and np.std(metric[idx]) > 0
    return keep


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer_len: int, factor: float) -> torch.Tensor:
    """DAPO soft overlong punishment: 0 up to ``max_len - buffer_len``, then linear down to ``-factor``.

    lengths: (N,) response lengths. Returns (N,) penalties <= 0 to add to the reward.
    """
    expected = max_len - buffer_len
    return torch.clamp(-(lengths.float() - expected) / buffer_len * factor, max=0.0)


def high_entropy_mask(entropy: torch.Tensor, mask: torch.Tensor, quantile: float = 0.8) -> torch.Tensor:
    """Archer2.0: per response, tokens whose entropy is strictly above its ``quantile`` are high-entropy.

    entropy, mask: (N, T). Returns bool (N, T), False on padding.
    """
    out = torch.zeros_like(mask, dtype=torch.bool)
    for i in range(entropy.shape[0]):
        valid = mask[i].bool()
        if valid.any():
            q = torch.quantile(entropy[i][valid].float(), quantile)
            out[i] = (entropy[i] > q) & valid
    return out


def policy_loss(logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_low: float | torch.Tensor = 0.2,
                clip_high: float | torch.Tensor = 0.28, clip_c: float = 10.0):
    """Per-token PPO loss with clip-higher (asymmetric eps) and dual clip for negative advantages.

    logprob, old_logprob, mask: (N, T); advantages: (N,) or (N, T); clip_low/high: scalars or (N, T)
    (Archer gives high-entropy tokens their own bounds). Returns ``(loss (N, T), stats)`` where
    stats holds per-token ``ratio``, ``clipped`` (the clipped branch gave the loss) and the bool masks
    ``clip_high_hit``, ``clip_low_hit``, ``dual_clip_hit``. Padding is not zeroed: aggregate with ``agg_loss``.
    """
    adv = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(logprob)
    ratio = torch.exp(torch.clamp(logprob - old_logprob, -20.0, 20.0))
    loss1 = -adv * ratio
    loss2 = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    clipped_loss = torch.maximum(loss1, loss2)
    loss3 = -adv * clip_c
    dual = torch.minimum(loss3, clipped_loss)
    loss = torch.where(adv < 0, dual, clipped_loss)
    valid = mask.bool()
    with torch.no_grad():
        clip_hit = (loss2 > loss1) & valid
        dual_hit = (adv < 0) & (loss3 < clipped_loss) & valid
        stats = {
            "ratio": ratio.detach(),
            "clipped": clip_hit | dual_hit,
            "clip_high_hit": clip_hit & (adv > 0),
            "clip_low_hit": clip_hit & (adv < 0),
            "dual_clip_hit": dual_hit,
        }
    return loss, stats


def archer_policy_loss(logprob: torch.Tensor, old_logprob: torch.Tensor, advantages: torch.Tensor,
                       mask: torch.Tensor, high_entropy: torch.Tensor, clip_low: float = 0.2,
                       clip_high: float = 0.2, he_clip_low: float = 0.4, he_clip_high: float = 0.4,
                       clip_c_neg: float = 3.0, clip_c_pos: float = 3.0):
    """Archer2.0's per-token policy loss, branch for branch (``compute_policy_loss_archer`` in
    wizard-III/Archer2.0 ``verl/trainer/ppo/core_algos.py``, the loss of its published recipe).

    logprob, old_logprob, mask, high_entropy (bool): (N, T); advantages: (N,) or (N, T). Low-entropy
    tokens use ``clip_low``/``clip_high``, high-entropy ones ``he_clip_low``/``he_clip_high``; each sign
    sees one bound. With r = pi / pi_old (log-ratio clamped to +-20, as verl), per token:

    - A < 0, r <= c_neg: ``-A * max(r, 1 - eps_low)``, PPO's loss (zero gradient below the bound).
    - A < 0, r > c_neg: ``-A * c_neg * logprob`` (a *soft* dual clip: the gradient -A c grad(logp) stays;
      the usual dual clip is the constant -A c).
    - A >= 0, r >= 1 / c_pos: value ``-A / min(r, 1 + eps_high)`` and, inside the bound, gradient
      ``-A / r * grad(logp)`` (Archer's ``(p / p.detach()) / p.detach()``: the importance weight is
      flipped, not r); zero gradient above the bound.
    - A >= 0, r < 1 / c_pos: ``-A * c_pos * logprob`` (a dual clip on the positive side).

    On-policy (r = 1) the gradient is PPO's, -A grad(logp). Returns ``(loss (N, T), stats)`` with the
    keys of ``policy_loss``'s stats (``clip_high_hit``: A >= 0 above the upper bound, as Archer counts).
    """
    adv = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(logprob)
    ratio = torch.exp(torch.clamp(logprob - old_logprob, -20.0, 20.0))
    eps_low, eps_high = token_clip_bounds(high_entropy, clip_low, clip_high, he_clip_low, he_clip_high)
    neg_ratio = torch.clamp(ratio, min=1.0 - eps_low)  # one-sided: A < 0 only meets the lower bound
    pos_ratio = torch.clamp(ratio, max=1.0 + eps_high)
    neg_dual = neg_ratio > clip_c_neg
    pos_dual = 1.0 / pos_ratio > clip_c_pos
    neg_loss = torch.where(neg_dual, -adv * clip_c_neg * logprob, -adv * neg_ratio)
    pos_loss = torch.where(pos_dual, -adv * clip_c_pos * logprob,
                           -adv * (pos_ratio / pos_ratio.detach()) / pos_ratio.detach())
    negative = adv < 0
    loss = torch.where(negative, neg_loss, pos_loss)
    valid = mask.bool()
    with torch.no_grad():
        high_hit = ~negative & (ratio > pos_ratio) & valid
        low_hit = negative & (ratio < neg_ratio) & valid
        dual_hit = torch.where(negative, neg_dual, pos_dual) & valid
        stats = {"ratio": ratio.detach(), "clipped": high_hit | low_hit | dual_hit,
                 "clip_high_hit": high_hit, "clip_low_hit": low_hit, "dual_clip_hit": dual_hit}
    return loss, stats


def kl_penalty(logprob: torch.Tensor, ref_logprob: torch.Tensor, kind: str = "low_var_kl") -> torch.Tensor:
    """Per-token KL estimate of the policy from the reference (Schulman 2020, as verl's ``kl_penalty``).

    logprob, ref_logprob: (N, T). ``kl`` = log(pi/ref) (k1), ``abs``, ``mse`` = half the squared log-ratio
    (k2), ``low_var_kl`` = ref/pi - log(ref/pi) - 1 (k3, with verl's clamps: log-ratio to +-20, value
    to +-10). Returns (N, T); aggregate with ``agg_loss``.
    """
    diff = logprob - ref_logprob
    if kind == "kl":
        return diff
    if kind == "abs":
        return diff.abs()
    if kind == "mse":
        return 0.5 * diff.square()
    if kind == "low_var_kl":
        log_ref_ratio = torch.clamp(-diff, -20.0, 20.0)
        return torch.clamp(torch.exp(log_ref_ratio) - log_ref_ratio - 1.0, -10.0, 10.0)
    raise ValueError(f"unknown kl_loss_type {kind!r}")


def agg_loss(loss: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean",
             denominator: float | None = None) -> torch.Tensor:
    """Reduce a (N, T) loss. ``token-mean`` (DAPO) divides the masked sum by the token count, or by
    ``denominator`` when given (the global token count of a data-parallel mini-batch, so gradients summed
    over ranks equal the single-process gradient). ``seq-mean-*`` average per response first (GRPO).
    """
    mask = mask.to(loss.dtype)
    if mode == "token-mean":
        denom = denominator if denominator is not None else mask.sum().clamp(min=1.0)
        return (loss * mask).sum() / denom
    per_seq = (loss * mask).sum(-1)
    if mode == "seq-mean-token-mean":
        per_seq = per_seq / mask.sum(-1).clamp(min=1.0)
    elif mode != "seq-mean-token-sum":
        raise ValueError(f"unknown loss_agg_mode {mode!r}")
    denom = denominator if denominator is not None else max(loss.shape[0], 1)
    return per_seq.sum() / denom


def token_clip_bounds(high_entropy: torch.Tensor | None, clip_low: float, clip_high: float,
                      he_clip_low: float, he_clip_high: float):
    """Per-token clip epsilons: Archer2.0's wider bounds on high-entropy tokens, the usual ones elsewhere.

    Which bound binds follows the advantage sign (upper for A > 0, lower for A < 0), so a high-entropy
    token with a positive advantage may grow to ``1 + he_clip_high``. Returns scalars when Archer is off.
    """
    if high_entropy is None:
        return clip_low, clip_high
    low = torch.where(high_entropy, he_clip_low, clip_low)
    high = torch.where(high_entropy, he_clip_high, clip_high)
    return low, high


def logprob_of(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0,
               chunk: int = 1024) -> torch.Tensor:
    """Differentiable log-prob of ``token_ids`` under ``logits / temperature``; logits (..., V), ids (...).

    Row chunks keep the float32 log-softmax of one chunk alive at a time, not the whole (N*T, V).
    """
    flat = logits.reshape(-1, logits.shape[-1])
    ids = token_ids.reshape(-1)
    out = [torch.log_softmax(flat[i:i + chunk].float() / temperature, dim=-1)
           .gather(-1, ids[i:i + chunk, None]).squeeze(-1) for i in range(0, flat.shape[0], chunk)]
    return torch.cat(out).reshape(token_ids.shape)


def entropy_and_logprob(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0):
    """Entropy (nats) and log-prob of the sampled tokens from raw logits / temperature, float32.

    Through `wbtrace.kernels.entropy_logprob` (fused on GPU, chunked on CPU).
    """
    from wbtrace.kernels import entropy_logprob

    return entropy_logprob(logits, token_ids, temperature)
