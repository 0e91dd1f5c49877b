"""The sweep's console: event lines and progress for a person, Ray's and Tune's output into the sweep's log."""

from __future__ import annotations

import io
import logging
import sys
from pathlib import Path

import pytest

from ltray.cluster.console import (
    CONSOLE_LOG,
    EPOCH_LINE_EVERY_S,
    LineRouter,
    TrialEvents,
    error_reason,
    ray_output_to_log,
    sweep_console,
)
from ltray.errors import ConfigError
from ltray.storage import Storage


def test_router_logs_every_line_and_passes_ltrays_tracking_lines_without_rays_prefix():
    log, console = io.StringIO(), io.StringIO()
    router = LineRouter(log, console)
    router.write("╭──── Trial simclr_split=1 config ────╮\n(run_trial pid=4242) tracking: MLflow at http://h:5")
    router.write("000 is not answering (refused); trial simclr_split=1 keeps training\n")
    router.write("\x1b[36m(run_trial pid=17, ip=10.0.0.2)\x1b[0m tracking: MLflow at http://h:5000 answers again\n")
    router.write("(RayTrainWorker pid=9) TrainingReport(checkpoint=None, metrics={'loss': 3.2})\npartial")
    router.close_line()
    assert console.getvalue().splitlines() == [
        "tracking: MLflow at http://h:5000 is not answering (refused); trial simclr_split=1 keeps training",
        "tracking: MLflow at http://h:5000 answers again"]
    assert len(log.getvalue().splitlines()) == 5 and log.getvalue().endswith("partial\n")


def test_ray_output_goes_to_the_log_and_the_sweeps_lines_to_the_console(tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]):
    handler = logging.StreamHandler(sys.stderr)
    logger = logging.getLogger("ray.tune.test_console")
    logger.addHandler(handler)
    try:
        with ray_output_to_log(tmp_path / CONSOLE_LOG) as say:
            print("== Status == Current time: ... RUNNING")
            logger.warning("a Ray warning")
            say("[0/2 done] simclr_split=1: started (3 epochs)")
        assert handler.stream is sys.stderr
    finally:
        logger.removeHandler(handler)
    printed = capsys.readouterr()
    assert printed.out == "[0/2 done] simclr_split=1: started (3 epochs)\n" and printed.err == ""
    assert (tmp_path / CONSOLE_LOG).read_text().splitlines() == [
        "== Status == Current time: ... RUNNING", "a Ray warning", "[0/2 done] simclr_split=1: started (3 epochs)"]


def test_a_refused_sweep_leaves_no_log_and_no_folder(tmp_path: Path):
    sweep_dir = Storage(str(tmp_path / "ray_results" / "demo"))
    with pytest.raises(ConfigError), sweep_console(sweep_dir, capture=True):
        print("Connecting to existing Ray cluster at address: 10.0.0.1:6379")
        raise ConfigError("node 10.0.0.2 cannot read --storage")
    assert list(tmp_path.iterdir()) == []
    with sweep_console(sweep_dir, capture=True) as say:
        print("Tune's table")
        say("a line")
    assert (tmp_path / "ray_results" / "demo" / CONSOLE_LOG).read_text() == "Tune's table\na line\n"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_events_show_starts_epochs_at_a_modest_rate_ends_and_an_eta_from_the_epochs_done():
    lines: list[str] = []
    clock = Clock()
    events = TrialEvents(lines.append, {"a": 10, "b": 10}, clock=clock)
    events.started("a")
    for epoch in range(1, 11):
        clock.now = 5.0 * epoch
        events.epoch("a", {"epoch": epoch, "loss": 5.0 - 0.1 * epoch, "images_per_s": 400.0})
    events.finished("a", {"full_all": 41.234})
    events.started("b")
    events.failed("b", "RuntimeError: boom")
    assert lines[0] == "[0/2 done] a: started (10 epochs)"
    epoch_lines = [line for line in lines if ": epoch " in line]
    # epoch 1, then nothing for EPOCH_LINE_EVERY_S, then the last epoch
    assert len(epoch_lines) == 2 + int(45.0 // EPOCH_LINE_EVERY_S)
    assert epoch_lines[0] == "[0/2 done] a: epoch 1/10, loss 4.9000, 400 img/s; sweep 5% of 20 epochs"  # no ETA yet
    assert epoch_lines[-1].startswith("[0/2 done] a: epoch 10/10, loss 4.0000, 400 img/s; sweep 50% of 20 epochs")
    assert lines[-3] == "[1/2 done] a: evaluated and finished, full-shot All 41.23%; sweep 50% of 20 epochs, ETA 50 s"
    assert lines[-1] == "[2/2 done] b: FAILED: RuntimeError: boom"


def test_error_reason_is_the_last_line_of_the_message():
    assert error_reason(RuntimeError("Traceback ...\n  File x\nValueError: bad split\n")) == "ValueError: bad split"
    assert error_reason(None) == "NoneType"


def test_on_uri_storage_the_log_is_uploaded_and_a_failed_upload_says_so_in_one_line(s3_storage: str, capsys):
    sweep_dir = Storage(f"{s3_storage}/demo")
    with sweep_console(sweep_dir, capture=True) as say:
        say("a line")
    assert sweep_dir.child(CONSOLE_LOG).read_text() == "a line\n"
    capsys.readouterr()
    missing = Storage(s3_storage.replace("s3://ltray-", "s3://absent-", 1) + "/demo")
    with sweep_console(missing, capture=True) as say:
        say("another line")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"console log not uploaded to {missing.uri}/{CONSOLE_LOG}: "), err
