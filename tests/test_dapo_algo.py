"""DAPO math checked against values computed by hand on small tensors (wbtrace.dapo.algo)."""

import math

import numpy as np
import pytest
import torch

from wbtrace.dapo import algo


def test_grpo_advantages_normalize_within_each_group():
    scores = torch.tensor([1.0, -1.0, 1.0, -1.0, 0.5, 0.5])
    groups = torch.tensor([0, 0, 0, 0, 1, 1])
    adv = algo.grpo_advantages(scores, groups)
    # group 0: mean 0, unbiased std sqrt(4/3); group 1: no spread -> 0
    expected = 1 / math.sqrt(4 / 3)
    assert torch.allclose(adv, torch.tensor([expected, -expected, expected, -expected, 0.0, 0.0]), atol=1e-5)
    unnormalized = algo.grpo_advantages(scores, groups, norm_by_std=False)
    assert unnormalized.tolist() == [1.0, -1.0, 1.0, -1.0, 0.0, 0.0]


def _ratios(ratios, adv):
    old = torch.zeros(1, len(ratios))
    new = torch.log(torch.tensor([ratios]))
    return algo.policy_loss(new, old, torch.tensor([adv]), torch.ones(1, len(ratios)), 0.2, 0.28, 10.0)


def test_clip_higher_positive_advantage():
    loss, st = _ratios([1.5, 0.5, 1.1], 1.0)
    # ratio 1.5 clipped at 1 + 0.28; ratio 0.5 not clipped for A > 0 (min of the two objectives)
    assert torch.allclose(loss, torch.tensor([[-1.28, -0.5, -1.1]]), atol=1e-6)
    assert st["clip_high_hit"].tolist() == [[True, False, False]]
    assert st["clip_low_hit"].tolist() == [[False, False, False]]


def test_clip_low_and_dual_clip_negative_advantage():
    loss, st = _ratios([0.5, 20.0, 1.2], -1.0)
    # ratio 0.5 clipped at 1 - 0.2 -> 0.8; ratio 20 capped by dual clip at c = 10; 1.2 inside (1.2 <= 1.28)
    assert torch.allclose(loss, torch.tensor([[0.8, 10.0, 1.2]]), atol=1e-5)
    assert st["clip_low_hit"].tolist() == [[True, False, False]]
    assert st["dual_clip_hit"].tolist() == [[False, True, False]]
    assert st["clipped"].tolist() == [[True, True, False]]


def test_token_mean_and_seq_mean_aggregation():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert algo.agg_loss(loss, mask, "token-mean").item() == pytest.approx(10 / 4)
    assert algo.agg_loss(loss, mask, "token-mean", denominator=8.0).item() == pytest.approx(10 / 8)
    assert algo.agg_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx((2.0 + 4.0) / 2)
    assert algo.agg_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx((6.0 + 4.0) / 2)


def test_dynamic_sampling_drops_groups_without_spread():
    acc = np.array([1, 1, 0, 1, 0, 0], dtype=np.float32)
    groups = np.array([0, 0, 1, 1, 2, 2])
    assert algo.dynamic_sampling_keep(acc, groups).tolist() == [False, False, True, True, False, False]


def test_overlong_penalty_is_linear_in_the_buffer():
    pen = algo.overlong_penalty(torch.tensor([5, 6, 8, 10]), max_len=10, buffer_len=4, factor=1.0)
    assert pen.tolist() == [0.0, 0.0, -0.5, -1.0]
    assert algo.overlong_penalty(torch.tensor([10]), 10, 4, 0.5).tolist() == [-0.5]


def test_high_entropy_mask_uses_per_response_quantile_and_ignores_padding():
    ent = torch.tensor([[0.1, 0.2, 0.3, 0.4, 5.0, 9.0], [1.0, 2.0, 3.0, 4.0, 5.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]])
    # row 0: quantile 0.8 of [0.1..0.4, 5.0] = 0.4 + 0.2 * 4.6 = 1.32 -> only 5.0; 9.0 is padding
    # row 1: quantile of [1,2,3,4,5,0] = 4.0 -> only 5.0
    out = algo.high_entropy_mask(ent, mask, 0.8)
    assert out.tolist() == [[False, False, False, False, True, False], [False, False, False, False, True, False]]


