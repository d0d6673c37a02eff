"""The analysis layer against independent numpy computations on a small trace written by the real writer.

The trace has kept and filtered groups, an empty step (no responses) and an empty response; the
covariance is also checked against verl's own Clip-Cov / KL-Cov losses on the same tensors.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from wbtrace import TraceStore, TraceWriter
from wbtrace.analysis import compare, covariance, forks, groups, positions
from wbtrace.analysis.frames import Where
from wbtrace.stats import position_profile

T = 7
VOCAB = [f"t{i}" for i in range(6)]


def _write(run_dir, seed: int) -> dict[int, dict]:
    """Steps 1 and 3 with 8 responses (groups g0 kept, g1 filtered), step 2 with none; the arrays as stored."""
    rng = np.random.default_rng(seed)
    truth = {}
    with TraceWriter(run_dir, vocab=VOCAB, logprob_dtype="float32") as w:
        for step, n in ((1, 8), (2, 0), (3, 8)):
            lengths = rng.integers(1, T + 1, n)
            if n:
                lengths[3] = 0  # an empty response
            mask = np.arange(T)[None, :] < lengths[:, None]
            ids = rng.integers(0, len(VOCAB), (n, T))
            ent = rng.exponential(0.8, (n, T)).astype(np.float32)
            lp = -rng.exponential(1.0, (n, T)).astype(np.float32)
            group = np.arange(n) // 4
            correct = rng.random(n) < 0.5
            reward = np.where(correct, 1.0, -1.0).astype(np.float32)
            if n:
                reward[4:] = 0.5  # group g1: zero spread
            adv = rng.normal(size=n).astype(np.float32) * 2
            kept = group == 0
            w.write_step(step, token_ids=ids, response_mask=mask, entropy=ent, logprob=lp, reward=reward,
                         advantage=adv, correct=correct, kept=kept, group_id=np.array([f"g{g}" for g in group]),
                         prompt_text=np.array([f"prompt {g + step // 2}" for g in group]))
            truth[step] = {"ids": ids, "mask": mask, "ent": ent.astype(np.float16).astype(np.float32), "lp": lp,
                           "reward": reward, "adv": adv, "correct": correct, "kept": kept, "group": group,
                           "lengths": lengths}
    return truth


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    d = tmp_path_factory.mktemp("analysis") / "run"
    truth = _write(d, 0)
    return TraceStore(d), truth


def _flat(t: dict, rows: np.ndarray) -> dict[str, np.ndarray]:
    """Tokens of the chosen responses in row-major order, with their per-response values repeated."""
    m = t["mask"] & rows[:, None]
    r = np.nonzero(m)[0]
    pos = np.nonzero(m)[1]
    return {"ids": t["ids"][m], "ent": t["ent"][m], "lp": t["lp"][m], "adv": t["adv"][r], "row": r, "pos": pos,
            "len": t["lengths"][r]}


def _select(t: dict, where: Where) -> np.ndarray:
    rows = np.ones(len(t["kept"]), bool)
    if where.kept is not None:
        rows &= t["kept"] == where.kept
    if where.correct is not None:
        rows &= t["correct"] == where.correct
    return rows


# ---------------------------------------------------------------- forks

@pytest.mark.parametrize("where", [Where(), Where(kept=True), Where(kept=False, correct=True)])
def test_forks_match_numpy_counts(trace, where):
    store, truth = trace
    ids = np.concatenate([_flat(t, _select(t, where))["ids"] for t in truth.values()])
    ent = np.concatenate([_flat(t, _select(t, where))["ent"] for t in truth.values()])
    got = forks.forks(store, threshold=0.672, top=100, where=where)
    fork = ent > 0.672
    expect = sorted(((int((ids[fork] == i).sum()), -i) for i in np.unique(ids[fork])), reverse=True)
    assert [(f, -i) for f, i in expect] == list(zip(got["forks"].to_list(), got["token_id"].to_list()))
    for row in got.iter_rows(named=True):
        sel = ids == row["token_id"]
        assert row["count"] == sel.sum()
        assert row["fork_share"] == pytest.approx(fork[sel].mean())
        assert row["entropy_mean"] == pytest.approx(ent[sel].mean(), rel=1e-5)
        assert row["fork_entropy_mean"] == pytest.approx(ent[sel & fork].mean(), rel=1e-5)
        assert row["text"] == VOCAB[row["token_id"]]


def test_forks_quantile_is_per_step_and_by_splits(trace):
    store, truth = trace
    got = forks.forks(store, quantile=0.8, top=100, by=("correct",))
    counts: dict[tuple[bool, int], int] = {}
    for t in truth.values():
        f = _flat(t, np.ones(len(t["kept"]), bool))
        if not f["ent"].size:
            continue
        cut = np.quantile(f["ent"], 0.8)
        for c, i in zip(t["correct"][f["row"]][f["ent"] > cut], f["ids"][f["ent"] > cut]):
            counts[(bool(c), int(i))] = counts.get((bool(c), int(i)), 0) + 1
    assert {(c, i): n for c, i, n in got.select("correct", "token_id", "forks").iter_rows()} == counts
    assert got["correct"].to_list() == sorted(got["correct"].to_list())  # grouped: incorrect first


def test_forks_trend_min_count_and_low_list(trace):
    store, truth = trace
    trend = forks.forks_trend(store, [0, 1])
    for step, tok, n, nf, _ in trend.iter_rows():
        f = _flat(truth[step], np.ones(len(truth[step]["kept"]), bool))
        assert n == (f["ids"] == tok).sum() and nf == ((f["ids"] == tok) & (f["ent"] > 0.672)).sum()
    assert 2 not in trend["step"].to_list()  # the empty step has no rows
    assert forks.forks(store, min_count=10**6).height == 0
    low = forks.low_entropy_tokens(store, threshold=100.0)
    assert low["count"].sum() == sum(t["mask"].sum() for t in truth.values())


# ---------------------------------------------------------------- covariance

def _cov_reference(t: dict, rows: np.ndarray):
    f = _flat(t, rows)
    a, lp = f["adv"].astype(np.float64), f["lp"].astype(np.float64)
    return f, ((a - a.mean()) * (lp - lp.mean()) if a.size else a)


def test_cov_by_step_matches_numpy(trace):
    store, truth = trace
    got = covariance.cov_by_step(store, clip_cov_lb=0.1, clip_cov_ub=2.0, kl_cov_ratio=0.1)
    assert got["step"].to_list() == [1, 2, 3]
    ents = {}
    for row in got.iter_rows(named=True):
        t = truth[row["step"]]
        f, cov = _cov_reference(t, t["kept"])
        if not cov.size:
            assert row["n_tokens"] is None and row["cov_mean"] is None  # the empty step keeps its row
            continue
        ents[row["step"]] = f["ent"].mean()
        assert row["n_tokens"] == cov.size
        assert row["cov_mean"] == pytest.approx(cov.mean(), rel=1e-6)
        assert row["clip_cov_candidates"] == ((cov > 0.1) & (cov < 2.0)).sum()
        assert row["clip_cov_clipped"] == min(((cov > 0.1) & (cov < 2.0)).sum(), max(int(2e-4 * cov.size), 1))
        assert row["kl_cov_k"] == max(1, int(cov.size * 0.1))
        assert row["reward_mean"] == pytest.approx(t["reward"][t["kept"]].mean())
    assert got["next_step"].to_list() == [2, 3, None]
    assert got["entropy_change"].to_list()[:2] == [None, None]  # step 2 has no kept tokens


def test_token_cov_flags_match_numpy(trace):
    store, truth = trace
    t = truth[3]
    got = covariance.token_cov(store, [3], Where(kept=None), kl_cov_ratio=0.1).collect()
    f, cov = _cov_reference(t, np.ones(len(t["kept"]), bool))
    np.testing.assert_allclose(got["cov"].to_numpy(), cov, rtol=1e-6)
    k = max(1, int(cov.size * 0.1))
    assert set(np.flatnonzero(got["kl_cov"].to_numpy())) == set(np.argsort(-cov, kind="stable")[:k])
    top = covariance.top_cov_tokens(store, 3, Where(kept=None), top=3)
    assert top["cov"].to_list() == pytest.approx(sorted(cov, reverse=True)[:3])


def _padded(t: dict):
    import torch

    rows = t["kept"]
    m = torch.tensor(t["mask"][rows], dtype=torch.float32)
    lp = torch.tensor(t["lp"][rows]) * m
    adv = torch.tensor(t["adv"][rows])[:, None].expand_as(m).contiguous()
    return lp, adv, m


def test_covariance_is_verls_clip_cov_and_kl_cov(trace):
    """verl's losses on the same tensors equal the loss rebuilt from our token selections."""
    torch = pytest.importorskip("torch")
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    from verl.workers.config import ActorConfig
    from verl.workers.config.actor import PolicyLossConfig

    store, truth = trace
    lp, adv, m = _padded(truth[1])
    flat = m.bool()
    # Clip-Cov, ratio 1 (log_prob == old): nothing clipped by origin; clip_cov_ratio 1 detaches every candidate.
    cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, policy_loss=PolicyLossConfig(
        loss_mode="clip_cov", clip_cov_ratio=1.0, clip_cov_lb=0.05, clip_cov_ub=3.0))
    loss, metrics = core_algos.compute_policy_loss_clip_cov(lp, lp, adv, m, "token-mean", cfg)
    ours = covariance.token_cov(store, [1], clip_cov_lb=0.05, clip_cov_ub=3.0).collect()
    cand = torch.tensor(ours["clip_cov_candidate"].to_numpy())
    assert 0 < int(cand.sum()) < flat.sum()
    expect = (-adv[flat] * (~cand).float()).mean()
    assert float(loss) == pytest.approx(float(expect), abs=1e-6)
    assert metrics["actor/pg_clipfrac"] == pytest.approx(float(cand.float().mean()), abs=1e-6)
    # KL-Cov: the top-k tokens by covariance get the |log-ratio| penalty; a per-token old log-prob shows which.
    old = lp - torch.linspace(0.01, 0.5, lp.numel()).reshape(lp.shape)
    cfg = ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=1, policy_loss=PolicyLossConfig(
        loss_mode="kl_cov", kl_cov_ratio=0.15, ppo_kl_coef=1.0))
    loss, _ = core_algos.compute_policy_loss_kl_cov(old, lp, adv, m, "token-mean", cfg)
    ours = covariance.token_cov(store, [1], kl_cov_ratio=0.15).collect()
    top = torch.tensor(ours["kl_cov"].to_numpy())
    d = (lp - old)[flat]
    expect = (-adv[flat] * torch.exp(d) + top.float() * d.abs()).mean()
    assert int(top.sum()) == max(1, int(flat.sum() * 0.15))
    assert float(loss) == pytest.approx(float(expect), abs=1e-6)


