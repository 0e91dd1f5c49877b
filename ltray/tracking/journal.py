"""A trial's tracking journal: what the trial records for MLflow, written first to the sweep's storage, then sent.

Training never waits for MLflow. Every record of a trial (its run's parameters and tags, each epoch's metrics,
artifacts, the final figures, the final status) is first appended to the trial's journal on the sweep's storage,
`<storage>/<sweep>/tracking/<trial>/`:

- `trial.jsonl`: written by the trial's own process: a `run` header each time the trial starts (parent run, trial
  name, parameters, tags), MAK's selection figures, the final figures, evaluation artifacts, the status;
- `training.jsonl`: written by the rank-0 training worker: one `epoch` record per epoch (the metrics, step =
  epoch), the `resumed_at_epoch` mark, the artifacts the run writes (COLT's picks);
- `files/<artifact path>`: the artifacts' contents.

`JournalUploader` sends a journal to MLflow from a background thread of the trial's process: the run is found by
its parent and trial name (created when missing), what MLflow already holds is read once per session (the epochs
of `loss`, the other metrics' steps, the artifact paths, the final figures), and only the rest is sent, in order,
steps preserved. A crash anywhere (worker, trial, uploader) therefore loses nothing that reached the journal and
sends nothing twice: the next session reads MLflow again. While MLflow is unreachable, the uploader prints one line
when it goes away and one when it comes back; the records wait in the journal. `ltray sync` sends what is left
after the sweep has ended (`ltray.tracking.sync`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ltray.storage import Storage

JOURNAL_FOLDER = "tracking"
TRIAL_FILE = "trial.jsonl"
TRAINING_FILE = "training.jsonl"
FILES_FOLDER = "files"
EPOCH_KEY = "loss"
RETRY_MAX_S = 5.0
POLL_S = 1.0
# MLflow's HTTP client retries a failed request for minutes by default; a journaled record can wait instead
HTTP_LIMITS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}

Echo = Callable[[str], None]


def echo_line(text: str) -> None:
    """Print one console line now: a Ray worker's stdout is a buffered file, and a trial's last lines would
    otherwise die with its process."""
    print(text, flush=True)


def journal_folder(sweep_dir: Storage, trial: str) -> Storage:
    return sweep_dir.child(JOURNAL_FOLDER, trial)


@dataclass(frozen=True)
class TrialJournal:
    """One trial's journal folder on the sweep storage (a path or a URI)."""

    folder: Storage

    @property
    def trial(self) -> str:
        return self.folder.name

    def append(self, file_name: str, *records: Mapping[str, Any]) -> None:
        """Add records at the end of `file_name` (one JSON line each). On a local or shared disk the lines are
        appended; on an object store the file is written again whole (journals are small)."""
        lines = "".join(json.dumps(dict(record)) + "\n" for record in records)
        target = self.folder.child(file_name)
        if target.is_local:
            target.local_path.parent.mkdir(parents=True, exist_ok=True)
            with target.local_path.open("a") as out:
                out.write(lines)
            return
        existing = target.read_text() if target.exists() else ""
        target.write_text(existing + lines)

    def read(self, file_name: str) -> list[dict[str, Any]]:
        """The records of `file_name` (a last line cut short by a crash is ignored)."""
        target = self.folder.child(file_name)
        if not target.exists():
            return []
        records = []
        for line in target.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def store_file(self, source: Path, artifact_path: str) -> dict[str, Any]:
        """Copy `source` into the journal as the artifact `artifact_path`; returns its record (not yet appended)."""
        self.file(artifact_path).upload(source)
        return {"kind": "artifact", "path": artifact_path}

    def file(self, artifact_path: str) -> Storage:
        return self.folder.child(FILES_FOLDER, *artifact_path.split("/"))

    def view(self) -> JournalView:
        return JournalView.of(self.read(TRIAL_FILE), self.read(TRAINING_FILE))


