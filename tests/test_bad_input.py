"""One clear line and exit code 2 for every bad input: broken files in a trace, bad options, missing
drivers, backends that are not there. Each case was a traceback (or a silent wrong result) before."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import write_trace

from wbtrace import TraceStore, TraceWriter
from wbtrace.cli import main
from wbtrace.synthetic import make_step, synthetic_vocab


def run(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(r, code: int = 2) -> str:
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and r.output.startswith("Error: ") and r.output.count("\n") == 1, r.output
    return r.output


def _rewrite_column(trace: Path, name: str, values: list, typ: pa.DataType | None = None) -> None:
    path = TraceStore(trace).step_path(1)
    t = pq.read_table(path)
    t = t.set_column(t.column_names.index(name), name, pa.array(values, typ or t.schema.field(name).type))
    pq.write_table(t.replace_schema_metadata(pq.read_table(path).schema.metadata), path)
    _rehash(trace)  # a file broken where it was made: its manifest digest matches it


def _rehash(trace: Path) -> None:
    from wbtrace.store import file_sha256

    m = trace / "manifest.jsonl"
    lines = [json.loads(x) for x in m.read_text().splitlines()]
    for line in lines:
        line["sha256"] = file_sha256(trace / line["file"])
    m.write_text("".join(json.dumps(x) + "\n" for x in lines))


def broken(kind: str, trace: Path) -> Path:
    ent = pq.read_table(TraceStore(trace).step_path(1)).column("entropy").to_pylist()
    if kind == "entropy as strings":
        _rewrite_column(trace, "entropy", [["x"] * len(r) for r in ent], pa.list_(pa.string()))
    elif kind == "entropy shorter than tokens":
        _rewrite_column(trace, "entropy", [r[:-3] if i == 0 else r for i, r in enumerate(ent)])
    elif kind == "NaN entropy":
        ent[0][0] = float("nan")
        _rewrite_column(trace, "entropy", ent)
    elif kind == "truncated vocab":
        v = trace / "vocab.parquet"
        v.write_bytes(v.read_bytes()[:200])
    return trace


@pytest.mark.parametrize("kind,message", [
    ("entropy as strings", "column 'entropy' is list<element: string>, expected list<float>"),
    ("entropy shorter than tokens", "entropy values for"),
    ("NaN entropy", "entropy has 1 NaN/inf values"),
    ("truncated vocab", "corrupt or truncated vocabulary file"),
])
@pytest.mark.parametrize("command", [["stats"], ["export", "--step", "1", "-o", "{out}"], ["view", "-o", "{html}"],
                                     ["show", "--step", "1", "--sample", "0"]], ids=lambda c: c[0])
def test_a_broken_file_in_a_trace_is_one_line(tmp_path, kind, message, command):
    trace = broken(kind, write_trace(tmp_path / "t", steps=(1, 2)))
    args = [a.format(out=tmp_path / "o.csv", html=tmp_path / "r.html") for a in command]
    out = one_error_line(run(args[0], trace, *args[1:]))
    assert message in out
    if kind != "truncated vocab":
        assert "step_000001.parquet" in out
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "r.html").exists()


def test_non_numeric_manifest_values_show_as_missing(tmp_path):
    trace = write_trace(tmp_path / "t", steps=(1, 2))
    m = trace / "manifest.jsonl"
    lines = [json.loads(x) for x in m.read_text().splitlines()]
    lines[0].update(entropy_mean="high", n_tokens="many", bytes="x", file="../../etc/passwd")
    lines[1].update(reward_mean=[1], entropy_p90=None, share_above=True)
    m.write_text("".join(json.dumps(x) + "\n" for x in lines))
    store = TraceStore(trace)
    assert "entropy_mean" not in store.manifest[0] and store.manifest[0]["file"] == "steps/step_000001.parquet"
    assert store.steps == [1, 2]
    r = run("ls", trace)
    assert r.exit_code == 0, r.output
    row1 = next(line for line in r.output.splitlines() if line.strip("│ ").startswith("1 "))
    assert "many" not in row1 and row1.count(" - ") >= 2
    assert run("view", trace, "-o", tmp_path / "r.html").exit_code == 0
    assert run("plot", trace, "-o", tmp_path / "p.png").exit_code == 0


def _zero_and_nan_trace(path: Path) -> Path:
    with TraceWriter(path, vocab=synthetic_vocab(50)) as w:
        a = make_step(4, 10, 50, seed=1)
        a["response_mask"][:] = 0  # a step whose responses are all empty
        w.write_step(1, **a)
        b = make_step(4, 10, 50, seed=2)
        b["reward"] = np.full(4, np.nan, dtype=np.float32)
        w.write_step(2, **b)
    return path


def test_zero_token_step_and_nan_rewards(tmp_path):
    trace = _zero_and_nan_trace(tmp_path / "t")
    r = run("plot", trace, "-o", tmp_path / "p.png")
    assert r.exit_code == 0, r.output
    r = run("stats", trace, "--json")
    assert r.exit_code == 0, r.output

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    records = json.loads(r.output, parse_constant=no_constants)
    assert all(rec.get("reward_mean") is None for rec in records if rec["step"] == 2)


@pytest.mark.parametrize("args,message", [
    (["view", "{trace}", "--serve", "--port", "99999"], "99999 is not in the range 0<=x<=65535"),
    (["export", "{trace}", "--step", "1", "-o", ""], "-o: empty file name"),
    (["plot", "{trace}", "-o", "{tmp}/x.unknownext"], "cannot write a unknownext image; use one of"),
])
def test_bad_options_are_one_line(trace_dir, tmp_path, args, message):
    r = run(*[a.format(trace=trace_dir, tmp=tmp_path) for a in args])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    assert not (tmp_path / "x.unknownext").exists()


def test_busy_port_exits_2(trace_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        out = one_error_line(run("view", trace_dir, "--serve", "--port", s.getsockname()[1]))
    assert "cannot listen on 127.0.0.1:" in out and "try --port 0" in out


def test_view_of_a_mistyped_path_creates_nothing(tmp_path):
    one_error_line(run("view", tmp_path / "typo"))
    one_error_line(run("view", tmp_path / "typo", "-o", tmp_path / "typo2" / "r.html"))
    assert list(tmp_path.iterdir()) == []


def test_files_are_readable_by_the_group_as_the_umask_says(tmp_path):
    old = os.umask(0o022)
    try:
        trace = write_trace(tmp_path / "t", steps=(1,))
        out = run("view", trace, "-o", tmp_path / "r.html")
        assert out.exit_code == 0
    finally:
        os.umask(old)
    for path in (trace / "run.json", trace / "vocab.parquet", trace / "manifest.jsonl",
                 TraceStore(trace).step_path(1), tmp_path / "r.html"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_mlflow_uris_that_cannot_work_are_one_line(trace_dir, tmp_path):
    pytest.importorskip("mlflow")
    db = tmp_path / "typo.db"
    out = one_error_line(run("pull", "mlflow://abc", "--step", "1", "--tracking-uri", f"sqlite:///{db}",
                             "--dest", tmp_path / "d"))
    assert "no MLflow database at" in out and not db.exists() and not (tmp_path / "d").exists()
    for cmd in (["pull", "mlflow://abc", "--step", "1", "--dest", tmp_path / "d"], ["mirror", trace_dir, "mlflow://"]):
        out = one_error_line(run(*cmd, "--tracking-uri", "postgresql://u@127.0.0.1:1/db"))
        assert "database driver is not installed: pip install" in out


@pytest.mark.contract
def test_wandb_unreachable_with_a_key_is_one_line_in_bounded_time(tmp_path, monkeypatch):
    """Contract (no W&B server here): with WANDB_API_KEY set and the host down, wandb.Api() waited 20 s
    and raised; now the host is probed first, for at most 5 s, and the message says so."""
    pytest.importorskip("wandb")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    out = one_error_line(run("pull", "me/proj/abc123", "--step", "1", "--dest", tmp_path / "d"))
    assert time.monotonic() - start < 10
    assert f"cannot reach W&B: http://127.0.0.1:{port} did not answer within 5 s" in out
    assert not (tmp_path / "d").exists()
