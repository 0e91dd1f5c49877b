"""Which network interface the collectives of a training worker use.

gloo and NCCL pick their interface from the host name unless told otherwise (`GLOO_SOCKET_IFNAME`,
`NCCL_SOCKET_IFNAME`); where the host name maps to 127.0.0.1, workers on two nodes then try to reach each other on
loopback and the process group never forms. ltray makes every Ray worker process of a sweep use the interface that
holds the address Ray assigned to its node (`use_node_interface`, a Ray `worker_process_setup_hook`). A value the
user set is left alone.
"""

from __future__ import annotations

import os

INTERFACE_VARIABLES = ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")
SETUP_HOOK = "ltray.cluster.interfaces.use_node_interface"


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
