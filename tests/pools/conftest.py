"""Shared fixtures of the pool tests: a local Ray instance per module (2 CPUs, no dashboard) for the tests that
run Ray Data jobs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="error", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
