"""The per-step metrics of the DAPO trainer, documented once (``METRICS`` feeds docs/trainer.md),
and the functions that compute the rollout ones from a step's batch (see ``rollout.py``)."""

from __future__ import annotations

from typing import Any

import numpy as np

METRICS: dict[str, str] = {
    "step": "Training step (1-based, continues across restarts).",
    "reward/mean": "Mean reward (score + overlong penalty) over every generated response, filtered groups included.",
    "score/mean": "Mean score before overlong shaping (+1 correct, -1 otherwise).",
    "accuracy": "Share of generated responses whose answer is correct.",
    "accuracy/kept": "Share correct among responses of kept groups (those that train).",
    "entropy/mean": "Token-mean entropy (nats, at the rollout temperature) from the old-log-prob pass, all responses.",
    "entropy/kept": "Token-mean entropy over the kept responses.",
    "response_length/mean": "Mean response length in tokens (EOS included).",
    "response_length/clip_ratio": "Share of responses cut at data.max_response_length (no EOS).",
    "filter/num_gen_batches": "Generation batches this step needed (dynamic sampling refills).",
    "filter/kept_groups": "Groups that train this step (at most data.train_batch_size).",
    "filter/filtered_groups": "Groups dropped by dynamic sampling (zero spread of the filter metric).",
    "actor/pg_loss": "Policy-gradient loss (token-mean unless actor.loss_agg_mode says otherwise; KL term not included), mean over mini-batches.",
    "actor/clipfrac": "Share of kept tokens where a clip bound gave the loss, dual-clip tokens not counted (= verl's actor/pg_clipfrac; high + low).",
    "actor/clipfrac_high": "Share of kept tokens clipped at 1 + clip_ratio_high (positive advantage).",
    "actor/clipfrac_low": "Share of kept tokens clipped at 1 - clip_ratio_low (negative advantage).",
    "actor/dual_clipfrac": "Share of kept tokens where the dual clip applied (verl's actor/pg_clipfrac_lower for A < 0; with the archer loss also A > 0 with r < 1/c).",
    "actor/ratio_mean": "Mean importance ratio pi / pi_old over kept tokens (1.0 with one mini-batch and one epoch).",
    "actor/grad_norm": "Global gradient norm before clipping, mean over the step's optimizer steps (verl reduces its per-mini-batch values the same way).",
    "actor/skipped_updates": "Optimizer steps skipped this step because the gradient norm was not finite (verl skips them too; the gradients are dropped).",
    "actor/kl_loss": "KL loss (actor.kl_loss_type, token-mean) to the initial policy, mean over mini-batches; only with actor.use_kl_loss.",
    "actor/lr": "Learning rate this step's optimizer steps used (the schedule steps once per training step, as verl).",
    "rollout/logprob_gap_max": "rollout.name=fast: largest abs(sampler log-prob - recomputed log-prob) over response tokens (bf16 rounding).",
    "rollout/logprob_gap_mean": "rollout.name=fast: mean of that gap over response tokens.",
    "timing/generate": "Seconds sampling responses (slowest worker, summed over generation batches).",
    "timing/log_prob": "Seconds in the old-log-prob pass (entropy and log-prob).",
    "timing/reward": "Seconds scoring responses on the driver.",
    "timing/update": "Seconds in the policy update.",
    "timing/trace": "Seconds the driver spent handing the step to the trace writer (writing is in the background).",
    "timing/step": "Seconds for the whole step.",
    "throughput/tokens_per_s": "Generated tokens (all responses) per second of step time.",
    "throughput/gen_tokens_per_s": "Generated tokens per second of generation time.",
}


def rollout_metrics(batch: dict[str, Any]) -> dict[str, float]:
    """Reward, accuracy, entropy and length statistics of one step's batch (all rows and kept rows)."""
    mask = batch["response_mask"].astype(bool)
    kept = batch["kept"]
    lengths = mask.sum(1)

    def token_mean(rows: np.ndarray) -> float:
        m = mask[rows]
        return float(batch["entropy"][rows][m].mean()) if m.any() else float("nan")

    every = np.ones(len(kept), bool)
    return {
        "reward/mean": float(batch["reward"].mean()),
        "score/mean": float(batch["score"].mean()),
        "accuracy": float(batch["acc"].mean()),
        "accuracy/kept": float(batch["acc"][kept].mean()) if kept.any() else float("nan"),
        "entropy/mean": token_mean(every),
        "entropy/kept": token_mean(kept),
        "response_length/mean": float(lengths.mean()),
        "response_length/clip_ratio": float(batch["truncated"].mean()),
    }


def console_line(m: dict[str, float]) -> str:
    """One compact line per step for the console logger."""
    return (f"step {m['step']:>4} | reward {m['reward/mean']:+.3f} acc {m['accuracy']:.3f} | "
            f"entropy {m['entropy/mean']:.3f} | len {m['response_length/mean']:.1f} | "
            f"clip {m.get('actor/clipfrac', 0.0):.3f} | kept {m['filter/kept_groups']} "
            f"filtered {m['filter/filtered_groups']} | gen {m['timing/generate']:.1f}s "
            f"lp {m['timing/log_prob']:.1f}s upd {m.get('timing/update', 0.0):.1f}s "
            f"step {m['timing/step']:.1f}s | {m['throughput/tokens_per_s']:.0f} tok/s")
