"""One contract for every source, each on its real backend (W&B's server only through its `wandb.Api`
boundary): `open_source` maps the reference to the source, and `pull` brings back exactly what the writer
committed, a subset on request, merged into an existing pull, and a missing step as one clear error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wbtrace import TraceStore, TraceWriter
from wbtrace.errors import SourceError
from wbtrace.sinks.base import NullSink
from wbtrace.sources.pull import pull
from wbtrace.sources.refs import open_source
from wbtrace.steps import StepSelection
from wbtrace.synthetic import make_step, synthetic_vocab

STEPS = (1, 2, 3)


def _write(trace: Path, sink) -> TraceStore:
    with TraceWriter(trace, vocab=synthetic_vocab(60), sinks=[sink]) as w:
        for step in STEPS:
            assert w.write_step(step, **make_step(4, 10, 60, seed=step))
    assert w.report.ok, w.report
    return TraceStore(trace)


def _local(tmp_path, monkeypatch):
    store = _write(tmp_path / "trace", NullSink())
    return store, open_source(str(store.run_dir)), "LocalSource"


def _wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from wbtrace.sinks.wandb import WandbSink

    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = WandbSink(project="contract", mode="offline", dir=str(tmp_path / "wb"), preview_rows=0)
    store = _write(tmp_path / "trace", sink)
    return store, open_source(sink.run.settings.sync_dir), "WandbOfflineSource"


def _wandb_api(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from test_wandb_api import FakeApi

    from wbtrace.sources.wandb_api import WandbApiSource

    store = _write(tmp_path / "trace", NullSink())
    source = open_source("me/dapo/abc123")
    assert isinstance(source, WandbApiSource)
    return store, WandbApiSource("me/dapo/abc123", api=FakeApi(store.run_dir, steps=STEPS)), "WandbApiSource"


def _mlflow(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from wbtrace.sinks.mlflow import MlflowSink

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    sink = MlflowSink(run_dir=tmp_path / "trace")
    store = _write(tmp_path / "trace", sink)
    return store, open_source(f"mlflow://{sink.run_id}", tracking_uri=sink.tracking_uri), "MlflowSource"


BACKENDS = [pytest.param(_local, id="local"), pytest.param(_wandb_offline, id="wandb-offline"),
            pytest.param(_wandb_api, id="wandb-api", marks=pytest.mark.contract),
            pytest.param(_mlflow, id="mlflow-embedded")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_source_contract(backend, tmp_path, monkeypatch):
    local, source, kind = backend(tmp_path, monkeypatch)
    assert type(source).__name__ == kind
    assert source.steps() == list(STEPS)

    part = TraceStore(pull(source, StepSelection.parse("2:"), tmp_path / "pulled"))
    assert part.steps == [2, 3]
    whole = TraceStore(pull(source, StepSelection.parse("1"), tmp_path / "pulled"))  # merges
    assert whole.steps == list(STEPS)
    for step in STEPS:
        assert whole.step_path(step).read_bytes() == local.step_path(step).read_bytes()
    assert (whole.run_dir / "vocab.parquet").read_bytes() == (local.run_dir / "vocab.parquet").read_bytes()
    assert whole.run_info == local.run_info
    assert [e["n_tokens"] for e in whole.manifest] == [e["n_tokens"] for e in local.manifest]
    assert [e["entropy_p90"] for e in whole.manifest] == pytest.approx([e["entropy_p90"] for e in local.manifest])

    with pytest.raises(SourceError, match="step 9 .*1-3"):
        pull(source, StepSelection(steps=(9,)), tmp_path / "other")
    assert not (tmp_path / "other" / "steps").exists() or not list((tmp_path / "other" / "steps").iterdir())
