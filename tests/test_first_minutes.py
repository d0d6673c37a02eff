"""A newcomer's first minutes (issue 21): what the CLI imports to start, where outputs go by default,
the small output fixes. The README's own commands are run in tests/test_readme_commands.py."""

from __future__ import annotations

import csv
import importlib
import io
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from click.testing import CliRunner

import wbtrace.cli
from wbtrace import TraceWriter
from wbtrace.cli import main
from wbtrace.cli.app import COMMAND_MODULES
from wbtrace.export import response_batches
from wbtrace.store import TraceStore
from wbtrace.synthetic import make_step, synthetic_vocab

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "docs" / "runs" / "h100-sample"


def run(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)


def imported_by(*args: str) -> set[str]:
    """Top-level modules a fresh process has imported after running ``wbtrace ARGS``."""
    code = ("import sys\nfrom wbtrace.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    assert not e.code, e.code\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    return set(out.split())


def test_commands_load_only_what_they_use(tmp_path):
    heavy = {"torch", "ray", "wandb", "mlflow", "matplotlib", "transformers", "pandas"}
    assert not imported_by("--help") & heavy
    assert not imported_by("ls", str(SAMPLE)) & (heavy | {"polars"})
    # pyarrow's first conversion would import pandas just to probe for pandas objects
    assert not imported_by("export", str(SAMPLE), "--step", "100", "-o", str(tmp_path / "x.csv")) & heavy


def test_command_table_names_every_command_and_its_module():
    for info in pkgutil.iter_modules(wbtrace.cli.__path__):
        importlib.import_module(f"wbtrace.cli.{info.name}")
    defined = {name: cmd.callback.__module__.rsplit(".", 1)[-1] for name, cmd in dict.items(main.commands)}
    assert defined == COMMAND_MODULES, "update COMMAND_MODULES in wbtrace/cli/app.py"


def test_usage_line_names_wbtrace():
    assert run("--help").output.startswith("Usage: wbtrace [OPTIONS] COMMAND")
    assert "Usage: wbtrace export [OPTIONS]" in run("export", "-h").output
    doc = (ROOT / "docs" / "cli.md").read_text()
    assert "Usage: main" not in doc and "Usage: wbtrace ls [OPTIONS]" in doc


def test_unknown_command_is_a_usage_error():
    r = CliRunner().invoke(main, ["nosuch"])
    assert r.exit_code == 2 and "No such command 'nosuch'" in r.output


def test_response_level_export_keeps_prompt_text(tmp_path):
    step = make_step(4, 12, 50, seed=3)
    prompts = [f"What is {i} + {i}?" for i in range(4)]
    with TraceWriter(tmp_path / "t", vocab=synthetic_vocab(50)) as w:
        assert w.write_step(1, **step, prompt_text=prompts)
    rows = list(csv.DictReader(io.StringIO(run("export", tmp_path / "t", "--level", "response").output)))
    assert [r["prompt_text"] for r in rows] == prompts


def test_view_and_plot_write_into_the_current_directory(trace_dir, tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=here) as cwd:
        assert runner.invoke(main, ["view", str(trace_dir)], catch_exceptions=False).exit_code == 0
        assert runner.invoke(main, ["plot", str(trace_dir)], catch_exceptions=False).exit_code == 0
        assert (Path(cwd) / "report.html").stat().st_size > 10_000
        assert (Path(cwd) / "entropy.png").read_bytes()[:4] == b"\x89PNG"
    assert not (trace_dir / "report.html").exists() and not (trace_dir / "entropy.png").exists()


def test_ls_shows_a_dash_not_none_for_missing_counts(trace_dir):
    manifest = trace_dir / "manifest.jsonl"
    lines = [json.loads(x) for x in manifest.read_text().splitlines()]
    for e in lines:
        del e["n_kept"], e["n_responses"]
    manifest.write_text("".join(json.dumps(e) + "\n" for e in lines))
    out = run("ls", trace_dir).output
    assert "None" not in out and " - " in out
    assert f"{lines[0]['entropy_mean']:.3f}" in out


def test_export_batches_cover_every_response_once(trace_dir):
    table = TraceStore(trace_dir).read_step(2)
    lengths = table.column("response_length").to_numpy()
    batches = list(response_batches(table, max_tokens=int(lengths.max()) + 3))
    assert len(batches) > 1
    assert sum(b.num_rows for b in batches) == table.num_rows
    assert np.concatenate([b.column("sample_id").to_numpy() for b in batches]).tolist() == \
        table.column("sample_id").to_pylist()
    assert all(b.num_rows == 1 or sum(b.column("response_length").to_pylist()) <= lengths.max() + 3
               for b in batches)


def test_batched_export_equals_one_table(trace_dir, tmp_path, monkeypatch):
    import wbtrace.export as export

    whole = tmp_path / "whole.csv"
    run("export", trace_dir, "-o", whole)
    monkeypatch.setattr(export, "BATCH_TOKENS", 7)
    small = tmp_path / "small.csv"
    run("export", trace_dir, "-o", small)
    assert small.read_bytes() == whole.read_bytes() and len(whole.read_text().splitlines()) > 100
