"""What a person sees while a sweep runs: one line per trial event and a progress line with an ETA.

Everything Ray and Tune print in the driver (trial tables, boxed configs, `TrainingReport` reprs, forwarded
worker output, warnings) goes to `console.log` in the sweep folder instead; `-v` keeps it on the console. Lines
of ltray's own tracking uploader (`tracking: ...`, printed in trial processes and forwarded by Ray) still reach
the console, without Ray's `(pid=...)` prefix.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from ltray.errors import LtrayError
from ltray.storage import Storage

CONSOLE_LOG = "console.log"
EPOCH_LINE_EVERY_S = 30.0  # at most one epoch line per trial in this time (the first and the last always show)
ETA_AFTER = 0.1  # share of all epochs done before an ETA is shown
PASSED_THROUGH = ("tracking: ",)
_RAY_PREFIX = re.compile(r"^\x1b\[[0-9;]*m|^\([^)]*pid=\d+[^)]*\)\s*(\x1b\[0m)?\s*")

Say = Callable[[str], None]


class LineRouter(io.TextIOBase):
    """A text stream that writes every line to the log and the lines of ltray's own trial processes (see
    `PASSED_THROUGH`) to the console too."""

    encoding = "utf-8"

    def __init__(self, log: TextIO, console: TextIO) -> None:
        super().__init__()
        self.log = log
        self.console = console
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
            for line in lines:
                self._route(line)
        return len(text)

    def _route(self, line: str) -> None:
        self.log.write(line + "\n")
        own = _strip_ray_prefix(line)
        if own.startswith(PASSED_THROUGH):
            self.console.write(own + "\n")
            self.console.flush()

    def flush(self) -> None:
        with self._lock:
            self.log.flush()

    def writable(self) -> bool:
        return True

    def close_line(self) -> None:
        with self._lock:
            if self._partial:
                self._route(self._partial)
                self._partial = ""
            self.log.flush()


def _strip_ray_prefix(line: str) -> str:
    previous = None
    while previous != line:
        previous, line = line, _RAY_PREFIX.sub("", line, count=1)
    return line.strip()


@contextmanager
def ray_output_to_log(log_path: Path | None) -> Iterator[Say]:
    """Send what Ray, Tune and the forwarded worker output print in this process to `log_path` (None: leave it
    on the console) and yield `say`, which writes one line to the person's console (and the log)."""
    console = sys.stdout
    if log_path is None:
        yield partial(print, file=console, flush=True)
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a", buffering=1) as log:
        router = LineRouter(log, console)
        swapped = _swap_handler_streams(router)
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = router

        def say(line: str) -> None:
            router.flush()
            log.write(line + "\n")
            print(line, file=console, flush=True)

        try:
            yield say
        finally:
            sys.stdout, sys.stderr = saved
            for handler, stream in swapped:
                handler.setStream(stream)
            router.close_line()


def _swap_handler_streams(target: Any) -> list[tuple[logging.StreamHandler, Any]]:
    """Point every logging handler that writes to the console (root, `ray` and their descendants) at `target`;
    returns what to restore."""
    consoles = {id(sys.stdout), id(sys.stderr), id(sys.__stdout__), id(sys.__stderr__)}
    loggers = [logging.getLogger()] + [logger for name, logger in logging.Logger.manager.loggerDict.items()
                                       if isinstance(logger, logging.Logger)]
    swapped = []
    for logger in loggers:
        for handler in logger.handlers:
            if (isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
                    and id(handler.stream) in consoles):
                swapped.append((handler, handler.setStream(target)))
    return swapped


