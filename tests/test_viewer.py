"""`wbtrace view`: the report's Python side (specs, escaping, step selection, CLI) and the page itself
in real headless Chromium (Debian's /usr/bin/chromium driven by playwright; no browser download)."""

from __future__ import annotations

import csv
import json
import re
import threading
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from click.testing import CliRunner

from wbtrace import TraceStore, TraceWriter, palette
from wbtrace.cli import main
from wbtrace.synthetic import make_step, synthetic_vocab
from wbtrace.viewer import ViewerApp, make_server, write_report
from wbtrace.viewer.charts import BUILTIN, WEAVE_FILES, bind_spec, load_spec, panels_dir
from wbtrace.viewer.report import json_for_script, resolve_steps
from wbtrace.vocab import build_vocab

# Untrusted token text: must show as text and run nothing.
EVIL = ["<script>window.__xss=1</script>", '"quoted" & \'single\'', "&amp; &lt;b&gt;",
        '<img src=x onerror="window.__xss=2">', "</script><script>window.__xss=3</script>"]
N, T, VOCAB = 24, 300, 400


# ---------------------------------------------------------------- a trace with hostile tokens
@pytest.fixture(scope="module")
def evil_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("viewer") / "trace"
    pieces = [p.replace("Ġ", " ") for p in synthetic_vocab(VOCAB - len(EVIL))] + EVIL
    vocab = build_vocab(pieces=pieces, byte_level=False)
    info = {"model": "</script><script>window.__xss=4</script>"}
    with TraceWriter(run_dir, vocab=vocab, run_info=info) as w:
        for step in (1, 2, 3):
            arrays = make_step(N, T, VOCAB - len(EVIL), seed=step, group_size=4, min_len=40)
            arrays["token_ids"][0, : len(EVIL)] = np.arange(VOCAB - len(EVIL), VOCAB)  # response 0 opens with them
            assert w.write_step(step, **arrays)
    assert w.report.ok, w.report
    return run_dir


@pytest.fixture(scope="module")
def report(evil_trace: Path) -> Path:
    return write_report(evil_trace, evil_trace.parent / "report.html")


# ---------------------------------------------------------------- Python side
def test_bind_spec_fills_wandb_placeholders_and_data():
    spec = load_spec("entropy_histogram")
    assert spec["data"] == {"name": "wandb"}  # still in W&B custom-chart form
    bound = bind_spec(spec, [{"bin_start": 0.0, "bin_end": 0.1, "count": 3}], strings={"title": "H"})
    text = json.dumps(bound)
    assert "${" not in text and bound["data"] == {"values": [{"bin_start": 0.0, "bin_end": 0.1, "count": 3}]}
    assert bound["title"] == "H" and bound["encoding"]["x"]["field"] == "bin_start"


def test_every_chart_is_wandb_form_and_shared_presets_are_reused():
    for name in BUILTIN:
        text = json.dumps(load_spec(name))
        assert '{"name": "wandb"}' in text and "${field:" in text, name
    for name, file in WEAVE_FILES.items():
        if (panels_dir() / file).is_file():
            assert load_spec(name)["description"] == json.loads((panels_dir() / file).read_text())["description"]


def test_json_for_script_cannot_close_the_element():
    text = json_for_script({"t": EVIL})
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"t": EVIL}


def test_resolve_steps_forms(evil_trace: Path):
    store = TraceStore(evil_trace)
    assert resolve_steps(store, None) == [1, 2, 3]
    assert resolve_steps(store, "2") == [2]
    assert resolve_steps(store, "1,3") == [1, 3]
    assert resolve_steps(store, "2:") == [2, 3]
    assert resolve_steps(store, "last") == [3]
    assert resolve_steps(store, None, budget=1) == [3]  # over budget: latest step only


def test_report_inlines_everything(report: Path):
    html = report.read_text(encoding="utf-8")
    assert re.search(r"<script[^>]+src=", html) is None
    assert re.search(r"<link|@import|url\(\s*['\"]?https?:", html) is None  # no external stylesheet or font
    assert html.count("<script>window.__xss") == 0
    assert "innerHTML" not in (Path(__file__).parents[1] / "wbtrace/viewer/static/viewer.js").read_text().split("*/", 1)[1]


