"""examples/ray_multi_trace.py on the test session's local Ray: several traces read by
``ray.data.read_parquet`` and by DuckDB give the manifests' own statistics."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from conftest import write_trace  # noqa: E402
from dapo_fixtures import ray_address  # noqa: E402, F401  (session fixture)

from wbtrace import TraceStore  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "ray_multi_trace.py"


def _example():
    spec = importlib.util.spec_from_file_location("ray_multi_trace", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_one_analysis_over_several_traces_on_ray_and_duckdb(tmp_path, ray_address):  # noqa: F811
    pytest.importorskip("ray.data")
    dirs = [write_trace(tmp_path / f"run-{i}", steps=(1, 2, 5 + i), n=12, max_len=50) for i in range(3)]
    (dirs[0] / "steps" / ".step_000009.parquet.tmp-1-2").write_bytes(b"a writer's temp file")  # not committed
    ex = _example()
    got = ex.entropy_by_run_and_step(dirs).to_pylist()
    want = [(d.name, e) for d in dirs for e in TraceStore(d).manifest]
    assert [(r["run"], r["step"]) for r in got] == [(name, e["step"]) for name, e in want]
    for r, (_, e) in zip(got, want):
        assert r["n_tokens"] == e["n_tokens"]
        assert r["entropy_mean"] == pytest.approx(e["entropy_mean"], rel=1e-6)
        assert r["share_above"] == pytest.approx(e["share_above"], rel=1e-9)
    duck = ex.duckdb_over_runs(dirs).to_pylist()
    assert [(r["run"], r["step"], r["n_tokens"]) for r in duck] == [(r["run"], r["step"], r["n_tokens"]) for r in got]
    assert [r["share_above"] for r in duck] == pytest.approx([r["share_above"] for r in got])
