"""The local layout that every pull writes into: a bad download never replaces a good step file."""

from __future__ import annotations

import pytest

from wbtrace import TraceStore
from wbtrace.errors import SourceError, TraceFormatError
from wbtrace.sources.pull import LocalTraceDir, default_dest


def test_bad_download_keeps_the_good_step(trace_dir, tmp_path):
    src = TraceStore(trace_dir)
    out = LocalTraceDir(tmp_path / "p")
    out.add_run_files(trace_dir / "run.json", trace_dir / "vocab.parquet")
    out.add_step(1, src.step_path(1))
    out.close()
    again = LocalTraceDir(tmp_path / "p")
    with pytest.raises(TraceFormatError, match="not readable Parquet"):
        again.add_step(1, b"not parquet")
    assert TraceStore(tmp_path / "p").step_path(1).read_bytes() == src.step_path(1).read_bytes()
    assert not [p for p in (tmp_path / "p" / "steps").iterdir() if p.name.startswith(".")]


def test_another_runs_folder_is_refused_even_without_steps(trace_dir, tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "run.json").write_text('{"schema_version": 1, "other": true}')
    with pytest.raises(SourceError, match="different run"):
        LocalTraceDir(tmp_path / "p").add_run_files(trace_dir / "run.json", trace_dir / "vocab.parquet")


@pytest.mark.parametrize("run_id", ["../../tmp/evil", "a/b", "", ".."])
def test_default_dest_needs_a_plain_run_id(run_id):
    with pytest.raises(SourceError, match="not a plain name"):
        default_dest(run_id)
