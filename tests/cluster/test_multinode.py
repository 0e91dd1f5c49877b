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
         "--set", "eval.kshot_draws=1", "--set", "eval.probe_augment=false"]
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


def _loss_histories(cluster, sweep: str) -> dict[str, list[tuple[int, float]]]:
    """trial name -> [(epoch, loss)] of the sweep's child runs, from the server's store."""
    db = cluster.shared / "mlflow" / "mlflow.db"
    histories: dict[str, list[tuple[int, float]]] = {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        for name in _child_runs(cluster, sweep):
            rows = connection.execute(
                "SELECT metrics.step, metrics.value FROM metrics JOIN runs ON runs.run_uuid = metrics.run_uuid "
                "JOIN tags ON tags.run_uuid = runs.run_uuid WHERE runs.name = ? AND metrics.key = 'loss' "
                "AND tags.key = ? AND tags.value = ? ORDER BY metrics.step", (name, TAG_SWEEP, sweep)).fetchall()
            histories[name] = [(int(step), float(value)) for step, value in rows]
    return histories


def _train_worker_nodes(cluster) -> dict[str, set[str]]:
    """placement group -> the nodes its Ray Train workers ran on, for every worker the cluster has had."""
    code = ("import json; from ray.util.state import list_actors; "
            "actors = list_actors(address=%r, filters=[('class_name', '=', 'RayTrainWorker')], detail=True, "
            "limit=10000, raise_on_missing_output=False); "
            "print(json.dumps([[a.placement_group_id, a.node_id] for a in actors]))" % cluster.address)
    done = cluster.run_on_head([sys.executable, "-c", code], timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    groups: dict[str, set[str]] = {}
    for group, node in json.loads(done.stdout.strip().splitlines()[-1]):
        groups.setdefault(group, set()).add(node)
    return groups


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
    groups_before = _train_worker_nodes(two_nodes)
    done, _ = _sweep(two_nodes, "twonode", "--workers-per-trial", "2", "--cpus-per-worker", "1",
                     "--mlflow-uri", two_nodes.tracking_uri, "--storage", str(storage))
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    groups = {g: nodes for g, nodes in _train_worker_nodes(two_nodes).items() if g not in groups_before}
    assert len(groups) >= 2 and all(len(nodes) == 2 for nodes in groups.values()), groups  # one worker per node
    runs = _child_runs(two_nodes, "twonode")
    assert len(runs) == 2 and set(runs.values()) == {"FINISHED"}, runs
    for trial in runs:
        checkpoints = sorted((storage / "twonode" / "train_runs" / trial).glob("checkpoint_*/epoch_*.pt"))
        assert checkpoints and checkpoints[-1].name == "epoch_0002.pt", trial
    assert "| colt " in done.stdout and "| simclr " in done.stdout
    comparison = (storage / "twonode" / "summary.md").read_text().split("\n## ", 1)[0].strip()
    assert done.stdout.strip().endswith(comparison)  # the comparison table comes last
    assert "Traceback" not in done.stdout and "TrainingReport(" not in done.stdout
    assert len(done.stdout.splitlines()) <= 100
    assert (storage / "twonode" / "console.log").is_file()


def _s3_files(cluster, uri: str) -> list[str]:
    """Every object under `uri`, listed from the head node (the test process is outside the cluster's network)."""
    code = ("import json, pyarrow.fs as f; fs, path = f.FileSystem.from_uri(%r); "
            "print(json.dumps([i.path for i in fs.get_file_info(f.FileSelector(path, recursive=True))]))" % uri)
    done = cluster.run_on_head([sys.executable, "-c", code], timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _s3_text(cluster, uri: str) -> str:
    code = "import pyarrow.fs as f; fs, path = f.FileSystem.from_uri(%r); print(fs.open_input_stream(path).read().decode())"
    done = cluster.run_on_head([sys.executable, "-c", code % uri], timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_main_job_with_storage_on_s3(two_nodes):
    """The same sweep with its storage on an S3-compatible server on the head: checkpoints, Tune's state and the
    summary are objects in the bucket; nothing is written to a local `s3:` folder. Its SimCLR trial runs two
    workers of half a CPU each, packed by Ray Train onto one node, which gives the one-node side of the loss
    comparison below."""
    storage = two_nodes.start_s3("ltray-sweeps")
    groups_before = _train_worker_nodes(two_nodes)
    done, _ = _sweep(two_nodes, "twonode-s3", "--workers-per-trial", "2", "--cpus-per-worker", "0.5",
                     "--axis", "method.name=simclr", "--mlflow-uri", two_nodes.tracking_uri, "--storage", storage)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    groups = {g: nodes for g, nodes in _train_worker_nodes(two_nodes).items() if g not in groups_before}
    assert groups and all(len(nodes) == 1 for nodes in groups.values()), groups  # both workers on one node
    runs = _child_runs(two_nodes, "twonode-s3")
    assert len(runs) == 1 and set(runs.values()) == {"FINISHED"}, runs
    files = _s3_files(two_nodes, storage)
    for trial in runs:
        checkpoints = sorted(path for path in files if f"/twonode-s3/train_runs/{trial}/checkpoint_" in path
                             and path.endswith(".pt"))
        assert checkpoints and checkpoints[-1].endswith("/epoch_0002.pt"), (trial, files)
    assert "ltray-sweeps/sweeps/twonode-s3/tuner.pkl" in files
    assert f"{storage}/twonode-s3/summary.md" in done.stdout
    assert done.stdout.strip().endswith(_s3_text(two_nodes, f"{storage}/twonode-s3/summary.md").split("\n## ")[0].strip())
    assert "ltray-sweeps/sweeps/twonode-s3/console.log" in files
    assert not (two_nodes.driver_dir / "s3:").exists()


def test_two_workers_give_the_same_losses_across_nodes_and_on_one_node(two_nodes):
    """The two sweeps above train the same SimCLR trial with two DDP workers: one worker per node over the veth
    link, and both workers on one node. Every epoch's loss is the same."""
    across, one_node = _loss_histories(two_nodes, "twonode"), _loss_histories(two_nodes, "twonode-s3")
    if not across or not one_node:
        pytest.skip("needs the two main-job sweeps of this module (run the whole module)")
    assert list(one_node) == ["simclr_temperature=0.2_split=1"] and set(one_node) < set(across)
    for trial, history in one_node.items():
        assert [epoch for epoch, _ in history] == [1, 2], history
        assert [loss for _, loss in across[trial]] == pytest.approx([loss for _, loss in history], rel=1e-6), trial


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
        shutil.copytree(ROOT / "ltray" / "splits" / "scenes-lt", local_splits)
    done, seconds = _sweep(two_nodes, "localdata", "--set", f"data.splits_dir={local_splits}",
                           "--mlflow-uri", two_nodes.tracking_uri, "--storage", str(two_nodes.shared / "storage"))
    _assert_refused(done, seconds, "node 10.231.7.2", "data.splits_dir", str(local_splits))


def test_failed_controller_ends_the_sweep_with_the_configuration_missing(two_nodes):
    """The COLT trial's Train controller fails (gloo told to use an interface no node has, as a job's runtime
    environment can): the sweep ends with exit 1, no hang, the configuration listed as missing."""
    job = {"runtime_env": {"env_vars": {"GLOO_SOCKET_IFNAME": "ltraynone0"}}}
    # a trial whose failed run left resources held waits at most this long (ltray's own clean-up usually frees them)
    env = two_nodes.env(RAY_JOB_CONFIG_JSON_ENV_VAR=json.dumps(job), LTRAY_TRIAL_RESOURCE_TIMEOUT_S="60")
    done, _ = _sweep(two_nodes, "broken", "--workers-per-trial", "2", "--max-failures", "0", "--axis", "method.name=colt",
                     "--mlflow-uri", two_nodes.tracking_uri, "--storage", str(two_nodes.shared / "storage"),
                     env=env, timeout=300)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trial failed" in done.stderr
    summary = (two_nodes.shared / "storage" / "broken" / "summary.md").read_text()
    assert "colt_colt.budget=500_temperature=0.2_split=1" in summary
