"""Fixtures every test folder may use: a real S3-compatible server (moto_server, tests/s3server.py) and one real
`mlflow server`, both on loopback, each started on first use and stopped at the end of the session."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

from ltray.tracking.server import MlflowServer, free_port


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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real `mlflow server` on 127.0.0.1 for the session; its teardown checks that the port is closed again."""
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server"), startup_timeout_s=180.0) as server:
        yield server
    assert not server.is_running()
    assert not _port_open(server.port), "the stopped server still answers"


def _port_open(port: int | None) -> bool:
    if port is None:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0
