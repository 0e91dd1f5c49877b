"""A Ray Train worker process killed mid-training (SIGKILL, a real process death): FailureConfig restarts the
worker group, the workers resume from the last reported checkpoint, and the trial's journal, sent by its uploader
while training runs, gives one MLflow run with every epoch's metrics exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ltray.cluster.train_worker import RESUME_KEY, TrainSettings, fit_training
from ltray.config import load_config
from ltray.storage import Storage
from ltray.tracking.journal import TRIAL_FILE, JournalUploader, TrialJournal
from ltray.tracking.runs import SweepTracking
from ltray.train.checkpoint import latest_checkpoint, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
EPOCHS = 6


def _worker_pids() -> list[int]:
    import ray
    from ray.util.state import list_actors

    # the connected cluster's address: Ray would otherwise look for a cluster on the machine by itself
    actors = list_actors(address=ray.get_runtime_context().gcs_address,
                         filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    return sorted(int(actor.pid) for actor in actors if actor.pid)


@pytest.mark.slow
def test_killed_worker_resumes_same_run_every_epoch_once(connected, mlflow_server, tmp_path, experiment_name):
    cfg = load_config(
        ROOT / "ltray" / "configs" / "digits_tiny.yaml",
        {"optim.epochs": EPOCHS, "optim.batch_size": 64, "run.checkpoint_every": 2, "run.name": "fault"},
    )
    tracking = SweepTracking(mlflow_server.tracking_uri, experiment_name)
    parent = tracking.start_parent("fault-sweep", {"case": "killed worker"})
    journal = TrialJournal(Storage(str(tmp_path / "journal" / "fault")))
    journal.append(TRIAL_FILE, {"kind": "run", "parent": parent, "name": "fault", "params": cfg.to_dict(), "tags": {}})
    uploader = JournalUploader(journal, tracking.tracking_uri, experiment_name).start()
    settings = TrainSettings(storage_path=str(tmp_path / "train"), workers=2, cpus_per_worker=0.5, max_failures=1)
    outcome: dict[str, object] = {}

    def train() -> None:
        try:
            outcome["result"] = fit_training(cfg, "fault", settings, journal)
        except BaseException as error:  # reported by the assertion below
            outcome["error"] = error

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    client = MlflowClient(mlflow_server.tracking_uri)
    deadline = time.monotonic() + 240
    killed: list[int] = []
    while thread.is_alive() and time.monotonic() < deadline and not killed:
        steps = {record["step"] for record in journal.view().training_records if record["kind"] == "epoch"}
        if max(steps, default=0) >= 3:
            pids = _worker_pids()
            assert len(pids) == 2
            os.kill(pids[0], signal.SIGKILL)
            killed.append(pids[0])
        time.sleep(0.1)
    thread.join(timeout=300)
    assert not thread.is_alive(), "training did not finish"
    assert "error" not in outcome, repr(outcome.get("error"))
    assert killed, "training finished before a worker could be killed"
    assert uploader.drain(60.0)
    run_id = uploader.run_id

    history = client.get_metric_history(run_id, "loss")
    assert sorted(metric.step for metric in history) == list(range(1, EPOCHS + 1))
    resumes = client.get_metric_history(run_id, RESUME_KEY)
    assert len(resumes) == 1 and resumes[0].value in (2.0, 4.0, 6.0)
    experiment = client.get_experiment_by_name(experiment_name)
    assert len(client.search_runs([experiment.experiment_id])) == 2

    result = outcome["result"]
    with result.checkpoint.as_directory() as folder:
        state = load_checkpoint(latest_checkpoint(Path(folder)))
    assert state["epoch"] == EPOCHS
    assert [int(entry["epoch"]) for entry in state["history"]] == list(range(1, EPOCHS + 1))
