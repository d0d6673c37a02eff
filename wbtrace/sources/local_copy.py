"""Any source as a local `TraceStore`: what the analyses and the viewer read (``compare A B``, ``view --follow``).

A local trace dir is read in place. Any other source (`wbtrace.sources.refs.open_source`: a W&B offline run
dir, ``mlflow://RUN``, a W&B run) is pulled into a cache folder named by the source's ``key`` under
``$WBTRACE_CACHE`` (default ``~/.cache/wbtrace``), only the steps the cache lacks; ``refresh`` pulls the
steps added since, so a live view follows a run that is still being written or synced.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from wbtrace.store import TraceStore


def cache_root() -> Path:
    return Path(os.environ.get("WBTRACE_CACHE") or Path.home() / ".cache" / "wbtrace")


def local_store(ref: str, **source_options: str | None) -> tuple[TraceStore, Callable[[], None] | None]:
    """``(store, refresh)`` for ``ref``: ``refresh`` is None for a local trace dir (it is read in place)."""
    from wbtrace.sources.local import LocalSource
    from wbtrace.sources.pull import pull
    from wbtrace.sources.refs import open_source

    source = open_source(ref, **source_options)
    if isinstance(source, LocalSource):
        return source.store, None
    dest = cache_root() / source.key

    def refresh() -> None:
        # a fresh source each time: sources cache what they read (an offline run's parsed log, say)
        pull(open_source(ref, **source_options), dest=dest, only_new=True)

    refresh()
    return TraceStore(dest), refresh
