"""A sweep's journals sent as a whole (`sync_sweep`, `ltray sync`): finished and never-ended trials, the parent's
summary and status, a second sync that changes nothing, and one line with exit 3 while MLflow is unreachable."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ltray.cli import main
from ltray.storage import Storage
from ltray.tracking.journal import TRAINING_FILE, TRIAL_FILE, TrialJournal, journal_folder
from ltray.tracking.runs import TAG_PARENT, SweepTracking
from ltray.tracking.server import free_port
from ltray.tracking.store import sqlite_uri
from ltray.tracking.sync import SweepRecord, journal_summary_rows, write_sweep_record

GRID = {"simclr_split=1": "simclr", "simclr_split=2": "simclr", "colt_split=1": "colt"}


def _sweep(tmp_path: Path) -> tuple[Storage, SweepRecord]:
    """A sweep that ended while MLflow was down: simclr split 1 finished, split 2 started and never ended, COLT
    never started."""
    uri = sqlite_uri(tmp_path / "mlflow.db")
    tracking = SweepTracking(uri, "sync-tests")
    parent = tracking.start_parent("swp", {})
    sweep_dir = Storage(str(tmp_path / "storage" / "swp"))
    for trial, figures in (("simclr_split=1", {"full_all": 60.0, "full_few": 40.0}), ("simclr_split=2", None)):
        journal = TrialJournal(journal_folder(sweep_dir, trial))
        journal.append(TRIAL_FILE, {"kind": "run", "parent": parent, "name": trial, "params": {"x": 1},
                                    "tags": {"ltray.config_key": GRID[trial]}})
        journal.append(TRAINING_FILE, *({"kind": "epoch", "step": s, "metrics": {"loss": 1.0 / s}} for s in (1, 2)))
        if figures is not None:
            journal.append(TRIAL_FILE, {"kind": "final", "figures": figures}, {"kind": "status", "status": "FINISHED"})
    record = SweepRecord("swp", "sync-tests", uri, parent, GRID, status="FAILED")
    write_sweep_record(sweep_dir, record)
    return sweep_dir, record


def test_the_summary_comes_from_the_journals(tmp_path: Path) -> None:
    sweep_dir, _ = _sweep(tmp_path)
    rows = dict(journal_summary_rows(sweep_dir, GRID))
    assert rows["simclr"]["n_runs"] == 1 and rows["simclr"]["missing"] == ["simclr_split=2"]
    assert rows["colt"]["n_runs"] == 0 and rows["colt"]["missing"] == ["colt_split=1"]


@pytest.mark.slow
def test_ltray_sync_sends_everything_once_and_closes_what_never_ended(tmp_path: Path, capsys) -> None:
    sweep_dir, record = _sweep(tmp_path)
    storage = str(tmp_path / "storage")
    dead = f"http://127.0.0.1:{free_port()}"
    capsys.readouterr()  # MLflow's own start-up lines
    assert main(["sync", "--sweep", "swp", "--storage", storage, "--mlflow-uri", dead]) == 3
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and dead in error and "ltray sync again" in error

    assert main(["sync", "--sweep", "swp", "--storage", storage]) == 0  # the sweep's own tracking URI
    assert "2 trial run(s) and the summary are in MLflow" in capsys.readouterr().out
    client = MlflowClient(record.tracking_uri)

    def state() -> dict:
        runs = client.search_runs([client.get_experiment_by_name("sync-tests").experiment_id],
                                  filter_string=f"tags.`{TAG_PARENT}` = '{record.parent_run_id}'")
        parent = client.get_run(record.parent_run_id)
        return {"runs": {r.info.run_name: (r.info.status, len(client.get_metric_history(r.info.run_id, "loss")))
                         for r in runs},
                "parent": (parent.info.status, dict(parent.data.metrics),
                           sorted(a.path for a in client.list_artifacts(record.parent_run_id))),
                "history": len(client.get_metric_history(record.parent_run_id, "n_runs"))}

    first = state()
    assert first["runs"] == {"simclr_split=1": ("FINISHED", 2), "simclr_split=2": ("KILLED", 2)}
    assert first["parent"][0] == "FAILED" and "summary.md" in first["parent"][2]
    assert (sweep_dir.local_path / "summary.md").read_text() == Path(client.download_artifacts(
        record.parent_run_id, "summary.md", str(tmp_path))).read_text()
    assert main(["sync", "--sweep", "swp", "--storage", storage]) == 0
    assert state() == first


def test_sync_of_an_unknown_sweep_is_one_line(tmp_path: Path, capsys) -> None:
    assert main(["sync", "--sweep", "nope", "--storage", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no sweep at" in error
