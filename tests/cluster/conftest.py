"""Shared real services for the cluster tests: one Ray head (`ray start --head --block` on 127.0.0.1, every port
chosen free, its own temp dir, token authentication with its own token file) and one `mlflow server`, each started
on first use and stopped at the end of the session. The head runs under `ltray.guard`: SIGTERM to the guard reaches
`ray start --block` (which then stops the processes of its cluster), then the group is killed; if the test process
dies without a teardown, the guard stops the head all the same. No other Ray instance on the machine is touched."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ltray.guard import guarded
from ltray.tracking.server import free_port

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
RAY = str(Path(sys.executable).with_name("ray"))
LOCALHOST = "127.0.0.1"


@dataclass
class RayHead:
    address: str
    dashboard_url: str
    temp_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path
    token_path: Path

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def env(self) -> dict[str, str]:
        """Environment of a process that should join this head with `--address auto`."""
        env = dict(os.environ, **auth_env(self.token_path))
        env["RAY_ADDRESS"] = self.address
        env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        return env


def auth_env(token_path: Path) -> dict[str, str]:
    """Token authentication with the head's own token file (`ray start --head` enables token mode only when a
    token exists: without these variables a fresh machine gets an unauthenticated head)."""
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}


def _stop_head(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)


def _wait_for_head(address: str, process: subprocess.Popen[bytes], log_path: Path, token_path: Path,
                   timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
        probe = subprocess.run(
            [RAY, "status", "--address", address], capture_output=True, text=True, timeout=60, check=False,
            env=dict(os.environ, **auth_env(token_path)),
        )
        if probe.returncode == 0 and "CPU" in probe.stdout:
            return
        time.sleep(1.0)
    raise RuntimeError(f"the Ray head at {address} did not come up:\n{log_path.read_text(errors='replace')}")


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    temp_dir = Path(tempfile.mkdtemp(prefix="ltray-ray-", dir="/tmp"))
    port, dashboard = free_port(), free_port()
    log_path = temp_dir / "head.log"
    token_path = temp_dir / "auth_token"
    token_path.write_text(secrets.token_hex(32))
    command = [
        RAY, "start", "--head", "--block", f"--node-ip-address={LOCALHOST}", f"--port={port}", "--num-cpus=2",
        "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={temp_dir}", "--include-dashboard=true",
        f"--dashboard-host={LOCALHOST}", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}", "--object-store-memory=200000000",
    ]
    address = f"{LOCALHOST}:{port}"
    env = dict(os.environ, RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.25", RAY_ADDRESS=address, **auth_env(token_path))
    with log_path.open("wb") as log:
        process = subprocess.Popen(guarded(command), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        _wait_for_head(address, process, log_path, token_path)
        yield RayHead(address, f"http://{LOCALHOST}:{dashboard}", temp_dir, process, log_path, token_path)
    finally:
        _stop_head(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def connected(ray_head: RayHead) -> Iterator[RayHead]:
    """This process joined to the test head. Ray caches the token it reads (the head's own file here), so the
    cache is reset on the way in and again on the way out, after the environment is restored: a local Ray
    started later in this process must use the machine's token, not the head's."""
    import ray
    from ray._private.authentication_test_utils import reset_auth_token_state

    settings = auth_env(ray_head.token_path)
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    reset_auth_token_state()
    try:
        ray.init(address=ray_head.address)
        yield ray_head
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reset_auth_token_state()


@pytest.fixture
def sweep_name() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def experiment_name() -> str:
    return f"ltray-cluster-test-{uuid.uuid4().hex[:8]}"


def _write_tiny_sweep(folder: Path, *, splits: tuple[int, ...] = (1, 2), epochs: int = 2,
                     extra_axes: str = "") -> Path:
    """A sweep YAML over digits-lt at width 0.125: a few seconds of training per trial."""
    path = folder / "sweep_tiny.yaml"
    path.write_text(
        f"""name: tiny
experiment: ltray-tests
base: {ROOT / 'ltray' / 'configs' / 'digits_tiny.yaml'}
overrides:
  optim.epochs: {epochs}
  optim.batch_size: 64
  optim.warmup_epochs: 1
  eval.probe_epochs_scale: 0.05
  eval.kshot: 2
  eval.kshot_draws: 1
  run.checkpoint_every: 1
axes:
  method.name: [simclr]
  data.split: [{", ".join(map(str, splits))}]
{extra_axes}
resources:
  workers_per_trial: 1
  cpus_per_worker: 1
max_failures: 1
"""
    )
    return path


def _run_script(script: str, args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300.0
               ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, str(ROOT / "experiments" / script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def tiny_sweep():
    """`tiny_sweep(folder, splits=(1, 2), epochs=2, extra_axes="")` writes a tiny digits-lt sweep YAML."""
    return _write_tiny_sweep


@pytest.fixture
def sweep_script():
    """`sweep_script(script, args, env, cwd)` runs `experiments/<script>` and returns the completed process."""
    return _run_script


@pytest.fixture(scope="module")
def two_nodes():
    """A real two-node Ray cluster (tests/cluster/multinode.py) with an MLflow server on the head, shared by the
    multi-node tests of a module and stopped after them (its processes hold memory the later tests need); skipped
    where the machine allows no namespaces."""
    from tests.cluster.multinode import start_two_node_cluster, unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    cluster = start_two_node_cluster(with_mlflow=True)
    try:
        cluster.tracking_uri = cluster.start_mlflow()
        yield cluster
    finally:
        cluster.stop()

