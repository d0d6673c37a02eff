"""verl integration on CPU, with verl's real `DataProto` built the way `RayPPOTrainer.fit` builds it.

No verl trainer can run here (it needs Ray GPU workers and a vLLM/SGLang rollout), so `_Trainer` below
replays, method for method, the driver-side sequence of verl 0.9.1's `RayPPOTrainer.fit` and of the
DAPO recipe (`_compute_old_log_prob` returning `(DataProto, mfu)`, the `entropys` pop, `union`, reward,
GRPO advantages from verl's own `core_algos`, dynamic-sampling filter, `_update_actor`). Everything the
integration touches is real verl code and data.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest

pytest.importorskip("verl.protocol", reason="pip install 'wbtrace[verl]'")
torch = pytest.importorskip("torch")

from verl.protocol import DataProto  # noqa: E402
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage  # noqa: E402

from wbtrace import TraceStore  # noqa: E402
from wbtrace.integrations.verl import attach, step_from_dataproto  # noqa: E402

N_PROMPTS, N_ROLLOUT, P, T, V = 3, 4, 5, 7, 50


def _generated_batch(seed: int, n_prompts: int = N_PROMPTS) -> DataProto:
    """Prompts -> uid -> repeat(n, interleave) -> union(rollout output), as in `fit`."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(1, V, (n_prompts, P), generator=g)
    prompt_mask = torch.ones(n_prompts, P, dtype=torch.long)
    prompt_mask[0, :2] = 0  # left padding
    batch = DataProto.from_single_dict({"input_ids": prompts, "attention_mask": prompt_mask})
    batch.non_tensor_batch["uid"] = np.array([str(uuid.uuid4()) for _ in range(n_prompts)], dtype=object)
    batch = batch.repeat(repeat_times=N_ROLLOUT, interleave=True)
    n = n_prompts * N_ROLLOUT
    responses = torch.randint(1, V, (n, T), generator=g)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    lengths[1] = T  # one response hits max length
    response_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    responses = responses * response_mask  # right padding with pad id 0
    gen_out = DataProto.from_single_dict({
        "prompts": batch.batch["input_ids"],
        "responses": responses,
        "input_ids": torch.cat([batch.batch["input_ids"], responses], 1),
        "attention_mask": torch.cat([batch.batch["attention_mask"], response_mask], 1),
    })
    batch.pop(batch_keys=["input_ids", "attention_mask"])
    batch = batch.union(gen_out)
    batch.batch["response_mask"] = batch.batch["attention_mask"][:, -T:]  # verl's compute_response_mask
    return batch


def _rewards(batch: DataProto, seed: int, all_same_group: int | None = None):
    """Token-level scores (reward at the last response token) and `acc`, like verl's reward managers."""
    g = torch.Generator().manual_seed(seed + 1000)
    n = len(batch)
    acc = torch.randint(0, 2, (n,), generator=g).bool()
    if all_same_group is not None:  # a zero-variance group that dynamic sampling drops
        acc[all_same_group * N_ROLLOUT:(all_same_group + 1) * N_ROLLOUT] = True
    scores = torch.zeros(n, T)
    last = batch.batch["response_mask"].sum(-1) - 1
    scores[torch.arange(n), last] = acc.float() * 2 - 1
    return scores, {"acc": acc.numpy().tolist(), "score": (acc.float() * 2 - 1).tolist()}