def test_entropy_reward_fit_recovers_the_law():
    import polars as pl

    h = np.linspace(0.2, 1.5, 12)
    df = pl.DataFrame({"entropy_mean": h, "reward_mean": -0.3 * np.exp(h) + 0.9})
    fit = covariance.entropy_reward_fit(df)
    assert fit["a"] == pytest.approx(0.3) and fit["b"] == pytest.approx(0.9) and fit["rmse"] < 1e-9
    assert covariance.entropy_reward_fit(df.head(1))["a"] is None


# ---------------------------------------------------------------- positions

def test_position_heatmap_and_end_share_match_numpy(trace):
    store, truth = trace
    heat = positions.position_heatmap(store, bins=4)
    assert heat.height == 3 * 4
    for step, t in truth.items():
        f = _flat(t, np.ones(len(t["kept"]), bool))
        b = np.minimum((f["pos"] / np.maximum(f["len"], 1) * 4).astype(int), 3)
        rows = heat.filter(heat["step"] == step)
        for bi in range(4):
            r = rows.filter(rows["bin"] == bi).row(0, named=True)
            assert r["n_tokens"] == (b == bi).sum()
            if (b == bi).any():
                assert r["entropy_mean"] == pytest.approx(f["ent"][b == bi].mean(), rel=1e-5)
            else:
                assert r["entropy_mean"] is None
    one = positions.position_heatmap(store, [1])
    profile = position_profile(store.read_step(1))
    assert [x is None for x in one["entropy_mean"]] == [x is None for x in profile]
    assert [x for x in one["entropy_mean"] if x is not None] == pytest.approx([x for x in profile if x is not None])
    wide = positions.heatmap_matrix(heat)
    assert wide.columns == ["step", "0%", "25%", "50%", "75%"]
    share = positions.end_share(store, threshold=0.5, tail=0.3)
    for row in share.iter_rows(named=True):
        f = _flat(truth[row["step"]], np.ones(len(truth[row["step"]]["kept"]), bool))
        hi = f["ent"] > 0.5
        tail = f["pos"] / np.maximum(f["len"], 1) >= 0.7
        assert (row["n_high"], row["n_high_tail"]) == (hi.sum(), (hi & tail).sum())
        assert row["end_share"] == (pytest.approx((hi & tail).sum() / hi.sum()) if hi.any() else None)


