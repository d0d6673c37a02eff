"""The analysis commands and ``show`` through CliRunner: thin faces over wbtrace.analysis, one-line errors,
hostile token text escaped, output that keeps its information when piped."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from wbtrace import TraceStore, TraceWriter
from wbtrace.analysis import Where, covariance, forks, groups, positions
from wbtrace.cli import main
from wbtrace.synthetic import make_step

HOSTILE = ["\x1b]52;c;aGk=\x07", "[/]", "[bold red]x", "\u202eevil", "\x1b[2J", "ok"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def as_frame(output: str) -> pl.DataFrame:
    body = json.loads(output)
    return pl.DataFrame(body["rows"] if isinstance(body, dict) else body)


def test_forks_json_is_the_analysis_frame(trace_dir):
    r = run("forks", trace_dir, "--top", 5, "--kept", "--format", "json")
    assert r.exit_code == 0, r.output
    expect = forks.forks(TraceStore(trace_dir), top=5, where=Where(kept=True))
    assert as_frame(r.output)["token_id"].to_list() == expect["token_id"].to_list()
    assert as_frame(r.output)["forks"].to_list() == expect["forks"].to_list()
    table = run("forks", trace_dir, "--top", 5, "--kept")
    assert repr(expect["text"][0]) in table.output
    trend = run("forks", trace_dir, "--top", 3, "--trend", "--format", "csv")
    assert trend.output.splitlines()[0] == "step,token_id,count,forks,fork_share"


def test_cov_json_and_fit(trace_dir):
    r = run("cov", trace_dir, "--tokens-at", 2, "--top", 3, "--format", "json")
    assert r.exit_code == 0, r.output
    body = json.loads(r.output)
    expect = covariance.cov_by_step(TraceStore(trace_dir))
    assert [row["cov_mean"] for row in body["rows"]] == pytest.approx(expect["cov_mean"].to_list())
    assert set(body["fit"]) == {"a", "b", "rmse", "r2", "n"} and len(body["tokens"]) == 3
    table = run("cov", trace_dir)
    assert "R = -a exp(H) + b over 3 steps" in table.output


def test_positions_groups_and_compare(trace_dir, tmp_path):
    store = TraceStore(trace_dir)
    r = run("positions", trace_dir, "--bins", 4, "--format", "json")
    body = json.loads(r.output)
    assert len(body["rows"]) == 3 * 4 and len(body["end_share"]) == 3
    heat = positions.position_heatmap(store, bins=4)
    assert [x["entropy_mean"] for x in body["rows"]] == pytest.approx(heat["entropy_mean"].to_list())
    r = run("groups", trace_dir, "--step", 1, "--format", "json")
    body = json.loads(r.output)
    assert [g["n_correct"] for g in body["rows"]] == groups.groups(store, 1)["n_correct"].to_list()
    assert "groups" in run("groups", trace_dir, "--step", 1).output
    r = run("compare", trace_dir, trace_dir, "--top", 5, "--format", "json")
    body = json.loads(r.output)
    assert [o["jaccard"] for o in body["fork_overlap"]] == [1.0, 1.0, 1.0]
    assert body["matched_by"] == "prompt_index" and len(body["matched_prompts"]) == 2


@pytest.mark.parametrize("args, message", [
    (["groups", "{t}", "--step", "9"], "step 9 not in"),
    (["cov", "{bare}"], "no 'logprob' column: the covariance needs"),
    (["forks", "{bare}", "--correct"], "no 'correct' column"),
    (["compare", "{t}", "{bare}", "--prompt-step", "7"], "step 7 is not in both traces"),
    (["show", "{t}", "--step", "1", "--sample", "99"], "step 1 has no sample 99"),
])
def test_bad_input_is_one_line_exit_2(trace_dir, tmp_path, args, message):
    bare = tmp_path / "bare"
    with TraceWriter(bare, vocab=["a", "b"]) as w:
        w.write_step(1, token_ids=np.array([[0, 1]]), response_mask=np.array([[1, 1]]), entropy=np.array([[0.1, 2.0]]))
    r = run(*(a.format(t=trace_dir, bare=bare) for a in args))
    assert r.exit_code == 2, r.output
    assert r.output.count("\n") == 1 and r.output.startswith("Error: ") and message in r.output


def test_stats_filters_and_policy_columns(tmp_path):
    d = tmp_path / "t"
    with TraceWriter(d, vocab=[str(i) for i in range(50)]) as w:
        arrays = make_step(8, 12, 50, seed=3)
        n, t = arrays["token_ids"].shape
        ratio = np.where(arrays["kept"][:, None], 1 + 0.1 * np.random.default_rng(0).standard_normal((n, t)), np.nan)
        w.write_step(1, **arrays, ratio=ratio.astype(np.float32), clipped=np.abs(ratio - 1) > 0.1)
    all_ = json.loads(run("stats", d, "--json").output)[0]
    kept = json.loads(run("stats", d, "--json", "--kept").output)[0]
    wrong = json.loads(run("stats", d, "--json", "--filtered", "--incorrect").output)[0]
    k, c = arrays["kept"], arrays["correct"]
    assert (all_["n_responses"], kept["n_responses"], wrong["n_responses"]) == (8, k.sum(), (~k & ~c).sum())
    m = arrays["response_mask"].astype(bool)
    r = ratio[m & k[:, None]]
    assert kept["ratio_mean"] == pytest.approx(r.mean(), rel=1e-5) and kept["ratio_max"] == pytest.approx(r.max())
    assert kept["clip_frac"] == pytest.approx((np.abs(r - 1) > 0.1).mean())
    assert "ratio mean" in run("stats", d).output


@pytest.fixture
def hostile_trace(tmp_path):
    d = tmp_path / "hostile"
    with TraceWriter(d, vocab=HOSTILE) as w:
        ids = np.array([[0, 1, 2, 3, 4, 5], [5, 5, 1, 0, 0, 0]])
        mask = np.array([[1] * 6, [1, 1, 1, 0, 0, 0]])
        ent = np.array([[0.1, 2.0, 0.5, 3.0, 0.0, 1.0], [0.0] * 6])
        w.write_step(1, token_ids=ids, response_mask=mask, entropy=ent, logprob=-ent, advantage=np.array([1.0, -1.0]),
                     group_id=np.array(["\x1b]0;title\x07", "[red]g"]), prompt_text=np.array(["p\x1b[31m", "q"]),
                     reward=np.array([1.0, 0.0]), correct=np.array([True, False]), kept=np.array([True, True]))
    return d


@pytest.mark.parametrize("args", [
    ["show", "{d}", "--step", "1", "--sample", "0"],
    ["show", "{d}", "--step", "1", "--sample", "0", "--values"],
    ["show", "{d}", "--step", "1"],
    ["forks", "{d}", "--threshold", "0.01"],
    ["forks", "{d}", "--trend", "--threshold", "0.01"],
    ["cov", "{d}", "--tokens-at", "1"],
    ["groups", "{d}", "--step", "1"],
    ["compare", "{d}", "{d}"],
    ["compare", "{d}", "{d}", "--prompt", "0"],
])
def test_hostile_token_text_never_reaches_the_terminal_raw(hostile_trace, args):
    r = run(*(a.format(d=hostile_trace) for a in args))
    assert r.exit_code == 0, r.output
    assert "\x1b" not in r.output and "\x07" not in r.output and "\u202e" not in r.output
    assert "\\x1b" in r.output or "[/]" in r.output  # shown, escaped, not swallowed as markup


def test_csv_and_json_keep_token_text_exactly(hostile_trace):
    """Data formats are lossless when piped (JSON escapes controls by itself; CSV is data for a program)."""
    import io

    csv = pl.read_csv(io.StringIO(run("forks", hostile_trace, "--threshold", 0.01, "--format", "csv").output))
    js = as_frame(run("forks", hostile_trace, "--threshold", 0.01, "--format", "json").output)
    assert set(csv["text"].to_list()) == set(js["text"].to_list()) == {HOSTILE[i] for i in (0, 1, 2, 3, 5)}


def test_show_plain_keeps_boundaries_marks_and_prompt(hostile_trace):
    r = run("show", hostile_trace, "--step", 1, "--sample", 0, "--threshold", 0.9)
    lines = r.output.splitlines()
    assert lines[1] == "prompt: p\\x1b[31m"
    # tokens between |, above-threshold ones (2.0, 3.0, 1.0) in **
    assert "response: |\\x1b]52;c;aGk=\\x07|**[/]**|[bold red]x|**\\u202eevil**|\\x1b[2J|**ok**|" in r.output
    values = run("show", hostile_trace, "--step", 1, "--sample", 0, "--values").output.splitlines()
    rows = [ln for ln in values if ln.strip()[:1].isdigit()]
    assert len(rows) == 6 and rows[3].split()[-1] == "*" and rows[0].split()[-1] != "*"
    listing = run("show", hostile_trace, "--step", 1).output
    assert "sample_id" in listing and "mean_H" in listing and "[red]g" in listing