class TrialEvents:
    """The sweep's event lines: started, epoch k/N (loss, img/s; at most every `EPOCH_LINE_EVERY_S` per trial),
    evaluated and finished, failed with the reason; and after each, the sweep's progress with an ETA from the
    epochs done so far."""

    def __init__(self, say: Say, epochs: Mapping[str, int], headline: str = "full_all",
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.say = say
        self.epochs = dict(epochs)
        self.headline = headline
        self.clock = clock
        self.started_at = clock()
        self.done_epochs: dict[str, int] = {}
        self.ended: dict[str, str] = {}
        self._last_line: dict[str, float] = {}

    def started(self, trial: str) -> None:
        self.say(f"[{self._count()}] {trial}: started ({self.epochs.get(trial, 0)} epochs)")

    def epoch(self, trial: str, result: Mapping[str, Any]) -> None:
        if "loss" not in result or "epoch" not in result:
            return
        epoch, total = int(result["epoch"]), self.epochs.get(trial, 0)
        self.done_epochs[trial] = max(self.done_epochs.get(trial, 0), epoch)
        now = self.clock()
        shown = self._last_line.get(trial)
        if shown is not None and epoch < total and now - shown < EPOCH_LINE_EVERY_S:
            return
        self._last_line[trial] = now
        speed = f", {float(result['images_per_s']):.0f} img/s" if "images_per_s" in result else ""
        self.say(f"[{self._count()}] {trial}: epoch {epoch}/{total}, loss {float(result['loss']):.4f}{speed}"
                 f"{self._progress()}")

    def finished(self, trial: str, result: Mapping[str, Any]) -> None:
        self.ended[trial] = "finished"
        self.done_epochs[trial] = self.epochs.get(trial, 0)
        figure = result.get(self.headline)
        shown = f", full-shot All {float(figure):.2f}%" if isinstance(figure, (int, float)) else ""
        self.say(f"[{self._count()}] {trial}: evaluated and finished{shown}{self._progress()}")

    def stopped(self, trial: str) -> None:
        self.ended[trial] = "stopped"
        self.say(f"[{self._count()}] {trial}: stopped early (ASHA) or interrupted{self._progress()}")

    def failed(self, trial: str, reason: str) -> None:
        self.ended[trial] = "failed"
        self.say(f"[{self._count()}] {trial}: FAILED: {reason}{self._progress()}")

    def _count(self) -> str:
        return f"{len(self.ended)}/{len(self.epochs)} done"

    def _progress(self) -> str:
        total = sum(self.epochs.values())
        done = sum(epochs if trial in self.ended else self.done_epochs.get(trial, 0)
                   for trial, epochs in self.epochs.items())
        if not total or not done or done >= total:
            return ""
        share = f"; sweep {100.0 * done / total:.0f}% of {total} epochs"
        if done < ETA_AFTER * total:  # start-up dominates the first epochs: no estimate yet
            return share
        left = (self.clock() - self.started_at) * (total - done) / done
        return f"{share}, ETA {_duration(left)}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def error_reason(error: Any) -> str:
    """One line out of a Tune trial error (an exception or its text): the last non-empty line of its message."""
    text = str(error or "").strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


_active: TrialEvents | None = None


@contextmanager
def reporting(events: TrialEvents) -> Iterator[TrialEvents]:
    """Make `events` the driver's console for the Tune callback (`active_events`) while a sweep runs."""
    global _active
    _active = events
    try:
        yield events
    finally:
        _active = None


def active_events() -> TrialEvents | None:
    return _active


@contextmanager
def sweep_console(sweep_dir: Storage, *, capture: bool) -> Iterator[Say]:
    """`ray_output_to_log` into the sweep folder's `console.log` (when `capture`): written in place on a path
    storage, uploaded at the end on a URI storage. A sweep refused before it started (a user error) leaves no
    log and no folder behind."""
    if not capture:
        with ray_output_to_log(None) as say:
            yield say
        return
    scratch = None if sweep_dir.is_local else Path(tempfile.mkdtemp(prefix="ltray-console-"))
    folder = sweep_dir.local_path if scratch is None else scratch
    new_folders = [path for path in (folder, *folder.parents) if not path.exists()]
    log_path = folder / CONSOLE_LOG
    existed = log_path.exists()
    refused = False
    try:
        with ray_output_to_log(log_path) as say:
            yield say
    except LtrayError:
        refused = not existed
        raise
    finally:
        if refused:
            log_path.unlink(missing_ok=True)
            for path in new_folders:
                if path.exists() and not any(path.iterdir()):
                    path.rmdir()
        if scratch is not None:
            if not refused:
                target = sweep_dir.child(CONSOLE_LOG)
                try:
                    target.upload(log_path)
                except OSError as error:  # the sweep's outcome stands; only its log is not kept
                    print(f"console log not uploaded to {target.uri}: {error}", file=sys.stderr, flush=True)
            shutil.rmtree(scratch, ignore_errors=True)
