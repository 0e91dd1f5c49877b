"""Checks on every node of the cluster before any trial starts.

On a cluster of several nodes a trial may run on any node, so what the driver sees is not enough. After the sweep
has connected to Ray, one tiny task is pinned to each alive node (no CPU requested, so busy nodes answer too) and
checks, from that node:

- the storage root exists and is writable there, and a marker file the driver just wrote into it is visible with
  the same content (storage that is really shared, not a same-named local folder); a URI storage (`s3://`, ...)
  is opened there with that node's credentials;
- the MLflow store answers (an http(s) server or a SQL database; a SQLite file, or any store on the driver's local
  disk, is refused outright on a cluster of several nodes: each node would write its own file);
- every data path the trials name exists: `data.root`, `data.splits_dir`, the list files, `data.extra_data`,
  COLT's pool file and MAK's pool folder.

The driver also checks that one training worker fits on some node (otherwise the trial would wait for resources
forever), that it can write to a URI storage itself (even on one node), and that no MAK trial needs a folder on a
URI storage (its pool and selection are read as folders by every worker). Every problem is one line
(`PreflightError`, exit 2) naming the node and what to do; the whole check is bounded by `PREFLIGHT_TIMEOUT_S`.
"""

from __future__ import annotations

import os
import secrets
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltray.errors import ConfigError, LtrayError
from ltray.storage import Storage, storage_error

PREFLIGHT_TIMEOUT_S = 60.0
MARKER_PREFIX = ".ltray-preflight-"
LOCAL_STORE_SCHEMES = ("sqlite", "file")


class PreflightError(ConfigError):
    """A cluster set-up that would fail later (storage, tracking store, data paths, resources): one line."""


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    address: str
    resources: Mapping[str, float]


@dataclass(frozen=True)
class PathNeed:
    """A path the trials read, and the config key that names it."""

    key: str
    path: str


def data_paths(configs: Iterable[Any]) -> list[PathNeed]:
    """Every file or folder the trials' configs name (once each, in config order)."""
    from ltray.methods.method import part_classes

    needs: dict[tuple[str, str], PathNeed] = {}

    def add(key: str, value: str | None) -> None:
        if value:
            needs.setdefault((key, value), PathNeed(key, value))

    for cfg in configs:
        d = cfg.data
        for key in ("root", "splits_dir", "train_list", "val_list", "test_list", "fewshot_list", "full_list",
                    "extra_data"):
            add(f"data.{key}", getattr(d, key))
        for part in part_classes(cfg):
            for key, value in part.input_paths(cfg).items():
                add(key, value)
    return list(needs.values())


def is_local_store(tracking_uri: str) -> bool:
    """Whether the MLflow store is a file on the driver's disk (SQLite), which other nodes cannot share."""
    return urllib.parse.urlsplit(tracking_uri).scheme.lower() in LOCAL_STORE_SCHEMES


def check_worker_fits(nodes: Sequence[NodeInfo], cpus_per_worker: float, gpus_per_worker: float) -> None:
    """One training worker (or in-process trial) must fit on a single node, or its trial would wait forever."""
    eps = 1e-9
    for node in nodes:
        if (node.resources.get("CPU", 0.0) + eps >= cpus_per_worker
                and node.resources.get("GPU", 0.0) + eps >= gpus_per_worker):
            return
    largest = max(nodes, key=lambda n: (n.resources.get("GPU", 0.0), n.resources.get("CPU", 0.0)))
    raise PreflightError(
        f"one training worker needs {cpus_per_worker:g} CPUs and {gpus_per_worker:g} GPUs on one node, but the "
        f"largest node ({largest.address}) has {largest.resources.get('CPU', 0.0):g} CPUs and "
        f"{largest.resources.get('GPU', 0.0):g} GPUs; lower --cpus-per-worker or --gpus-per-worker"
    )


def check_mak_storage(configs: Iterable[Any], storage: Storage) -> None:
    """MAK's pipeline keeps its pool, cache and selection as folders under the sweep, which the training workers
    read as local folders: a URI storage cannot hold them."""
    from ltray.method_names import parse_method

    if storage.is_local:
        return
    for cfg in configs:
        if parse_method(cfg.method.name).has("mak") and not cfg.data.extra_data:
            raise PreflightError(
                f"method {cfg.method.name}: MAK's pool and selection are folders every worker reads, which the URI "
                f"storage {storage} cannot hold; run MAK sweeps with --storage on a path every node mounts"
            )


