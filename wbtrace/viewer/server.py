"""``wbtrace view --serve``: the same viewer over HTTP on 127.0.0.1, steps loaded lazily per request.

For traces too big for one HTML file: the page carries only the run summary; each step's payload
(`wbtrace.viewer.data.step_payload`, with its own vocabulary slice) is built when the browser asks for
``api/step/<N>`` and cached for the last few steps. Standard library only; binds loopback by default.
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


class ViewerApp:
    """The pages and step payloads of one trace, with a small LRU of encoded steps."""

    def __init__(self, trace_dir: str | Path, steps: str | None = None, threshold: float | None = None,
                 cache_steps: int = 3) -> None:
        self.store = TraceStore(trace_dir)
        self.steps = resolve_steps(self.store, steps, budget=None)
        self.threshold = default_threshold(self.store) if threshold is None else threshold
        self.specs = chart_specs()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_steps = cache_steps
        self._lock = threading.Lock()
        self.index = render_page(build_meta(self.store, self.steps, self.threshold, self.specs, "serve"),
                                 []).encode("utf-8")

    def step_json(self, step: int) -> bytes | None:
        if step not in self.steps:
            return None
        with self._lock:  # one encode at a time: a step can be ~100 MB of intermediate arrays
            if step not in self._cache:
                payload = step_payload(self.store, step, self.threshold, self.specs, with_vocab=True)
                self._cache[step] = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
                while len(self._cache) > self._cache_steps:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(step)
            return self._cache[step]


_LOOPBACK_HOST = re.compile(r"^(?:localhost|127\.\d{1,3}\.\d{1,3}\.\d{1,3}|\[::1\])(?::\d{1,5})?$", re.IGNORECASE)


def loopback_host(host: str | None) -> bool:
    """Whether a request's ``Host`` header names this machine's loopback (``127.0.0.1:8765``, ``localhost``)."""
    return bool(host) and _LOOPBACK_HOST.match(host.strip()) is not None


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, *args: Any, app: ViewerApp, **kwargs: Any) -> None:
        self.app = app
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        if not loopback_host(self.headers.get("Host")):
            # DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 would be
            # same-origin with us and could read the trace; its requests carry its own Host name.
            return self._send(421, "text/plain; charset=utf-8", b"only loopback Host names are served")
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            return self._send(200, "text/html; charset=utf-8", self.app.index)
        m = _STEP_PATH.match(path)
        body = self.app.step_json(int(m.group(1))) if m else None
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
