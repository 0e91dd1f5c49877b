from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ltray.errors import LtrayError
from ltray.tracking.server import MlflowServer, free_port, main
from ltray.tracking.store import check_tracking_reachable, create_sqlite_store


def test_command_binds_loopback_with_sqlite_and_proxied_artifacts(tmp_path: Path) -> None:
    server = MlflowServer(tmp_path / "store", port=5123)
    command = server.command()
    assert command[1:4] == ["-m", "mlflow", "server"]
    flags = command[4:]
    assert flags[flags.index("--host") + 1] == "127.0.0.1"
    assert flags[flags.index("--port") + 1] == "5123"
    assert flags[flags.index("--workers") + 1] == "1"
    assert flags[flags.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path}/store/mlflow.db"
    assert flags[flags.index("--artifacts-destination") + 1] == (tmp_path / "store" / "artifacts").as_uri()
    assert flags[flags.index("--default-artifact-root") + 1] == "mlflow-artifacts:/"
    assert "--serve-artifacts" in flags
    assert server.tracking_uri == "http://127.0.0.1:5123"
    assert MlflowServer(tmp_path, port=5123, host="0.0.0.0").tracking_uri == "http://127.0.0.1:5123"
    with pytest.raises(LtrayError, match="has not been started"):
        _ = MlflowServer(tmp_path).tracking_uri


@pytest.mark.slow
def test_session_server_answers_on_loopback(mlflow_server: MlflowServer) -> None:
    assert mlflow_server.tracking_uri.startswith("http://127.0.0.1:")
    assert mlflow_server.is_running()
    check_tracking_reachable(mlflow_server.tracking_uri, timeout_s=5.0)
    assert (mlflow_server.store_dir / "mlflow.db").is_file()
    with pytest.raises(LtrayError, match=f"127.0.0.1:{mlflow_server.port} is not free"):
        MlflowServer(mlflow_server.store_dir / "second", port=mlflow_server.port).start()


def test_corrupt_store_is_refused_before_starting(tmp_path: Path) -> None:
    content = b"not a database at all" * 50
    (tmp_path / "mlflow.db").write_bytes(content)
    server = MlflowServer(tmp_path)
    with pytest.raises(LtrayError, match="is not an SQLite database"):
        server.start()
    assert not server.is_running()
    assert (tmp_path / "mlflow.db").read_bytes() == content
    assert not (tmp_path / "server.log").exists()


def test_unbindable_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LtrayError, match="cannot start mlflow server on 192.0.2.1"):
        MlflowServer(tmp_path, host="192.0.2.1").start()


@pytest.mark.slow
def test_failed_start_reports_log_tail(tmp_path: Path) -> None:
    """A store written by an unknown (newer) MLflow schema: the server exits and its log tail is reported."""
    connection = sqlite3.connect(tmp_path / "mlflow.db")
    connection.executescript(
        "CREATE TABLE experiments (experiment_id INTEGER);"
        "CREATE TABLE runs (run_uuid TEXT);"
        "CREATE TABLE alembic_version (version_num TEXT);"
        "INSERT INTO alembic_version VALUES ('ffffffffffff');"
    )
    connection.close()
    server = MlflowServer(tmp_path, startup_timeout_s=120.0)
    with pytest.raises(LtrayError, match="mlflow server exited with code [1-9][0-9]* during start-up; log tail:\n"):
        server.start()
    assert not server.is_running()


def test_cli_entry_reports_a_bad_store_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"garbage" * 10)
    assert main(["--store", str(tmp_path), "--port", str(free_port())]) == 2
    error = capsys.readouterr().err
    assert error.startswith("ltray: error: the MLflow store ") and "not an SQLite database" in error
    assert error.count("\n") == 1


def _wait_until_answers(uri: str, wrapper: subprocess.Popen[bytes], timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            check_tracking_reachable(uri, timeout_s=2.0)
            return
        except LtrayError:
            if wrapper.poll() is not None or time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.slow
def test_sigterm_to_the_wrapper_stops_the_server_and_its_workers(tmp_path: Path) -> None:
    """`python -m ltray.tracking.server` stopped with SIGTERM: within 15 s nothing listens on its port and no
    process it started remains (a wrapper killed outright is covered by tests/test_guard.py: its guard ends the
    group when its owner dies)."""
    signum = signal.SIGTERM
    import psutil

    port = free_port()
    wrapper = subprocess.Popen([sys.executable, "-m", "ltray.tracking.server", "--store", str(tmp_path),
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        _wait_until_answers(f"http://127.0.0.1:{port}", wrapper)
        started = psutil.Process(wrapper.pid).children(recursive=True)
        assert any("mlflow" in " ".join(p.cmdline()) for p in started), [p.cmdline() for p in started]
        wrapper.send_signal(signum)
        deadline = time.monotonic() + 15.0
        while time.monotonic() < deadline:
            alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            if not alive and not _port_open(port):
                break
            time.sleep(0.2)
        assert not _port_open(port), "the server still listens"
        assert not alive, [p.cmdline() for p in alive]
        assert wrapper.wait(timeout=15) == 0
    finally:
        if wrapper.poll() is None:
            os.killpg(wrapper.pid, signal.SIGKILL)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_a_new_sqlite_store_is_created_once_before_use(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    create_sqlite_store(uri)
    tables = {row[0] for row in sqlite3.connect(tmp_path / "mlflow.db").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"experiments", "runs", "metrics"} <= tables
    before = (tmp_path / "mlflow.db").stat().st_mtime_ns
    create_sqlite_store(uri)  # an existing store is left alone
    assert (tmp_path / "mlflow.db").stat().st_mtime_ns == before
    create_sqlite_store("http://127.0.0.1:1")  # nothing to create for a server


@pytest.mark.slow
def test_two_processes_creating_one_new_store_both_succeed(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = f"from ltray.tracking.store import create_sqlite_store; create_sqlite_store({uri!r})"
    processes = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE) for _ in range(2)]
    outcomes = [(p.wait(timeout=180), p.stderr.read().decode()) for p in processes]
    assert [code for code, _ in outcomes] == [0, 0], outcomes
    check_tracking_reachable(uri)
