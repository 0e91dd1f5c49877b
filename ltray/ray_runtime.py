"""Starting or joining Ray with ltray's settings: every place in ltray that needs Ray goes through `connect` (or
`ray_session`, which also shuts down a cluster it started).

`connect` joins a running cluster (`auto`, `host:port`, `ray://...`) or starts one in this process. A cluster started
here serves its dashboard on 127.0.0.1 unless told otherwise; its GCS and raylet listen on the node's address. Ray
2.60 uses token authentication by default; a client joining a cluster needs that cluster's token
(`RAY_AUTH_TOKEN_PATH`, `~/.ray/auth_token` or `RAY_AUTH_TOKEN`).

Every Ray worker process of the job first runs `use_node_interface` (a Ray `worker_process_setup_hook`): gloo and
NCCL pick their interface from the host name unless told otherwise (`GLOO_SOCKET_IFNAME`, `NCCL_SOCKET_IFNAME`);
where the host name maps to 127.0.0.1, workers on two nodes then try to reach each other on loopback and the process
group never forms. The hook points both at the interface that holds the address Ray assigned to the worker's node; a
value the user set is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltray.errors import LtrayError

LOCALHOST = "127.0.0.1"
SETTINGS_PREFIX = "LTRAY_"
HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
HEALTH_CHECK_INTERVAL_S = "0.25"
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
AUTH_MODE_ENV = "RAY_AUTH_MODE"
AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
INTERFACE_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
SETUP_HOOK = "ltray.ray_runtime.use_node_interface"


def interface_holding(address: str) -> str | None:
    """The name of the local interface with IPv4/IPv6 address `address`, or None."""
    import psutil

    for name, entries in psutil.net_if_addrs().items():
        if any(entry.address.split("%", 1)[0] == address for entry in entries):
            return name
    return None


def node_address() -> str | None:
    """The address Ray assigned to the node this worker process runs on (None outside a Ray worker)."""
    import ray

    if not ray.is_initialized():
        return None
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id:
            return str(node.get("NodeManagerAddress"))
    return None


def use_node_interface() -> None:
    """Ray worker setup hook: point gloo and NCCL at the interface of this node's Ray address (unless set)."""
    if all(variable in os.environ for variable in INTERFACE_VARIABLES):
        return
    address = node_address()
    name = interface_holding(address) if address else None
    if name is None:
        return
    for variable in INTERFACE_VARIABLES:
        os.environ.setdefault(variable, name)


@dataclass(frozen=True)
class RayConnection:
    """Where the driver is connected: the cluster address, its dashboard and whether this process started it."""

    address: str
    dashboard_url: str | None
    started_here: bool


def use_fast_train_reports() -> None:
    """Ray Train settings for short per-epoch reports, unless the user set them (Ray Train forwards both variables
    from the process that creates the trainer): the controller's polling interval, which `ray.train.report` waits
    on each epoch (2 s by default), and no preemption watcher (one actor per run that only acts when a cloud
    provider reclaims a node; set RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=1 on spot capacity)."""
    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_INTERVAL_S)
    os.environ.setdefault(PREEMPTION_WATCHER_ENV, "0")


def use_token_auth_when_available() -> None:
    """Ray 2.60 starts clusters with token authentication, but a client joining one by address only sends the token
    in `RAY_AUTH_MODE=token`; turn that on when a token is at hand and the user chose no mode. Ray reads the mode
    when it is imported, so call this before the first `import ray`."""
    token_file = Path(os.environ.get(AUTH_TOKEN_PATH_ENV, Path.home() / ".ray" / "auth_token")).expanduser()
    if AUTH_MODE_ENV not in os.environ and (os.environ.get(AUTH_TOKEN_ENV) or token_file.is_file()):
        os.environ[AUTH_MODE_ENV] = "token"


def _dashboard(url: str | None) -> str | None:
    if not url:
        return None
    return url if url.startswith("http") else f"http://{url}"


def connect(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    dashboard_host: str = LOCALHOST,
    dashboard_port: int | None = None,
) -> RayConnection:
    """`address` None or "local": start Ray here (dashboard on `dashboard_host`); "auto": the
    cluster this node belongs to (or `RAY_ADDRESS`); "host:port" or "ray://host:port": that cluster. Already
    connected: reuse."""
    import ray

    use_fast_train_reports()
    if ray.is_initialized():
        current = ray.init(ignore_reinit_error=True)  # the existing connection's context, dashboard included
        return RayConnection(address=ray.get_runtime_context().gcs_address,
                             dashboard_url=_dashboard(getattr(current, "dashboard_url", None)), started_here=False)
    local = address in (None, "", "local")
    runtime_env: dict[str, Any] = {"worker_process_setup_hook": SETUP_HOOK}
    settings = {key: value for key, value in os.environ.items() if key.startswith(SETTINGS_PREFIX)}
    if settings:  # the driver's ltray settings (e.g. $LTRAY_TRIAL_RESOURCE_TIMEOUT_S) hold in every trial, on any node
        runtime_env["env_vars"] = settings
    try:
        if local:
            info = ray.init(
                address="local", num_cpus=num_cpus, num_gpus=num_gpus,
                include_dashboard=True, dashboard_host=dashboard_host, dashboard_port=dashboard_port,
                runtime_env=runtime_env, logging_level=logging.WARNING,
                logging_config=ray.LoggingConfig(log_level="WARNING"),
            )
        else:
            use_token_auth_when_available()
            info = ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING,
                            logging_config=ray.LoggingConfig(log_level="WARNING"))
    except ConnectionError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = (" (start one with `ray start --head --node-ip-address 127.0.0.1`, or omit --address to start Ray"
                " in this process)" if address == "auto" else "")
        raise LtrayError(f"cannot connect to the Ray cluster at {address!r}: {first}{hint}") from None
    gcs = getattr(info, "address_info", {}).get("gcs_address") or ray.get_runtime_context().gcs_address
    return RayConnection(address=str(gcs), dashboard_url=_dashboard(getattr(info, "dashboard_url", None)),
                         started_here=local)


def cluster_resources() -> dict[str, float]:
    import ray

    return {key: float(value) for key, value in ray.cluster_resources().items()}


def disconnect() -> None:
    """Disconnect; a cluster started by `connect` stops with it."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def ray_session() -> Iterator[RayConnection]:
    """`connect()` for the block: reuse the running Ray, or start one here and shut it down afterwards."""
    connection = connect()
    try:
        yield connection
    finally:
        if connection.started_here:
            disconnect()
