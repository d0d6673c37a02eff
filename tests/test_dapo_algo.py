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
