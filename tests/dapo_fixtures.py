"""A session-scoped Ray instance for the DAPO tests (one per test session: starting Ray costs seconds)."""

import os

import pytest


@pytest.fixture(scope="session")
def ray_address():
    """Start Ray once in the test process; the trainer joins it (in-process or via ``ray.address``)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, object_store_memory=256 * 2**20)
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()
