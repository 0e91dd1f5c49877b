"""Sending a whole sweep's journals to MLflow: by the sweep's driver when its trials are done, and later by
`ltray sync --sweep NAME` when MLflow was unreachable then.

The sweep keeps `<storage>/<sweep>/tracking/sweep.json`: its name, experiment, tracking URI, parent run, grid
(trial -> configuration key) and, once it ended, its status. A sync sends every trial's journal
(`ltray.tracking.journal.JournalUploader`: what MLflow already holds is skipped, so a second sync sends nothing),
closes the runs of trials that started but never ended (KILLED), then attaches the summary to the parent run and
ends the parent with the sweep's status. The summary is computed from the journals, so a sweep prints and stores
its table even while MLflow is down.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from ltray.errors import ConfigError
from ltray.storage import Storage
from ltray.tracking.journal import (
    JOURNAL_FOLDER,
    POLL_S,
    RETRY_MAX_S,
    TRIAL_FILE,
    Echo,
    JournalUploader,
    JournalView,
    TrackingUnavailable,
    TrialJournal,
    echo_line,
    journal_folder,
    log_stored_artifact,
)

SWEEP_RECORD = "sweep.json"
WAIT_ENV = "LTRAY_TRACKING_WAIT_S"
DEFAULT_WAIT_S = 60.0


def tracking_wait_s() -> float:
    """How long a trial, and then the sweep, waits at its end for an unreachable MLflow: `$LTRAY_TRACKING_WAIT_S`,
    default 60 s."""
    import os

    text = os.environ.get(WAIT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_WAIT_S
    except ValueError:
        raise ConfigError(f"${WAIT_ENV}={text!r} is not a number of seconds") from None
    if value < 0:
        raise ConfigError(f"${WAIT_ENV} must be >= 0, got {value:g}")
    return value


@dataclass
class SweepRecord:
    """What a sync needs to know of a sweep (`<sweep>/tracking/sweep.json`)."""

    name: str
    experiment: str
    tracking_uri: str
    parent_run_id: str
    grid: dict[str, str]
    status: str | None = None


def write_sweep_record(sweep_dir: Storage, record: SweepRecord) -> None:
    sweep_dir.child(JOURNAL_FOLDER, SWEEP_RECORD).write_text(json.dumps(asdict(record), indent=1, sort_keys=True))


def read_sweep_record(sweep_dir: Storage) -> SweepRecord:
    path = sweep_dir.child(JOURNAL_FOLDER, SWEEP_RECORD)
    if not path.is_file():
        raise ConfigError(f"no sweep at {sweep_dir} (no {JOURNAL_FOLDER}/{SWEEP_RECORD}); pass the sweep's --name "
                          "and the --storage it used")
    return SweepRecord(**json.loads(path.read_text()))


def trial_journals(sweep_dir: Storage, grid: Iterable[str]) -> dict[str, TrialJournal]:
    return {trial: TrialJournal(journal_folder(sweep_dir, trial)) for trial in grid}


def journal_views(sweep_dir: Storage, grid: Iterable[str]) -> dict[str, JournalView]:
    """Every trial's journal read once (on URI storage each read is a GET per journal file)."""
    return {trial: journal.view() for trial, journal in trial_journals(sweep_dir, grid).items()}


def journal_summary_rows(sweep_dir: Storage, grid: Mapping[str, str],
                         views: Mapping[str, JournalView] | None = None) -> list[Any]:
    """The sweep's summary rows from its journals (`views`: as read by `journal_views`, else read here): a trial
    counts when its latest start FINISHED with its final figures; every other trial of the grid is listed as
    missing."""
    from ltray.tracking.artifacts import summary_rows

    views = journal_views(sweep_dir, grid) if views is None else views
    reports: dict[str, dict[str, Mapping[str, object] | None]] = {}
    for trial in grid:
        figures = views[trial].final_figures
        reports.setdefault(grid[trial], {})[trial] = None if figures is None else {"run": trial, **figures}
    return summary_rows(reports)