def test_archer_dual_token_clip_widens_bounds_on_high_entropy_tokens():
    high = torch.tensor([[True, False]])
    low_eps, high_eps = algo.token_clip_bounds(high, 0.2, 0.28, 0.4, 0.4)
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.35, 1.35]]))
    loss, st = algo.policy_loss(new, old, torch.tensor([1.0]), torch.ones(1, 2), low_eps, high_eps, 10.0)
    # high-entropy token: 1.35 < 1.4, unclipped; low-entropy token: clipped at 1.28
    assert torch.allclose(loss, torch.tensor([[-1.35, -1.28]]), atol=1e-6)
    assert st["clipped"].tolist() == [[False, True]]
    new = torch.log(torch.tensor([[0.65, 0.65]]))
    loss, _ = algo.policy_loss(new, old, torch.tensor([-1.0]), torch.ones(1, 2), low_eps, high_eps, 10.0)
    assert torch.allclose(loss, torch.tensor([[0.65, 0.8]]), atol=1e-6)  # 0.65 >= 1 - 0.4, < 1 - 0.2
    assert algo.token_clip_bounds(None, 0.2, 0.28, 0.4, 0.4) == (0.2, 0.28)


def test_entropy_and_logprob_by_hand_and_differentiable_logprob_agrees():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # probs 0.25, 0.75
    ids = torch.tensor([1])
    ent, logp = algo.entropy_and_logprob(logits, ids)
    assert ent.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)
    assert logp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    x = torch.randn(3, 5, 7, requires_grad=True)
    tok = torch.randint(0, 7, (3, 5))
    lp = algo.logprob_of(x, tok, temperature=0.7, chunk=4)
    _, ref = algo.entropy_and_logprob(x.detach(), tok, 0.7)
    assert torch.allclose(lp.detach(), ref, atol=1e-5)
    lp.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- Archer2.0's loss
ARCHER_SOURCE = ("wizard-III/Archer2.0 @ b08d963d5d65909ef1f24dba2f382006d0be33e1, "
                 "verl/trainer/ppo/core_algos.py: compute_policy_loss_archer (called from "
                 "verl/workers/actor/dp_actor.py with use_archer_policy_loss=True)")


def archer_reference(old_log_prob, log_prob, advantages, response_mask, low_entropy_mask,
                     neg_low_ent_low=0.2, neg_high_ent_low=0.4, pos_low_ent_high=0.2, pos_high_ent_high=0.4,
                     neg_c=3.0, pos_c=3.0):
    """Archer2.0's function restated operation by operation (ARCHER_SOURCE), as an independent reference.

    Archer's dp_actor passes a mask it calls ``high_entropy_mask`` that is True on *low*-entropy tokens
    (``entropy <= q80``); the function gives those tokens the low-entropy bounds. Kept here as Archer has it.
    Returns the token-mean loss (verl_F.masked_mean) and the per-token loss matrix.
    """
    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0))
    neg_clip = torch.where(low_entropy_mask, torch.clamp(ratio, min=1 - neg_low_ent_low, max=None),
                           torch.clamp(ratio, min=1 - neg_high_ent_low, max=None))
    pos_clip = torch.where(low_entropy_mask, torch.clamp(ratio, min=None, max=1 + pos_low_ent_high),
                           torch.clamp(ratio, min=None, max=1 + pos_high_ent_high))
    neg_losses_clip = -advantages * neg_clip
    pos_losses_clip = -advantages * (pos_clip / pos_clip.detach()) / pos_clip.detach()
    neg_dual_ratio = torch.clamp(neg_clip, min=None, max=neg_c)
    neg_dual_mask = torch.gt(neg_clip, neg_dual_ratio)
    neg_losses = torch.where(neg_dual_mask, -advantages * neg_dual_ratio.detach() * log_prob, neg_losses_clip)
    pos_dual_ratio = torch.clamp(1 / pos_clip, min=None, max=pos_c)
    pos_dual_mask = torch.gt(1 / pos_clip, pos_dual_ratio)
    pos_losses = torch.where(pos_dual_mask, -advantages * pos_dual_ratio.detach() * log_prob, pos_losses_clip)
    pg_losses = torch.where(advantages < 0, neg_losses, pos_losses)
    return (pg_losses * response_mask).sum() / (response_mask.sum() + 1e-8), pg_losses


