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
from weave_panels import CHARTS  # noqa: E402

N_STEPS = 3
EVIL = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "a", "\n"]


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One offline run with N_STEPS steps written through TraceWriter + WandbSink, with HOME moved."""
    from wbtrace.sinks.wandb import WandbSink

    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("wb")
    mp.setenv("WANDB_SILENT", "true")
    mp.setenv("HOME", str(root / "home"))  # whatever W&B puts in ~/.local/share/wandb lands here
    mp.delenv("WANDB_DATA_DIR", raising=False)
    sink = WandbSink(project="wbtrace-test", mode="offline", dir=str(root / "wb"), preview_rows=4)
    rng = np.random.default_rng(0)
    with TraceWriter(root / "trace", vocab=EVIL, sinks=[sink]) as w:
        for step in range(1, N_STEPS + 1):
            w.write_step(step, token_ids=rng.integers(0, 4, (6, 9)), response_mask=np.ones((6, 9)),
                         entropy=rng.random((6, 9)) * 14, reward=rng.random(6),
                         group_id=np.repeat(np.arange(3), 2), correct=rng.random(6) > 0.5)
    sink.finish()
    sink.finish()  # safe twice
    mp.undo()
    return root / "trace", Path(sink.run.settings.sync_dir), sink.run_id


def _md5(path: Path) -> str:
    return base64.b64encode(hashlib.md5(path.read_bytes()).digest()).decode()


def test_wandb_file_holds_one_artifact_per_step_with_its_tables(logged):
    trace, run_dir, run_id = logged
    log = read_run_log(find_wandb_file(run_dir))
    assert {a.name for a in log.artifacts} == {f"wbtrace-{run_id}"}  # no run_table artifacts pile up
    arts = log.artifacts
    assert len(arts) == N_STEPS
    assert [next(x for x in a.aliases if x.startswith("step-")) for a in arts] == [f"step-{i}" for i in (1, 2, 3)]
    store = TraceStore(trace)
    for a in arts:
        step = a.metadata["step"]
        assert a.type == "entropy-trace" and a.metadata["schema_version"] == 1
        assert a.metadata["n_tokens"] == 54
        files = {e.path: e for e in a.entries}
        html = {p for p in files if p.startswith("media/html/")}
        assert set(files) - html == {f"steps/step_{step:06d}.parquet", "run.json", "vocab.parquet",
                                     "preview.table.json", "heatmap.table.json"}
        assert len(html) == 4  # one file per preview cell
        for e in files.values():  # self-contained: every file inside the run dir, as the digest says
            assert Path(e.local_path).is_relative_to(run_dir) and _md5(Path(e.local_path)) == e.digest
        local = Path(files[f"steps/step_{step:06d}.parquet"].local_path)
        assert local.read_bytes() == store.step_path(step).read_bytes()
        preview = json.loads(Path(files["preview.table.json"].local_path).read_text())
        assert preview["columns"][-2:] == ["artifact", "tokens"]
        assert {r[-2] for r in preview["data"]} == {f"wbtrace-{run_id}:step-{step}"}
        assert {r[-1]["path"] for r in preview["data"]} == html


def test_nothing_lands_outside_the_run_dir(logged):
    home = logged[1].parents[2] / "home"
    assert (home / ".local" / "share" / "wandb" / "artifacts" / "staging").is_dir()  # W&B did stage there...
    assert [p for p in home.joinpath(".local").rglob("*") if p.is_file()] == []  # ...and nothing was left


def test_history_holds_scalars_and_the_whole_histogram(logged):
    trace, run_dir, _ = logged
    rows = [h for h in read_run_log(find_wandb_file(run_dir)).history if "trace/step" in h]
    assert [r["trace/step"] for r in rows] == [1, 2, 3]
    manifest = {e["step"]: e for e in TraceStore(trace).manifest}
    for r in rows:
        for key in ("entropy_p50", "entropy_p99", "share_above", "response_length_mean", "reward_mean"):
            assert r[f"trace/{key}"] == pytest.approx(manifest[r["trace/step"]][key])
        bins = [r[f"trace_hist/b{i:02d}"] for i in range(24)]
        assert sum(bins) == 54 and bins[-1] > 0  # no token lost: entropies up to 14 nats land in the overflow bin
        # nested values come as key parts joined by "/"
        assert r["trace/entropy_hist/_type"] == "histogram" and sum(r["trace/entropy_hist/values"]) == 54
        assert r["trace/entropy_hist/bins"][-1] == pytest.approx(manifest[r["trace/step"]]["entropy_max"], abs=0.01)
        assert not any(isinstance(v, dict) and "table" in str(v.get("_type")) for v in r.values())


def test_heatmap_rows_contrast_best_and_worst_of_groups(logged):
    from wbtrace.sinks.wandb_rows import HEATMAP_COLUMNS, heatmap_rows

    trace, _, _ = logged
    table = TraceStore(trace).read_step(1)
    rows = heatmap_rows(table, None, n_groups=2)
    at = {c: i for i, c in enumerate(HEATMAP_COLUMNS)}
    reward, group = table.column("reward").to_pylist(), table.column("group_id").to_pylist()
    spread = {g: max(r for r, gg in zip(reward, group) if gg == g) - min(r for r, gg in zip(reward, group) if gg == g)
              for g in set(group)}
    top2 = sorted(spread, key=lambda g: -spread[g])[:2]
    shown = {(r[at["group_id"]], r[at["sample_id"]]) for r in rows}
    assert {g for g, _ in shown} == set(top2) and len(shown) == 4  # best and worst of each
    assert all(r[at["label"]].startswith(f"g{r[at['group_id']]} #{r[at['sample_id']]} r=") for r in rows)


def test_preview_html_escapes_tokens(logged):
    from wbtrace.render_html import token_spans_html
    from wbtrace.sinks.wandb_rows import PREVIEW_COLUMNS, preview_rows

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
    charts = [p for s in ws.sections for p in s.panels if type(p).__name__ == "CustomChart"]
    n_history = sum(c.source == "history" for c in CHARTS.values())  # 3 entropy charts + 4 analyses
    assert len(charts) == n_history == 7 and all(c.chart_name.startswith("me/wbtrace-") for c in charts)
    spec = json.loads(res.output)
    ids = [p["config"]["panelDefId"] for s in spec["spec"]["section"]["panelBankConfig"]["sections"]
           for p in s["panels"] if p.get("viewType") == "Vega2"] if "spec" in spec else []
    assert all(i.startswith("me/") for i in ids)
    with_run = CliRunner().invoke(main, ["workspace", "--entity", "me", "--project", "dapo", "--run", "abc123",
                                         "--chart-entity", "team", "--json"])
    assert with_run.exit_code == 0 and "wbtrace-abc123" in with_run.output and "team/wbtrace-entropy-bands" in with_run.output


def test_chart_specs_are_wandb_custom_charts_on_the_palette_scale():
    from wbtrace.palette import STOPS, entropy_hex
    from weave_panels import CHARTS, load_spec

    for name in CHARTS:
        spec = load_spec(name)
        assert spec["data"] == {"name": "wandb"}
        assert "${field:run}" in json.dumps(spec)  # several runs compare side by side
    scale = load_spec("wbtrace-token-heatmap")["encoding"]["color"]["scale"]
    assert scale["domain"] == [h for h, _ in STOPS] and scale["range"] == [entropy_hex(h) for h, _ in STOPS]
    assert scale["interpolate"] == "rgb"  # palette.py interpolates in RGB


def test_writer_rewrites_a_log_byte_for_byte(logged):
    import io

    from wbtrace.backends.wandb_file import write_payloads

    data = find_wandb_file(logged[1]).read_bytes()
    out = io.BytesIO()
    write_payloads(iter_payloads(data), out)
    assert out.getvalue() == data  # same blocks, padding and crcs as wandb-core writes


@pytest.mark.contract
def test_contract_moved_run_is_prepared_for_wandb_sync(logged, tmp_path, monkeypatch):
    """Copied to another path (and HOME) the run's log names only files under the new dir; stops at the
    server boundary: `wandb sync --dry-run` accepts the run."""
    import subprocess
    import sys

    _, run_dir, run_id = logged
    moved = tmp_path / "login-node" / run_dir.name
    shutil.copytree(run_dir, moved)
    monkeypatch.setenv("HOME", str(tmp_path / "other-home"))
    runner = CliRunner()
    res = runner.invoke(main, ["sync", str(moved), "--prepare-only"])
    assert res.exit_code == 0, res.output
    assert "27 artifact files found" in res.output and "re-pointed 27" in res.output
    entries = [e for a in read_run_log(find_wandb_file(moved)).artifacts for e in a.entries]
    assert len(entries) == 27
    for e in entries:
        path = Path(e.local_path)
        assert path.is_relative_to(moved) and path.is_file() and _md5(path) == e.digest
    assert str(run_dir) not in find_wandb_file(moved).read_bytes().decode("latin-1")
    assert (moved / f"run-{run_id}.wandb.orig").is_file()
    again = runner.invoke(main, ["sync", str(moved), "--prepare-only"])
    assert again.exit_code == 0 and "re-pointed 0" in again.output  # idempotent
    dry = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run", str(moved)], capture_output=True,
                         text=True, timeout=120, env={**__import__("os").environ, "WANDB_MODE": "offline"})
    assert dry.returncode == 0 and f"run-{run_id}.wandb" in dry.stdout + dry.stderr
    via_wbtrace = runner.invoke(main, ["sync", str(moved), "--dry-run"])  # options pass through to wandb sync
    assert via_wbtrace.exit_code == 0 and "would re-point 0" in via_wbtrace.output


def test_sync_refuses_a_run_whose_files_are_missing(logged, tmp_path):
    _, run_dir, _ = logged
    moved = tmp_path / run_dir.name
    shutil.copytree(run_dir, moved)
    next((moved / "wbtrace" / "tables").rglob("*.html")).unlink()
    before = find_wandb_file(moved).read_bytes()
    res = CliRunner().invoke(main, ["sync", str(moved), "--prepare-only"])
    assert res.exit_code == 2 and res.output.startswith("Error: artifact wbtrace-") and "media/html/" in res.output
    assert find_wandb_file(moved).read_bytes() == before  # nothing written


def test_history_bytes_per_row_do_not_grow_with_the_step(tmp_path, monkeypatch):
    """200 steps: history and summary records at step 200 cost what they cost at step 10 (linear log)."""
    from wandb.proto import wandb_internal_pb2 as pb

    from wbtrace.sinks.wandb import WandbSink

    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = WandbSink(project="wbtrace-test", mode="offline", dir=str(tmp_path / "wb"), preview_rows=1)
    rng = np.random.default_rng(1)
    with TraceWriter(tmp_path / "trace", vocab=EVIL, sinks=[sink]) as w:
        for step in range(1, 201):
            w.write_step(step, token_ids=rng.integers(0, 4, (4, 5)), response_mask=np.ones((4, 5)),
                         entropy=rng.random((4, 5)) * 3, reward=rng.random(4), group_id=np.repeat(np.arange(2), 2))
    sink.finish()
    sizes: dict[str, list[int]] = {"history": [], "summary": []}
    for payload in iter_payloads(find_wandb_file(Path(sink.run.settings.sync_dir)).read_bytes()):
        r = pb.Record()
        r.ParseFromString(payload)
        if r.WhichOneof("record_type") == "history":
            sizes["history"].append(len(payload))
        elif r.WhichOneof("record_type") == "summary" and len(payload) > 200:
            sizes["summary"].append(len(payload))
    for kind in ("history", "summary"):
        assert len(sizes[kind]) >= 200
        assert sizes[kind][199] == pytest.approx(sizes[kind][9], rel=0.05), kind


def test_file_reference_artifacts_pull_back_byte_identical(tmp_path, monkeypatch):
    """reference_uri: W&B keeps the trace files' digests, not their bytes; pull reads them where they point."""
    from wbtrace.sinks.wandb import WandbSink

    monkeypatch.setenv("WANDB_SILENT", "true")
    trace = tmp_path / "shared-fs" / "trace"
    sink = WandbSink(project="wbtrace-test", mode="offline", dir=str(tmp_path / "wb"), preview_rows=2,
                     reference_uri=trace.as_uri())
    rng = np.random.default_rng(2)
    with TraceWriter(trace, vocab=EVIL, sinks=[sink]) as w:
        for step in (1, 2):
            w.write_step(step, token_ids=rng.integers(0, 4, (4, 6)), response_mask=np.ones((4, 6)),
                         entropy=rng.random((4, 6)), reward=rng.random(4))
    sink.finish()
    run_dir = Path(sink.run.settings.sync_dir)
    art = read_run_log(find_wandb_file(run_dir)).artifacts[0]
    refs = {e.path: e.ref for e in art.entries if e.ref}
    assert refs == {"steps/step_000001.parquet": f"{trace.as_uri()}/steps/step_000001.parquet",
                    "run.json": f"{trace.as_uri()}/run.json", "vocab.parquet": f"{trace.as_uri()}/vocab.parquet"}
    assert not (run_dir / "wbtrace" / "steps").exists()  # the bytes were not copied into the run
    out = pull(WandbOfflineSource(run_dir), StepSelection(all=True), tmp_path / "pulled")
    store, orig = TraceStore(out), TraceStore(trace)
    assert store.steps == [1, 2]
    for s in store.steps:
        assert store.step_path(s).read_bytes() == orig.step_path(s).read_bytes()
    orig.step_path(2).write_bytes(orig.step_path(1).read_bytes())  # changed after logging: refused
    with pytest.raises(SourceError, match="changed since it was logged"):
        pull(WandbOfflineSource(run_dir), StepSelection(steps=(2,)), tmp_path / "again")


