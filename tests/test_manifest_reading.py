"""`stats`, `ls` and `plot` work from the manifest's statistics; step files are read only for what it lacks."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from wbtrace import TraceStore
from wbtrace.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _spoil_step_files(trace_dir):
    for f in (trace_dir / "steps").glob("step_*.parquet"):
        f.write_bytes(b"not parquet any more")


def test_stats_ls_plot_over_all_steps_read_no_step_file(trace_dir, tmp_path):
    pytest.importorskip("matplotlib")
    before = json.loads(run("stats", trace_dir, "--json").output)
    _spoil_step_files(trace_dir)  # any read of a step file would now fail
    r = run("stats", trace_dir, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == before
    assert before[0]["forking_tokens"][0]["token"]  # token texts come from the vocabulary
    assert run("stats", trace_dir).exit_code == 0
    assert run("ls", trace_dir).exit_code == 0
    assert run("plot", trace_dir, "-o", tmp_path / "p.png").exit_code == 0


def test_stats_reads_the_file_for_what_the_manifest_lacks(trace_dir):
    before = json.loads(run("stats", trace_dir, "--json").output)
    manifest = trace_dir / "manifest.jsonl"
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    for e in lines:  # a trace written before these keys existed
        e.pop("entropy_by_position")
        e.pop("forking_tokens")
    manifest.write_text("".join(json.dumps(e) + "\n" for e in lines))
    assert json.loads(run("stats", trace_dir, "--json").output) == before
    _spoil_step_files(trace_dir)
    r = run("stats", trace_dir, "--json")
    assert r.exit_code == 2 and "corrupt or truncated Parquet file" in r.output


def test_another_threshold_is_computed_from_the_files(trace_dir):
    at_default = json.loads(run("stats", trace_dir, "--json").output)
    other = json.loads(run("stats", trace_dir, "--json", "--threshold", "1.5").output)
    assert other[0]["threshold"] == 1.5 and other[0]["share_above"] < at_default[0]["share_above"]
    assert TraceStore(trace_dir).manifest[0]["threshold"] == pytest.approx(0.672)


def test_long_runs_print_plain_tables_with_every_step(trace_dir):
    """Above 200 rows `ls`/`stats` print plain aligned text (rich took ~1 ms a row); trace strings stay escaped."""
    manifest = trace_dir / "manifest.jsonl"
    first = json.loads(manifest.read_text().splitlines()[0])
    one = trace_dir / first["file"]
    lines = []
    for s in range(1, 251):
        name = f"steps/step_{s:06d}.parquet"
        if not (trace_dir / name).exists():
            (trace_dir / name).hardlink_to(one)
        lines.append(json.dumps({**first, "step": s, "file": name}))
    manifest.write_text("\n".join(lines) + "\n")
    info = json.loads((trace_dir / "run.json").read_text())
    (trace_dir / "run.json").write_text(json.dumps({**info, "model": "m\x1b]0;owned\x07"}))
    r = run("ls", trace_dir)
    assert r.exit_code == 0 and "\x1b" not in r.output and "m\\x1b]0;owned\\x07" in r.output
    rows = [line.split() for line in r.output.splitlines()[2:]]
    assert [int(x[0]) for x in rows] == list(range(1, 251))
    assert rows[0][3] == str(first["n_tokens"]) and rows[0][4] == f"{first['entropy_mean']:.3f}"
    r = run("stats", trace_dir)
    assert r.exit_code == 0 and r.output.count("\n 250  ") >= 3  # percentile, position and fork tables
