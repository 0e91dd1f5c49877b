"""Bounded waits for a trial's resources, and the placement groups a failed Ray Train run leaves behind.

When a Ray Train controller fails (for instance while forming the process group), its worker group's placement
group can outlive it and hold its CPUs/GPUs for good; the next trial then waits forever for resources that never
free. ltray therefore (1) removes, after a failed training, the placement groups that appeared during it and no
longer hold any live actor, (2) waits at most `resource_timeout_s()` for the free resources a trial needs
before starting it, failing the trial with a clear message instead of waiting silently, and (3) bounds Ray Train's
own retries of a worker group that cannot start (its resources taken after that check) to about the same time.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping

from ltray.errors import LtrayError

RESOURCE_TIMEOUT_ENV = "LTRAY_TRIAL_RESOURCE_TIMEOUT_S"
DEFAULT_RESOURCE_TIMEOUT_S = 300.0
POLL_S = 1.0
SETTLE_S = 2.0
ORPHAN_WAIT_S = 30.0
TRAIN_START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
RAY_TRAIN_START_TIMEOUT_S = 60.0


def _seconds_from_env(name: str, default: float) -> float:
    """A positive number of seconds from `$name` (default when unset); LtrayError naming the variable otherwise."""
    text = os.environ.get(name, "")
    try:
        value = float(text) if text else default
    except ValueError:
        raise LtrayError(f"{name} must be a number of seconds, got {text!r}") from None
    if value <= 0:
        raise LtrayError(f"{name} must be > 0, got {text!r}")
    return value


def resource_timeout_s() -> float:
    """How long a trial waits for its resources: `$LTRAY_TRIAL_RESOURCE_TIMEOUT_S`, default 300 s."""
    return _seconds_from_env(RESOURCE_TIMEOUT_ENV, DEFAULT_RESOURCE_TIMEOUT_S)


def start_retries_within(timeout_s: float) -> int:
    """Ray Train's `controller_failure_limit` for a run: each attempt to start the worker group waits
    `$RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S` (Ray's default 60 s) and Ray retries without end by default; this many
    retries keep all attempts together within about `timeout_s`."""
    per_attempt = _seconds_from_env(TRAIN_START_TIMEOUT_ENV, RAY_TRAIN_START_TIMEOUT_S)
    return max(0, math.ceil(timeout_s / per_attempt) - 1)


def wait_for_resources(needed: Mapping[str, float], what: str, timeout_s: float | None = None,
                       available: Callable[[], Mapping[str, float]] | None = None) -> None:
    """Return once the cluster has `needed` (e.g. {"CPU": 2}) free; LtrayError after `timeout_s`."""
    import ray

    free = available or ray.available_resources
    limit = resource_timeout_s() if timeout_s is None else timeout_s
    wanted = {key: value for key, value in needed.items() if value > 0}
    deadline = time.monotonic() + limit
    while True:
        now = free()
        if all(float(now.get(key, 0.0)) + 1e-9 >= value for key, value in wanted.items()):
            return
        if time.monotonic() >= deadline:
            have = ", ".join(f"{float(now.get(key, 0.0)):g}/{value:g} {key}" for key, value in wanted.items())
            raise LtrayError(f"{what}: the cluster did not have the resources free within {limit:.0f} s (free/needed:"
                             f" {have}); are other jobs holding them? ({RESOURCE_TIMEOUT_ENV} sets the wait)")
        time.sleep(POLL_S)


def _connected_cluster() -> str:
    """The GCS address of the cluster this process is connected to. Ray's state API otherwise looks for a cluster
    on this machine by itself and fails where several run (as in the test suite)."""
    import ray

    return str(ray.get_runtime_context().gcs_address)


def placement_group_ids() -> set[str]:
    """The ids of the cluster's placement groups that hold resources now (created or being created)."""
    from ray.util.state import list_placement_groups

    groups = list_placement_groups(address=_connected_cluster(), filters=[("state", "!=", "REMOVED")],
                                   limit=10_000, timeout=10, raise_on_missing_output=False)
    return {group.placement_group_id for group in groups}


def placement_groups_or_none() -> set[str] | None:
    """`placement_group_ids()`, or None where Ray's state API does not answer (a cluster without its dashboard):
    the clean-up after a failed run is then skipped."""
    try:
        return placement_group_ids()
    except Exception:  # the state API answers through the dashboard, which a cluster may run without
        return None


def remove_orphaned_placement_groups(before: set[str], timeout_s: float = ORPHAN_WAIT_S) -> list[str]:
    """Remove the placement groups that appeared since `before` and hold no live actor. The failed run's workers
    may take a while to die, so this polls for up to `timeout_s`; a group counts as orphaned once it held no live
    actor in two polls `SETTLE_S` apart (a worker group that is still starting keeps its group). Returns the
    removed ids."""
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_actors

    def in_use() -> set[str]:
        alive = list_actors(address=_connected_cluster(), filters=[("state", "!=", "DEAD")], limit=10_000,
                            detail=True, timeout=10, raise_on_missing_output=False)
        return {actor.placement_group_id for actor in alive if actor.placement_group_id}

    deadline = time.monotonic() + timeout_s
    previous: set[str] = set()
    while True:
        new = placement_group_ids() - before
        orphaned = new - in_use() if new else set()
        stable = previous & orphaned
        if stable or not new or time.monotonic() >= deadline:
            break
        previous = orphaned
        time.sleep(SETTLE_S)
    for group_id in sorted(stable):
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id))))
    return sorted(stable)
