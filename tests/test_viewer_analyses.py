"""The viewer's analysis views, the per-token ratio/clipped/high_entropy columns, the two-run comparison
and ``--follow``, driven in headless Chromium; the numbers on the page are wbtrace.analysis's."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from wbtrace import TraceStore, TraceWriter
from wbtrace.analysis import covariance, forks, groups
from wbtrace.synthetic import make_step
from wbtrace.viewer import ViewerApp, make_server, write_report

EVIL = ["<img src=x onerror=\"window.__xss=1\">", "</script><script>window.__xss=2</script>", "a&amp;b"]
V = 60


def _write_steps(w: TraceWriter, steps, seed0: int = 0) -> None:
    for s in steps:
        a = make_step(12, 30, V - len(EVIL), seed=seed0 + s, group_size=4, min_len=5)
        a["token_ids"][0, :3] = np.arange(V - len(EVIL), V)  # response 0 opens with the hostile tokens
        n, t = a["token_ids"].shape
        rng = np.random.default_rng(s)
        a["ratio"] = np.where(a["kept"][:, None], 1 + 0.2 * rng.standard_normal((n, t)), np.nan).astype(np.float32)
        a["clipped"] = np.abs(a["ratio"] - 1) > 0.2
        a["high_entropy"] = a["entropy"] > 1.0
        a["prompt_text"] = np.array([f"prompt {g % 3} <b>x</b>" for g in a["prompt_index"]])
        assert w.write_step(s, **a)


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("viewer_analyses") / "a"
    vocab = [f"w{i}" for i in range(V - len(EVIL))] + EVIL
    with TraceWriter(d, vocab=vocab) as w:
        _write_steps(w, (1, 2, 3))
    return d


@pytest.fixture(scope="module")
def other(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("viewer_analyses") / "b"
    with TraceWriter(d, vocab=[f"w{i}" for i in range(V)]) as w:
        _write_steps(w, (2, 3, 4), seed0=10)
    return d


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1500, "height": 1200})
    pg = ctx.new_page()
    pg.errors, pg.dialogs = [], []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
    yield pg
    ctx.close()


def _open(pg, url: str) -> None:
    pg.goto(url)
    pg.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert pg.evaluate("document.body.dataset.error") is None and not pg.errors, pg.errors


def _cells(pg, selector: str) -> list[list[str]]:
    return pg.eval_on_selector_all(f"{selector} tr", "rs => rs.slice(1).map(r => [...r.cells].map(c => c.textContent))")


def _tab(pg, name: str) -> None:
    pg.click(f"#tabs button[data-tab='{name}']")
    pg.wait_for_function(f"!document.getElementById('tab-{name}').hidden")


def test_analysis_tabs_show_the_analysis_numbers(page, trace: Path, other: Path, tmp_path: Path):
    store = TraceStore(trace)
    report = write_report(trace, tmp_path / "r.html", compare=other)
    _open(page, report.as_uri())
    top = forks.forks(store, threshold=0.672, top=25)
    rows = _cells(page, "#forks-table")
    assert [int(r[2]) for r in rows] == top["forks"].to_list()
    assert rows[0][0].endswith(f"#{top['token_id'][0]}")
    _tab(page, "cov")
    cov = covariance.cov_by_step(store)
    assert [float(r[2]) for r in _cells(page, "#cov-table")] == pytest.approx(cov["cov_mean"].to_list(), abs=1e-4)
    assert page.inner_text("#cov-fit").startswith("R = -a·exp(H) + b over 3 steps")
    assert page.locator("#chart-cov_entropy_change svg.marks").count() == 1
    _tab(page, "positions")
    assert page.locator("#chart-position_heatmap svg.marks").count() == 1
    _tab(page, "groups")  # the shown step (3): one row per group
    g = groups.groups(store, 3)
    assert [r[0] for r in _cells(page, "#groups-table")] == g["group_id"].to_list()
    assert [r[3] for r in _cells(page, "#groups-table")] == [str(x) for x in g["n_correct"].to_list()]
    _tab(page, "prompt")
    page.evaluate("wbtrace.selectResponse(0)")
    page.wait_for_function("document.querySelectorAll('#prompt-table tr').length > 1")
    prompt = store.read_step(3).column("prompt_text")[0].as_py()
    steps_with = [s for s in store.steps if prompt in store.read_step(s).column("prompt_text").to_pylist()]
    assert [int(r[0]) for r in _cells(page, "#prompt-table")] == steps_with
    assert prompt in page.inner_text("#prompt-note")  # "<b>x</b>" shown as text
    _tab(page, "compare")
    assert str(other) in page.inner_text("#compare-note")
    assert [int(r[0]) for r in _cells(page, "#compare-table")] == [1, 2, 3, 4]
    assert page.evaluate("window.__xss") is None and not page.dialogs and not page.errors
    assert page.locator("#analyses img, #analyses script, #analyses b").count() == 0


def test_tokens_carry_ratio_clipped_high_entropy(page, trace: Path, tmp_path: Path):
    report = write_report(trace, tmp_path / "r.html")
    _open(page, report.as_uri())
    table = TraceStore(trace).read_step(3)
    r = table.column("kept").to_pylist().index(True)  # a trained response: it has ratios
    page.evaluate(f"wbtrace.selectResponse({r})")
    page.wait_for_function(f"document.getElementById('tokens').dataset.row === '{r}' && "
                           "document.getElementById('tokens').dataset.complete === '1'")
    classes = page.eval_on_selector_all("#tokens span", "ss => ss.map(s => s.className)")
    assert ["hi" in c for c in classes] == table.column("high_entropy")[r].as_py()
    assert ["clip" in c for c in classes] == table.column("clipped")[r].as_py()
    page.hover("#tokens span:nth-child(4)")
    tip = page.inner_text("#tooltip")
    assert f"{table.column('ratio')[r].as_py()[3]:.4f}" in tip and "clipped" in tip and "high-entropy" in tip
    page.evaluate("wbtrace.selectResponse(0)")
    page.wait_for_function("document.getElementById('tokens').dataset.row === '0' && "
                           "document.getElementById('tokens').dataset.complete === '1'")
    texts = page.eval_on_selector_all("#tokens span:nth-child(-n+3)", "ss => ss.map(s => s.textContent)")
    assert texts == EVIL and page.evaluate("window.__xss") is None


def test_percentile_chart_has_a_legend_and_integer_steps(page, trace: Path, tmp_path: Path):
    report = write_report(trace, tmp_path / "r.html")
    _open(page, report.as_uri())
    legend = page.inner_text("#chart-entropy_percentiles")
    assert all(p in legend for p in ("p50", "p80", "p90", "p99"))
    page.hover("#chart-share_above path[aria-roledescription='point'] >> nth=1", force=True)
    page.wait_for_selector("#vg-tooltip-element.visible", timeout=5000)
    tip = page.inner_text("#vg-tooltip-element")
    assert "step" in tip and "2" in tip and "2.000000" not in tip


def test_follow_shows_steps_written_while_the_page_is_open(page, tmp_path: Path):
    d = tmp_path / "live"
    w = TraceWriter(d, vocab=[f"w{i}" for i in range(V)])
    _write_steps(w, (1,))
    w.flush()
    app = ViewerApp(d, follow=True, poll_s=0.3)
    server = make_server(app, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _open(page, f"http://127.0.0.1:{server.server_address[1]}/")
        assert page.eval_on_selector_all("#step-select option", "os => os.map(o => o.value)") == ["1"]
        _write_steps(w, (2, 3))
        w.flush()
        page.wait_for_function("document.querySelectorAll('#step-select option').length === 3", timeout=20_000)
        assert page.evaluate("document.body.dataset.step") == "1"  # the open step stays put
        page.wait_for_function("document.querySelectorAll('#cov-table tr').length === 4", timeout=20_000)
        page.select_option("#step-select", "3")
        page.wait_for_function("document.body.dataset.step === '3'")
        assert len(app._cache) <= app._cache_steps  # bounded: a few encoded steps, not the run
        assert not page.errors
    finally:
        w.close()
        server.shutdown()
        server.server_close()
        time.sleep(0.1)
