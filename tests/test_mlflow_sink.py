"""MLflow sink without a server: the embedded sqlite default, key sanitizing, a dead server, the CLI's target."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("mlflow")

from mlflow_server import free_port  # noqa: E402

from wbtrace import TraceStore, TraceWriter  # noqa: E402
from wbtrace.cli import main  # noqa: E402
from wbtrace.cli.mirror import parse_target  # noqa: E402
from wbtrace.errors import BadInputError, WbtraceError  # noqa: E402
from wbtrace.sinks.mlflow import MlflowSink, run_params, sanitize_key  # noqa: E402
from wbtrace.sources.mlflow import MlflowSource  # noqa: E402
from wbtrace.sources.pull import pull  # noqa: E402
from wbtrace.steps import StepSelection  # noqa: E402
from wbtrace.synthetic import make_step, synthetic_vocab  # noqa: E402


def pull_mlflow(run_id, steps, dest, tracking_uri):
    return pull(MlflowSource(run_id, tracking_uri), StepSelection(steps=tuple(steps or ())), dest)


@pytest.fixture
def no_mlflow_env(monkeypatch, tmp_path):
    import os

    for key in [k for k in os.environ if k.startswith("MLFLOW_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def write(run_dir: Path, steps, sinks=()) -> TraceStore:
    with TraceWriter(run_dir, vocab=synthetic_vocab(40), sinks=sinks, run_info={"config": {"lr": 1e-6}}) as w:
        for step in steps:
            w.write_step(step, **make_step(4, 16, 40, seed=step))
    return TraceStore(run_dir)


def test_embedded_default_needs_no_server_and_no_env(no_mlflow_env, tmp_path):
    import mlflow

    sink = MlflowSink()
    local = write(tmp_path / "run", [1, 2], sinks=[sink])
    assert sink.tracking_uri == f"sqlite:///{(tmp_path / 'run' / 'mlflow.db').resolve()}"
    assert sink.errors == 0 and sink.degraded is None
    client = mlflow.MlflowClient(tracking_uri=sink.tracking_uri)
    run = client.get_run(sink.run_id)
    assert run.data.params["config.lr"] == "1e-06"
    assert run.info.artifact_uri.startswith((tmp_path / "run" / "mlflow-artifacts").resolve().as_uri())
    assert not (tmp_path / "mlruns").exists()  # nothing lands in the current directory
    assert [m.step for m in client.get_metric_history(sink.run_id, "trace/n_tokens")] == [1, 2]

    pulled = TraceStore(pull_mlflow(sink.run_id, [2], tmp_path / "pulled", sink.tracking_uri))
    assert pulled.step_path(2).read_bytes() == local.step_path(2).read_bytes()


def test_embedded_store_copied_to_another_place_still_pulls(no_mlflow_env, tmp_path):
    """Found on the H100 run: the sqlite store records absolute artifact paths of the machine it ran on."""
    import shutil

    sink = MlflowSink()
    local = write(tmp_path / "run", [1, 2], sinks=[sink])
    shutil.copytree(tmp_path / "run", tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "run")  # the original paths are gone, as on another machine
    uri = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    pulled = TraceStore(pull_mlflow(sink.run_id, None, tmp_path / "pulled", uri))
    assert pulled.steps == [1, 2]
    assert pulled.step_path(1).read_bytes() == (tmp_path / "elsewhere" / "steps" / "step_000001.parquet").read_bytes()
    assert local.run_dir == tmp_path / "run"


def test_restarted_writer_logs_into_the_same_run(no_mlflow_env, tmp_path):
    first, second = MlflowSink(), MlflowSink()
    write(tmp_path / "run", [0], sinks=[first])
    write(tmp_path / "run", [1], sinks=[second])
    assert second.run_id == first.run_id


def test_embedded_mirror_cli_is_idempotent(no_mlflow_env, tmp_path):
    write(tmp_path / "run", [0, 1, 2])
    runner = CliRunner()
    first = runner.invoke(main, ["mirror", str(tmp_path / "run")])
    assert first.exit_code == 0, first.output
    assert "uploaded 3 step files, 0 already there" in first.output
    again = runner.invoke(main, ["mirror", str(tmp_path / "run")])
    assert "uploaded 0 step files, 3 already there, 0 metric values logged" in again.output


def test_rejected_keys_are_renamed_with_a_warning_naming_both():
    with pytest.warns(UserWarning, match=r"MLflow rejects the key 'reward@mean\?'; logged as 'reward_mean_'"):
        assert sanitize_key("reward@mean?") == "reward_mean_"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sanitize_key("actor/entropy:p50") == "actor/entropy:p50"  # valid keys pass untouched
    long = "k" * 300
    with pytest.warns(UserWarning, match="logged as 'k{241}~"):
        assert len(sanitize_key(long)) == 250


def test_long_param_values_are_cut_with_a_warning():
    with pytest.warns(UserWarning, match="'config.prompt' is 7000 characters, over MLflow's 6000"):
        params = run_params({"config": {"prompt": "x" * 7000}})
    assert len(params["config.prompt"]) == 6000 and params["config.prompt"].endswith("...")


def test_dead_server_degrades_after_one_failure_and_training_keeps_every_step(tmp_path):
    sink = MlflowSink(tracking_uri=f"http://127.0.0.1:{free_port()}")
    with pytest.warns(UserWarning, match="MLflow sink: 1 failed and 3 skipped calls"):
        with TraceWriter(tmp_path / "run", vocab=synthetic_vocab(40), sinks=[sink]) as w:
            for step in range(3):
                w.write_step(step, **make_step(4, 16, 40, seed=step))
    assert w.report.sink_errors["mlflow"] == 1
    assert TraceStore(tmp_path / "run").steps == [0, 1, 2]
    assert "cannot reach the MLflow server" in sink.degraded


def test_file_uri_is_refused():
    with pytest.raises(WbtraceError, match="MLflow 3 refuses file: stores"):
        MlflowSink(tracking_uri="file:///tmp/mlruns")


@pytest.mark.parametrize("dst, expected", [
    ("mlflow://", (None, None)),
    ("mlflow://0f3c9e2d1b8a", ("0f3c9e2d1b8a", None)),
    ("http://127.0.0.1:5000", (None, "http://127.0.0.1:5000")),
])
def test_mirror_targets(dst, expected):
    assert parse_target(dst) == expected


def test_bad_mirror_target_is_one_line_and_exit_2(tmp_path):
    write(tmp_path / "run", [0])
    result = CliRunner().invoke(main, ["mirror", str(tmp_path / "run"), "s3://bucket"])
    assert result.exit_code == 2
    assert result.output == ("Error: 's3://bucket' is not an MLflow target: use mlflow://, mlflow://RUN_ID "
                             "or a tracking URI\n")
    with pytest.raises(BadInputError):
        parse_target("mlflow://../etc")


def test_first_calls_from_two_threads_make_one_run(no_mlflow_env, tmp_path, monkeypatch):
    """The writer's thread (log_run) and the trainer's (log_metrics) may both be first: one run."""
    import threading
    import time

    import mlflow

    search = mlflow.MlflowClient.search_runs

    def slow_search(self, *args, **kwargs):  # widen the window between "no run yet" and creating one
        found = search(self, *args, **kwargs)
        time.sleep(0.3)
        return found

    monkeypatch.setattr(mlflow.MlflowClient, "search_runs", slow_search)
    run_dir = tmp_path / "run"
    write(run_dir, [1])
    sink = MlflowSink(run_dir=run_dir)
    start = threading.Barrier(6)

    def first_call(i: int) -> None:
        start.wait()
        sink.log_metrics({"reward/mean": float(i)}, step=1)

    threads = [threading.Thread(target=first_call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    client = mlflow.MlflowClient(tracking_uri=sink.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("wbtrace").experiment_id])
    assert [r.info.run_id for r in runs] == [sink.run_id] and sink.errors == 0