@dataclass(frozen=True)
class JournalView:
    """A journal read at one moment: the latest run header, the records, the status of the latest start."""

    header: dict[str, Any] | None
    trial_records: list[dict[str, Any]]
    training_records: list[dict[str, Any]]
    status: str | None

    @classmethod
    def of(cls, trial_records: list[dict[str, Any]], training_records: list[dict[str, Any]]) -> JournalView:
        header, status = None, None
        for record in trial_records:
            if record["kind"] == "run":
                header, status = record, None
            elif record["kind"] == "status":
                status = record["status"]
        return cls(header, trial_records, training_records, status)

    @property
    def final_figures(self) -> dict[str, float] | None:
        """The final figures of the latest start, when it FINISHED with them."""
        if self.status != "FINISHED":
            return None
        finals = [record for record in self.trial_records if record["kind"] == "final"]
        return dict(finals[-1]["figures"]) if finals else None

    @property
    def last_epoch_metrics(self) -> dict[str, float]:
        epochs = [record for record in self.training_records if record["kind"] == "epoch"]
        return dict(epochs[-1]["metrics"]) if epochs else {}


class TrackingUnavailable(Exception):
    """A record could not be sent now (the server is down, slow or refused it); it stays in the journal."""


def limit_http_retries_quietly() -> None:
    """Bound MLflow's HTTP retries in this process (unless set by the user), so a request to a server that is down
    fails in seconds and the uploader decides when to try again; urllib3's line per retry stays off the console
    (the uploader prints one line per outage)."""
    import logging
    import os

    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def log_stored_artifact(client: Any, run_id: str, source: Storage, artifact_path: str) -> None:
    """Log the file `source` on the sweep storage as the run's artifact `artifact_path` (through a local copy)."""
    import tempfile

    folder, _, name = artifact_path.rpartition("/")
    with tempfile.TemporaryDirectory(prefix="ltray-journal-") as scratch:
        local = Path(scratch) / name
        source.download(local)
        client.log_artifact(run_id, str(local), folder or None)