def test_cli_view_writes_report_and_rejects_bad_input(evil_trace: Path, tmp_path: Path):
    out = tmp_path / "r.html"
    res = CliRunner().invoke(main, ["view", str(evil_trace), "--steps", "2", "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert res.output.startswith(f"Wrote {out} (")
    assert 'id="wbtrace-step-2"' in out.read_text() and 'id="wbtrace-step-1"' not in out.read_text()
    res = CliRunner().invoke(main, ["view", str(evil_trace), "--steps", "9", "-o", str(out)])
    assert res.exit_code == 2 and res.output.startswith("Error: step 9 not in"), res.output
    res = CliRunner().invoke(main, ["view", str(tmp_path), "-o", str(out)])
    assert res.exit_code == 2 and "is not a wbtrace trace" in res.output


# ---------------------------------------------------------------- in the browser
@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1600, "height": 1200}, accept_downloads=True)
    pg = ctx.new_page()
    pg.dialogs, pg.errors, pg.requests = [], [], []
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("request", lambda r: pg.requests.append(r.url))
    yield pg
    ctx.close()


def open_report(pg, url: str) -> None:
    pg.goto(url)
    pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
    pg.wait_for_function("document.getElementById('tokens').dataset.complete === '1'")
    assert pg.evaluate("document.body.dataset.error") is None
    assert not pg.errors, pg.errors


def select(pg, row: int) -> None:
    pg.evaluate(f"wbtrace.selectResponse({row})")
    pg.wait_for_function(f"document.getElementById('tokens').dataset.row === '{row}' && "
                         "document.getElementById('tokens').dataset.complete === '1'")


def test_page_heatmap_matches_trace(page, report: Path, evil_trace: Path, artifacts_dir: Path):
    open_report(page, report.as_uri())
    table = TraceStore(evil_trace).read_step(3)
    row = 5
    select(page, row)
    want_h = np.asarray(table.column("entropy")[row].as_py(), dtype=np.float32)
    cells = page.eval_on_selector_all(
        "#tokens span", "ss => ss.map(s => [s.dataset.h, getComputedStyle(s).backgroundColor])")
    assert len(cells) == len(want_h) == table.column("response_length")[row].as_py()
    got_h = np.array([float(h) for h, _ in cells])
    np.testing.assert_allclose(got_h, want_h, atol=5e-5)
    want_rgb = [f"rgb({r}, {g}, {b})" for r, g, b in (palette.entropy_rgb(float(h)) for h in want_h)]
    assert [c for _, c in cells] == want_rgb
    assert len({c for _, c in cells}) > 5  # not one flat colour
    page.screenshot(path=str(artifacts_dir / "viewer.png"), full_page=True)
    assert all(u.startswith(("file:", "data:", "blob:", "about:")) for u in page.requests), page.requests


def test_filters_change_visible_rows(page, report: Path, evil_trace: Path):
    open_report(page, report.as_uri())
    table = TraceStore(evil_trace).read_step(3)
    assert page.inner_text("#count") == f"{N} of {N} responses"
    page.select_option("#f-correct", "1")
    n_correct = int(pc.sum(table.column("correct")).as_py())
    page.wait_for_function(f"document.getElementById('count').textContent.startsWith('{n_correct} of')")
    rows = page.eval_on_selector_all(".item", "es => es.map(e => e.innerText)")
    assert 0 < len(rows) <= n_correct and all("correct" in r for r in rows)
    page.click("#reset")
    page.fill("#f-token", "window.__xss=2")  # only response 0 holds that token
    page.wait_for_function("document.getElementById('count').textContent.startsWith('1 of')")
    assert page.eval_on_selector_all(".item", "es => es.map(e => e.dataset.row)") == ["0"]
    page.fill("#f-token", "")
    page.fill("#f-hmin", "0.4")
    means = np.array([np.mean(np.asarray(e, dtype=np.float32)) for e in table.column("entropy").to_pylist()])
    want = int((means >= 0.4).sum())
    page.wait_for_function(f"document.getElementById('count').textContent.startsWith('{want} of')")
    with page.expect_download() as dl:
        page.click("#export-csv")
    with open(dl.value.path(), newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert len(rows) == want + 1 and rows[0][:3] == ["step", "sample_id", "group_id"]
    assert all(float(r[rows[0].index("entropy_mean")]) >= 0.4 for r in rows[1:])


def test_group_navigation(page, report: Path, evil_trace: Path):
    open_report(page, report.as_uri())
    groups = TraceStore(evil_trace).read_step(3).column("group_id").to_pylist()
    select(page, 0)
    page.click("#next-in-group")
    page.wait_for_function("document.getElementById('tokens').dataset.row !== '0'")
    nxt = int(page.eval_on_selector("#tokens", "e => e.dataset.row"))
    assert nxt != 0 and groups[nxt] == groups[0]
    assert page.is_enabled("#prev-in-group")


def test_token_text_is_inert(page, report: Path, evil_trace: Path):
    open_report(page, report.as_uri())
    select(page, 0)
    texts = page.eval_on_selector_all(f"#tokens span:nth-child(-n+{len(EVIL)})", "ss => ss.map(s => s.textContent)")
    assert texts == EVIL
    page.hover("#tokens span:nth-child(1)")
    assert json.loads(page.inner_text("#tooltip .tt-tok")) == EVIL[0]
    assert page.evaluate("window.__xss") is None and not page.dialogs
    assert page.locator("#tokens script, #tokens img, .item img").count() == 0
    assert "window.__xss=4" in page.inner_text("#run-info")  # the hostile model name shows as text


def test_serve_loads_steps_lazily(page, evil_trace: Path):
    app = ViewerApp(evil_trace)
    server = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        open_report(page, url)
        assert page.locator("#tokens span").count() > 0
        page.select_option("#step-select", "1")
        page.wait_for_function("document.body.dataset.step === '1'")
        assert sum("/api/step/" in u for u in page.requests) == 2  # step 3 at start, then step 1
        assert page.request.get(url + "api/step/99").status == 404
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- size budget and paging (issue 20)
def test_a_file_above_the_budget_is_refused_and_never_built(evil_trace: Path, tmp_path, monkeypatch):
    import wbtrace.viewer.report as report_mod

    tokens = TraceStore(evil_trace).manifest[-1]["n_tokens"]
    monkeypatch.setattr(report_mod, "MAX_INLINE_TOKENS", tokens - 1)  # the latest step alone is too big
    out = tmp_path / "big.html"
    r = CliRunner().invoke(main, ["view", str(evil_trace), "-o", str(out)])
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert f"hold {tokens:,} tokens" in r.output and "--serve" in r.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_serve_pages_a_big_step_of_whole_responses(page, evil_trace: Path):
    lengths = TraceStore(evil_trace).read_step(3).column("response_length").to_pylist()
    app = ViewerApp(evil_trace, page_tokens=sum(lengths) // 3)
    n_pages = json.loads(app.step_json(3, 0))["pages"]
    assert n_pages >= 3 and app.step_json(3, n_pages) is None
    pages = [json.loads(app.step_json(3, k)) for k in range(n_pages)]
    assert [s for p in pages for s in p["columns"]["sample_id"]] == list(range(N))  # every response, once
    assert all(p["n_tokens"] <= sum(lengths) // 3 or p["n"] == 1 for p in pages)
    assert pages[0]["charts"]["entropy_histogram"] == pages[1]["charts"]["entropy_histogram"]  # whole step
    server = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        open_report(page, f"http://127.0.0.1:{server.server_address[1]}/")
        assert f"page 1/{len(pages)}" in page.inner_text("#count")
        page.click("#page-next")
        page.wait_for_function("document.body.dataset.page === '1'")
        assert f"page 2/{len(pages)}" in page.inner_text("#count")
        assert any("/api/step/3?page=1" in u for u in page.requests)
        assert not page.errors, page.errors
    finally:
        server.shutdown()
        server.server_close()
