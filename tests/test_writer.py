"""TraceWriter: round trip, readers, crash safety, resume, and never raising into training."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import duckdb
import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from wbtrace import TraceStore, TraceWriter
from wbtrace.errors import TraceFormatError
from wbtrace.sinks.base import TraceSink
from wbtrace.synthetic import make_step


def test_round_trip_exact(tmp_path):
    step = make_step(6, 30, 500, seed=3)
    step["response_mask"][2] = 0  # an empty response
    with TraceWriter(tmp_path, vocab=[f"t{i}" for i in range(500)]) as w:
        assert w.write_step(5, **step)
        assert w.write_step(6, **make_step(1, 7, 500, seed=4))  # a step with one response
    table = TraceStore(tmp_path).read_step(5)
    mask = step["response_mask"].astype(bool)
    for i in range(6):
        assert table.column("token_ids")[i].as_py() == step["token_ids"][i][mask[i]].tolist()
        np.testing.assert_allclose(table.column("entropy")[i].as_py(), step["entropy"][i][mask[i]],
                                   rtol=1e-3, atol=1e-4)  # float16 rounding
    assert table.column("response_length").to_pylist()[2] == 0
    assert table.column("kept").to_pylist() == step["kept"].tolist()
    assert TraceStore(tmp_path).read_step(6).num_rows == 1


def test_files_read_by_pyarrow_duckdb_polars(trace_dir):
    path = TraceStore(trace_dir).step_path(2)
    want = pq.read_table(path).column("entropy").to_pylist()
    flat = [x for row in want for x in row]
    got_duck = duckdb.sql(f"SELECT unnest(entropy) AS h FROM read_parquet('{path}') ORDER BY sample_id").fetchall()
    assert [h for (h,) in got_duck] == pytest.approx(flat)
    got_pl = pl.read_parquet(path).explode("entropy")["entropy"].cast(pl.Float32).to_list()
    assert got_pl == pytest.approx(flat)


def test_manifest_has_stats_for_each_step(trace_dir):
    manifest = TraceStore(trace_dir).manifest
    assert [e["step"] for e in manifest] == [1, 2, 3]
    table = TraceStore(trace_dir).read_step(1)
    flat = np.array([x for row in table.column("entropy").to_pylist() for x in row], dtype=np.float32)
    assert manifest[0]["n_tokens"] == flat.size
    assert manifest[0]["entropy_p90"] == pytest.approx(np.percentile(flat, 90))
    assert manifest[0]["share_above"] == pytest.approx(np.mean(flat > 0.672))


def test_step_written_twice_is_skipped_and_file_untouched(trace_dir):
    before = TraceStore(trace_dir).step_path(2).read_bytes()
    with TraceWriter(trace_dir) as w:
        assert w.last_step == 3
        assert not w.write_step(2, **make_step(3, 5, 10, seed=99))
        assert w.write_step(4, **make_step(3, 5, 10, seed=99))
    assert w.report.skipped == 1 and w.report.written == 1
    assert TraceStore(trace_dir).step_path(2).read_bytes() == before
    assert TraceStore(trace_dir).steps == [1, 2, 3, 4]


def test_bad_input_never_raises_and_damages_nothing(trace_dir, caplog):
    before = {p.name: p.read_bytes() for p in (trace_dir / "steps").iterdir()}
    w = TraceWriter(trace_dir)
    step = make_step(4, 10, 50, seed=1)
    assert not w.write_step(10, **{**step, "entropy": step["entropy"][:, :5]})  # shape mismatch, sync
    nan = step["entropy"].copy()
    nan[0, 0] = np.nan
    assert w.write_step(11, **{**step, "entropy": nan})  # NaN found by the background thread
    assert not w.write_step("twelve", **step)
    report = w.close()
    assert report.rejected == 3 and report.written == 0
    assert any("NaN/inf" in m for m in report.messages)
    assert {p.name: p.read_bytes() for p in (trace_dir / "steps").iterdir()} == before
    assert "entropy has shape [4, 5]" in caplog.text


class _FailingSink(TraceSink):
    name = "failing"

    def __init__(self):
        self.calls = 0

    def log_step(self, step, step_file, stats, table):
        self.calls += 1
        raise ConnectionError("server down")


class _RecordingSink(TraceSink):
    name = "recording"

    def __init__(self):
        self.steps, self.run = [], None

    def log_run(self, run_dir, run_info):
        self.run = run_info

    def log_step(self, step, step_file, stats, table):
        assert step_file.exists() and stats["step"] == step and table.num_rows > 0
        self.steps.append(step)


def test_sinks_get_committed_steps_and_their_errors_are_counted(tmp_path):
    bad, good = _FailingSink(), _RecordingSink()
    with TraceWriter(tmp_path, sinks=[bad, good], run_info={"model": "m"}) as w:
        for s in (1, 2):
            w.write_step(s, **make_step(2, 5, 10, seed=s))
    assert good.steps == [1, 2] and good.run["model"] == "m"
    assert bad.calls == 2 and w.report.sink_errors["failing"] == 2
    assert TraceStore(tmp_path).steps == [1, 2]


def test_full_queue_drops_instead_of_stalling(tmp_path):
    class Slow(TraceSink):
        def log_step(self, *a):
            time.sleep(0.5)

    w = TraceWriter(tmp_path, sinks=[Slow()], queue_size=1, max_wait_ms=50)
    t0 = time.perf_counter()
    results = [w.write_step(s, **make_step(2, 4, 10, seed=s)) for s in range(4)]
    assert time.perf_counter() - t0 < 1.0
    report = w.close()
    assert report.dropped >= 1 and report.written + report.dropped == 4
    assert results.count(True) == report.written


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from wbtrace import TraceWriter
    from wbtrace.synthetic import make_step
    w = TraceWriter(sys.argv[1], queue_size=2, max_wait_ms=60_000)  # no drops: this test is about kills
    for s in range(1, 1000):
        w.write_step(s, **make_step(64, 2048, 50000, seed=s))
""")


