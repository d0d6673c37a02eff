"""Trace sampling: deterministic, whole groups, recorded in the manifest, unbiased statistics."""

from __future__ import annotations

import numpy as np
import pytest

from wbtrace import TraceStore, TraceWriter
from wbtrace.errors import BadInputError
from wbtrace.sampling import TraceSampling, choose_rows
from wbtrace.schema import pack_step
from wbtrace.stats import step_stats
from wbtrace.synthetic import make_step


def _write(run_dir, sampling, steps=(1, 2, 3)):
    with TraceWriter(run_dir, sampling=sampling) as w:
        for s in steps:
            w.write_step(s, **make_step(32, 20, 100, seed=s, group_size=4))
    assert w.report.ok, w.report
    return TraceStore(run_dir)


def test_rows_are_whole_groups_chosen_deterministically(tmp_path):
    sampling = TraceSampling(group_fraction=0.25, seed=7)
    a, b = _write(tmp_path / "a", sampling), _write(tmp_path / "b", sampling)
    for s in (1, 2, 3):
        ta, tb = a.read_step(s), b.read_step(s)
        assert ta.column("sample_id").to_pylist() == tb.column("sample_id").to_pylist()
        groups = ta.column("group_id").to_pylist()
        assert len(set(groups)) == 2  # 8 groups of 4, a quarter kept
        assert all(groups.count(g) == 4 for g in set(groups))  # whole groups
    firsts = {tuple(a.read_step(s).column("sample_id").to_pylist()) for s in (1, 2, 3)}
    assert len(firsts) > 1  # the permutation changes with the step
    other = _write(tmp_path / "c", TraceSampling(group_fraction=0.25, seed=8))
    assert any(other.read_step(s).column("sample_id").to_pylist() != a.read_step(s).column("sample_id").to_pylist()
               for s in (1, 2, 3))


def test_manifest_keeps_exact_whole_step_statistics_and_records_the_sample(tmp_path):
    store = _write(tmp_path, TraceSampling(token_budget=150, seed=1))
    entry = store.manifest[0]
    full = step_stats(pack_step(1, **make_step(32, 20, 100, seed=1, group_size=4)))
    assert entry["n_tokens"] == full["n_tokens"] and entry["entropy_p90"] == pytest.approx(full["entropy_p90"])
    rec = entry["sampling"]
    stored = store.read_step(1)
    assert rec["groups"] == 8 and rec["groups_stored"] == len(set(stored.column("group_id").to_pylist()))
    assert rec["responses_stored"] == stored.num_rows and rec["token_budget"] == 150
    assert rec["tokens_stored"] == sum(stored.column("response_length").to_pylist()) < full["n_tokens"]


def test_every_n_steps_keeps_the_first_and_the_last(tmp_path):
    with TraceWriter(tmp_path, sampling=TraceSampling(every_n_steps=4, last_step=10)) as w:
        kept = [s for s in range(1, 11) if w.write_step(s, **make_step(2, 4, 10, seed=s))]
    assert kept == [1, 4, 8, 10] and w.report.sampled_out == 6 and w.report.ok
    assert TraceStore(tmp_path).steps == kept
    assert TraceStore(tmp_path).manifest[0]["sampling"]["every_n_steps"] == 4
    with TraceWriter(tmp_path, sampling=TraceSampling(every_n_steps=4, last_step=20)) as w:  # resumed
        assert not w.write_step(11, **make_step(2, 4, 10, seed=11))  # not the trace's first step
        assert w.write_step(12, **make_step(2, 4, 10, seed=12))


def test_group_sampling_is_unbiased_when_long_groups_have_high_entropy():
    """Long responses carry higher entropy here, so a rule that fills the token budget with whatever
    fits (short groups first) would be biased low; uniform group sampling is not."""
    rng = np.random.default_rng(0)
    sampling = TraceSampling(token_budget=2_000, seed=3)
    errors, greedy = [], []
    for step in range(300):
        codes = np.repeat(np.arange(16), 4)
        group_len = rng.integers(10, 300, 16)
        lengths = group_len[codes]
        mean_h = 0.2 + group_len[codes] / 300.0  # per-response mean entropy grows with length
        true = np.average(mean_h, weights=lengths)
        rows, info = choose_rows(sampling, step, codes, lengths)
        assert info["groups_stored"] < 16
        errors.append(np.average(mean_h[rows], weights=lengths[rows]) - true)
        by_len = np.argsort(group_len)  # the biased rule: shortest groups until the budget is full
        fit = by_len[np.cumsum(group_len[by_len] * 4) <= 2_000]
        g_rows = np.flatnonzero(np.isin(codes, fit))
        greedy.append(np.average(mean_h[g_rows], weights=lengths[g_rows]) - true)
    sem = np.std(errors) / np.sqrt(len(errors))
    assert abs(np.mean(errors)) < 3 * sem + 0.01
    assert np.mean(greedy) < -0.1  # the check above can fail: the biased rule is far off


def test_bad_settings_are_one_clear_error():
    with pytest.raises(BadInputError, match="group_fraction=0 must be in"):
        TraceSampling(group_fraction=0)
    with pytest.raises(BadInputError, match="every_n_steps=0"):
        TraceSampling(every_n_steps=0)
