"""Offline trace viewer: `write_report` makes one self-contained HTML file; `ViewerApp` + `make_server`
serve big traces lazily on 127.0.0.1 (``wbtrace view``)."""

from wbtrace.viewer.report import build_report, write_report
from wbtrace.viewer.server import ViewerApp, make_server

__all__ = ["build_report", "write_report", "ViewerApp", "make_server"]
