"""MLflow against a real `mlflow server` on 127.0.0.1: mirror, pull back, the mlflow CLI, a server that dies.

One server for the whole module (~5 s to start); the dead-server test stops it and starts it again on
the same port and store.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

pytest.importorskip("mlflow")

from mlflow_server import MlflowServer, free_port  # noqa: E402

from wbtrace import TraceStore, TraceWriter  # noqa: E402
from wbtrace.cli import main  # noqa: E402
from wbtrace.errors import SourceError  # noqa: E402
from wbtrace.mirror import mirror_trace  # noqa: E402
from wbtrace.sinks.mlflow import MlflowSink, step_metrics  # noqa: E402
from wbtrace.sources.mlflow import MlflowSource  # noqa: E402
from wbtrace.sources.pull import pull  # noqa: E402
from wbtrace.steps import StepSelection  # noqa: E402
from wbtrace.synthetic import make_step, synthetic_vocab  # noqa: E402


def pull_mlflow(run_id, steps, dest, tracking_uri):
    return pull(MlflowSource(run_id, tracking_uri), StepSelection(steps=tuple(steps or ())), dest)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=server.uri)


def write_trace(run_dir: Path, steps, sinks=(), on_step=None, run_info=None) -> TraceStore:
    with TraceWriter(run_dir, vocab=synthetic_vocab(50), sinks=sinks, run_info=run_info) as w:
        for step in steps:
            w.write_step(step, **make_step(6, 24, 50, seed=step))
            if on_step:
                w.flush()
                on_step(step)
    return TraceStore(run_dir)


def assert_same_trace(local: TraceStore, pulled: TraceStore) -> None:
    assert pulled.steps == local.steps
    for name in ("run.json", "vocab.parquet"):
        assert (pulled.run_dir / name).read_bytes() == (local.run_dir / name).read_bytes()
    for step in local.steps:
        assert pulled.step_path(step).read_bytes() == local.step_path(step).read_bytes()
    for mine, theirs in zip(local.manifest, pulled.manifest):
        assert step_metrics(theirs)["trace/entropy_p90"] == step_metrics(mine)["trace/entropy_p90"]


def metric_steps(client, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_mirror_then_pull_gives_byte_identical_files_and_metrics_at_their_steps(server, client, tmp_path):
    local = write_trace(tmp_path / "run", [0, 10, 20, 30])
    report = mirror_trace(local.run_dir, server.uri, run_name="roundtrip")
    assert report.uploaded == [0, 10, 20, 30]
    assert report.run_files == ["run.json", "vocab.parquet"]

    pulled = TraceStore(pull_mlflow(report.run_id, None, tmp_path / "pulled", server.uri))
    assert_same_trace(local, pulled)
    history = {m.step: m.value for m in client.get_metric_history(report.run_id, "trace/entropy_p50")}
    assert history == {e["step"]: pytest.approx(e["entropy_p50"]) for e in local.manifest}
    assert client.get_run(report.run_id).data.params["schema_version"] == "1"

    one = TraceStore(pull_mlflow(report.run_id, [20], tmp_path / "one", server.uri))
    assert one.steps == [20]


def test_mlflow_cli_downloads_the_same_files(server, tmp_path):
    local = write_trace(tmp_path / "run", [1, 2])
    report = mirror_trace(local.run_dir, server.uri)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = server.uri
    out = tmp_path / "cli"
    subprocess.run([sys.executable, "-m", "mlflow", "artifacts", "download", "--run-id", report.run_id,
                    "--artifact-path", "entropy_trace", "--dst-path", str(out)], env=env, check=True,
                   capture_output=True)
    for step in (1, 2):
        got = out / "entropy_trace" / "steps" / f"step_{step:06d}.parquet"
        assert got.read_bytes() == local.step_path(step).read_bytes()
    assert (out / "entropy_trace" / "run.json").read_bytes() == (local.run_dir / "run.json").read_bytes()


def test_server_stopped_mid_run_training_finishes_and_mirror_fills_the_gap(server, client, tmp_path):
    sink = MlflowSink(tracking_uri=server.uri, call_timeout=5)
    stopped = []

    def maybe_stop(step: int) -> None:
        if step == 2:
            server.stop()
            stopped.append(step)

    try:
        with pytest.warns(UserWarning, match="MLflow sink: 1 failed and 2 skipped calls"):
            local = write_trace(tmp_path / "run", range(6), sinks=[sink], on_step=maybe_stop)
    finally:
        if not server.healthy():
            server.start()
    assert stopped == [2]
    assert local.steps == [0, 1, 2, 3, 4, 5]
    assert sink.degraded is not None and sink.errors == 1
    assert sink.skipped == 2  # step 3 failed (the probe), steps 4 and 5 returned at once
    logged = {int(a.path[-14:-8]) for a in client.list_artifacts(sink.run_id, "entropy_trace/steps")}
    assert logged == {0, 1, 2}

    report = mirror_trace(local.run_dir, server.uri)
    assert report.run_id == sink.run_id  # found again by the trace id tag
    assert report.uploaded == [3, 4, 5] and report.already_there == [0, 1, 2]
    keys = {k for e in local.manifest for k in step_metrics(e)}
    for key in keys:  # each step once, where the step has the statistic (entropy_mean_incorrect may not)
        expected = [e["step"] for e in local.manifest if key in step_metrics(e)]
        assert metric_steps(client, sink.run_id, key) == expected, key

    again = mirror_trace(local.run_dir, server.uri)
    assert again.uploaded == [] and again.metrics_logged == 0
    assert metric_steps(client, sink.run_id, "trace/entropy_mean") == [0, 1, 2, 3, 4, 5]


def test_sink_on_a_live_server_logs_steps_run_files_and_trainer_metrics(server, client, tmp_path):
    sink = MlflowSink(tracking_uri=server.uri, wandb_run_id="abc123", preview_table=True)
    local = write_trace(tmp_path / "run", [5, 6], sinks=[sink])
    with pytest.warns(UserWarning, match="MLflow rejects the key 'reward@mean'; logged as 'reward_mean'"):
        sink.log_metrics({"actor/entropy": 0.5, "reward@mean": 1.0}, step=6)
    run = client.get_run(sink.run_id)
    assert run.data.tags["wandb.run_id"] == "abc123"
    assert run.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(sink.run_id, "entropy_trace/preview")} == {
        "entropy_trace/preview/step_000005.json", "entropy_trace/preview/step_000006.json"}
    assert metric_steps(client, sink.run_id, "reward_mean") == [6]
    pulled = TraceStore(pull_mlflow(sink.run_id, None, tmp_path / "pulled", server.uri))
    assert_same_trace(local, pulled)


def test_mirror_into_an_existing_run_and_refuse_another_trace(server, client, tmp_path):
    exp = client.get_experiment_by_name("wbtrace") or client.get_experiment(client.create_experiment("wbtrace"))
    run_id = client.create_run(exp.experiment_id).info.run_id
    first = write_trace(tmp_path / "a", [1], run_info={"model": "a"})
    result = CliRunner().invoke(main, ["mirror", str(first.run_dir), f"mlflow://{run_id}",
                                       "--tracking-uri", server.uri])
    assert result.exit_code == 0, result.output
    n_metrics = len(step_metrics(first.manifest[0]))
    assert result.output.endswith(f"MLflow run {run_id} at {server.uri}: uploaded 1 step files, "
                                  f"0 already there, {n_metrics} metric values logged\n")
    other = write_trace(tmp_path / "b", [1], run_info={"model": "b"})
    result = CliRunner().invoke(main, ["mirror", str(other.run_dir), f"mlflow://{run_id}",
                                       "--tracking-uri", server.uri])
    assert result.exit_code == 2
    assert "holds trace" in result.output and "mirror into a new run with mlflow://" in result.output


def test_pull_errors_are_one_clear_line(server, tmp_path):
    local = write_trace(tmp_path / "run", [3, 4])
    run_id = mirror_trace(local.run_dir, server.uri).run_id
    with pytest.raises(SourceError, match=r"^step 7 not in MLflow run \w+; it has steps 3-4$"):
        pull_mlflow(run_id, [7], tmp_path / "x", server.uri)
    with pytest.raises(SourceError, match="no MLflow run 'deadbeef'"):
        pull_mlflow("deadbeef", None, tmp_path / "x", server.uri)
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(SourceError, match=f"cannot reach the MLflow server at {dead}"):
        pull_mlflow(run_id, None, tmp_path / "x", dead)


def test_two_traces_made_in_the_same_second_mirror_into_two_runs(server, tmp_path):
    """Same settings, same second: the trace id in run.json still tells them apart."""
    a = write_trace(tmp_path / "a", [1, 2])
    b = write_trace(tmp_path / "b", [1, 2, 3])
    assert a.run_info["trace_id"] != b.run_info["trace_id"]
    ra, rb = mirror_trace(a.run_dir, server.uri), mirror_trace(b.run_dir, server.uri)
    assert ra.run_id != rb.run_id and rb.uploaded == [1, 2, 3]


def kill_server(server: MlflowServer) -> None:
    """kill -9 of the server's process group: no shutdown, connections just refused from now on."""
    import signal

    os.killpg(server.proc.pid, signal.SIGKILL)
    server.proc.wait(timeout=15)
    server.proc = None


