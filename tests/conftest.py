"""Shared fixtures: small real traces written by the real TraceWriter, and one headless Chromium."""

from __future__ import annotations

from pathlib import Path

import pytest

from wbtrace import TraceWriter
from wbtrace.synthetic import make_step, synthetic_vocab

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def write_trace(run_dir: Path, steps=(1, 2, 3), n: int = 8, max_len: int = 40, vocab_size: int = 300) -> Path:
    """A trace of synthetic steps (seeded by step number) written through the public writer."""
    # max_wait_ms: a helper that writes as fast as it can must wait for the writer, not drop steps
    with TraceWriter(run_dir, vocab=synthetic_vocab(vocab_size), run_info={"model": "synthetic"},
                     max_wait_ms=60_000) as w:
        for s in steps:
            assert w.write_step(s, **make_step(n, max_len, vocab_size, seed=s))
    assert w.report.ok, w.report
    return run_dir


@pytest.fixture
def trace_dir(tmp_path: Path) -> Path:
    return write_trace(tmp_path / "trace")


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling out of this closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    """Debian's headless Chromium through Playwright (no browser download); skipped where it is missing."""
    if not CHROMIUM.exists():
        pytest.skip("/usr/bin/chromium is missing (apt-get install chromium; `make browser` does it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()
