"""The main job and its failure modes on a real two-node Ray cluster (tests/cluster/multinode.py): one CPU per
node, node B in its own mount namespace (it cannot see the driver's folder), token auth, an MLflow server on the
head. Each sweep runs as a user would run it on the head machine: `experiments/sweep_colt.py --address auto`."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys
import time

import pytest

from ltray.tracking.runs import ROLE_PARENT, TAG_PARENT, TAG_ROLE, TAG_SWEEP
from tests.cluster.multinode import ROOT

pytestmark = pytest.mark.slow

SCRIPT = str(ROOT / "experiments" / "sweep_colt.py")
QUICK = ["--splits", "1", "--set", "optim.epochs=2", "--set", "optim.warmup_epochs=1", "--set", "method.colt.warmup=1",
         "--set", "method.colt.interval=1", "--set", "eval.probe_epochs_scale=0.05", "--set", "run.checkpoint_every=1",
         "--set", "eval.kshot_draws=1"]
PREFLIGHT_LIMIT_S = 60.0


def _sweep(cluster, name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 420.0):
    started = time.monotonic()
    done = cluster.run_on_head([sys.executable, SCRIPT, "--address", "auto", "--name", name, *QUICK, *args],
                               env=env, timeout=timeout)
    return done, time.monotonic() - started


def _child_runs(cluster, sweep: str) -> dict[str, str]:
    """name -> status of the sweep's child runs, read from the server's own SQLite store (children carry the
    sweep's tag too, so the parent is found by its role)."""
    db = cluster.shared / "mlflow" / "mlflow.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        parents = [row[0] for row in connection.execute(
            "SELECT sweep.run_uuid FROM tags AS sweep JOIN tags AS role ON role.run_uuid = sweep.run_uuid "
            "WHERE sweep.key = ? AND sweep.value = ? AND role.key = ? AND role.value = ?",
            (TAG_SWEEP, sweep, TAG_ROLE, ROLE_PARENT))]
        if not parents:
            return {}
        rows = connection.execute(
            "SELECT runs.name, runs.status FROM runs JOIN tags ON tags.run_uuid = runs.run_uuid "
            "WHERE tags.key = ? AND tags.value = ?", (TAG_PARENT, parents[0])).fetchall()
    return dict(rows)


def _assert_refused(done, seconds: float, *needles: str) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert len(lines) == 1, done.stderr
    assert seconds < PREFLIGHT_LIMIT_S, f"refused after {seconds:.0f} s"
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_main_job_trains_one_worker_per_node(two_nodes):
    storage = two_nodes.shared / "storage"
    done, _ = _sweep(two_nodes, "twonode", "--workers-per-trial", "2", "--cpus-per-worker", "1",
                     "--mlflow-uri", two_nodes.tracking_uri, "--storage", str(storage))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    runs = _child_runs(two_nodes, "twonode")
    assert len(runs) == 2 and set(runs.values()) == {"FINISHED"}, runs
    for trial in runs:
        checkpoints = sorted((storage / "twonode" / "train_runs" / trial).glob("checkpoint_*/epoch_*.pt"))
        assert checkpoints and checkpoints[-1].name == "epoch_0002.pt", trial
    assert "| colt " in done.stdout and "| simclr " in done.stdout
    assert (storage / "twonode" / "summary.md").read_text().strip() in done.stdout


def test_unshared_storage_is_refused_before_training(two_nodes):
    done, seconds = _sweep(two_nodes, "unshared", "--mlflow-uri", two_nodes.tracking_uri)
    _assert_refused(done, seconds, "node 10.231.7.2", "--storage")
    assert _child_runs(two_nodes, "unshared") == {}
    assert not list((two_nodes.driver_dir / "ray_results").glob("unshared*/train_runs"))


def test_unshared_storage_is_refused_for_in_process_trials(two_nodes):
    done, seconds = _sweep(two_nodes, "unshared0", "--workers-per-trial", "0", "--mlflow-uri", two_nodes.tracking_uri)
    _assert_refused(done, seconds, "node 10.231.7.2", "--storage")


def test_sqlite_store_is_refused_on_a_cluster(two_nodes):
    done, seconds = _sweep(two_nodes, "sqlite", "--storage", str(two_nodes.shared / "storage"))
    _assert_refused(done, seconds, "--mlflow-uri", "ltray.tracking.server")
    assert not (two_nodes.driver_dir / "mlflow.db").exists()


def test_data_only_on_the_driver_is_refused(two_nodes):
    local_splits = two_nodes.driver_dir / "my_splits"
    if not local_splits.exists():
        shutil.copytree(ROOT / "splits" / "scenes-lt", local_splits)
    done, seconds = _sweep(two_nodes, "localdata", "--set", f"data.splits_dir={local_splits}",
                           "--mlflow-uri", two_nodes.tracking_uri, "--storage", str(two_nodes.shared / "storage"))
    _assert_refused(done, seconds, "node 10.231.7.2", "data.splits_dir", str(local_splits))


def test_failed_controller_ends_the_sweep_with_the_configuration_missing(two_nodes):
    """Every trial's Train controller fails (gloo told to use an interface no node has, as a job's runtime
    environment can): the sweep ends with exit 1, no hang, each configuration listed as missing."""
    job = {"runtime_env": {"env_vars": {"GLOO_SOCKET_IFNAME": "ltraynone0"}}}
    env = two_nodes.env(RAY_JOB_CONFIG_JSON_ENV_VAR=json.dumps(job))
    done, _ = _sweep(two_nodes, "broken", "--workers-per-trial", "2", "--max-failures", "0",
                     "--mlflow-uri", two_nodes.tracking_uri, "--storage", str(two_nodes.shared / "storage"),
                     env=env, timeout=300)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trial failed" in done.stderr
    summary = (two_nodes.shared / "storage" / "broken" / "summary.md").read_text()
    assert "simclr_temperature=0.2_split=1" in summary and "colt_colt.budget=500_temperature=0.2_split=1" in summary
