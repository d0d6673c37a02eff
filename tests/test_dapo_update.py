"""The policy update of one in-process PolicyWorker on the tiny model (no Ray needed: the class is plain
Python): which entropy decides Archer's token class, the skip of a non-finite gradient, the LR schedule's
step per training step, and the KL loss against the frozen initial policy."""

import numpy as np
import pytest
import torch

from wbtrace.dapo import algo
from wbtrace.dapo.config import load_config
from wbtrace.dapo.model import tiny_tokenizer
from wbtrace.dapo.worker import PolicyWorker


def _worker(*overrides):
    cfg = load_config("tiny", None, ["actor_rollout_ref.actor.archer.enable=true", *overrides])
    tok = tiny_tokenizer()
    return PolicyWorker(0, 1, cfg, "tiny", tok.pad_token_id, [tok.eos_token_id])


def _batch(worker, seed=0, n=4, P=5, T=12):
    """An on-policy batch: old log-probs from the worker's own old-log-prob pass; rollout entropy random."""
    rng = np.random.default_rng(seed)
    mask = np.ones((n, T), np.int64)
    mask[1, 7:] = 0
    b = {"prompts": rng.integers(3, 80, (n, P)), "prompt_mask": np.ones((n, P), np.int64),
         "responses": rng.integers(3, 80, (n, T)), "response_mask": mask,
         "advantages": np.array([1.0, -1.0, 0.5, -0.5], np.float32)}
    ent, logp = worker.log_prob(b["prompts"], b["prompt_mask"], b["responses"], mask)
    return {**b, "old_logprob": logp, "entropy": rng.random((n, T)).astype(np.float32)}, ent


def _params(worker):
    return torch.cat([p.detach().reshape(-1).clone() for p in worker.model.parameters()])


@pytest.mark.parametrize("entropy_class", ["current", "old"])
def test_archer_token_class_comes_from_the_updating_policy_or_the_rollout(entropy_class):
    w = _worker(f"actor_rollout_ref.actor.archer.entropy_class={entropy_class}", "actor_rollout_ref.actor.lr=0.05")
    batch, on_policy_entropy = _batch(w)
    mask = torch.as_tensor(batch["response_mask"])
    _, tokens = w.update(batch, 1)  # one epoch, one mini-batch: the update forward is the old policy
    expected = on_policy_entropy if entropy_class == "current" else batch["entropy"]
    want = algo.high_entropy_mask(torch.as_tensor(expected), mask, 0.8).numpy()
    np.testing.assert_array_equal(tokens["high_entropy"], want)
    # after a large step the current class moves on some tokens (the point of `current`); `old` stays
    _, tokens = w.update(batch, 1)
    assert (tokens["high_entropy"] != want).any() == (entropy_class == "current")


def test_nonfinite_gradient_skips_the_optimizer_step_and_is_counted():
    w = _worker()
    batch, _ = _batch(w)
    before = _params(w)
    bad = {**batch, "advantages": batch["advantages"].copy()}
    bad["advantages"][0] = np.nan  # one poisoned row makes every gradient NaN
    metrics, _ = w.update(bad, 1)
    assert metrics["actor/skipped_updates"] == 1.0 and not np.isfinite(metrics["actor/grad_norm"])
    assert torch.equal(_params(w), before)
    metrics, _ = w.update(bad, 2)  # row 0 poisons the first of two mini-batches only
    assert metrics["actor/skipped_updates"] == 1.0
    assert all(torch.isfinite(p).all() for p in w.model.parameters())
    assert all(torch.isfinite(p.grad).all() for p in w.model.parameters())  # dropped, not carried over
    metrics, _ = w.update(batch, 2)
    assert metrics["actor/skipped_updates"] == 0.0 and np.isfinite(metrics["actor/grad_norm"])
    assert not torch.equal(_params(w), before)


def test_lr_schedule_steps_once_per_training_step_and_kl_loss_uses_the_initial_policy():
    w = _worker("actor_rollout_ref.actor.warmup_steps=3", "actor_rollout_ref.actor.ppo_epochs=2",
                "actor_rollout_ref.actor.use_kl_loss=true", "actor_rollout_ref.actor.kl_loss_coef=0.5")
    lr = w.cfg.actor_rollout_ref.actor.lr
    ref = torch.cat([p.detach().reshape(-1).clone() for p in w.ref.parameters()])
    assert torch.equal(ref, _params(w))
    batch, _ = _batch(w)
    seen = []
    for _ in range(3):  # 2 epochs x 2 mini-batches = 4 optimizer steps per training step
        metrics, _ = w.update(batch, 2)
        seen.append(metrics["actor/lr"])
    assert seen == pytest.approx([lr / 4, 2 * lr / 4, 3 * lr / 4])  # warm-up counts training steps
    assert w.sched.last_epoch == 3
    assert metrics["actor/kl_loss"] > 0  # the policy moved away from the frozen initial copy
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in w.ref.parameters()]), ref)
