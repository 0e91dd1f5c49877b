"""Fixtures every test folder may use: a real S3-compatible server (moto_server, tests/s3server.py) on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from ltray.tracking.server import free_port


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3-compatible server (moto_server, tests/s3server.py) on loopback for the session."""
    from tests.s3server import local_s3_server

    with local_s3_server(free_port(), tmp_path_factory.mktemp("s3") / "moto.log") as endpoint:
        yield endpoint


@pytest.fixture
def s3_storage(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the test S3 server, its credentials and endpoint in this process's environment (as on a
    node configured for S3); returns `s3://<bucket>/sweeps`."""
    from tests.s3server import create_bucket, s3_env

    for key, value in s3_env(s3_endpoint).items():
        monkeypatch.setenv(key, value)
    bucket = f"ltray-{uuid.uuid4().hex[:10]}"
    create_bucket(s3_endpoint, bucket)
    return f"s3://{bucket}/sweeps"
