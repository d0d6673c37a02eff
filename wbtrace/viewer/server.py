"""``wbtrace view --serve``: the same viewer over HTTP on 127.0.0.1, steps loaded lazily per request.

For traces too big for one HTML file: the page carries only the run summary; each step's payload
(`wbtrace.viewer.data.step_payload`, with its own vocabulary slice) is built when the browser asks for
``api/step/<N>?page=<K>`` and cached for the last few. A step bigger than ``page_tokens`` is served in
pages of whole responses (the charts cover the whole step), so no request loads a 33M-token step at
once. Standard library only; binds loopback by default.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from wbtrace.store import TraceStore
from wbtrace.viewer.charts import chart_specs
from wbtrace.viewer.data import step_payload
from wbtrace.viewer.report import build_meta, default_threshold, render_page, resolve_steps

log = logging.getLogger(__name__)
_STEP_PATH = re.compile(r"^/api/step/(\d+)$")
_PAGE_QUERY = re.compile(r"(?:^|&)page=(\d{1,9})(?:&|$)")
PAGE_TOKENS = 2_000_000  # per page: ~22 MB of payload, quick to decode in a browser


def page_bounds(lengths: list[int], page_tokens: int = PAGE_TOKENS) -> list[tuple[int, int]]:
    """``(start, stop)`` row ranges of at most ``page_tokens`` tokens each (at least one response)."""
    bounds, start, total = [], 0, 0
    for i, n in enumerate(lengths):
        if i > start and total + n > page_tokens:
            bounds.append((start, i))
            start, total = i, 0
        total += n
    bounds.append((start, len(lengths)))
    return bounds


class ViewerApp:
    """The pages and step payloads of one trace, with a small LRU of encoded steps."""

    def __init__(self, trace_dir: str | Path, steps: str | None = None, threshold: float | None = None,
                 cache_steps: int = 3, page_tokens: int = PAGE_TOKENS) -> None:
        self.store = TraceStore(trace_dir)
        self.steps = resolve_steps(self.store, steps, budget=None)
        self.threshold = default_threshold(self.store) if threshold is None else threshold
        self.specs = chart_specs()
        self._cache: OrderedDict[tuple[int, int], bytes] = OrderedDict()
        self._cache_steps = cache_steps
        self.page_tokens = page_tokens
        self._lock = threading.Lock()
        self.index = render_page(build_meta(self.store, self.steps, self.threshold, self.specs, "serve"),
                                 []).encode("utf-8")

    def step_json(self, step: int, page: int = 0) -> bytes | None:
        if step not in self.steps:
            return None
        key = (step, page)
        with self._lock:  # one encode at a time: a page can be ~100 MB of intermediate arrays
            if key not in self._cache:
                lengths = self.store.read_step(step, columns=["response_length"]).column("response_length")
                bounds = page_bounds(lengths.to_pylist(), self.page_tokens)
                if page >= len(bounds):
                    return None
                payload = step_payload(self.store, step, self.threshold, self.specs, with_vocab=True,
                                       rows=bounds[page] if len(bounds) > 1 else None)
                payload.update({"page": page, "pages": len(bounds), "row_start": bounds[page][0],
                                "n_total": bounds[-1][1]})
                self._cache[key] = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
                while len(self._cache) > self._cache_steps:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
            return self._cache[key]


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, *args: Any, app: ViewerApp, **kwargs: Any) -> None:
        self.app = app
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        path, _, query = self.path.partition("?")
        if path in ("/", "/index.html"):
            return self._send(200, "text/html; charset=utf-8", self.app.index)
        m = _STEP_PATH.match(path)
        page = _PAGE_QUERY.search(query)
        body = self.app.step_json(int(m.group(1)), int(page.group(1)) if page else 0) if m else None
        if body is None:
            return self._send(404, "text/plain; charset=utf-8", b"not found")
        self._send(200, "application/json", body)

    def _send(self, code: int, ctype: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("%s " + format, self.address_string(), *args)


def make_server(app: ViewerApp, host: str = "127.0.0.1", port: int = 0) -> ThreadingHTTPServer:
    """An HTTP server for ``app`` (port 0 picks a free port: read it from ``server.server_address``)."""
    return ThreadingHTTPServer((host, port), partial(_Handler, app=app))
