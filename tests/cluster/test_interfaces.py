"""The interface gloo/NCCL are pointed at: the one holding the node's address."""

from __future__ import annotations

import os

from ltray import ray_runtime
from ltray.ray_runtime import INTERFACE_VARIABLES, interface_holding, use_node_interface


def test_loopback_address_is_on_the_loopback_interface():
    assert interface_holding("127.0.0.1") == "lo"
    assert interface_holding("203.0.113.77") is None


def test_hook_sets_the_node_interface_and_keeps_user_values(monkeypatch):
    monkeypatch.setattr(os, "environ", dict(os.environ))  # what the hook sets must not reach later tests' processes
    monkeypatch.setattr(ray_runtime, "node_address", lambda: "127.0.0.1")
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    monkeypatch.setenv("NCCL_SOCKET_IFNAME", "ib0")
    use_node_interface()
    assert os.environ["GLOO_SOCKET_IFNAME"] == "lo"
    assert os.environ["NCCL_SOCKET_IFNAME"] == "ib0"


def test_hook_outside_ray_changes_nothing(monkeypatch):
    monkeypatch.setattr(os, "environ", dict(os.environ))
    for variable in INTERFACE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    use_node_interface()
    assert not any(variable in os.environ for variable in INTERFACE_VARIABLES)