def close_unfinished(sweep_dir: Storage, grid: Iterable[str], status: str) -> list[str]:
    """Journal `status` for every trial that started and has not ended (its run would stay RUNNING); returns them."""
    closed = []
    for trial, journal in trial_journals(sweep_dir, grid).items():
        view = journal.view()
        if view.header is not None and view.status is None:
            journal.append(TRIAL_FILE, {"kind": "status", "status": status})
            closed.append(trial)
    return closed


@dataclass
class SyncResult:
    sent: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    reason: str | None = None

    @property
    def complete(self) -> bool:
        return not self.pending and self.reason is None


def _sync_parent(sweep_dir: Storage, record: SweepRecord, tracking_uri: str, markdown: str, csv_text: str,
                 rows: list[Any]) -> None:
    """The summary on the parent run (its metrics only where they differ from what the run holds), the sweep's
    figures (those it does not hold yet) and its status."""
    from mlflow.tracking import MlflowClient

    from ltray.eval.figures import SWEEP_FIGURES
    from ltray.tracking.artifacts import log_sweep_summary, sweep_summary_metrics

    client = MlflowClient(tracking_uri)
    parent = client.get_run(record.parent_run_id)
    metrics = sweep_summary_metrics(rows)
    if any(parent.data.metrics.get(key) != value for key, value in metrics.items()):
        log_sweep_summary(client, record.parent_run_id, rows, markdown, csv_text)
    held = {item.path for item in client.list_artifacts(record.parent_run_id)}
    for name in SWEEP_FIGURES:
        figure = sweep_dir.child(name)
        if name not in held and figure.exists():
            log_stored_artifact(client, record.parent_run_id, figure, name)
    if record.status is not None and parent.info.status != record.status:
        client.set_terminated(record.parent_run_id, status=record.status)


def sync_sweep(sweep_dir: Storage, record: SweepRecord, tracking_uri: str, markdown: str, csv_text: str,
               rows: list[Any], *, wait_s: float, echo: Echo = echo_line, outage_seen: bool = False) -> SyncResult:
    """Send every journal of the sweep, then the parent's summary and status, trying for at most `wait_s` while
    MLflow does not answer. Returns what was sent and what is still pending (with the last reason).
    `outage_seen`: a trial ended with records MLflow did not get, so its console told of an outage; the line that
    MLflow is back is then printed here."""
    from ltray.tracking.journal import limit_http_retries_quietly

    limit_http_retries_quietly()
    uploaders = {trial: JournalUploader(journal, tracking_uri, record.experiment, echo)
                 for trial, journal in trial_journals(sweep_dir, record.grid).items()
                 if journal.folder.child(TRIAL_FILE).exists()}
    result = SyncResult(pending=sorted(uploaders))
    parent_done = False
    deadline = time.monotonic() + wait_s
    delay = POLL_S
    while True:
        try:
            for trial in list(result.pending):
                uploaders[trial].sync_once()
                result.pending.remove(trial)
                result.sent.append(trial)
            if not parent_done:
                _sync_parent(sweep_dir, record, tracking_uri, markdown, csv_text, rows)
                parent_done = True
            if result.reason is not None or outage_seen:
                echo(f"tracking: MLflow at {tracking_uri} answers again; the sweep's records are sent")
            result.reason = None
            return result
        except TrackingUnavailable as error:
            reason = str(error)
        except Exception as error:  # the parent's calls go through MLflow's client directly
            reason = " ".join(str(error).split())[:200] or type(error).__name__
        if result.reason is None and wait_s > 0:
            echo(f"tracking: waiting up to {wait_s:.0f} s for MLflow at {tracking_uri} ({reason}) to send the "
                 "sweep's records")
        result.reason = reason
        if time.monotonic() + delay > deadline:
            return result
        time.sleep(delay)
        delay = min(RETRY_MAX_S, delay * 2)
