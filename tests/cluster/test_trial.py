"""A trial's tracking side without Ray: its journal (run header, final figures, evaluation artifacts) and the child
run the uploader makes of it (new, resumed, finished), against an embedded SQLite store (slow: creating the store
takes several seconds)."""

from __future__ import annotations

import json

import pytest

from ltray.cluster.grid import SweepSpec, expand_trials
from ltray.cluster.trial import EVAL_REPORT, journal_evaluation, journal_start, trial_tags
from ltray.config import Config
from ltray.storage import Storage
from ltray.tracking.journal import TRIAL_FILE, JournalUploader, TrialJournal
from ltray.tracking.runs import TAG_CONFIG_KEY, TAG_FINAL_KEYS, TAG_PARENT, TAG_REFERENCE_BACKED, SweepTracking
from ltray.tracking.store import sqlite_uri


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> SweepTracking:
    return SweepTracking(sqlite_uri(tmp_path_factory.mktemp("store") / "mlflow.db"), "trial-tests")


def _trial(method: str = "colt+gh", split: int = 3):
    spec = SweepSpec(name="s", experiment="e", base=Config(),
                     axes={"method.name": [method], "method.temperature": [0.3], "data.split": [split]})
    return expand_trials(spec)[0]


def _report() -> dict:
    return {
        "figures": {"full_all": 50.0, "full_many": 70.0, "full_medium": 50.0, "full_few": 30.0,
                    "full_group_std": 0.1633, "few_all": 20.0, "shot10_all": 25.0},
        "per_class": {"full": [70.0, 50.0, 30.0], "few": [20.0, 20.0, 20.0]},
        "pretrain_counts": [100, 30, 5],
        "groups": {"many": [0], "medium": [1], "few": [2]},
        "class_names": ["a", "b", "c"],
        "protocol": "sdclr_sgd",
        "grouping": "thirds",
    }


def test_tags_name_method_split_configuration_and_backing():
    trial = _trial()
    tags = trial_tags(trial.build_config(), trial)
    assert tags["ltray.method"] == "colt+gh" and tags["ltray.split"] == "3" and tags["ltray.dataset"] == "scenes-lt"
    assert tags[TAG_REFERENCE_BACKED] == "false"
    assert tags[TAG_CONFIG_KEY] == "colt+gh temperature:0.3"
    assert _trial("colt").config_key == "colt temperature:0.3"
    assert trial_tags(_trial("colt").build_config(), _trial("colt"))[TAG_REFERENCE_BACKED] == "true"
    # the driver's commit wins: trial processes may run from a copy of the code without .git
    assert trial_tags(trial.build_config(), trial, "f00d")["mlflow.source.git.commit"] == "f00d"


def _send(tracking: SweepTracking, journal: TrialJournal) -> str:
    uploader = JournalUploader(journal, tracking.tracking_uri, tracking.experiment_name)
    assert uploader.sync_once()
    return uploader.run_id


@pytest.mark.slow
def test_child_run_is_created_once_then_resumed_then_finished(tracking, tmp_path):
    parent = tracking.start_parent("sweep-a", {"x": 1})
    trial = _trial()
    cfg = trial.build_config()
    journal = TrialJournal(Storage(str(tmp_path / "journal")))
    journal_start(journal, parent, trial, cfg)
    run_id = _send(tracking, journal)
    run = tracking.client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags[TAG_PARENT] == parent and run.data.tags["ltray.trial"] == trial.name
    assert run.data.params["method.temperature"] == "0.3" and run.data.params["data.split"] == "3"

    journal.append(TRIAL_FILE, {"kind": "status", "status": "KILLED"})
    assert _send(tracking, journal) == run_id and tracking.client.get_run(run_id).info.status == "KILLED"
    journal_start(journal, parent, trial, cfg)  # the trial starts again: same run, RUNNING again
    assert journal.view().status is None
    assert _send(tracking, journal) == run_id and tracking.client.get_run(run_id).info.status == "RUNNING"

    figures = journal_evaluation(journal, _report())
    journal.append(TRIAL_FILE, {"kind": "status", "status": "FINISHED"})
    assert figures == _report()["figures"] and journal.view().final_figures == figures
    assert _send(tracking, journal) == run_id
    run = tracking.client.get_run(run_id)
    assert run.info.status == "FINISHED" and json.loads(run.data.tags[TAG_FINAL_KEYS]) == list(figures)
    assert len(tracking.client.search_runs([tracking.experiment_id],
                                           filter_string=f"tags.`{TAG_PARENT}` = '{parent}'")) == 1


@pytest.mark.slow
def test_evaluation_artifacts(tracking, tmp_path):
    parent = tracking.start_parent("sweep-b", {"x": 1})
    trial = _trial("simclr", 1)
    journal = TrialJournal(Storage(str(tmp_path / "journal")))
    journal_start(journal, parent, trial, trial.build_config())
    journal_evaluation(journal, _report())
    run_id = _send(tracking, journal)
    assert {item.path for item in tracking.client.list_artifacts(run_id)} == {"per_class.csv", "per_class.png",
                                                                                EVAL_REPORT}
    table = tracking.client.download_artifacts(run_id, "per_class.csv", str(tmp_path))
    lines = open(table).read().splitlines()
    assert lines[0] == "class_id,class_name,group,train_count,accuracy"
    assert lines[3] == "2,c,few,5,30.0"
    report = json.loads(open(tracking.client.download_artifacts(run_id, EVAL_REPORT, str(tmp_path))).read())
    assert report["per_class"]["few"] == [20.0, 20.0, 20.0]
