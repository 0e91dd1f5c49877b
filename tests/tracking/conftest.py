"""Fixtures of the tracking tests (the session's MLflow server is `mlflow_server` of tests/conftest.py)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture
def experiment_name() -> str:
    return f"ltray-test-{uuid.uuid4().hex[:12]}"
