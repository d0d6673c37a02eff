"""One contract for every sink, each against its real backend: what the writer commits comes back
byte-identical through that backend's own pull, with its statistics. (The W&B server itself is out of
reach here: W&B is checked through its offline run directory, the SDK's real output.)"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from wbtrace import TraceStore, TraceWriter
from wbtrace.sinks.base import NullSink
from wbtrace.sources.pull import pull
from wbtrace.synthetic import make_step, synthetic_vocab

STEPS = (1, 2)


def _local(tmp_path, monkeypatch):
    return NullSink(), lambda sink, dest: Path(TraceStore(tmp_path / "trace").run_dir)


def _wandb(tmp_path, monkeypatch):
    from wbtrace.sinks.wandb import WandbSink
    from wbtrace.sources.wandb_offline import WandbOfflineSource

    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = WandbSink(project="contract", mode="offline", dir=str(tmp_path / "wb"), preview_rows=2)
    return sink, lambda s, dest: pull(WandbOfflineSource(Path(s.run.settings.sync_dir)), None, dest)


def _mlflow(tmp_path, monkeypatch):
    from wbtrace.sinks.mlflow import MlflowSink
    from wbtrace.sources.mlflow import MlflowSource

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    sink = MlflowSink(run_dir=tmp_path / "trace")
    return sink, lambda s, dest: pull(MlflowSource(s.run_id, s.tracking_uri), None, dest)


@pytest.mark.parametrize("backend", [_local, _wandb, _mlflow], ids=["local", "wandb-offline", "mlflow-embedded"])
def test_sink_contract(backend, tmp_path, monkeypatch):
    sink, pull = backend(tmp_path, monkeypatch)
    with TraceWriter(tmp_path / "trace", vocab=synthetic_vocab(60), sinks=[sink]) as w:
        for step in STEPS:
            assert w.write_step(step, **make_step(5, 12, 60, seed=step))
    assert w.report.ok, w.report
    local = TraceStore(tmp_path / "trace")
    pulled = TraceStore(pull(sink, tmp_path / "pulled"))
    assert pulled.steps == list(STEPS)
    for step in STEPS:
        assert pulled.step_path(step).read_bytes() == local.step_path(step).read_bytes()
    assert (pulled.run_dir / "vocab.parquet").read_bytes() == (local.run_dir / "vocab.parquet").read_bytes()
    want = {e["step"]: e["entropy_p90"] for e in local.manifest}
    got = {e["step"]: e["entropy_p90"] for e in pulled.manifest}
    assert got == pytest.approx(want)
    assert np.isfinite(list(got.values())).all()