# ---------------------------------------------------------------- groups

def test_pass_at_k_is_the_unbiased_estimator():
    n, c = np.array([4, 4, 8, 8, 3]), np.array([0, 1, 3, 8, 2])
    for k in (1, 2, 3):
        expect = [1 - math.comb(ni - ci, k) / math.comb(ni, k) for ni, ci in zip(n, c)]
        np.testing.assert_allclose(groups.pass_at_k(n, c, k), expect)
    assert np.isnan(groups.pass_at_k(np.array([2]), np.array([1]), 3)[0])


def test_groups_match_numpy(trace):
    store, truth = trace
    t = truth[1]
    got = groups.groups(store, 1, k=2)
    assert got["group_id"].to_list() == ["g0", "g1"]
    for g, row in enumerate(got.iter_rows(named=True)):
        sel = t["group"] == g
        assert row["rewards"] == pytest.approx(t["reward"][sel].tolist())
        assert row["zero_spread"] == (t["reward"][sel].std() == 0)
        assert row["kept"] == bool(t["kept"][sel].all())
        assert row["n_correct"] == t["correct"][sel].sum()
        c, n = int(t["correct"][sel].sum()), int(sel.sum())
        assert row["pass_at_k"] == pytest.approx(1 - math.comb(n - c, 2) / math.comb(n, 2))
        means = [t["ent"][i][t["mask"][i]].mean() if t["mask"][i].any() else None for i in np.flatnonzero(sel)]
        assert [x is None for x in row["entropy_mean"]] == [x is None for x in means]
        assert [x for x in row["entropy_mean"] if x is not None] == pytest.approx([x for x in means if x is not None])
    assert groups.groups(store, 2).height == 0
    shares = groups.group_shares(store)
    assert shares["n_groups"].to_list() == [2, 0, 2]
    assert shares["share_zero_spread"].to_list()[0] == 0.5


