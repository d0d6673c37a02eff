"""The trace commands (ls, stats, show, export, import-npz) through click's CliRunner: exit codes and output."""

from __future__ import annotations

import csv
import io
import json

import duckdb
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from wbtrace import TraceStore
from wbtrace.cli import main
from wbtrace.seed_format import write_seed_step


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_ls_lists_every_step(trace_dir):
    r = run("ls", trace_dir)
    assert r.exit_code == 0
    for e in TraceStore(trace_dir).manifest:
        assert f"{e['entropy_mean']:.3f}" in r.output


def test_stats_json_matches_the_data(trace_dir):
    r = run("stats", trace_dir, "--steps", "2:3", "--json", "--threshold", "1.0")
    assert r.exit_code == 0, r.output
    records = json.loads(r.output)
    assert [x["step"] for x in records] == [2, 3]
    flat = np.array([h for row in TraceStore(trace_dir).read_step(2).column("entropy").to_pylist() for h in row],
                    dtype=np.float32)
    assert records[0]["share_above"] == pytest.approx(np.mean(flat > 1.0))
    assert records[0]["entropy_p99"] == pytest.approx(np.percentile(flat, 99))
    assert len(records[0]["entropy_by_position"]) == 10
    counts = [f["count"] for f in records[0]["forking_tokens"]]
    assert counts == sorted(counts, reverse=True) and sum(counts) <= np.sum(flat > 1.0)


def test_show_prints_the_tokens(trace_dir):
    store = TraceStore(trace_dir)
    row = store.read_step(1).slice(3, 1).to_pylist()[0]
    r = run("show", trace_dir, "--step", 1, "--sample", 3)
    assert r.exit_code == 0
    pieces = [store.vocab.text(t) for t in row["token_ids"]]
    plain = r.output.replace("*", "")  # piped: tokens between |, forks in **
    assert "|" + "|".join(pieces[:8]) + "|" in plain


def test_export_csv_token_rows(trace_dir, tmp_path):
    out = tmp_path / "s.csv"
    r = run("export", trace_dir, "--step", 2, "-o", out)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    table = TraceStore(trace_dir).read_step(2)
    assert len(rows) == sum(table.column("response_length").to_pylist())
    assert list(rows[0])[:10] == ["step", "sample_id", "group_id", "position", "token_id", "token", "entropy",
                                  "logprob", "reward", "advantage"]
    first = table.slice(0, 1).to_pylist()[0]
    assert int(rows[1]["token_id"]) == first["token_ids"][1]
    assert float(rows[1]["entropy"]) == pytest.approx(first["entropy"][1], rel=1e-3)
    assert rows[1]["token"] == TraceStore(trace_dir).vocab.text(first["token_ids"][1])


def test_export_where_and_formats_agree(trace_dir, tmp_path):
    pq_out, jl_out = tmp_path / "hi.parquet", tmp_path / "hi.jsonl"
    assert run("export", trace_dir, "--where", "entropy > 2 AND kept", "--format", "parquet", "-o", pq_out).exit_code == 0
    assert run("export", trace_dir, "--where", "entropy > 2 AND kept", "--format", "jsonl", "-o", jl_out).exit_code == 0
    want = duckdb.sql(f"""SELECT count(*) FROM (SELECT unnest(entropy) AS h, kept
                         FROM read_parquet('{trace_dir}/steps/*.parquet')) WHERE h > 2 AND kept""").fetchall()[0][0]
    got = pl.read_parquet(pq_out)
    assert got.height == want > 0
    assert (got["entropy"] > 2).all() and got["kept"].all()
    assert len(jl_out.read_text().splitlines()) == want


def test_export_response_level(trace_dir):
    r = run("export", trace_dir, "--step", 1, "--level", "response")
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert len(rows) == 8
    assert {"entropy_mean", "entropy_max", "response_text", "reward"} <= set(rows[0])