def _archer_inputs(seed):
    """Random tokens covering every branch: ratios from 0.05 to 8 (inside, above, below the bounds of both
    classes, above c = 3 and below 1/c), both advantage signs, both classes, padding."""
    g = torch.Generator().manual_seed(seed)
    N, T = 6, 40
    old = -torch.rand(N, T, generator=g) * 5 - 0.1
    log_r = torch.empty(N, T).uniform_(math.log(0.05), math.log(8.0), generator=g)
    new = (old + log_r).requires_grad_(True)
    adv = torch.randn(N, generator=g)
    adv[0], adv[1] = 1.5, -1.5
    high = torch.rand(N, T, generator=g) < 0.3
    mask = torch.ones(N, T)
    mask[2, 30:] = 0
    mask[4, 10:] = 0
    return new, old, adv, mask, high


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_archer_loss_and_gradient_equal_archer2_code_in_every_branch(seed):
    new, old, adv, mask, high = _archer_inputs(seed)
    loss, st = algo.archer_policy_loss(new, old, adv, mask, high, 0.2, 0.2, 0.4, 0.4, 3.0, 3.0)
    ours = algo.agg_loss(loss, mask, "token-mean")
    (g_ours,) = torch.autograd.grad(ours, new)
    ref, ref_tokens = archer_reference(old, new, adv[:, None], mask, ~high & mask.bool())
    (g_ref,) = torch.autograd.grad(ref, new)
    valid = mask.bool()
    torch.testing.assert_close(loss[valid], ref_tokens[valid], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-6, atol=1e-9)
    # every branch was exercised: (sign) x (inside, clipped, dual) and both classes
    r, a = st["ratio"], adv[:, None].expand_as(st["ratio"])
    eps_hi = torch.where(high, 0.4, 0.2)
    branches = {"A>0 inside": (a > 0) & (r >= 1 / 3) & (r <= 1 + eps_hi), "A>0 above": st["clip_high_hit"],
                "A>0 below 1/c": (a > 0) & st["dual_clip_hit"], "A<0 inside": (a < 0) & ~st["clipped"],
                "A<0 below": st["clip_low_hit"], "A<0 above c": (a < 0) & st["dual_clip_hit"]}
    for name, hit in branches.items():
        for cls in (high, ~high):
            assert (hit & cls & valid).any(), name
    # and in the branches where the old DAPO/PPO loss differs, the gradients do differ
    ppo, _ = algo.policy_loss(new, old, adv, mask, *algo.token_clip_bounds(high, 0.2, 0.2, 0.4, 0.4), 3.0)
    (g_ppo,) = torch.autograd.grad(algo.agg_loss(ppo, mask), new)
    differs = (g_ppo - g_ours).abs() > 1e-7
    assert differs[(a < 0) & st["dual_clip_hit"]].all() and not differs[(a < 0) & ~st["dual_clip_hit"]].any()


