"""One real `mlflow server` on 127.0.0.1 for all tracking tests that need one: started on first use, stopped at the
end of the session, when its teardown checks that the port is closed again."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

from ltray.tracking.server import MlflowServer


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    store = tmp_path_factory.mktemp("mlflow-server")
    with MlflowServer(store, startup_timeout_s=180.0) as server:
        yield server
    assert not server.is_running()
    assert not _port_open(server.port), "the stopped server still answers"


def _port_open(port: int | None) -> bool:
    if port is None:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def experiment_name() -> str:
    return f"ltray-test-{uuid.uuid4().hex[:12]}"
