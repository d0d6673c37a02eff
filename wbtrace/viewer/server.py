"""``wbtrace view --serve``: the same viewer over HTTP on 127.0.0.1, steps loaded lazily per request.

For traces too big for one HTML file: the page carries only the run summary; each step's payload
(`wbtrace.viewer.data.step_payload`, with its own vocabulary slice) is built when the browser asks for
``api/step/<N>`` and cached for the last few steps. Standard library only; binds loopback by default.

With ``follow`` (``wbtrace view --serve --follow``) the page polls ``api/meta``; the app re-reads the
manifest at most every ``poll_s`` seconds (after calling ``refresh``, e.g. a pull from a remote source)
and rebuilds the run summary only when new steps were committed. Memory stays bounded: the summary plus
``cache_steps`` encoded steps; committed steps never change, so cached ones stay valid.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from wbtrace.palette import STOPS
from wbtrace.steps import StepSelection
from wbtrace.store import TraceStore
from wbtrace.viewer.charts import chart_specs
from wbtrace.viewer.data import step_payload
from wbtrace.viewer.report import build_meta, default_threshold, render_page, resolve_steps

log = logging.getLogger(__name__)
_STEP_PATH = re.compile(r"^/api/step/(\d+)$")


class ViewerApp:
    """The pages and step payloads of one trace, with a small LRU of encoded steps."""

    def __init__(self, trace_dir: str | Path, steps: str | StepSelection | None = None, threshold: float | None = None,
                 cache_steps: int = 3, *, follow: bool = False, poll_s: float = 2.0,
                 refresh: Callable[[], Any] | None = None, compare: str | Path | None = None) -> None:
        self.store = TraceStore(trace_dir)
        self.follow, self.poll_s, self.refresh, self._spec = follow, poll_s, refresh, steps
        self.compare = TraceStore(compare) if compare is not None else None
        self.steps = self._resolve()
        self.threshold = default_threshold(self.store) if threshold is None else threshold
        self.specs = chart_specs()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_steps = cache_steps
        self._lock = threading.Lock()
        self._checked = time.monotonic()
        meta = self._meta()
        self.meta = json.dumps(meta, separators=(",", ":"), allow_nan=False).encode()
        self.index = render_page(meta, []).encode("utf-8")

    def _resolve(self) -> list[int]:
        if self.follow and (self._spec is None or (isinstance(self._spec, StepSelection) and self._spec.empty)):
            return list(self.store.steps)  # may be empty: the page waits for the first step
        return resolve_steps(self.store, self._spec, budget=None)

    def _meta(self) -> dict[str, Any]:
        if not self.steps:
            return {"mode": "serve", "follow": True, "poll_s": self.poll_s, "steps": [], "all_steps": [],
                    "manifest": [], "run": {}, "run_dir": str(self.store.run_dir), "charts": {},
                    "threshold": self.threshold, "analyses": {}, "compare": None,
                    "color_scale": {"stops": [[h, list(rgb)] for h, rgb in STOPS]}}
        meta = build_meta(self.store, self.steps, self.threshold, self.specs, "serve", compare=self.compare)
        return {**meta, "follow": self.follow, "poll_s": self.poll_s}

    def meta_json(self) -> bytes:
        """The run summary; in follow mode re-read (and rebuilt when steps were added) at most every poll_s."""
        if not self.follow or time.monotonic() - self._checked < self.poll_s:
            return self.meta
        with self._lock:
            self._checked = time.monotonic()
            if self.refresh is not None:
                try:
                    self.refresh()
                except Exception as e:  # noqa: BLE001  (a source that is down must not stop the page)
                    log.warning("refresh failed: %s", e)
            steps = self._resolve()
            if steps != self.steps:
                self.steps = steps
                self.meta = json.dumps(self._meta(), separators=(",", ":"), allow_nan=False).encode()
            return self.meta

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
        if path == "/api/meta":
            return self._send(200, "application/json", self.app.meta_json())
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