def test_compare_reads_an_offline_run_dir_through_the_cache(logged, tmp_path, monkeypatch):
    """`compare` takes any source: the offline run dir is pulled into $WBTRACE_CACHE, then analysed."""
    trace, run_dir, _ = logged
    monkeypatch.setenv("WBTRACE_CACHE", str(tmp_path / "cache"))
    res = CliRunner().invoke(main, ["compare", str(trace), str(run_dir), "--top", "3", "--format", "json"])
    assert res.exit_code == 0, res.output
    body = json.loads(res.output)
    assert [o["jaccard"] for o in body["fork_overlap"]] == [1.0] * N_STEPS
    assert all(r["entropy_mean_a"] == r["entropy_mean_b"] for r in body["rows"])
    (cached,) = (tmp_path / "cache").iterdir()
    assert TraceStore(cached).steps == TraceStore(trace).steps
    before = {p: p.stat().st_mtime_ns for p in (cached / "steps").iterdir()}
    assert CliRunner().invoke(main, ["compare", str(run_dir), str(trace), "--format", "json"]).exit_code == 0
    assert {p: p.stat().st_mtime_ns for p in (cached / "steps").iterdir()} == before  # only new steps pulled


def test_view_follow_picks_up_steps_of_an_offline_run_being_written(tmp_path, monkeypatch):
    """`view --serve --follow RUN_DIR`: steps logged after the app started appear in its summary."""
    import time

    from wbtrace.sinks.wandb import WandbSink
    from wbtrace.sources.local_copy import local_store
    from wbtrace.viewer import ViewerApp

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("WBTRACE_CACHE", str(tmp_path / "cache"))
    sink = WandbSink(project="wbtrace-test", mode="offline", dir=str(tmp_path / "wb"), preview_rows=0)
    rng = np.random.default_rng(1)

    def step(w, s):
        w.write_step(s, token_ids=rng.integers(0, 4, (4, 6)), response_mask=np.ones((4, 6)),
                     entropy=rng.random((4, 6)) * 3, reward=rng.random(4))
        w.flush()

    run_dir = Path(sink.run.settings.sync_dir)
    with TraceWriter(tmp_path / "trace", vocab=EVIL, sinks=[sink]) as w:
        step(w, 1)
        deadline = time.monotonic() + 30
        while not _offline_steps(run_dir) and time.monotonic() < deadline:
            time.sleep(0.3)
        store, refresh = local_store(str(run_dir))
        app = ViewerApp(store.run_dir, follow=True, poll_s=0.1, refresh=refresh)
        assert app.steps == [1] and refresh is not None
        step(w, 2)
        while json.loads(app.meta_json())["steps"] != [1, 2] and time.monotonic() < deadline:
            time.sleep(0.3)
        assert json.loads(app.meta_json())["steps"] == [1, 2]
    sink.finish()


def _offline_steps(run_dir: Path) -> list[int]:
    from wbtrace.sources.wandb_offline import WandbOfflineSource

    try:
        return WandbOfflineSource(run_dir).steps()
    except Exception:  # noqa: BLE001  (the log may not hold the first artifact record yet)
        return []
