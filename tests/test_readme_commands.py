"""The README's console blocks run as printed against the committed samples, and print what it shows.

Run from a scratch directory holding a copy of docs/runs, as a fresh clone elsewhere would: the W&B
offline run and the MLflow store recorded absolute paths of a directory that no longer exists.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gen():
    spec = importlib.util.spec_from_file_location("gen_readme_output", ROOT / "scripts" / "gen_readme_output.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory):
    gen = _gen()
    cwd = gen.scratch_dir(tmp_path_factory.mktemp("readme"))
    _, ran = gen.render(gen.README.read_text(), cwd)
    return gen, cwd, ran


def test_readme_commands_print_what_the_readme_shows(readme_runs):
    gen, cwd, ran = readme_runs
    assert len(ran) >= 8
    for command, got in ran:
        assert gen.normalize(got, cwd) == gen.normalize(command.output), (
            f"$ {command.line}\n(run: python scripts/gen_readme_output.py)")


def test_readme_names_the_committed_samples(readme_runs):
    gen, cwd, ran = readme_runs
    lines = [c.line for c, _ in ran]
    wandb_run = next(x for x in lines if x.startswith("wbtrace pull docs/runs/h100-wandb/offline-run-"))
    mlflow_run = next(x for x in lines if x.startswith("wbtrace pull mlflow://"))
    assert (ROOT / wandb_run.split()[2]).is_dir()
    run_id = re.search(r"mlflow://([0-9a-f]{32})", mlflow_run).group(1)
    assert (ROOT / "docs/runs/h100-mlflow/mlflow-artifacts" / run_id).is_dir()
    assert any(x.startswith("wbtrace mirror docs/runs/h100-wandb/") for x in lines)
    assert not any("outputs/" in x for x in lines), "every README command must run from a fresh clone"


def test_pulled_samples_are_the_committed_gpu_steps(readme_runs):
    _, cwd, _ = readme_runs
    want = (ROOT / "docs/runs/h100-sample/steps/step_000050.parquet").read_bytes()
    assert (cwd / "pw/steps/step_000050.parquet").read_bytes() == want
    assert (cwd / "pm/steps/step_000050.parquet").read_bytes() == want
    assert (cwd / "report.html").stat().st_size > 100_000


def test_one_progress_line_per_pull_no_mlflow_bars(readme_runs):
    _, _, ran = readme_runs
    for command, got in ran:
        if command.line.startswith(("wbtrace pull", "wbtrace mirror")):
            assert "Downloading artifacts" not in got and "INFO mlflow" not in got, command.line


def test_samples_are_small():
    total = sum(f.stat().st_size for d in ("h100-wandb", "h100-mlflow")
                for f in (ROOT / "docs" / "runs" / d).rglob("*") if f.is_file())
    assert total < 3.3e6
