"""Make the committed source samples from the committed GPU trace: a W&B offline run and an MLflow store.

The steps of ``docs/runs/h100-sample`` (a real GPU run, see docs/runs/h100-dapo-100.md) go through the
real sinks exactly as the trainer sends them: `WandbSink` in offline mode (the wandb SDK writes a real
``offline-run-*`` dir) and `MlflowSink` into an embedded sqlite store. Both are written in a temporary
directory that is deleted afterwards, so every absolute path they record points nowhere: the samples
are read the way a copied run is read on another machine (wbtrace re-roots the paths), wherever the
clone lives. Then the README and docs are updated to the new run names, and the output blocks of the
README are re-run (scripts/gen_readme_output.py).

    .venv/bin/python scripts/make_samples.py [--trace docs/runs/h100-sample]

Writes ``docs/runs/h100-wandb/offline-run-*/`` and ``docs/runs/h100-mlflow/`` (mlflow.db,
mlflow-artifacts/), replacing earlier samples. Re-run it when the headline trace is redone.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "docs" / "runs"
WANDB_OUT = RUNS / "h100-wandb"
MLFLOW_OUT = RUNS / "h100-mlflow"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(RUNS.glob("*.md"))]
# The preview table's responses per step (the trainer logs 64, each an HTML file of ~20 KB in the run):
# 8 keep the sample small; every other table and every artifact is as the trainer logs it.
PREVIEW_ROWS = 8
# A sample, not a monitored run: no host facts, no system metrics, no code or git state, no console log.
WANDB_ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
             "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true", "WANDB_X_DISABLE_META": "true",
             "WANDB_X_DISABLE_STATS": "true", "WANDB_X_DISABLE_MACHINE_INFO": "true"}


def current_names() -> dict[str, str]:
    """The offline run dir name and MLflow run id the docs name now (empty when there is no sample)."""
    names = {}
    runs = sorted(WANDB_OUT.glob("offline-run-*"))
    if runs:
        names["wandb"] = runs[0].name
    if (MLFLOW_OUT / "mlflow.db").exists():
        with sqlite3.connect(MLFLOW_OUT / "mlflow.db") as db:
            row = db.execute("SELECT run_uuid FROM runs LIMIT 1").fetchone()
        if row:
            names["mlflow"] = row[0]
    return names


def replay(trace: Path, tmp: Path) -> tuple[Path, Path]:
    """Send every step of ``trace`` through the W&B and MLflow sinks; returns (offline run dir, store dir)."""
    from wbtrace.sinks.mlflow import MlflowSink
    from wbtrace.sinks.wandb import WandbSink
    from wbtrace.store import TraceStore

    store = TraceStore(trace)
    os.environ.update({**WANDB_ENV, "WANDB_DATA_DIR": str(tmp / "wandb-data"),
                       "WANDB_CACHE_DIR": str(tmp / "wandb-cache"), "WANDB_CONFIG_DIR": str(tmp / "wandb-config")})
    wandb_sink = WandbSink(project="wbtrace", name="h100-sample", mode="offline", dir=str(tmp / "w"),
                           config=store.run_info.get("config") or {}, preview_rows=PREVIEW_ROWS)
    mlflow_dir = tmp / "mlflow"
    mlflow_dir.mkdir()
    mlflow_sink = MlflowSink(tracking_uri=f"sqlite:///{mlflow_dir / 'mlflow.db'}", run_dir=trace,
                             experiment="wbtrace", run_name="h100-sample", wandb_run_id=wandb_sink.run_id)
    sinks = [wandb_sink, mlflow_sink]
    for sink in sinks:
        sink.log_run(trace, store.run_info)
    for line in store.manifest:
        table = store.read_step(line["step"])
        for sink in sinks:
            sink.log_step(line["step"], store.step_path(line["step"]), line, table)
    for sink in sinks:
        sink.finish()
    (run_dir,) = (tmp / "w" / "wandb").glob("offline-run-*")
    return run_dir, mlflow_dir


def install(run_dir: Path, mlflow_dir: Path) -> None:
    """Move the new samples into docs/runs, leaving out W&B's debug logs (host paths, no run data)."""
    shutil.rmtree(run_dir / "logs", ignore_errors=True)
    shutil.rmtree(run_dir / "tmp", ignore_errors=True)
    for old in (WANDB_OUT, MLFLOW_OUT):
        shutil.rmtree(old, ignore_errors=True)
    WANDB_OUT.mkdir(parents=True)
    shutil.copytree(run_dir, WANDB_OUT / run_dir.name)  # copies, not hard links into the temp trace
    with sqlite3.connect(mlflow_dir / "mlflow.db") as db:
        db.execute("PRAGMA page_size = 512")  # ~220 mostly empty tables: 0.97 MB in 4 KiB pages, 0.2 MB in 512 B
        db.execute("VACUUM")
    shutil.copytree(mlflow_dir, MLFLOW_OUT)


def rename_in_docs(old: dict[str, str], new: dict[str, str]) -> None:
    for path in DOCS:
        text = path.read_text()
        updated = text
        for key in old.keys() & new.keys():
            updated = updated.replace(old[key], new[key])
        if updated != text:
            path.write_text(updated)
            print(f"updated {path.relative_to(ROOT)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", type=Path, default=RUNS / "h100-sample", help="trace dir to replay")
    ap.add_argument("--no-readme", action="store_true", help="do not re-run the README's output blocks")
    args = ap.parse_args()
    old = current_names()
    with tempfile.TemporaryDirectory(prefix="wbtrace-samples-") as tmp:
        tmp = Path(tmp)
        trace = tmp / "trace"
        shutil.copytree(args.trace, trace)
        install(*replay(trace, tmp))
    new = current_names()
    rename_in_docs(old, new)
    size = sum(f.stat().st_size for d in (WANDB_OUT, MLFLOW_OUT) for f in d.rglob("*") if f.is_file())
    print(f"W&B offline run: {WANDB_OUT.relative_to(ROOT)}/{new['wandb']}\n"
          f"MLflow store: {MLFLOW_OUT.relative_to(ROOT)} (run {new['mlflow']})\n{size / 1e6:.2f} MB in all")
    if not args.no_readme:
        subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_readme_output.py")], check=True)


if __name__ == "__main__":
    main()
