"""A real MLflow server whose process group is killed in the middle of a sweep (`experiments/sweep_colt.py`-style
script on the session's Ray head, tiny digits-lt sweeps of in-process trials): the trial trains on, its records
wait in its journal and reach MLflow once the server is back; a server that never comes back ends the sweep with
exit 3 and one line, and `ltray sync` sends the rest later."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ltray.tracking.runs import ROLE_CHILD, TAG_ROLE, TAG_SWEEP
from ltray.tracking.server import MlflowServer, free_port
from tests.cluster.conftest import PYTHON, ROOT

pytestmark = pytest.mark.slow

EPOCHS = 12
KILL_AT_EPOCH = 3
OUTAGE_S = 60.0
SHORT_EPOCHS = 6  # the never-back case: the outage only has to start before training ends


def _start_sweep(config: Path, name: str, uri: str, storage: Path, env: dict[str, str], cwd: Path,
                 log: Path, *extra: str) -> subprocess.Popen[str]:
    args = [PYTHON, str(ROOT / "experiments" / "sweep_colt.py"), "--config", str(config), "--address", "auto",
            "--mlflow-uri", uri, "--name", name, "--storage", str(storage), "--workers-per-trial", "0", *extra]
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)


def _children(client: MlflowClient, sweep: str) -> list:
    experiment = client.get_experiment_by_name("ltray-tests")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id],
                              filter_string=f"tags.`{TAG_SWEEP}` = '{sweep}' and tags.`{TAG_ROLE}` = '{ROLE_CHILD}'")


def _child(client: MlflowClient, sweep: str):
    runs = _children(client, sweep)
    return runs[0] if runs else None


def _loss_steps(client: MlflowClient, run_id: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "loss"))


def _wait_for(condition, sweep_process, what: str, timeout_s: float = 300.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and sweep_process.poll() is None:
        found = condition()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{what} never happened (sweep exit {sweep_process.poll()})")


def test_a_server_back_after_a_minute_loses_nothing(ray_head, tmp_path, tiny_sweep):
    """Two trials one after the other: the first runs undisturbed (its time, from the sweep's start, is the
    uninterrupted time); during the second the server's process group is killed at epoch 3 and started again on
    the same store 60 s later."""
    config = tiny_sweep(tmp_path, splits=(1, 2), epochs=EPOCHS)
    port = free_port()
    server = MlflowServer(tmp_path / "store", port=port, startup_timeout_s=180.0)
    uri = server.start()
    try:
        log = tmp_path / "outage.log"
        started = time.monotonic()
        sweep = _start_sweep(config, "outage", uri, tmp_path / "storage", ray_head.env(), tmp_path, log,
                             "--max-concurrent", "1")
        client = MlflowClient(uri)

        def second_at_kill_epoch():
            runs = _children(client, "outage")
            finished = [r for r in runs if r.info.status == "FINISHED"]
            running = [r for r in runs if r.info.status == "RUNNING"]
            if finished and running and max(_loss_steps(client, running[0].info.run_id), default=0) >= KILL_AT_EPOCH:
                return finished[0], running[0]
            return None

        first_done = _wait_for(lambda: any(r.info.status == "FINISHED" for r in _children(client, "outage")),
                               sweep, "the first trial's end") and time.monotonic()
        _, second = _wait_for(second_at_kill_epoch, sweep, f"epoch {KILL_AT_EPOCH} of the second trial")
        server.kill()
        time.sleep(OUTAGE_S)
        server = MlflowServer(tmp_path / "store", port=port, startup_timeout_s=180.0)
        server.start()
        code = sweep.wait(timeout=600)
        second_took, uninterrupted = time.monotonic() - first_done, first_done - started
        output = log.read_text()
        assert code == 0, output[-3000:]
        assert second_took <= uninterrupted + 120, (second_took, uninterrupted)
        second = client.get_run(second.info.run_id)
        assert second.info.status == "FINISHED"
        assert _loss_steps(client, second.info.run_id) == list(range(1, EPOCHS + 1))
        assert {a.path for a in client.list_artifacts(second.info.run_id)} >= {"per_class.csv", "per_class.png",
                                                                              "eval_report.json"}
        assert output.count("is not answering") == 1 and output.count("answers again") == 1, output[-3000:]
        assert "Traceback" not in output
    finally:
        server.stop()


def test_a_server_that_never_comes_back_ends_with_one_line_and_ltray_sync_sends_the_rest(ray_head, tmp_path,
                                                                                          tiny_sweep):
    config = tiny_sweep(tmp_path, splits=(1,), epochs=SHORT_EPOCHS)
    port = free_port()
    server = MlflowServer(tmp_path / "store", port=port, startup_timeout_s=180.0)
    uri = server.start()
    storage = tmp_path / "storage"
    env = {**ray_head.env(), "LTRAY_TRACKING_WAIT_S": "5"}
    try:
        log = tmp_path / "gone.log"
        sweep = _start_sweep(config, "gone", uri, storage, env, tmp_path, log)
        client = MlflowClient(uri)
        _wait_for(lambda: (child := _child(client, "gone")) is not None
                  and max(_loss_steps(client, child.info.run_id), default=0) >= KILL_AT_EPOCH,
                  sweep, f"epoch {KILL_AT_EPOCH}")
        server.kill()
        final = storage / "gone" / "train_runs"
        trained_at = None
        while sweep.poll() is None:
            if trained_at is None and list(final.glob(f"*/checkpoints/epoch_{SHORT_EPOCHS:04d}.pt")):
                trained_at = time.monotonic()
            time.sleep(0.2)
        ended_at = time.monotonic()
        output = log.read_text()
        assert trained_at is not None, "training never reached its final checkpoint"
        assert sweep.returncode == 3, output[-3000:]
        assert ended_at - trained_at < 180
        errors = [line for line in output.splitlines() if line.startswith("sweep_colt.py: error:")]
        assert len(errors) == 1 and uri in errors[0] and "ltray sync --sweep gone" in errors[0], output[-3000:]
        assert "Traceback" not in output
        assert (storage / "gone" / "summary.md").is_file()

        server = MlflowServer(tmp_path / "store", port=port, startup_timeout_s=180.0)
        server.start()
        sync = [PYTHON, "-m", "ltray.cli", "sync", "--sweep", "gone", "--storage", str(storage)]
        done = subprocess.run(sync, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        child = _child(client, "gone")
        assert child.info.status == "FINISHED"
        assert _loss_steps(client, child.info.run_id) == list(range(1, SHORT_EPOCHS + 1))
        again = subprocess.run(sync, env=env, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout + again.stderr
        assert _loss_steps(client, child.info.run_id) == list(range(1, SHORT_EPOCHS + 1))
        assert len(client.get_metric_history(child.info.run_id, "full_all")) == 1
    finally:
        server.stop()

