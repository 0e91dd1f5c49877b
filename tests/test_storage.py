"""Sweep storage: the root's precedence and validation, locations on a local disk and on a real S3-compatible
server (moto_server), the preflight's storage checks there, and in-process runs whose checkpoints live in S3."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ltray.cluster.preflight import PreflightError, check_mak_storage, storage_problem, write_marker
from ltray.storage import Storage, resolve_storage
from ltray.cluster.train_worker import TrainSettings, fit_in_process
from ltray.config import load_config
from ltray.errors import ConfigError
from ltray.tracking.journal import TRAINING_FILE, TRIAL_FILE, JournalUploader, TrialJournal

ROOT = Path(__file__).resolve().parents[1]


def test_storage_root_precedence(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LTRAY_STORAGE", raising=False)
    assert resolve_storage(None) == Storage(str(tmp_path / "ray_results"))
    monkeypatch.setenv("LTRAY_STORAGE", "/mnt/ltray")
    assert resolve_storage(None).uri == "/mnt/ltray"
    assert resolve_storage("here").local_path == tmp_path / "here"
    assert resolve_storage(f"file://{tmp_path}/x").uri == str(tmp_path / "x")


def test_storage_that_cannot_be_opened_is_one_line():
    with pytest.raises(ConfigError, match=r"^--storage foo://x/y: not a storage ltray can open \(.*Unrecognized"):
        resolve_storage("foo://x/y")
    with pytest.raises(ConfigError, match="name a bucket"):
        resolve_storage("s3://")


def test_locations_join_and_split_with_their_query_kept():
    root = Storage("s3://bucket/sweeps?endpoint_override=h:9000&scheme=http")
    run = root.child("colt", "train_runs")
    assert run.uri == "s3://bucket/sweeps/colt/train_runs?endpoint_override=h:9000&scheme=http"
    assert run.parent.parent == root and run.name == "train_runs" and run.fs_path == "bucket/sweeps/colt/train_runs"
    assert not run.is_local and Storage("/data/x").child("y").uri == "/data/x/y"
    with pytest.raises(ValueError, match="not a local path"):
        run.local_path


@pytest.mark.slow
def test_files_on_s3(s3_storage, tmp_path):
    root = resolve_storage(s3_storage + "/")
    assert root.uri == s3_storage and not root.exists() and root.children() == []
    root.child("a", "summary.md").write_text("| x |\n")
    assert root.is_dir() and root.children() == ["a"] and root.child("a", "summary.md").read_text() == "| x |\n"
    (tmp_path / "w.bin").write_bytes(b"\0\1")
    root.child("a", "c", "w.bin").upload(tmp_path / "w.bin")
    root.child("a", "c", "w.bin").download(tmp_path / "back" / "w.bin")
    assert (tmp_path / "back" / "w.bin").read_bytes() == b"\0\1"
    root.child("a", "c", "w.bin").delete()
    assert not root.child("a", "c", "w.bin").exists()


@pytest.mark.slow
def test_preflight_storage_checks_on_s3(s3_storage):
    root = resolve_storage(s3_storage)
    marker, text = write_marker(root)
    assert storage_problem(root, marker.name, text) is None
    assert root.children() == [marker.name]  # the write probe is gone
    assert "is not shared" in storage_problem(root, marker.name, "other")
    missing_bucket = Storage(s3_storage.replace("s3://ltray-", "s3://none-"))
    with pytest.raises(PreflightError, match=r"^the storage root is not writable from the driver \(s3://none-.*"):
        write_marker(missing_bucket)


def test_mak_trials_need_a_path():
    mak = load_config(ROOT / "ltray" / "configs" / "embedded_simclr.yaml", {"method.name": "mak"})
    check_mak_storage([mak], Storage("/shared/sweeps"))
    with pytest.raises(PreflightError, match="MAK's pool and selection are folders"):
        check_mak_storage([mak], Storage("s3://bucket/sweeps"))
    check_mak_storage([mak.replace({"data.extra_data": "/shared/selection"})], Storage("s3://bucket/sweeps"))


@pytest.mark.slow
def test_in_process_run_on_s3_keeps_its_newest_checkpoints_there_and_resumes(s3_storage, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = client.create_run(client.create_experiment("s3")).info.run_id
    journal = TrialJournal(resolve_storage(s3_storage).child("tracking", "trial_a"))
    journal.append(TRIAL_FILE, {"kind": "run", "parent": parent, "name": "trial_a", "params": {}, "tags": {}})
    settings = TrainSettings(storage_path=f"{s3_storage}/train_runs", workers=0, keep_checkpoints=2)

    def config(epochs: int):
        return load_config(ROOT / "ltray" / "configs" / "digits_tiny.yaml", {
            "optim.epochs": epochs, "optim.batch_size": 64, "optim.warmup_epochs": 1, "run.checkpoint_every": 1})

    assert fit_in_process(config(2), "trial_a", settings, journal).metrics["epoch"] == 2.0
    run = Storage(settings.storage_path).child("trial_a")
    assert run.child("checkpoints").children() == ["epoch_0001.pt", "epoch_0002.pt"]
    second = fit_in_process(config(3), "trial_a", settings, journal)
    assert second.metrics["epoch"] == 3.0
    assert run.child("checkpoints").children() == ["epoch_0002.pt", "epoch_0003.pt"]
    assert len(run.child("metrics.jsonl").read_text().splitlines()) == 3
    with second.checkpoint.as_directory() as folder:
        assert sorted(p.name for p in Path(folder).iterdir()) == ["epoch_0002.pt", "epoch_0003.pt"]
    assert [r["step"] for r in journal.read(TRAINING_FILE) if r["kind"] == "epoch"] == [1, 2, 3]
    uploader = JournalUploader(journal, uri, "s3")
    assert uploader.sync_once()
    run_id = uploader.run_id
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2, 3]
    assert [m.value for m in client.get_metric_history(run_id, "resumed_at_epoch")] == [2.0]
    assert not (tmp_path / "s3:").exists()  # nothing went through pathlib on the URI