def test_sigkill_leaves_whole_files_and_resume_continues(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, str(tmp_path)])
    manifest = tmp_path / "manifest.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not manifest.exists() or manifest.read_text().count("\n") < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    named = [json.loads(line)["step"] for line in manifest.read_text().splitlines()]
    assert len(named) >= 3
    files = sorted((tmp_path / "steps").glob("step_*.parquet"))
    for f in files:
        pq.read_table(f)  # every visible step file is whole
    assert set(named) <= {int(f.stem.split("_")[1]) for f in files}
    with TraceWriter(tmp_path) as w:
        last = w.last_step
        assert last == max(int(f.stem.split("_")[1]) for f in files)
        assert w.write_step(last + 1, **make_step(4, 8, 50, seed=0))
    store = TraceStore(tmp_path)
    assert store.steps == list(range(1, last + 2))
    assert not list((tmp_path / "steps").glob(".*tmp*"))


def test_torn_manifest_tail_is_repaired(trace_dir):
    with open(trace_dir / "manifest.jsonl", "a") as f:
        f.write('{"step": 4, "fi')  # crash in the middle of an append
    with TraceWriter(trace_dir) as w:
        w.write_step(4, **make_step(2, 5, 10, seed=4))
    assert TraceStore(trace_dir).steps == [1, 2, 3, 4]


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_step_file_is_a_clear_error(trace_dir, damage):
    path = TraceStore(trace_dir).step_path(2)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not parquet at all")
    with pytest.raises(TraceFormatError, match="corrupt or truncated Parquet file"):
        TraceStore(trace_dir).read_step(2)
    TraceStore(trace_dir).read_step(1)  # the others still read


def test_unknown_schema_version_and_not_a_trace(tmp_path, trace_dir):
    with pytest.raises(TraceFormatError, match="is not a wbtrace trace: no run.json"):
        TraceStore(tmp_path)
    info = json.loads((trace_dir / "run.json").read_text())
    (trace_dir / "run.json").write_text(json.dumps({**info, "schema_version": 99}))
    with pytest.raises(TraceFormatError, match="schema version 99"):
        TraceStore(trace_dir)
    with pytest.raises(TraceFormatError, match="schema version 99"):
        TraceWriter(trace_dir)


def test_equal_length_ragged_extra_stays_per_response(tmp_path):
    step = make_step(3, 6, 50, seed=1)
    prompts = [np.array([1, 2, 3, 4, 5, 6]), np.array([7, 8, 9, 10, 11, 12]), np.array([1, 1, 1, 1, 1, 1])]
    with TraceWriter(tmp_path) as w:
        w.write_step(1, **step, prompt_token_ids=prompts)
    assert w.report.ok
    got = TraceStore(tmp_path).read_step(1).column("prompt_token_ids").to_pylist()
    assert got == [p.tolist() for p in prompts]


def test_a_none_among_per_response_values_is_a_null_of_the_declared_type(tmp_path):
    step = make_step(2, 4, 10, seed=1)
    with TraceWriter(tmp_path) as w:
        assert w.write_step(np.int64(2), **{**step, "kept": [True, None], "correct": [False, None],
                                             "reward": [1.0, None]})
    assert w.report.ok, w.report
    table = TraceStore(tmp_path).read_step(2)
    assert table.column("correct").to_pylist() == [False, None]
    assert table.column("reward").to_pylist() == [1.0, None]
    assert TraceStore(tmp_path).manifest[0]["accuracy"] == 0.0  # a missing value is not correct
    TraceWriter(tmp_path).close()  # and the directory still opens


def test_step_out_of_range_is_rejected_up_front(tmp_path):
    w = TraceWriter(tmp_path)
    assert not w.write_step(2**31, **make_step(2, 4, 10, seed=1))
    assert w.close().rejected == 1 and not list((tmp_path / "steps").iterdir())


def test_write_after_close_is_refused_not_lost(tmp_path):
    w = TraceWriter(tmp_path)
    w.close()
    assert not w.write_step(1, **make_step(2, 4, 10, seed=1))
    assert w.report.rejected == 1


def test_a_bad_extra_column_costs_the_column_not_the_step(tmp_path):
    step = make_step(3, 6, 10, seed=1)
    with TraceWriter(tmp_path) as w:
        w.write_step(1, **step, prompt_mask=np.ones((3, 4)), note=["a", "b", "c"])  # [N, P] with P != T
    table = TraceStore(tmp_path).read_step(1)
    assert "prompt_mask" not in table.column_names and table.column("note").to_pylist() == ["a", "b", "c"]
    assert w.report.columns_dropped == 1 and w.report.rejected == 0 and "prompt_mask" in w.report.messages[0]