class JournalUploader:
    """Sends one trial's journal to MLflow (see the module docstring). `sync_once` does one pass in the caller's
    thread; `start` runs passes in a background thread until `drain`."""

    def __init__(self, journal: TrialJournal, tracking_uri: str, experiment: str, echo: Echo = echo_line) -> None:
        self.journal = journal
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.echo = echo
        self.run_id: str | None = None
        self._trial_sent = 0
        self._training_sent = 0
        self._status_sent: str | None = None
        self._epochs: set[int] = set()
        self._metric_steps: dict[str, set[int]] = {}
        self._artifacts: set[str] = set()
        self._final_sent = False
        self._tracking: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.down_since: float | None = None

    # one pass ------------------------------------------------------------------------------------------------
    def sync_once(self) -> bool:
        """Send everything the journal holds now; True when nothing is left. Raises TrackingUnavailable."""
        with self._lock:
            try:
                return self._sync()
            except TrackingUnavailable:
                raise
            except Exception as error:  # MLflow and its HTTP stack raise many types for one outage
                raise TrackingUnavailable(" ".join(str(error).split())[:200] or type(error).__name__) from None

    def _sync(self) -> bool:
        view = self.journal.view()
        if view.header is None:
            return True
        if self.run_id is None:
            self._open_run(view)
        for record in view.trial_records[self._trial_sent:]:
            if record["kind"] not in ("run", "status"):
                self._send(record)
            self._trial_sent += 1
        for record in view.training_records[self._training_sent:]:
            self._send(record)
            self._training_sent += 1
        if view.status is not None and view.status != self._status_sent:
            self._tracking.finish(self.run_id, view.status)
            self._status_sent = view.status
        return True

    def _open_run(self, view: JournalView) -> None:
        from ltray.tracking.runs import TAG_FINAL_KEYS, SweepTracking

        limit_http_retries_quietly()
        header = view.header
        assert header is not None
        self._tracking = SweepTracking(self.tracking_uri, self.experiment)
        client = self._tracking.client
        run_id = self._tracking.find_child(header["parent"], header["name"])
        if run_id is None:
            run_id = self._tracking.start_child(header["parent"], header["name"], header["params"], header["tags"])
        run = client.get_run(run_id)
        if view.status is None and run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        self._epochs = {int(m.step) for m in client.get_metric_history(run_id, EPOCH_KEY)}
        self._artifacts = self._listed_artifacts(client, run_id)
        self._final_sent = TAG_FINAL_KEYS in run.data.tags
        self._metric_steps = {}
        self._status_sent = run.info.status if view.status == run.info.status else None
        self.run_id = run_id

    @staticmethod
    def _listed_artifacts(client: Any, run_id: str) -> set[str]:
        found: set[str] = set()
        folders = [None]
        while folders:
            for item in client.list_artifacts(run_id, folders.pop()):
                if item.is_dir:
                    folders.append(item.path)
                else:
                    found.add(item.path)
        return found

    def _send(self, record: Mapping[str, Any]) -> None:
        kind = record["kind"]
        tracking, client = self._tracking, self._tracking.client
        if kind == "epoch":
            step = int(record["step"])
            if step not in self._epochs:
                tracking.log_epoch_metrics(self.run_id, record["metrics"], step=step)
                self._epochs.add(step)
        elif kind == "metric":
            step = int(record["step"])
            fresh = {}
            for key, value in record["metrics"].items():
                if key not in self._metric_steps:
                    self._metric_steps[key] = {int(m.step) for m in client.get_metric_history(self.run_id, key)}
                if step not in self._metric_steps[key]:
                    fresh[key] = value
            if fresh:
                tracking.log_epoch_metrics(self.run_id, fresh, step=step)
                for key in fresh:
                    self._metric_steps[key].add(step)
        elif kind == "tags":
            for key, value in record["tags"].items():
                client.set_tag(self.run_id, key, str(value))
        elif kind == "artifact":
            path = str(record["path"])
            if path not in self._artifacts:
                log_stored_artifact(client, str(self.run_id), self.journal.file(path), path)
                self._artifacts.add(path)
        elif kind == "final":
            if not self._final_sent:
                tracking.log_final(self.run_id, record["figures"])
                self._final_sent = True

    # background ----------------------------------------------------------------------------------------------
    def start(self) -> JournalUploader:
        self._thread = threading.Thread(target=self._loop, name=f"ltray-uploader-{self.journal.trial}", daemon=True)
        self._thread.start()
        return self

    def _attempt(self) -> bool:
        """One pass, with the outage lines: one when MLflow goes away, one when it is back."""
        try:
            self.sync_once()
        except TrackingUnavailable as error:
            if self.down_since is None:
                self.down_since = time.monotonic()
                self.echo(f"tracking: MLflow at {self.tracking_uri} is not answering ({error}); trial "
                          f"{self.journal.trial} keeps training, its records wait in {self.journal.folder}")
            return False
        if self.down_since is not None:
            self.echo(f"tracking: MLflow at {self.tracking_uri} answers again after "
                      f"{time.monotonic() - self.down_since:.0f} s; trial {self.journal.trial}'s records are sent")
            self.down_since = None
        return True

    def _loop(self) -> None:
        delay = POLL_S
        while not self._stop.is_set():
            delay = POLL_S if self._attempt() else min(RETRY_MAX_S, delay * 2)
            self._stop.wait(delay)

    def drain(self, timeout_s: float) -> bool:
        """Stop the background passes and send what is left, trying for at most `timeout_s`; True when all of the
        journal reached MLflow."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        deadline = time.monotonic() + timeout_s
        delay = POLL_S
        while True:
            if self._attempt():
                return True
            if time.monotonic() + delay > deadline:
                return False
            time.sleep(delay)
            delay = min(RETRY_MAX_S, delay * 2)