@pytest.mark.parametrize(
    "args, message",
    [
        (["ls", "{missing}"], "no such trace directory"),
        (["ls", "{empty}"], "is not a wbtrace trace: no run.json"),
        (["export", "{trace}", "--step", "9"], "step 9 not in"),
        (["export", "{trace}", "--steps", "x:y"], "bad step range 'x:y'"),
        (["export", "{trace}", "--where", "nosuchcol > 1"], "--where 'nosuchcol > 1'"),
        (["export", "{trace}", "--format", "parquet"], "--format parquet needs -o FILE"),
        (["show", "{trace}", "--step", "1", "--sample", "99"], "step 1 has no sample 99"),
        (["import-npz", "{empty}", "{out}"], "is not a seed trace"),
    ],
)
def test_bad_input_one_line_exit_2(trace_dir, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    paths = {"missing": tmp_path / "nope", "empty": tmp_path / "empty", "trace": trace_dir, "out": tmp_path / "o"}
    r = CliRunner().invoke(main, [a.format(**paths) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output and r.output.startswith("Error: ") and r.output.count("\n") == 1


def test_corrupt_step_exit_2_and_other_steps_intact(trace_dir, tmp_path):
    path = TraceStore(trace_dir).step_path(3)
    path.write_bytes(path.read_bytes()[:100])
    r = CliRunner().invoke(main, ["export", str(trace_dir), "--step", "3", "-o", str(tmp_path / "x.csv")])
    assert r.exit_code == 2 and "corrupt or truncated" in r.output
    assert not (tmp_path / "x.csv").exists() and not list(tmp_path.glob(".x.csv*"))
    assert run("export", trace_dir, "--step", 1, "-o", tmp_path / "ok.csv").exit_code == 0


def test_import_npz_is_lossless(tmp_path):
    rng = np.random.default_rng(0)
    seed = tmp_path / "seed"
    arrays = {}
    for step in (1, 2):
        n, t = 4, 12
        mask = np.arange(t)[None, :] < rng.integers(1, t, n)[:, None]
        ids = rng.integers(0, 1000, (n, t)).astype(np.int32)
        ent = (rng.random((n, t)) * 3).astype(np.float16)
        uid = np.array(["a", "a", "b", "b"])
        write_seed_step(seed, step, ids, mask, ent, uid=uid, prompt_length=np.full(n, 17, np.int32))
        arrays[step] = (ids, mask, ent)
    r = run("import-npz", seed, tmp_path / "out")
    assert r.exit_code == 0 and "imported 2 steps" in r.output
    store = TraceStore(tmp_path / "out")
    for step, (ids, mask, ent) in arrays.items():
        table = store.read_step(step)
        for i in range(4):
            assert table.column("token_ids")[i].as_py() == ids[i][mask[i]].tolist()
            assert np.array_equal(np.array(table.column("entropy")[i].as_py(), np.float16), ent[i][mask[i]])
        assert table.column("group_id").to_pylist() == ["a", "a", "b", "b"]
        assert table.column("prompt_length").to_pylist() == [17] * 4
    assert "imported 0 steps" in run("import-npz", seed, tmp_path / "out").output  # re-run adds nothing


def test_every_command_has_help_with_example():
    for name in main.commands:
        r = CliRunner().invoke(main, [name, "-h"])
        assert r.exit_code == 0, name
        if name in ("ls", "stats", "show", "export", "import-npz"):
            assert "Example:" in r.output, name


def test_cli_reference_is_current():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen_cli_docs", root / "scripts" / "gen_cli_docs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert (root / "docs" / "cli.md").read_text() == mod.render(), "run: python scripts/gen_cli_docs.py"


def test_every_command_is_in_the_readme():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in main.commands:
        assert f"wbtrace {name}" in readme, name


def test_plot_writes_an_image(trace_dir, tmp_path):
    out = tmp_path / "e.png"
    r = run("plot", trace_dir, "-o", out)
    assert r.exit_code == 0, r.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    svg = tmp_path / "e.svg"
    assert run("plot", trace_dir, "--steps", "2:3", "-o", svg).exit_code == 0
    assert "<svg" in svg.read_text()[:500]


def test_csv_header_once_even_after_empty_steps(trace_dir):
    r = run("export", trace_dir, "--where", "step = 3")
    assert r.exit_code == 0 and r.output.count("step,sample_id") == 1


@pytest.mark.parametrize("target", ["{tmp}/no/such/dir/x.csv", "{tmp}"])
def test_unwritable_output_is_one_line(trace_dir, tmp_path, target):
    r = CliRunner().invoke(main, ["export", str(trace_dir), "--step", "1", "-o", target.format(tmp=tmp_path)])
    assert r.exit_code == 2 and r.output.startswith("Error: ") and "Traceback" not in r.output


def test_manifest_line_that_is_not_an_object_is_ignored(trace_dir):
    with open(trace_dir / "manifest.jsonl", "a") as f:
        f.write("[1, 2]\n")
    assert run("ls", trace_dir).exit_code == 0
    assert TraceStore(trace_dir).steps == [1, 2, 3]
