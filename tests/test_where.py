"""``export --where``: an expression over the step's columns and nothing else; filtered before the
vocabulary join, with memory bounded by one step whatever the trace's length."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import write_trace

from wbtrace.cli import main
from wbtrace.errors import BadInputError
from wbtrace.where import RowFilter


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def secret(tmp_path):
    path = tmp_path / "secret.csv"
    path.write_text("x\nTOP-SECRET-LINE\n")
    return path


HOSTILE = [
    "entropy IN (SELECT x FROM read_csv('{secret}'))",
    "entropy > (SELECT count(*) FROM read_csv('https://example.com/x.csv'))",
    "EXISTS (SELECT 1 FROM read_text('{secret}'))",
    "token = getenv('HOME')",
    "token = (SELECT content FROM read_text('{secret}'))",
    "entropy > 1) UNION SELECT * FROM read_csv('{secret}') WHERE (1 = 1",
    "entropy > 1; SELECT * FROM read_csv('{secret}')",
    "entropy > 1 ORDER BY entropy",
    "count(*) > 0",
    "sum(entropy) OVER () > 1",
    "list_filter([1, 2], x -> x > 1) IS NULL",
    "entropy > ?",
    "entropy::STRUCT(a INT) IS NULL",
    "main.abs(entropy) > 1",
]


@pytest.mark.parametrize("expr", HOSTILE)
def test_hostile_filters_are_refused_in_one_line(trace_dir, secret, expr):
    r = run("export", trace_dir, "--step", 1, "--where", expr.format(secret=secret))
    assert r.exit_code == 2, r.output
    assert r.output.startswith("Error: --where") and r.output.count("\n") == 1, r.output
    assert "TOP-SECRET" not in r.output


@pytest.mark.parametrize("expr", [
    "entropy > 2 AND kept",
    "entropy BETWEEN 0.5 AND 1.5 OR NOT correct",
    "token LIKE '%tok1%' AND position < 10",
    "abs(logprob) > 0.5 AND step IN (1, 3)",
    "CASE WHEN correct THEN entropy ELSE 0 END > 1",
    "CAST(position AS DOUBLE) / 4 >= 1.5 AND group_id IS NOT NULL",  # (DuckDB CAST to INTEGER rounds)
    "lower(token) <> upper(token) AND length(token) > 3",
])
def test_allowed_filters_agree_with_polars(trace_dir, expr):
    full = pl.read_csv(io.BytesIO(run("export", trace_dir, "--format", "csv").stdout_bytes))
    want = full.filter(pl.sql_expr(expr))
    got = pl.read_csv(io.BytesIO(run("export", trace_dir, "--where", expr, "--format", "csv").stdout_bytes))
    assert got.height == want.height > 0
    assert got.equals(want)


def test_response_level_filter_decodes_only_kept_rows(trace_dir):
    r = run("export", trace_dir, "--level", "response", "--where", "entropy_mean > 0.3 AND kept",
            "--format", "jsonl")
    rows = pl.read_ndjson(io.BytesIO(r.stdout_bytes))
    assert r.exit_code == 0 and rows.height > 0
    assert rows["kept"].all() and (rows["entropy_mean"] > 0.3).all() and rows["response_text"].null_count() == 0


def test_unknown_column_names_the_columns():
    with pytest.raises(BadInputError, match=r"no column nope \(columns: entropy, token\)"):
        RowFilter("nope > 1").check_columns(["entropy", "token"])


_PEAK = textwrap.dedent("""
    import resource, sys
    from wbtrace.cli import main
    try:
        main(["export", sys.argv[1], "--where", "entropy > 0.5", "--format", "parquet", "-o", sys.argv[2]])
    except SystemExit:
        pass
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
""")


def _peak_kib(trace, out) -> int:
    done = subprocess.run([sys.executable, "-c", _PEAK, str(trace), str(out)], capture_output=True, text=True,
                          check=True)
    return int(done.stdout.split()[-1])


def test_filtered_export_peak_memory_does_not_grow_with_the_trace(tmp_path):
    size = dict(n=256, max_len=1536, vocab_size=5000)  # ~200k tokens a step
    short = write_trace(tmp_path / "short", steps=(1, 2), **size)
    long = write_trace(tmp_path / "long", steps=tuple(range(1, 11)), **size)
    p_short, p_long = _peak_kib(short, tmp_path / "a.parquet"), _peak_kib(long, tmp_path / "b.parquet")
    # one step's token rows are ~14 MB (~70 B x 200k): holding the 8 extra steps would add ~110 MB
    assert p_long - p_short < 30_000, (p_short, p_long)
