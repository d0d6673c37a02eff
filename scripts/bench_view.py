"""Benchmark (not a test): time-to-first-render of `wbtrace view` on a large step in headless Chromium.

Writes a synthetic trace (default one step of 512 responses x up to 8192 tokens, ~2.1M tokens), builds
the self-contained report and the --serve app, opens each in Debian's /usr/bin/chromium and reports:
build time, file size, time from navigation to the first token spans on screen, to the page being
fully wired, to the longest response (8k tokens) being fully rendered, and the long tasks (> 50 ms,
"freezes") seen while scrolling the response list top to bottom.

    .venv/bin/python scripts/bench_view.py [--responses 512] [--max-len 8192] [--min-len 1] [--cpu-throttle 1]

--cpu-throttle N slows the page's main thread N times (CDP Emulation.setCPUThrottlingRate), to see on an
idle machine the scroll stalls that a loaded one shows.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from wbtrace import TraceWriter
from wbtrace.synthetic import make_step, synthetic_vocab
from wbtrace.viewer import ViewerApp, make_server, write_report

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
LONGTASKS = """window.__long = []; new PerformanceObserver(l => { for (const e of l.getEntries())
  window.__long.push(e.duration); }).observe({type: 'longtask', buffered: true});"""


def make_trace(root: Path, n: int, max_len: int, min_len: int) -> Path:
    run_dir = root / "trace"
    with TraceWriter(run_dir, vocab=synthetic_vocab(32000), run_info={"model": "bench"}) as w:
        w.write_step(1, **make_step(n, max_len, 32000, seed=1, group_size=16, min_len=min_len))
    return run_dir


def measure(browser, url: str, cpu_throttle: float = 1.0) -> dict[str, float]:
    pg = browser.new_page(viewport={"width": 1600, "height": 1200})
    if cpu_throttle != 1.0:
        pg.context.new_cdp_session(pg).send("Emulation.setCPUThrottlingRate", {"rate": cpu_throttle})
    pg.add_init_script(LONGTASKS)
    pg.goto(url)
    pg.wait_for_selector("body[data-ready='1']", timeout=300_000)
    first = pg.evaluate("window.__wbtraceFirstRender")
    ready = pg.evaluate("performance.now()")
    # the longest response, rendered in full
    r = pg.evaluate("(() => { const d = wbtrace.state.data; let b = 0; for (let i = 1; i < d.n; i++)"
                    " if (d.offsets[i+1]-d.offsets[i] > d.offsets[b+1]-d.offsets[b]) b = i; return b; })()")
    t0 = pg.evaluate(f"(() => {{ const t = performance.now(); wbtrace.selectResponse({r}); return t; }})()")
    pg.wait_for_function("document.getElementById('tokens').dataset.complete === '1'", timeout=120_000)
    full = pg.evaluate("performance.now()") - t0
    n_spans = pg.locator("#tokens span").count()
    pg.evaluate("window.__long.length = 0")
    for _ in range(60):  # scroll the list top to bottom, a wheel tick at a time
        pg.mouse.move(300, 900)
        pg.mouse.wheel(0, 600)
        pg.wait_for_timeout(16)
    longs = pg.evaluate("window.__long")
    pg.close()
    return {"first_render_ms": first, "ready_ms": ready, "full_response_ms": full, "spans": n_spans,
            "scroll_longtasks": len(longs), "scroll_longest_ms": max(longs, default=0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--responses", type=int, default=512)
    ap.add_argument("--max-len", type=int, default=8192)
    ap.add_argument("--min-len", type=int, default=1)
    ap.add_argument("--cpu-throttle", type=float, default=1.0, help="slow the page's main thread N times")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = make_trace(Path(tmp), args.responses, args.max_len, args.min_len)
        t = time.perf_counter()
        out = write_report(run_dir, Path(tmp) / "report.html")
        build_s = time.perf_counter() - t
        print(f"step: {args.responses} responses x <= {args.max_len} tokens; report built in {build_s:.2f} s, "
              f"{out.stat().st_size / 1e6:.1f} MB" + (f"; page CPU throttled {args.cpu_throttle:g}x"
                                                       if args.cpu_throttle != 1.0 else ""))
        app = ViewerApp(run_dir)
        server = make_server(app, "127.0.0.1", 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for name, url in (("file", out.as_uri()), ("serve", f"http://127.0.0.1:{server.server_address[1]}/")):
                m = measure(browser, url, args.cpu_throttle)
                print(f"{name:5s}: first token spans {m['first_render_ms']:.0f} ms, ready {m['ready_ms']:.0f} ms; "
                      f"longest response ({m['spans']} tokens) fully rendered in {m['full_response_ms']:.0f} ms; "
                      f"list scroll: {m['scroll_longtasks']} long tasks, longest {m['scroll_longest_ms']:.0f} ms")
            browser.close()
        server.shutdown()


if __name__ == "__main__":
    main()
