"""`open_trace`: any source as a local `TraceStore`, so every command reads what ``pull`` reads.

A local trace dir is read in place. Any other source (a W&B offline run dir, ``entity/project/run``,
``mlflow://RUN``) is pulled into ``<cache>/<source key>`` first, incrementally: only the selected
steps the cache lacks are fetched, so a second command on the same source starts at once. The cache
is ``$WBTRACE_CACHE``, else ``$XDG_CACHE_HOME/wbtrace``, else ``~/.cache/wbtrace``; deleting it is safe.
"""

from __future__ import annotations

import os
from pathlib import Path

from wbtrace.sources.pull import Progress, pull
from wbtrace.sources.refs import open_source
from wbtrace.steps import StepSelection
from wbtrace.store import RUN_JSON, TraceStore

CACHE_ENV = "WBTRACE_CACHE"


def cache_root() -> Path:
    """Where pulled sources are kept for the commands that read them directly."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wbtrace"


def open_trace(ref: str, steps: StepSelection | None = None, progress: Progress | None = None,
               **source_options: str | None) -> TraceStore:
    """The trace ``ref`` names, as a local store holding at least the ``steps`` selected (default: all).

    ``source_options`` go to `wbtrace.sources.refs.open_source` (``entity``, ``project``,
    ``tracking_uri``, ``kind``); without them the W&B and MLflow defaults come from the environment.
    """
    if (Path(ref).expanduser() / RUN_JSON).is_file():  # the common case, without importing a backend
        return TraceStore(Path(ref).expanduser())
    source = open_source(ref, **source_options)
    from wbtrace.sources.local import LocalSource

    if isinstance(source, LocalSource):
        return source.store
    dest = cache_root() / source.key
    return TraceStore(pull(source, steps, dest, progress=progress, only_new=True))