def test_server_killed_during_mirror_is_one_line_in_seconds_and_a_rerun_finishes(server, client, tmp_path):
    import time

    local = write_trace(tmp_path / "run", range(5))
    killed = []

    def kill_after_two(done: int, total: int) -> None:
        if done == 2 and not killed:
            kill_server(server)
            killed.append(time.monotonic())

    try:
        with pytest.raises(SourceError, match=r"stopped answering during log_artifact \(gave up after \d+ s\)"):
            mirror_trace(local.run_dir, server.uri, progress=kill_after_two)
        assert time.monotonic() - killed[0] < 30  # MLflow's own retries take ~4 minutes
    finally:
        if not server.healthy():
            server.start()
    r = CliRunner().invoke(main, ["mirror", str(local.run_dir), "mlflow://", "--tracking-uri", server.uri])
    assert r.exit_code == 0, r.output
    assert "uploaded 3 step files, 2 already there" in r.output
    run_id = re.search(r"MLflow run (\w+) at", r.output).group(1)
    assert metric_steps(client, run_id, "trace/entropy_mean") == [0, 1, 2, 3, 4]  # nothing twice
    assert client.get_run(run_id).info.status == "FINISHED"  # a mirrored run does not stay RUNNING


def test_sink_recovery_command_names_the_tracking_uri(server, tmp_path):
    sink = MlflowSink(tracking_uri=server.uri)
    sink.run_dir, sink.run_id = tmp_path / "my run", "abc123"
    assert sink.recovery_command() == f"wbtrace mirror '{tmp_path}/my run' mlflow://abc123 --tracking-uri {server.uri}"
    embedded = MlflowSink()
    embedded.run_dir = tmp_path
    assert "--tracking-uri" not in embedded.recovery_command()  # mirror's own default is the embedded store
