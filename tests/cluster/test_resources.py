"""Bounded resource waits and the placement-group listing behind the clean-up after a failed Ray Train run."""

from __future__ import annotations

import pytest

from ltray.cluster.resources import RESOURCE_TIMEOUT_ENV, resource_timeout_s, wait_for_resources
from ltray.errors import LtrayError


def test_wait_for_resources_returns_once_free_and_fails_after_the_timeout():
    answers = iter([{"CPU": 0.0}, {"CPU": 2.0}])
    wait_for_resources({"CPU": 2.0, "GPU": 0.0}, "run x", timeout_s=5.0, available=lambda: next(answers))
    with pytest.raises(LtrayError, match=r"run y: .* within 0 s \(free/needed: 1/2 CPU\)"):
        wait_for_resources({"CPU": 2.0}, "run y", timeout_s=0.01, available=lambda: {"CPU": 1.0})


def test_resource_timeout_setting(monkeypatch):
    monkeypatch.delenv(RESOURCE_TIMEOUT_ENV, raising=False)
    assert resource_timeout_s() == 300.0
    monkeypatch.setenv(RESOURCE_TIMEOUT_ENV, "12.5")
    assert resource_timeout_s() == 12.5
    monkeypatch.setenv(RESOURCE_TIMEOUT_ENV, "soon")
    with pytest.raises(LtrayError, match="must be a number"):
        resource_timeout_s()


def test_placement_groups_are_listed_on_the_connected_cluster_beside_another(connected, tmp_path):
    """With two Ray clusters on the machine (the test head, which this process joined, and a local one started in
    a subprocess), the listing asks the joined cluster instead of failing on 'multiple active Ray instances'."""
    import subprocess
    import sys

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from ltray.cluster.resources import placement_group_ids

    script = ("import sys, ray; ray.init(address='local', num_cpus=1, include_dashboard=False); print('up', flush=True);"
              " sys.stdin.read(); ray.shutdown()")
    other = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "up"
        group = placement_group([{"CPU": 0.5}])
        ray.get(group.ready(), timeout=60)
        try:
            assert group.id.hex() in placement_group_ids()
        finally:
            remove_placement_group(group)
    finally:
        other.stdin.close()  # the other driver shuts its cluster down and exits
        other.wait(timeout=60)