# ---------------------------------------------------------------- compare

@pytest.fixture(scope="module")
def other(tmp_path_factory):
    d = tmp_path_factory.mktemp("analysis_b") / "run"
    truth = _write(d, 1)
    return TraceStore(d), truth


def test_compare_curves_overlap_and_prompts(trace, other):
    (a, _), (b, _) = trace, other
    cur = compare.curves(a, b)
    assert cur["step"].to_list() == [1, 2, 3]
    assert cur["entropy_mean_a"][0] == pytest.approx(a.manifest[0]["entropy_mean"])
    assert cur["entropy_mean_b"][2] == pytest.approx(b.manifest[2]["entropy_mean"])
    ov = compare.fork_overlap_by_step(a, b, top=3)
    for row in ov.iter_rows(named=True):
        sa = set(forks.forks(a, [row["step"]], top=3)["token_id"].to_list())
        sb = set(forks.forks(b, [row["step"]], top=3)["token_id"].to_list())
        assert row["common"] == len(sa & sb)
        assert row["jaccard"] == (len(sa & sb) / len(sa | sb) if sa | sb else 0.0)
    how, m = compare.matched_prompts(a, b, 3, 1)  # prompts 1, 2 at step 3 vs prompts 0, 1 at step 1
    assert how == "prompt_text" and m["prompt_key"].to_list() == ["prompt 1"] and m["n_b"].to_list() == [4]
    how, m = compare.matched_prompts(a, b, 1, 1)
    assert m["prompt_key"].to_list() == ["prompt 0", "prompt 1"] and m["n_a"].to_list() == [4, 4]
    hist = compare.prompt_responses(a, "prompt 1")  # group g1 of step 1 and g0 of step 3
    assert hist.select("step", "sample_id").rows() == [(1, i) for i in range(4, 8)] + [(3, i) for i in range(4)]


# ---------------------------------------------------------------- one step table in memory (the W&B sink's case)

def test_a_step_table_gives_the_same_answers_as_the_store(trace):
    from wbtrace.analysis.step_scalars import step_scalars

    store, truth = trace
    table = store.read_step(1)
    assert covariance.cov_by_step(table).drop("next_step", "entropy_change").equals(
        covariance.cov_by_step(store, [1]).drop("next_step", "entropy_change"))
    assert forks.forks(table, top=5)["forks"].to_list() == forks.forks(store, [1], top=5)["forks"].to_list()
    got = step_scalars(table)
    t = truth[1]
    _, cov = _cov_reference(t, t["kept"])
    assert got["cov_mean"] == pytest.approx(cov.mean())
    assert got["share_zero_spread"] == 0.5 and got["share_all_correct"] == groups.group_shares(store, [1])[
        "share_all_correct"][0]
    f = _flat(t, np.ones(len(t["kept"]), bool))
    fork = f["ent"] > 0.672
    ids, counts = np.unique(f["ids"][fork], return_counts=True)
    top = ids[np.lexsort((ids, -counts))][:10]
    assert got["forks_top_share"] == pytest.approx(np.isin(f["ids"][fork], top).mean())
    assert got["forks_top_fork_share"] == pytest.approx(fork[np.isin(f["ids"], top)].mean())
    assert step_scalars(store.read_step(2)) == {}  # the empty step logs nothing
