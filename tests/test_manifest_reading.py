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
