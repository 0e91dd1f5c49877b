"""Sweep plumbing that needs no cluster: sweep folder naming, where-to-watch lines, Ctrl-C detection."""

from __future__ import annotations

import os
import signal

import pytest

from ltray.cluster.grid import SweepSpec
from ltray.storage import Storage
from ltray.cluster.sweep import InterruptWatch, SweepOptions, resolve_sweep_dir, watch_lines
from ltray.config import Config
from ltray.errors import ConfigError


def test_fresh_sweeps_get_a_timestamp_and_resume_needs_a_sweep(tmp_path):
    root = Storage(str(tmp_path))
    spec = SweepSpec(name="colt", experiment="e", base=Config())
    folder = resolve_sweep_dir(spec, SweepOptions(timestamp_name=True), root)
    assert folder.parent == root and folder.name.startswith("colt-") and spec.name == folder.name
    named = SweepSpec(name="mine", experiment="e", base=Config())
    assert resolve_sweep_dir(named, SweepOptions(), root) == Storage(str(tmp_path / "mine"))
    with pytest.raises(ConfigError, match="--resume: no interrupted sweep named 'mine'"):
        resolve_sweep_dir(named, SweepOptions(resume=True), root)


def test_watch_lines_point_at_the_dashboard_and_the_experiment():
    lines = watch_lines("http://127.0.0.1:8265", "http://127.0.0.1:5000", "7")
    assert lines == ["Ray dashboard: http://127.0.0.1:8265", "MLflow experiment: http://127.0.0.1:5000/#/experiments/7"]
    lines = watch_lines(None, "sqlite:////tmp/x/mlflow.db", "3")
    assert lines[0] == "Ray dashboard: not available on this cluster"
    assert "mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db --host 127.0.0.1" in lines[2]


def _tune_like_handler():
    """What Tune does while it runs: its own SIGINT handler, which reinstalls the one it found when it fires."""
    found = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        signal.signal(signal.SIGINT, found)

    signal.signal(signal.SIGINT, handler)


def test_interrupt_watch_sees_a_ctrl_c_that_tune_handled():
    before = signal.getsignal(signal.SIGINT)
    with InterruptWatch() as watch:
        _tune_like_handler()
        os.kill(os.getpid(), signal.SIGINT)
    assert watch.interrupted
    assert signal.getsignal(signal.SIGINT) == before
    with InterruptWatch() as quiet:
        _tune_like_handler()
    assert not quiet.interrupted
    assert signal.getsignal(signal.SIGINT) == before
