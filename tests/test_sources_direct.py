"""Every reading command takes what `pull` takes: the committed H100 sample, read directly, and the same
sample logged through the real W&B SDK (offline run dir) and a real embedded MLflow store, read through
the source layer's cache; near-miss paths get a one-line hint naming what to pass."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from wbtrace import TraceStore
from wbtrace.cli import main

SAMPLE = Path(__file__).resolve().parent.parent / "docs" / "runs" / "h100-sample"


def run(*args: object, ok: bool = True):
    r = CliRunner().invoke(main, [str(a) for a in args])
    if ok:
        assert r.exit_code == 0, r.output
    return r


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("WBTRACE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _log_sample(sink) -> None:
    """The committed sample's steps through a sink, as the writer hands them over."""
    store = TraceStore(SAMPLE)
    sink.log_run(SAMPLE, store.run_info)
    for entry in store.manifest:
        sink.log_step(entry["step"], store.step_path(entry["step"]), entry, store.read_step(entry["step"]))
    sink.finish()


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory) -> Path:
    pytest.importorskip("wandb")
    from wbtrace.sinks.wandb import WandbSink

    os.environ.setdefault("WANDB_SILENT", "true")
    sink = WandbSink(project="any-source", mode="offline", dir=str(tmp_path_factory.mktemp("wb")), preview_rows=2)
    _log_sample(sink)
    return Path(sink.run.settings.sync_dir)


def test_the_sample_is_read_in_place(cache):
    assert "50" in run("ls", SAMPLE).output
    assert [r["step"] for r in json.loads(run("stats", SAMPLE, "--steps", "50:", "--json").stdout)] == [50, 100]
    assert not cache.exists()


def test_offline_run_dir_reads_like_the_trace(offline_run, cache):
    want = json.loads(run("stats", SAMPLE, "--json").stdout)
    assert json.loads(run("stats", offline_run, "--json").stdout) == want
    assert run("export", offline_run, "--step", 50).output == run("export", SAMPLE, "--step", 50).output
    assert "100" in run("ls", offline_run).output
    (cached,) = cache.iterdir()
    first = {p.name: p.stat().st_mtime_ns for p in (cached / "steps").iterdir()}
    assert sorted(first) == ["step_000001.parquet", "step_000050.parquet", "step_000100.parquet"]
    run("stats", offline_run, "--step", 1, "--json")  # already cached: nothing fetched again
    assert {p.name: p.stat().st_mtime_ns for p in (cached / "steps").iterdir()} == first


def test_only_the_selected_steps_are_fetched(offline_run, cache):
    out = json.loads(run("stats", offline_run, "--steps", "last", "--json").stdout)
    assert [r["step"] for r in out] == [100]
    (cached,) = cache.iterdir()
    assert [p.name for p in (cached / "steps").iterdir()] == ["step_000100.parquet"]
    bad = run("stats", offline_run, "--step", 7, ok=False)
    assert bad.exit_code == 2 and "step 7 not found; steps that exist: 1, 50, 100" in bad.output


def test_mlflow_run_reads_like_the_trace(tmp_path, cache, monkeypatch):
    pytest.importorskip("mlflow")
    from wbtrace.sinks.mlflow import MlflowSink

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    sink = MlflowSink(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", run_dir=SAMPLE)
    _log_sample(sink)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sink.tracking_uri)
    want = json.loads(run("stats", SAMPLE, "--steps", "1,100", "--json").stdout)
    assert json.loads(run("stats", f"mlflow://{sink.run_id}", "--steps", "1,100", "--json").stdout) == want


def test_near_miss_paths_get_a_hint(offline_run, tmp_path, cache):
    (tmp_path / "out").mkdir()
    shutil.copytree(SAMPLE, tmp_path / "out" / "entropy_trace")
    wandb_dir = offline_run.parent
    for path, hint in ((tmp_path / "out", f"the trace is in {tmp_path / 'out' / 'entropy_trace'}"),
                       (wandb_dir, f"it holds W&B runs: pass one, e.g. {offline_run}"),
                       (wandb_dir.parent, f"it holds W&B runs: pass one, e.g. {offline_run}")):
        r = run("ls", path, ok=False)
        assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
        assert "is not a wbtrace trace: no run.json" in r.output and hint in r.output, r.output