def storage_problem(root: Storage, marker: str, marker_text: str) -> str | None:
    """Why the storage root is not usable from here (None: it is): missing, not shared, or not writable."""
    try:
        if not root.is_dir():
            return (f"the storage root {root} does not exist there; use --storage (or $LTRAY_STORAGE) on storage "
                    "every node mounts at the same path, or an s3:// / gs:// URI")
        try:
            seen: str | None = root.child(marker).read_text()
        except (OSError, ValueError):
            seen = None
        if seen != marker_text:
            return (f"the storage root {root} is not shared: a file the driver wrote there is not visible; use "
                    "--storage (or $LTRAY_STORAGE) on storage every node mounts at the same path")
        probe = root.child(f"{marker}.{os.getpid()}")
        probe.write_text("ltray")
        probe.delete()
    except (OSError, ValueError) as error:  # pyarrow's errors are OSError (I/O) or ValueError (ArrowInvalid)
        return f"the storage root is not usable there ({storage_error(root, error)})"
    return None


def node_report(marker: str, marker_text: str, storage_uri: str, tracking_uri: str,
                paths: Sequence[PathNeed]) -> list[str]:
    """What is wrong on the node this runs on (empty: nothing). Runs as a Ray task pinned to one node."""
    from ltray.tracking.store import check_tracking_reachable

    problems = []
    problem = storage_problem(Storage(storage_uri), marker, marker_text)
    if problem is not None:
        problems.append(problem)
    if not is_local_store(tracking_uri):
        try:
            check_tracking_reachable(tracking_uri)
        except LtrayError as error:
            problems.append(str(error))
    for need in paths:
        if not Path(need.path).exists():
            problems.append(f"{need.key} {need.path} does not exist there")
    return problems


def alive_nodes() -> list[NodeInfo]:
    import ray

    return [NodeInfo(str(node["NodeID"]), str(node["NodeManagerAddress"]),
                     {key: float(value) for key, value in node.get("Resources", {}).items()})
            for node in ray.nodes() if node.get("Alive")]


def write_marker(storage: Storage) -> tuple[Storage, str]:
    """Write a fresh marker file into the storage root from the driver; returns it and its text."""
    marker = storage.child(f"{MARKER_PREFIX}{secrets.token_hex(8)}")
    text = secrets.token_hex(16)
    try:
        storage.make_dirs()
        marker.write_text(text)
    except (OSError, ValueError) as error:
        raise PreflightError(f"the storage root is not writable from the driver ({storage_error(storage, error)})"
                             ) from None
    return marker, text


def remove_marker(marker: Storage) -> None:
    try:
        marker.delete()
    except (OSError, ValueError):
        pass  # the check's own error (or its success) matters more than a leftover marker


def check_cluster(configs: Sequence[Any], storage: Storage, tracking_uri: str, *, cpus_per_worker: float,
                  gpus_per_worker: float, timeout_s: float = PREFLIGHT_TIMEOUT_S) -> None:
    """Run the checks above on the connected cluster. On one node the driver's own checks (tracking store, data
    read before Ray started) already cover it: only the resource fit runs, and for a URI storage a write from the
    driver. Raises PreflightError with the first problem found (and how many more there are)."""
    import ray
    from ray.exceptions import RayError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = alive_nodes()
    check_worker_fits(nodes, cpus_per_worker, gpus_per_worker)
    check_mak_storage(configs, storage)
    if len(nodes) < 2:
        if not storage.is_local:
            remove_marker(write_marker(storage)[0])
        return
    if is_local_store(tracking_uri):
        raise PreflightError(
            f"the MLflow store {tracking_uri} is a file on this machine, which the other {len(nodes) - 1} node(s) "
            "of the cluster cannot share; start a tracking server every node reaches "
            "(python -m ltray.tracking.server --host ADDRESS --store DIR) and pass --mlflow-uri http://ADDRESS:5000"
        )
    marker, marker_text = write_marker(storage)
    paths = data_paths(configs)
    task = ray.remote(node_report)
    try:
        pending = {
            task.options(num_cpus=0, max_retries=0,
                         scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False)).remote(
                marker.name, marker_text, storage.uri, tracking_uri, paths): node
            for node in nodes
        }
        ready, not_ready = ray.wait(list(pending), num_returns=len(pending), timeout=timeout_s)
        if not_ready:
            late = ", ".join(pending[ref].address for ref in not_ready)
            for ref in not_ready:
                ray.cancel(ref, force=True)
            raise PreflightError(f"preflight: node(s) {late} did not answer within {timeout_s:.0f} s "
                                 "(is ltray installed there, and is the node healthy?)")
        problems = []
        for ref in ready:
            try:
                found = ray.get(ref)
            except RayError as error:  # the task itself failed there (e.g. ltray not importable)
                lines = str(error).strip().splitlines()
                found = [f"the preflight task failed: {lines[-1] if lines else type(error).__name__}"]
            problems += [f"node {pending[ref].address}: {problem}" for problem in found]
    finally:
        remove_marker(marker)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise PreflightError(f"preflight: {problems[0]}{more}")
