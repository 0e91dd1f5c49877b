"""A real two-node Ray cluster on one machine, for the multi-node tests.

Each node is a Linux network namespace joined to the other by a veth pair on a private /24 with no route anywhere
else, and each runs in its own PID and mount namespace (`unshare --pid --mount --fork --mount-proc`), so:
- the head (node A, `10.231.7.1`) runs `ray start --head` with token authentication, and the drivers of the tests
  run inside node A's namespaces (`TwoNodeCluster.run_on_head`), as a user would run them on the head machine;
- the worker (node B, `10.231.7.2`) joins with `ray start --address`; it mounts an empty tmpfs over the driver's
  working folder, node A's Ray temp dir and /dev/shm, so a file that is not on the shared folder is invisible to it;
- the shared folder (`shared`) is the only folder both nodes see that the test owns: shared storage;
- an S3-compatible server can run on the head (`TwoNodeCluster.start_s3`, moto_server on `10.231.7.1:9000`); both
  nodes and the drivers have its credentials and endpoint in their environment, as nodes configured for S3 would.

Stopping a node kills the first process of its PID namespace, which makes the kernel end every process in it
(raylet, GCS, workers, drivers, the MLflow server); the namespaces and the veth pair are then deleted. Each node
runs under `ltray.guard`, so a test process that dies without its teardown still takes the nodes along. Each step
of the teardown runs even when an earlier one failed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ltray.guard import guarded
from tests.s3server import create_bucket_code, moto_argv, s3_env

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))
SUBNET = "10.231.7"
HEAD_IP = f"{SUBNET}.1"
WORKER_IP = f"{SUBNET}.2"
GCS_PORT = 6379
MLFLOW_PORT = 5000
S3_PORT = 9000
S3_ENDPOINT = f"http://{HEAD_IP}:{S3_PORT}"
START_TIMEOUT_S = 150.0


def unavailable_reason() -> str | None:
    """Why this machine cannot host the test cluster (None when it can)."""
    if os.geteuid() != 0:
        return "the two-node cluster needs root (network, PID and mount namespaces)"
    for tool in ("ip", "unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"the two-node cluster needs `{tool}`"
    probe = f"ltray-probe-{uuid.uuid4().hex[:6]}"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if created.returncode != 0:
        return f"`ip netns add` is not allowed here: {created.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


def _fresh_environment(prefixes: tuple[str, ...]) -> dict[str, str]:
    """This process's environment as a fresh node or user would have it: without the given prefixes and without
    a collective interface or S3 settings chosen by hand (the test process may have them from an earlier test)."""
    dropped = (*prefixes, "AWS_", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
    return {key: value for key, value in os.environ.items() if not key.startswith(dropped)}


def _run(argv: Sequence[str]) -> None:
    done = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


def _first_child(pid: int, timeout_s: float = 10.0) -> int:
    """The first child of process `pid` (of `unshare --fork`: the first process of its PID namespace)."""
    deadline = time.monotonic() + timeout_s
    children = Path(f"/proc/{pid}/task/{pid}/children")
    while time.monotonic() < deadline:
        try:
            pids = children.read_text().split()
        except OSError:
            pids = []
        if pids:
            return int(pids[0])
        time.sleep(0.05)
    raise RuntimeError(f"process {pid} started no child within {timeout_s:.0f} s")


@dataclass
class Node:
    """One node: its network namespace, address, Ray temp dir, and the `unshare` process holding its PID namespace."""

    netns: str
    ip: str
    temp_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    init_pid: int | None = None

    def enter(self, cwd: Path) -> list[str]:
        """The command prefix that runs a program inside this node's network, PID and mount namespaces, in `cwd`
        (entering a mount namespace starts in its root folder otherwise)."""
        if self.init_pid is None:
            raise RuntimeError(f"node {self.ip} is not running")
        return ["nsenter", f"--target={self.init_pid}", "--net", "--pid", "--mount", f"--wd={cwd}", "--"]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None:
            return
        if self.init_pid is not None:
            try:
                os.kill(self.init_pid, signal.SIGKILL)  # the kernel ends every process of the namespace
            except ProcessLookupError:
                pass
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)


@dataclass
class TwoNodeCluster:
    base: Path
    token_path: Path
    head: Node
    worker: Node
    shared: Path = field(init=False)
    driver_dir: Path = field(init=False)
    created_netns: list[str] = field(default_factory=list)
    tracking_uri: str = ""
    mlflow: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.shared = self.base / "shared"
        self.driver_dir = self.base / "driver"

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{GCS_PORT}"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment of a driver on the head node: token auth with the cluster's token, `RAY_ADDRESS`."""
        env = _fresh_environment(("RAY_", "MLFLOW_", "LTRAY_"))
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path), RAY_ADDRESS=self.address,
                   RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.25", PYTHONUNBUFFERED="1", **s3_env(S3_ENDPOINT))
        env["PYTHONPATH"] = str(ROOT)
        env.update(extra)
        return env

    def run_on_head(self, argv: Sequence[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
                    timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run a program on the head node (its namespaces), in `cwd` (default the driver's folder)."""
        folder = cwd or self.driver_dir
        return subprocess.run([*self.head.enter(folder), *argv], env=env or self.env(), cwd=folder,
                              capture_output=True, text=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)

    def start_on_head(self, argv: Sequence[str], log_path: Path, *, env: dict[str, str] | None = None
                      ) -> subprocess.Popen[bytes]:
        """Start a long-running program on the head node (it ends with the node at the latest)."""
        with log_path.open("wb") as log:
            return subprocess.Popen([*self.head.enter(self.driver_dir), *argv], env=env or self.env(), cwd=self.driver_dir,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)

    def launch_mlflow(self) -> None:
        """Start `python -m ltray.tracking.server` on the head, bound to the head's address with its store on the
        shared folder (it stops with the head node); `start_mlflow` waits for it."""
        self.mlflow = self.start_on_head([sys.executable, "-m", "ltray.tracking.server", "--store",
                                          str(self.shared / "mlflow"), "--host", HEAD_IP, "--port", str(MLFLOW_PORT)],
                                         self.base / "mlflow-wrapper.log")

    def start_mlflow(self, timeout_s: float = 180.0) -> str:
        """The MLflow server on the head (launched here unless `launch_mlflow` did): its tracking URI once it
        answers."""
        uri = f"http://{HEAD_IP}:{MLFLOW_PORT}"
        log = self.base / "mlflow-wrapper.log"
        if self.mlflow is None:
            self.launch_mlflow()
        server = self.mlflow
        assert server is not None
        check = ("import sys; from ltray.tracking.store import check_tracking_reachable as c; "
                 f"c({uri!r}, timeout_s=2.0)")
        health = f"import urllib.request as u; u.urlopen({uri + '/health'!r}, timeout=2)"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"the MLflow server exited with {server.returncode}:\n{log.read_text()}")
            # a cheap probe (no MLflow import) until the server listens, then MLflow's own check
            if (self.run_on_head([sys.executable, "-c", health], timeout=30).returncode == 0
                    and self.run_on_head([sys.executable, "-c", check], timeout=60).returncode == 0):
                return uri
            time.sleep(1.0)
        raise RuntimeError(f"the MLflow server on {uri} did not answer within {timeout_s:.0f} s:\n{log.read_text()}")

    def start_s3(self, bucket: str, timeout_s: float = 60.0) -> str:
        """moto_server on the head's address (it stops with the head node) with `bucket` created; returns
        `s3://<bucket>/sweeps`."""
        log = self.base / "s3.log"
        server = self.start_on_head(moto_argv(HEAD_IP, S3_PORT), log)
        probe = f"from tests.s3server import answers; raise SystemExit(0 if answers({S3_ENDPOINT!r}) else 1)"
        deadline = time.monotonic() + timeout_s
        while self.run_on_head([sys.executable, "-c", probe], cwd=ROOT, timeout=30).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto_server on {S3_ENDPOINT} did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.5)
        made = self.run_on_head([sys.executable, "-c", create_bucket_code(S3_ENDPOINT, bucket)], timeout=60)
        if made.returncode != 0:
            raise RuntimeError(f"could not create bucket {bucket}: {made.stderr[-2000:]}")
        return f"s3://{bucket}/sweeps"

    def alive_nodes(self) -> int:
        """How many nodes `ray status` on the head lists as active."""
        probe = self.run_on_head([RAY, "status", "--address", self.address], timeout=60)
        if probe.returncode != 0 or "Active:" not in probe.stdout:
            return 0
        active = probe.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
        return len(re.findall(r"^\s*\d+ node_[0-9a-f]+\s*$", active, flags=re.MULTILINE))

    def stop(self) -> None:
        errors = []
        for node in (self.worker, self.head):
            try:
                node.stop()
            except Exception as error:  # every step of the teardown runs; the first error is raised at the end
                errors.append(error)
        for netns in self.created_netns:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        if errors:
            raise errors[0]


def _ray_start_argv(node: Node, *, head: bool) -> list[str]:
    common = [f"--node-ip-address={node.ip}", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats",
              f"--temp-dir={node.temp_dir}", "--object-store-memory=150000000", "--block"]
    if head:
        return [RAY, "start", "--head", f"--port={GCS_PORT}", "--include-dashboard=true",
                "--dashboard-host=127.0.0.1", *common]
    return [RAY, "start", f"--address={HEAD_IP}:{GCS_PORT}", *common]


def _start_node(node: Node, cluster_env: dict[str, str], *, head: bool, hidden: Sequence[Path] = ()) -> None:
    """`ip netns exec NS unshare --pid --mount --fork --mount-proc` a shell that hides `hidden` behind empty tmpfs
    mounts (private to the node) and then becomes `ray start --block`."""
    mounts = "".join(f"mount -t tmpfs -o size=64m ltray-hidden {path} && " for path in hidden)
    argv = _ray_start_argv(node, head=head)
    script = f"mount --make-rprivate / && {mounts}exec {' '.join(argv)}"
    node.temp_dir.mkdir(parents=True, exist_ok=True)
    with node.log_path.open("wb") as log:
        node.process = subprocess.Popen(
            guarded(["ip", "netns", "exec", node.netns, "unshare", "--pid", "--mount", "--fork", "--mount-proc",
                     "--kill-child", "sh", "-c", script]),
            env=cluster_env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
    node.init_pid = _first_child(_first_child(node.process.pid))  # guard -> unshare -> the namespace's first process


def _wait_for_nodes(cluster: TwoNodeCluster, count: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        for node in (cluster.head, cluster.worker):
            if node.process is not None and node.process.poll() is not None:
                raise RuntimeError(f"ray start on {node.ip} exited with {node.process.returncode}:\n{node.log_tail()}")
        if cluster.alive_nodes() >= count:
            return
        time.sleep(1.0)
    raise RuntimeError(f"the two-node cluster did not come up within {START_TIMEOUT_S:.0f} s:\n"
                       f"head:\n{cluster.head.log_tail()}\nworker:\n{cluster.worker.log_tail()}")


def start_two_node_cluster(with_mlflow: bool = False) -> TwoNodeCluster:
    """Create the namespaces and the link, start both nodes, wait until the head sees two nodes (`with_mlflow`:
    launch the MLflow server on the head while the worker node starts; `start_mlflow` waits for it). On any
    failure everything started so far is stopped before the error propagates."""
    tag = uuid.uuid4().hex[:6]
    base = Path(tempfile.mkdtemp(prefix="ltray-2n-", dir="/tmp"))
    token_path = base / "shared" / "auth_token"
    token_path.parent.mkdir(parents=True)
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    head = Node(f"ltray-{tag}-a", HEAD_IP, base / "ray-a", base / "head.log")
    worker = Node(f"ltray-{tag}-b", WORKER_IP, base / "ray-b", base / "worker.log")
    cluster = TwoNodeCluster(base, token_path, head, worker)
    cluster.driver_dir.mkdir()
    try:
        for node in (head, worker):
            _run(["ip", "netns", "add", node.netns])
            cluster.created_netns.append(node.netns)
        link_a, link_b = f"lt{tag}a", f"lt{tag}b"
        _run(["ip", "link", "add", link_a, "type", "veth", "peer", "name", link_b])
        for node, link in ((head, link_a), (worker, link_b)):
            _run(["ip", "link", "set", link, "netns", node.netns])
            _run(["ip", "-n", node.netns, "addr", "add", f"{node.ip}/24", "dev", link])
            _run(["ip", "-n", node.netns, "link", "set", link, "up"])
            _run(["ip", "-n", node.netns, "link", "set", "lo", "up"])
        env = _fresh_environment(("RAY_",))
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_path), PYTHONPATH=str(ROOT),
                   **s3_env(S3_ENDPOINT))
        _start_node(head, env, head=True)
        _wait_for_nodes(cluster, 1)
        if with_mlflow:
            cluster.launch_mlflow()
        _start_node(worker, env, head=False, hidden=(cluster.driver_dir, head.temp_dir, Path("/dev/shm")))
        _wait_for_nodes(cluster, 2)
    except BaseException:
        cluster.stop()
        raise
    return cluster


if __name__ == "__main__":  # a manual check: start, print the nodes, stop
    started = start_two_node_cluster()
    try:
        print("nodes:", started.alive_nodes())
    finally:
        started.stop()
