"""W&B sink with the real SDK in offline mode, the `.wandb` reader, and pulling from an offline run dir."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("wandb")

from wbtrace import TraceStore, TraceWriter  # noqa: E402
from wbtrace.backends.wandb_file import iter_payloads, read_run_log  # noqa: E402
from wbtrace.cli import main  # noqa: E402
from wbtrace.errors import SourceError, TraceFormatError  # noqa: E402
from wbtrace.sources.pull import pull  # noqa: E402
from wbtrace.sources.wandb_offline import WandbOfflineSource, find_wandb_file  # noqa: E402
from wbtrace.steps import StepSelection  # noqa: E402

N_STEPS = 3
EVIL = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "a", "\n"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One offline run with N_STEPS steps written through TraceWriter + WandbSink."""
    from wbtrace.sinks.wandb import WandbSink

    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_SILENT", "true")
    root = tmp_path_factory.mktemp("wb")
    sink = WandbSink(project="wbtrace-test", mode="offline", dir=str(root / "wb"), preview_rows=4)
    rng = np.random.default_rng(0)
    with TraceWriter(root / "trace", vocab=EVIL, sinks=[sink]) as w:
        for step in range(1, N_STEPS + 1):
            w.write_step(step, token_ids=rng.integers(0, 4, (6, 9)), response_mask=np.ones((6, 9)),
                         entropy=rng.random((6, 9)) * 2, reward=rng.random(6))
    sink.finish()
    sink.finish()  # safe twice
    mp.undo()
    return root / "trace", Path(sink.run.settings.sync_dir), sink.run_id


def _md5(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def test_wandb_file_holds_one_artifact_per_step(logged):
    trace, run_dir, run_id = logged
    log = read_run_log(find_wandb_file(run_dir))
    arts = [a for a in log.artifacts if a.name == f"wbtrace-{run_id}"]
    assert len(arts) == N_STEPS
    assert [next(x for x in a.aliases if x.startswith("step-")) for a in arts] == [f"step-{i}" for i in (1, 2, 3)]
    store = TraceStore(trace)
    for a in arts:
        step = a.metadata["step"]
        assert a.type == "entropy-trace" and a.metadata["schema_version"] == 1
        assert a.metadata["n_tokens"] == 54
        files = {e.path: e for e in a.entries}
        assert set(files) == {f"steps/step_{step:06d}.parquet", "run.json", "vocab.parquet"}
        local = Path(files[f"steps/step_{step:06d}.parquet"].local_path)
        assert local.is_relative_to(run_dir)  # self-contained run dir
        assert local.read_bytes() == store.step_path(step).read_bytes()
        assert files[f"steps/step_{step:06d}.parquet"].digest == _md5(store.step_path(step))


def test_history_holds_the_statistics(logged):
    trace, run_dir, _ = logged
    rows = [h for h in read_run_log(find_wandb_file(run_dir)).history if "trace/step" in h]
    assert [r["trace/step"] for r in rows] == [1, 2, 3]
    manifest = {e["step"]: e for e in TraceStore(trace).manifest}
    for r in rows:
        for key in ("entropy_p50", "entropy_p99", "share_above", "response_length_mean", "reward_mean"):
            assert r[f"trace/{key}"] == pytest.approx(manifest[r["trace/step"]][key])


def test_preview_html_escapes_tokens(logged):
    from wbtrace.render_html import token_spans_html
    from wbtrace.sinks.wandb import PREVIEW_COLUMNS, preview_rows

    trace, _, _ = logged
    store = TraceStore(trace)
    columns, rows = preview_rows(store.read_step(1), store.vocab.texts, 64)
    assert columns == PREVIEW_COLUMNS and len(rows) == 6
    pages = [r[columns.index("tokens")] for r in rows] + [token_spans_html(EVIL, [0.1, 1.0, 2.0, 0.0])]
    for text in pages:
        assert "<script" not in text and "<img" not in text
    text = "".join(pages)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in text


def test_copied_run_dir_pulls_byte_identical(logged, tmp_path):
    trace, run_dir, run_id = logged
    moved = tmp_path / "elsewhere" / "renamed-run"
    shutil.copytree(run_dir, moved)
    out = pull(WandbOfflineSource(moved), StepSelection(all=True), tmp_path / "pulled")
    store, orig = TraceStore(out), TraceStore(trace)
    assert store.steps == [1, 2, 3]
    for s in store.steps:
        assert store.step_path(s).read_bytes() == orig.step_path(s).read_bytes()
    assert (out / "run.json").read_bytes() == (trace / "run.json").read_bytes()
    assert [m["entropy_p90"] for m in store.manifest] == [m["entropy_p90"] for m in orig.manifest]


def test_pull_missing_step_lists_existing(logged, tmp_path):
    _, run_dir, _ = logged
    with pytest.raises(SourceError, match="step 9 not found; steps that exist: 1-3"):
        pull(WandbOfflineSource(run_dir), StepSelection(steps=(9,)), tmp_path / "x")


def test_cli_pull_then_export_equals_local_export(logged, tmp_path):
    trace, run_dir, _ = logged
    runner = CliRunner()
    res = runner.invoke(main, ["pull", str(run_dir), "--step", "2", "--dest", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    a = runner.invoke(main, ["export", str(tmp_path / "p"), "--step", "2"])
    b = runner.invoke(main, ["export", str(trace), "--step", "2"])
    assert a.exit_code == 0 and b.exit_code == 0
    assert a.output == b.output and a.output.count("\n") > 50
    bad = runner.invoke(main, ["pull", str(run_dir), "--step", "7", "--dest", str(tmp_path / "q")])
    assert bad.exit_code == 2 and "steps that exist: 1-3" in bad.output


def test_truncated_tail_stops_cleanly(logged, tmp_path):
    _, run_dir, _ = logged
    data = find_wandb_file(run_dir).read_bytes()
    whole = list(iter_payloads(data))
    cut = list(iter_payloads(data[: len(data) - 100]))
    assert 0 < len(cut) < len(whole) and cut == whole[: len(cut)]


def test_corrupt_and_foreign_files_raise(logged, tmp_path):
    _, run_dir, _ = logged
    data = bytearray(find_wandb_file(run_dir).read_bytes())
    data[200] ^= 0xFF
    with pytest.raises(TraceFormatError, match="checksum|chunk"):
        list(iter_payloads(bytes(data)))
    with pytest.raises(TraceFormatError, match="not a .wandb file"):
        list(iter_payloads(b"PAR1" + b"\0" * 20))


def test_workspace_json_loads_back():
    pytest.importorskip("wandb_workspaces")
    from weave_panels.workspace import load_workspace_json

    res = CliRunner().invoke(main, ["workspace", "--entity", "me", "--project", "dapo", "--json"])
    assert res.exit_code == 0, res.output
    json.loads(res.output)
    ws = load_workspace_json(res.output)
    assert (ws.entity, ws.project) == ("me", "dapo")
    assert sum(len(s.panels) for s in ws.sections) == 11


def test_chart_specs_are_wandb_custom_charts():
    from weave_panels import CHARTS, load_spec

    for name in CHARTS:
        spec = load_spec(name)
        assert spec["data"] == {"name": "wandb"}
        assert "${field:" in json.dumps(spec)
