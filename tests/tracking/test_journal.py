"""The trial journal and its uploader: what a view of the journal says, each record sent once across uploader
sessions (a crashed uploader's successor reads MLflow again), and the outage lines."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ltray.storage import Storage
from ltray.tracking.journal import TRAINING_FILE, TRIAL_FILE, JournalUploader, TrialJournal
from ltray.tracking.runs import TAG_FINAL_KEYS, SweepTracking
from ltray.tracking.server import free_port
from ltray.tracking.store import sqlite_uri

HEADER = {"kind": "run", "name": "t1", "params": {"optim": {"epochs": 3}}, "tags": {"ltray.config_key": "simclr"}}


def _epoch(step: int) -> dict:
    return {"kind": "epoch", "step": step, "metrics": {"loss": 5.0 - step, "lr": 0.1}}


def test_a_view_reads_the_latest_start(tmp_path: Path) -> None:
    journal = TrialJournal(Storage(str(tmp_path / "t1")))
    assert journal.view().header is None and journal.trial == "t1"
    journal.append(TRIAL_FILE, {**HEADER, "parent": "p"}, {"kind": "final", "figures": {"full_all": 1.0}},
                   {"kind": "status", "status": "FINISHED"})
    journal.append(TRAINING_FILE, _epoch(1), _epoch(2))
    view = journal.view()
    assert view.status == "FINISHED" and view.final_figures == {"full_all": 1.0}
    assert view.last_epoch_metrics == {"loss": 3.0, "lr": 0.1}
    journal.append(TRIAL_FILE, {**HEADER, "parent": "p"})  # started again: not finished any more
    assert journal.view().status is None and journal.view().final_figures is None
    with (tmp_path / "t1" / TRAINING_FILE).open("a") as out:
        out.write('{"kind": "epo')  # a line cut short by a crash
    assert len(journal.read(TRAINING_FILE)) == 2


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, str]:
    uri = sqlite_uri(tmp_path / "mlflow.db")
    parent = SweepTracking(uri, "journal-tests").start_parent("sweep", {})
    return uri, parent


@pytest.mark.slow
def test_each_record_reaches_mlflow_once_across_uploaders(tmp_path: Path, store: tuple[str, str]) -> None:
    uri, parent = store
    journal = TrialJournal(Storage(str(tmp_path / "journal" / "t1")))
    (tmp_path / "picks.json").write_text("[1, 2]")
    journal.append(TRIAL_FILE, {**HEADER, "parent": parent})
    journal.append(TRAINING_FILE, _epoch(1), _epoch(2), journal.store_file(tmp_path / "picks.json", "train/picks.json"))
    first = JournalUploader(journal, uri, "journal-tests")
    assert first.sync_once()
    # the trial goes on (epoch 2 trained again after a resume), then a new uploader takes over
    journal.append(TRAINING_FILE, {"kind": "metric", "step": 2, "metrics": {"resumed_at_epoch": 2.0}}, _epoch(2),
                   _epoch(3), journal.store_file(tmp_path / "picks.json", "train/picks.json"))
    journal.append(TRIAL_FILE, {"kind": "final", "figures": {"full_all": 42.0, "few_all": 7.0}},
                   {"kind": "status", "status": "FINISHED"})
    for _ in range(2):
        second = JournalUploader(journal, uri, "journal-tests")
        assert second.sync_once() and second.run_id == first.run_id
    client = MlflowClient(uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params["optim.epochs"] == "3"
    assert run.data.tags["ltray.config_key"] == "simclr" and run.data.tags[TAG_FINAL_KEYS] == '["full_all", "few_all"]'
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")] == [(1, 4.0), (2, 3.0),
                                                                                            (3, 2.0)]
    assert len(client.get_metric_history(first.run_id, "resumed_at_epoch")) == 1
    assert len(client.get_metric_history(first.run_id, "full_all")) == 1
    assert [a.path for a in client.list_artifacts(first.run_id, "train")] == ["train/picks.json"]


@pytest.mark.slow
def test_one_line_when_mlflow_goes_away_and_one_when_it_is_back(tmp_path: Path, store: tuple[str, str]) -> None:
    uri, parent = store
    journal = TrialJournal(Storage(str(tmp_path / "journal" / "t1")))
    journal.append(TRIAL_FILE, {**HEADER, "parent": parent})
    journal.append(TRAINING_FILE, _epoch(1))
    lines: list[str] = []
    uploader = JournalUploader(journal, f"http://127.0.0.1:{free_port()}", "journal-tests", echo=lines.append)
    assert not uploader.drain(2.0)  # nothing listens there: tried, kept, one line
    assert len(lines) == 1 and "is not answering" in lines[0] and "keeps training" in lines[0]
    uploader.tracking_uri = uri  # the tracking server answers again
    assert uploader.drain(10.0)
    assert len(lines) == 2 and "answers again" in lines[1]
    assert [m.step for m in MlflowClient(uri).get_metric_history(uploader.run_id, "loss")] == [1]
