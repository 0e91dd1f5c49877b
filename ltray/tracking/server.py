"""A real `mlflow server` subprocess for local sweeps and tests: SQLite backend, proxied artifacts, 127.0.0.1.

`python -m ltray.tracking.server --store DIR [--port P] [--host H]` runs one in the foreground until Ctrl-C,
SIGTERM or SIGHUP. The server runs under `ltray.guard` in a process group of its own, so stopping the wrapper (any
of those signals) stops the server and its workers, and a wrapper that dies without a chance to clean up (SIGKILL)
takes them along within a second.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from ltray.errors import LtrayError
from ltray.guard import guarded
from ltray.tracking.store import check_tracking_reachable, create_sqlite_store, sqlite_uri

LOCALHOST = "127.0.0.1"
LOG_TAIL_LINES = 30


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that is free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _require_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise LtrayError(f"cannot start mlflow server: {host}:{port} is not free ({error.strerror or error})") from None


class MlflowServer:
    """Context manager around `mlflow server`: started on enter, healthy before use, stopped on exit. Layout under
    `store_dir`: `mlflow.db` (backend store), `artifacts/` (served through the server as `mlflow-artifacts:/`),
    `server.log` (the server's stdout and stderr). The server binds 127.0.0.1 unless `host` is given; binding a
    wider interface is the caller's explicit choice."""

    def __init__(
        self,
        store_dir: Path,
        port: int | None = None,
        host: str = LOCALHOST,
        startup_timeout_s: float = 60.0,
        allowed_hosts: str | None = None,
    ) -> None:
        self.store_dir = Path(store_dir).expanduser().resolve()
        self.host = host
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.allowed_hosts = allowed_hosts
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.store_dir / "server.log"

    @property
    def backend_store_uri(self) -> str:
        return sqlite_uri(self.store_dir / "mlflow.db")

    @property
    def tracking_uri(self) -> str:
        if self.port is None:
            raise LtrayError("the MLflow server has not been started")
        return f"http://{self._probe_host()}:{self.port}"

    def _probe_host(self) -> str:
        """The address a client on this machine uses: 127.0.0.1 for a wildcard bind, else the bound host."""
        return LOCALHOST if self.host in ("0.0.0.0", "::", "") else self.host

    def command(self) -> list[str]:
        """The `mlflow server` command line (one worker; artifacts proxied from `store_dir/artifacts`)."""
        if self.port is None:
            raise LtrayError("the MLflow server needs a port before its command can be built")
        command = [
            sys.executable, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_store_uri,
            "--serve-artifacts",
            "--artifacts-destination", (self.store_dir / "artifacts").as_uri(),
            "--default-artifact-root", "mlflow-artifacts:/",
            "--host", self.host,
            "--port", str(self.port),
            "--workers", "1",
        ]
        if self.allowed_hosts is not None:
            command += ["--allowed-hosts", self.allowed_hosts]
        return command

    def start(self) -> str:
        """Start the server and wait until it answers the REST API; return its tracking URI."""
        if self._process is not None:
            raise LtrayError("the MLflow server is already running")
        check_tracking_reachable(self.backend_store_uri)
        create_sqlite_store(self.backend_store_uri)
        try:
            (self.store_dir / "artifacts").mkdir(exist_ok=True)
            if self.port is None:
                self.port = free_port(self._probe_host())
        except OSError as error:
            raise LtrayError(f"cannot start mlflow server on {self.host}: {error.strerror or error}") from None
        _require_free(self._probe_host(), self.port)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                guarded(self.command()),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.store_dir,
                start_new_session=True,
            )
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self.tracking_uri

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        health = f"{self.tracking_uri}/health"
        process = self._process
        last_error = ""
        while process is not None and time.monotonic() < deadline:
            exit_code = process.poll()
            if exit_code is not None:
                raise LtrayError(
                    f"mlflow server exited with code {exit_code} during start-up; log tail:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(health, timeout=1.0) as response:
                    if response.status == 200:
                        check_tracking_reachable(self.tracking_uri, timeout_s=5.0)
                        return
            except (urllib.error.URLError, OSError):
                pass
            except LtrayError as error:
                # /health answers before the first REST request has initialised the store; under load that
                # request can time out, so keep polling until the start-up deadline
                last_error = str(error)
            time.sleep(0.25)
        raise LtrayError(
            f"mlflow server on {self.tracking_uri} was not healthy after {self.startup_timeout_s:.0f} s"
            f"{f' ({last_error})' if last_error else ''}; log tail:\n{self.log_tail()}"
        )

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server's process group (guard, server and its uvicorn worker): SIGTERM, then SIGKILL."""
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            _signal_group(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(timeout=grace_s)
        _signal_group(process.pid, signal.SIGKILL)

    def kill(self) -> None:
        """End the server's whole process group at once (SIGKILL), as a crash or an out-of-memory kill would."""
        process = self._process
        if process is None:
            return
        self._process = None
        _signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=30)

    def __enter__(self) -> MlflowServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(pid: int, signum: signal.Signals) -> None:
    """Signal the session this module started for the server (its pid is the group id); gone already is fine."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ltray.tracking.server",
        description="Run an MLflow tracking server with a SQLite store and proxied artifacts under --store.",
    )
    parser.add_argument("--store", type=Path, required=True, help="directory for mlflow.db, artifacts/ and server.log")
    parser.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    parser.add_argument("--host", default=LOCALHOST, help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--allowed-hosts", default=None, help="forwarded to mlflow server --allowed-hosts")
    args = parser.parse_args(argv)
    server = MlflowServer(args.store, port=args.port, host=args.host, allowed_hosts=args.allowed_hosts)
    for signum in (signal.SIGTERM, signal.SIGHUP):  # before the start: a stop may come while it starts
        signal.signal(signum, _interrupt)
    try:
        uri = server.start()
    except LtrayError as error:
        print(f"ltray: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the start stopped the server already
        return 0
    print(f"MLflow tracking server: {uri}  (store {server.store_dir}; log {server.log_path}); Ctrl-C stops it", flush=True)
    try:
        while server.is_running():
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(signum, signal.SIG_IGN)
        server.stop()
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