def test_archer_loss_by_hand():
    # one token per case, low-entropy bounds 0.2 / 0.2, c = 3; logp = log r (old log-prob 0)
    r = torch.tensor([[0.5, 2.0, 0.2, 0.5, 1.1, 5.0]])
    adv = torch.tensor([[1.0, 1.0, 1.0, -1.0, -1.0, -1.0]])
    new = torch.log(r).requires_grad_(True)
    loss, st = algo.archer_policy_loss(new, torch.zeros_like(r), adv, torch.ones_like(r),
                                       torch.zeros_like(r, dtype=torch.bool))
    lp = math.log(0.2), math.log(5.0)
    # A>0: -1/r inside; -1/1.2 above; -3*logp below 1/3. A<0: 0.8 below; r inside; 3*logp above c.
    expected = [-2.0, -1 / 1.2, -3 * lp[0], 0.8, 1.1, 3 * lp[1]]
    assert loss.detach()[0].tolist() == pytest.approx(expected, abs=1e-6)
    (grad,) = torch.autograd.grad(loss.sum(), new)
    # d/dlogp: -A/r (flipped weight), 0, -A*c, 0, -A*r, -A*c (soft dual clip keeps the gradient)
    assert grad[0].tolist() == pytest.approx([-2.0, 0.0, -3.0, 0.0, 1.1, 3.0], abs=1e-6)
    assert st["clip_high_hit"][0].tolist() == [False, True, False, False, False, False]
    assert st["clip_low_hit"][0].tolist() == [False, False, False, True, False, False]
    assert st["dual_clip_hit"][0].tolist() == [False, False, True, False, False, True]
    assert st["clipped"][0].tolist() == [False, True, True, True, False, True]
    # a high-entropy token with A > 0 may grow to 1.4 before its bound binds
    loss_he, _ = algo.archer_policy_loss(torch.log(torch.tensor([[1.3]])), torch.zeros(1, 1), torch.ones(1, 1),
                                         torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool))
    assert loss_he.item() == pytest.approx(-1 / 1.3)


def test_kl_penalty_estimators_by_hand():
    lp, ref = torch.tensor([[math.log(0.5)]]), torch.tensor([[math.log(0.25)]])
    d = math.log(2.0)
    assert algo.kl_penalty(lp, ref, "kl").item() == pytest.approx(d)
    assert algo.kl_penalty(ref, lp, "abs").item() == pytest.approx(d)
    assert algo.kl_penalty(lp, ref, "mse").item() == pytest.approx(0.5 * d * d)
    assert algo.kl_penalty(lp, ref, "low_var_kl").item() == pytest.approx(0.5 + d - 1.0)  # ref/pi - log - 1
    assert algo.kl_penalty(lp, lp, "low_var_kl").item() == 0.0
    assert algo.kl_penalty(torch.tensor([[0.0]]), torch.tensor([[-30.0]])).item() == 10.0  # verl's clamps
    with pytest.raises(ValueError):
        algo.kl_penalty(lp, ref, "full")


def archer_older_reference(old_log_prob, log_prob, advantages, response_mask, low_entropy_mask,
                           le_low=0.2, le_high=0.28, he_low=0.4, he_high=0.4, clip_ratio_c=3.0):
    """Archer2.0's older path, ``compute_policy_loss(use_token_entropy_separate=True)`` in the same file as
    ARCHER_SOURCE, restated operation by operation (what ``actor.archer.loss=ppo`` selects)."""
    ratio = torch.exp(torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0))
    losses1 = -advantages * ratio
    clip_ratio = torch.where(low_entropy_mask, torch.clamp(ratio, 1 - le_low, 1 + le_high),
                             torch.clamp(ratio, 1 - he_low, 1 + he_high))
    clipped1 = torch.maximum(losses1, -advantages * clip_ratio)
    clipped2 = torch.min(-advantages * clip_ratio_c, clipped1)
    pg_losses = torch.where(advantages < 0, clipped2, clipped1)
    return (pg_losses * response_mask).sum() / (response_mask.sum() + 1e-8)


def test_archer_ppo_path_equals_archer2_older_compute_policy_loss():
    new, old, adv, mask, high = _archer_inputs(3)
    bounds = algo.token_clip_bounds(high, 0.2, 0.28, 0.4, 0.4)
    loss, _ = algo.policy_loss(new, old, adv, mask, *bounds, 3.0)
    ours = algo.agg_loss(loss, mask)
    ref = archer_older_reference(old, new, adv[:, None], mask, ~high & mask.bool())
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(torch.autograd.grad(ours, new)[0], torch.autograd.grad(ref, new)[0],
                               rtol=1e-6, atol=1e-9)
