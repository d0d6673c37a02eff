"""Any source as a local `TraceStore`, so every reading command takes what ``pull`` takes.

A local trace dir is read in place. Any other source (`wbtrace.sources.refs.open_source`: a W&B offline run
dir, ``mlflow://RUN``, a W&B run) is pulled into a cache folder named by the source's ``key`` under
``$WBTRACE_CACHE`` (else ``$XDG_CACHE_HOME/wbtrace``, else ``~/.cache/wbtrace``; deleting it is safe),
only the selected steps the cache lacks, so a second command on the same source starts at once;
``refresh`` pulls the steps added since, so a live view follows a run that is still being written or synced.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from wbtrace.steps import StepSelection
from wbtrace.store import RUN_JSON, TraceStore

Progress = Callable[[int, int], None]


def cache_root() -> Path:
    """Where pulled sources are kept for the commands that read them directly."""
    if os.environ.get("WBTRACE_CACHE"):
        return Path(os.environ["WBTRACE_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wbtrace"


def local_store(ref: str, steps: StepSelection | None = None, progress: Progress | None = None,
                **source_options: str | None) -> tuple[TraceStore, Callable[[], None] | None]:
    """``(store, refresh)`` for ``ref``, holding at least the ``steps`` selected (default: all);
    ``refresh`` is None for a local trace dir (it is read in place).

    ``source_options`` go to `open_source` (``entity``, ``project``, ``tracking_uri``, ``kind``); without
    them the W&B and MLflow defaults come from the environment.
    """
    if (Path(ref).expanduser() / RUN_JSON).is_file():  # the common case, without importing a backend
        return TraceStore(Path(ref).expanduser()), None
    from wbtrace.sources.local import LocalSource
    from wbtrace.sources.pull import pull
    from wbtrace.sources.refs import open_source

    source = open_source(ref, **source_options)
    if isinstance(source, LocalSource):
        return source.store, None
    dest = cache_root() / source.key
    first = [source]  # the first pull uses the source already opened

    def refresh(selection: StepSelection | None = None) -> None:
        # a fresh source each time: sources cache what they read (an offline run's parsed log, say)
        fresh = first.pop() if first else open_source(ref, **source_options)
        pull(fresh, selection, dest=dest, progress=progress, only_new=True)

    refresh(steps)
    return TraceStore(dest), refresh
