"""One writer per trace directory: an advisory lock on ``<run_dir>/.wbtrace.lock``.

Two processes writing one trace used to both report success while one overwrote the other (duplicated
steps, a manifest rewritten from a stale view). Every writer of a trace dir (`TraceWriter`, ``pull``,
``import-npz``) holds this lock while it writes; a second one is refused with one line naming the
holder. The lock is ``flock(2)``: the kernel drops it when its process dies (``kill -9`` included), so
no stale lock survives a crash and nothing needs cleaning. Readers never take it: committed files are
whole and never replaced, so reading a trace being written is safe.

Examples
--------
>>> import tempfile
>>> d = tempfile.mkdtemp()
>>> with TraceLock(d, "example"):
...     try:
...         TraceLock(d, "second").acquire()
...     except TraceBusyError as e:
...         print("refused")
refused
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from wbtrace.errors import TraceBusyError

LOCK_FILE = ".wbtrace.lock"


class TraceLock:
    """The write lock of one trace dir (created if missing); ``what`` says who holds it, for the message."""

    def __init__(self, run_dir: str | os.PathLike, what: str) -> None:
        self.run_dir = Path(run_dir)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> TraceLock:
        """Take the lock or raise `TraceBusyError` at once (no waiting: the other writer may run for days)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 500).decode("utf-8", errors="replace").strip() or "another process"
            os.close(fd)
            raise TraceBusyError(f"{self.run_dir} is being written by {holder}; one writer per trace: "
                                 "wait until it ends or write to another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} ({self.what})\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race a new holder)
            self._fd = None

    def __enter__(self) -> TraceLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