class _Trainer:
    """The driver-side method sequence of verl's `RayPPOTrainer.fit` / `RayDAPOTrainer.fit` (see module doc)."""

    def __init__(self, kl_in_reward_dapo: bool = False) -> None:
        self.global_steps = 0
        self.kl_in_reward_dapo = kl_in_reward_dapo
        self.updated: list[DataProto] = []
        self.tokenizer = None
        self.config = {"actor_rollout_ref": {"model": {"path": "tiny"}}}

    def _compute_old_log_prob(self, batch: DataProto):
        # Stands in for the actor worker group: deterministic per-row values we can check against.
        g = torch.Generator().manual_seed(int(batch.batch["responses"].sum()))
        n = len(batch)
        entropy = torch.rand(n, T, generator=g) * 3
        log_probs = -torch.rand(n, T, generator=g) * 5
        out = DataProto.from_single_dict({"old_log_probs": log_probs, "entropys": entropy})
        self.last_entropys = entropy
        return out, 0.0

    def _update_actor(self, batch: DataProto) -> DataProto:
        assert "entropys" not in batch.batch.keys()
        self.updated.append(batch)
        return DataProto.from_single_dict(data={}, meta_info={"metrics": {}})

    def _old_log_prob_and_pop(self, batch: DataProto) -> DataProto:
        old, _mfu = self._compute_old_log_prob(batch)
        old.batch.pop("entropys")  # what verl does right after `actor/entropy`
        return batch.union(old)

    def _step(self, seed: int) -> None:
        batch = _generated_batch(seed)
        if self.kl_in_reward_dapo:  # DAPO recipe, use_kl_in_reward=True: old log-probs before filtering
            batch = self._old_log_prob_and_pop(batch)
        scores, extra = _rewards(batch, seed, all_same_group=1 if self.kl_in_reward_dapo else None)
        batch.batch["token_level_scores"] = scores
        batch.non_tensor_batch.update({k: np.array(v) for k, v in extra.items()})
        if self.kl_in_reward_dapo:
            keep = [i for i in range(len(batch)) if i // N_ROLLOUT != 1]  # the filter_groups result
            batch = batch[keep]
        else:
            batch = self._old_log_prob_and_pop(batch)
        adv, _ = compute_grpo_outcome_advantage(scores[: len(batch)] if not self.kl_in_reward_dapo
                                                else batch.batch["token_level_scores"],
                                                batch.batch["response_mask"], batch.non_tensor_batch["uid"])
        batch.batch["advantages"] = adv
        self._update_actor(batch)

    def fit(self, steps: int = 2) -> None:
        for _ in range(steps):
            self.global_steps += 1
            self._step(seed=self.global_steps)


def _expected_rows(batch: DataProto, entropys: torch.Tensor) -> list[dict]:
    mask = batch.batch["response_mask"].bool()
    rows = []
    for i in range(len(batch)):
        m = mask[i]
        rows.append({
            "token_ids": batch.batch["responses"][i][m].tolist(),
            "entropy": entropys[i][m].numpy(),
            "logprob": batch.batch["old_log_probs"][i][m].numpy(),
            "reward": float(batch.batch["token_level_scores"][i].sum()),
            "advantage": float(batch.batch["advantages"][i][m].mean()),
            "group_id": str(batch.non_tensor_batch["uid"][i]),
            "correct": bool(batch.non_tensor_batch["acc"][i]),
        })
    return rows


def _assert_rows_equal(table, expected: list[dict]) -> None:
    got = table.to_pylist()
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g["token_ids"] == e["token_ids"]
        assert g["response_length"] == len(e["token_ids"])
        np.testing.assert_allclose(g["entropy"], e["entropy"], rtol=1e-3, atol=1e-3)  # float16
        np.testing.assert_allclose(g["logprob"], e["logprob"], rtol=1e-3, atol=5e-3)
        assert g["reward"] == pytest.approx(e["reward"])
        assert g["advantage"] == pytest.approx(e["advantage"], abs=1e-5)
        assert g["group_id"] == e["group_id"]
        assert g["correct"] is e["correct"]


def test_step_from_dataproto_matches_tensors():
    trainer = _Trainer()
    batch = _generated_batch(seed=7)
    scores, extra = _rewards(batch, seed=7)
    batch.batch["token_level_scores"] = scores
    batch.non_tensor_batch.update({k: np.array(v) for k, v in extra.items()})
    old, _ = trainer._compute_old_log_prob(batch)
    entropys = old.batch.pop("entropys")
    batch = batch.union(old)
    adv, _ = compute_grpo_outcome_advantage(scores, batch.batch["response_mask"], batch.non_tensor_batch["uid"])
    batch.batch["advantages"] = adv

    arrays = step_from_dataproto(batch, entropys)
    n = N_PROMPTS * N_ROLLOUT
    assert arrays["token_ids"].shape == (n, T) and arrays["entropy"].shape == (n, T)
    np.testing.assert_array_equal(arrays["prompt_index"], np.repeat(np.arange(N_PROMPTS), N_ROLLOUT))
    assert arrays["truncated"][1] and arrays["truncated"].sum() == int((batch.batch["response_mask"].sum(-1) == T).sum())
    assert arrays["kept"].all()
    np.testing.assert_allclose(arrays["reward"], scores.sum(-1).numpy())
    with pytest.raises(Exception, match="entropys"):
        step_from_dataproto(batch)  # popped: the caller must pass them


def test_attach_writes_trace_equal_to_tensors(tmp_path):
    trainer = _Trainer()
    tracer = attach(trainer, tmp_path / "run")
    trainer.fit(steps=2)
    assert tracer.writer.report.written == 2 and tracer.writer.report.ok
    store = TraceStore(tmp_path / "run")
    assert store.steps == [1, 2]
    assert store.run_info["trainer"] == "verl._Trainer"
    # Step 2's entropies are the ones verl popped; the batch passed to the update holds the rest.
    _assert_rows_equal(store.read_step(2), _expected_rows(trainer.updated[1], trainer.last_entropys))
    assert [e["n_responses"] for e in store.manifest] == [N_PROMPTS * N_ROLLOUT] * 2


def test_dapo_filter_after_old_log_prob_records_dropped_rows(tmp_path):
    trainer = _Trainer(kl_in_reward_dapo=True)
    tracer = attach(trainer, tmp_path / "run")
    trainer.fit(steps=1)
    assert tracer.writer.report.written == 1
    table = TraceStore(tmp_path / "run").read_step(1)
    kept = table["kept"].to_pylist()
    assert kept.count(True) == (N_PROMPTS - 1) * N_ROLLOUT and kept.count(False) == N_ROLLOUT
    kept_rows = table.filter(table["kept"])
    _assert_rows_equal(kept_rows, _expected_rows(trainer.updated[0], trainer.last_entropys[
        [i for i in range(N_PROMPTS * N_ROLLOUT) if i // N_ROLLOUT != 1]]))
    dropped = table.filter(table["kept"].is_valid() & ~np.array(kept)).to_pylist()
    assert all(r["advantage"] is None and r["correct"] is True for r in dropped)  # all-correct group
    assert len({r["group_id"] for r in dropped}) == 1


def test_attach_without_verl_gives_install_hint(monkeypatch):
    import sys

    from wbtrace.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "verl", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'wbtrace\[verl\]'"):
        attach(_Trainer(), "unused")
