"""In-process trials (`workers_per_trial: 0`): the run trains in the calling process, keeps its newest checkpoints
in the storage folder, continues from them when started again, and its journal gives MLflow each epoch once; through a real
sweep (`experiments/benchmark_embedded.py` on a tiny digits-lt grid with a balanced-set extra trial) it produces
finished child runs and the results page."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ltray.cluster.grid import TrialResources
from ltray.cluster.train_worker import TrainSettings, fit_in_process, fit_training
from ltray.config import load_config
from ltray.errors import ConfigError
from ltray.storage import Storage
from ltray.tracking.journal import TRIAL_FILE, JournalUploader, TrialJournal

ROOT = Path(__file__).resolve().parents[2]


def _config(epochs: int):
    return load_config(ROOT / "ltray" / "configs" / "digits_tiny.yaml", {
        "optim.epochs": epochs, "optim.batch_size": 64, "optim.warmup_epochs": 1, "run.checkpoint_every": 1,
    })


def test_in_process_run_resumes_from_its_storage_and_logs_each_epoch_once(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    client.create_experiment("in-process")
    parent = client.create_run(client.get_experiment_by_name("in-process").experiment_id).info.run_id
    journal = TrialJournal(Storage(str(tmp_path / "journal")))
    journal.append(TRIAL_FILE, {"kind": "run", "parent": parent, "name": "trial_a", "params": {}, "tags": {}})
    settings = TrainSettings(storage_path=str(tmp_path / "train_runs"), workers=0, keep_checkpoints=2)

    first = fit_in_process(_config(2), "trial_a", settings, journal)
    assert first.metrics["epoch"] == 2.0
    uploader = JournalUploader(journal, uri, "in-process")
    assert uploader.sync_once()
    second = fit_training(_config(4), "trial_a", settings, journal)  # dispatches to the in-process path
    assert second.metrics["epoch"] == 4.0
    folder = tmp_path / "train_runs" / "trial_a" / "checkpoints"
    assert sorted(p.name for p in folder.glob("epoch_*.pt")) == ["epoch_0003.pt", "epoch_0004.pt"]
    with second.checkpoint.as_directory() as path:
        assert Path(path) == folder
    assert uploader.sync_once()
    run_id = uploader.run_id
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(steps) == [1, 2, 3, 4]
    assert [m.value for m in client.get_metric_history(run_id, "resumed_at_epoch")] == [2.0]


def test_in_process_resources():
    resources = TrialResources(workers=0, cpus_per_worker=0.5)
    assert resources.in_process and resources.cpus == 0.5
    with pytest.raises(ConfigError, match=">= 0"):
        TrialResources(workers=-1)


@pytest.mark.slow
def test_benchmark_script_in_process_writes_results(ray_head, tmp_path, sweep_name, tiny_sweep, sweep_script):
    config = tiny_sweep(tmp_path, splits=(1, 2), epochs=2, extra_axes="extra_trials:\n  - {data.subset: D_b}")
    results = tmp_path / "results.md"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["--config", str(config), "--address", "auto", "--mlflow-uri", uri, "--name", sweep_name,
            "--storage", str(tmp_path / "storage"), "--workers-per-trial", "0", "--cpus-per-worker", "0.5",
            "--results", str(results), "-v"]
    done = sweep_script("benchmark_embedded.py", args, ray_head.env(), tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "trained in the trial's process" in done.stdout
    assert "Trial status:" in done.stdout  # -v: Tune's own tables on the console too
    page = results.read_text()
    assert "| simclr | 2 |" in page and "| simclr subset:D_b | 2 |" in page
    assert "## Differences to SimCLR, paired by split" in page
    assert "## Per-class accuracy of SimCLR features" in page
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("ltray-tests")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`ltray.sweep` = '{sweep_name}'")
    children = [r for r in runs if r.data.tags.get("ltray.role") == "child"]
    assert len(children) == 4 and all(r.info.status == "FINISHED" for r in children)
    parent = next(r for r in runs if r.data.tags.get("ltray.role") == "parent")
    assert "results.md" in [a.path for a in client.list_artifacts(parent.info.run_id)]
    checkpoints = list((tmp_path / "storage" / sweep_name / "train_runs").glob("*/checkpoints/epoch_*.pt"))
    assert checkpoints and all(p.name in ("epoch_0001.pt", "epoch_0002.pt") for p in checkpoints)
