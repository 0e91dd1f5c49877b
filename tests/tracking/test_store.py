from __future__ import annotations

import http.server
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ltray.errors import ConfigError, LtrayError
from ltray.tracking.store import (
    check_tracking_reachable,
    default_tracking_uri,
    resolve_tracking_uri,
    sqlite_path,
)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def no_env_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_default_uri_is_absolute_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri(Path("work")) == f"sqlite:///{tmp_path}/work/mlflow.db"
    assert default_tracking_uri(tmp_path).startswith("sqlite:////")


def test_resolve_none_uses_env_then_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000/")
    assert resolve_tracking_uri(None, tmp_path) == "http://mlflow:5000"
    assert resolve_tracking_uri("http://other:1234", tmp_path) == "http://other:1234"


@pytest.mark.usefixtures("no_env_uri")
def test_resolve_normalises_sqlite_and_bare_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri("sqlite:///rel/x.db", Path("/elsewhere")) == f"sqlite:///{tmp_path}/rel/x.db"
    assert resolve_tracking_uri(f"sqlite:///{tmp_path}/a.db", tmp_path) == f"sqlite:///{tmp_path}/a.db"
    assert resolve_tracking_uri("store.sqlite", tmp_path) == f"sqlite:///{tmp_path}/store.sqlite"
    assert resolve_tracking_uri(f"{tmp_path}/b.db", tmp_path) == f"sqlite:///{tmp_path}/b.db"
    assert sqlite_path(f"sqlite:///{tmp_path}/a.db") == tmp_path / "a.db"
    uri = "postgresql+psycopg2://ltray:secret@db:5432/mlflow"
    assert resolve_tracking_uri(uri, tmp_path) == uri
    assert resolve_tracking_uri("https://mlflow.example.org/", tmp_path) == "https://mlflow.example.org"


@pytest.mark.usefixtures("no_env_uri")
@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("mlruns", "neither a URI nor a SQLite file"),
        ("./mlruns", "neither a URI nor a SQLite file"),
        ("file:///tmp/mlruns", "file store"),
        ("ftp://host/x", "unsupported MLflow tracking URI scheme 'ftp'"),
        ("http://", "has no host"),
        ("postgresql:///mlflow", "no database host"),
        ("sqlite://", "must start with 'sqlite:///'"),
        ("sqlite:///:memory:", "in-memory"),
        ("   ", "empty"),
    ],
)
def test_resolve_rejects_bad_uris(tmp_path: Path, uri: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")):
        resolve_tracking_uri(uri, tmp_path)


def test_closed_port_fails_fast_with_one_line() -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(LtrayError) as caught:
        check_tracking_reachable(uri, timeout_s=3.0)
    assert time.monotonic() - start < 3.0
    message = str(caught.value)
    assert message.startswith(f"MLflow tracking server at {uri} is not reachable: ")
    assert "\n" not in message


def test_unreachable_sql_server_fails_fast() -> None:
    port = closed_port()
    start = time.monotonic()
    with pytest.raises(LtrayError, match=f"MLflow tracking database at 127.0.0.1:{port} is not reachable"):
        check_tracking_reachable(f"postgresql://u:p@127.0.0.1:{port}/mlflow", timeout_s=3.0)
    assert time.monotonic() - start < 3.0


class _FixedStatus(http.server.BaseHTTPRequestHandler):
    status = 200
    seen_paths: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        type(self).seen_paths.append(self.path)
        self.send_response(type(self).status)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def plain_http() -> Iterator[tuple[str, type[_FixedStatus]]]:
    handler = type("Handler", (_FixedStatus,), {"seen_paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_http_answer_decides(plain_http: tuple[str, type[_FixedStatus]]) -> None:
    uri, handler = plain_http
    handler.status = 200
    check_tracking_reachable(uri, timeout_s=3.0)
    assert handler.seen_paths == ["/api/2.0/mlflow/experiments/search?max_results=1"]
    handler.status = 404
    with pytest.raises(LtrayError, match=f"^MLflow tracking server at {uri} is not reachable: HTTP 404"):
        check_tracking_reachable(uri, timeout_s=3.0)
    handler.status = 403
    with pytest.raises(LtrayError, match=r"refused the request \(HTTP 403\)"):
        check_tracking_reachable(uri, timeout_s=3.0)


def test_sqlite_creates_missing_parent(tmp_path: Path) -> None:
    db = tmp_path / "deep" / "er" / "mlflow.db"
    check_tracking_reachable(f"sqlite:///{db}")
    assert db.parent.is_dir()
    assert not db.exists()


def test_sqlite_accepts_empty_file(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    db.write_bytes(b"")
    check_tracking_reachable(f"sqlite:///{db}")
    assert db.read_bytes() == b""


def test_sqlite_corrupt_file_is_rejected_and_untouched(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    content = b"this is not a database\x00\x01\x02" * 100
    db.write_bytes(content)
    with pytest.raises(LtrayError, match="not an SQLite database"):
        check_tracking_reachable(f"sqlite:///{db}")
    assert db.read_bytes() == content


def test_sqlite_damaged_header_valid_file_is_rejected_and_untouched(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE experiments (id INTEGER)")
    connection.execute("CREATE TABLE runs (id INTEGER)")
    connection.commit()
    connection.close()
    damaged = bytearray(db.read_bytes())
    damaged[16:100] = b"\xff" * 84
    db.write_bytes(bytes(damaged))
    with pytest.raises(LtrayError, match="corrupt SQLite database"):
        check_tracking_reachable(f"sqlite:///{db}")
    assert db.read_bytes() == bytes(damaged)


def test_sqlite_foreign_database_is_rejected_and_untouched(tmp_path: Path) -> None:
    db = tmp_path / "other.db"
    connection = sqlite3.connect(db)
    connection.execute("CREATE TABLE birds (name TEXT)")
    connection.commit()
    connection.close()
    content = db.read_bytes()
    with pytest.raises(LtrayError, match="not an MLflow tracking store"):
        check_tracking_reachable(f"sqlite:///{db}")
    assert db.read_bytes() == content


def test_sqlite_path_that_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "mlflow.db").mkdir()
    with pytest.raises(LtrayError, match="is not a file"):
        check_tracking_reachable(f"sqlite:///{tmp_path}/mlflow.db")


def test_sqlite_parent_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_text("x")
    with pytest.raises(LtrayError, match="cannot create the MLflow store directory"):
        check_tracking_reachable(f"sqlite:///{tmp_path}/blocker/mlflow.db")
