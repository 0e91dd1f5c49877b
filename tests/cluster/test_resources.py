"""Bounded resource waits and the placement-group listing behind the clean-up after a failed Ray Train run."""

from __future__ import annotations

import pytest

from ltray.cluster.resources import RESOURCE_TIMEOUT_ENV, resource_timeout_s, wait_for_resources
from ltray.errors import LtrayError


def test_wait_for_resources_returns_once_free_and_fails_after_the_timeout():
    answers = iter([{"CPU": 0.0}, {"CPU": 2.0}])
    wait_for_resources({"CPU": 2.0, "GPU": 0.0}, "run x", timeout_s=5.0, available=lambda: next(answers))
    with pytest.raises(LtrayError, match=r"run y: .* within 0 s \(free/needed: 1/2 CPU\)"):
        wait_for_resources({"CPU": 2.0}, "run y", timeout_s=0.01, available=lambda: {"CPU": 1.0})


def test_resource_timeout_setting(monkeypatch):
    monkeypatch.delenv(RESOURCE_TIMEOUT_ENV, raising=False)
    assert resource_timeout_s() == 300.0
    monkeypatch.setenv(RESOURCE_TIMEOUT_ENV, "12.5")
    assert resource_timeout_s() == 12.5
    monkeypatch.setenv(RESOURCE_TIMEOUT_ENV, "soon")
    with pytest.raises(LtrayError, match="must be a number"):
        resource_timeout_s()


def test_placement_groups_are_listed_on_the_connected_cluster_beside_another(connected, tmp_path):
    """With two Ray clusters on the machine (the test head, which this process joined, and a local one started in
    a subprocess), the listing asks the joined cluster instead of failing on 'multiple active Ray instances'."""
    import subprocess
    import sys

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    from ltray.cluster.resources import placement_group_ids

    script = ("import sys, ray; ray.init(address='local', num_cpus=1, include_dashboard=False); print('up', flush=True);"
              " sys.stdin.read(); ray.shutdown()")
    other = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout.readline().strip() == "up"
        group = placement_group([{"CPU": 0.5}])
        ray.get(group.ready(), timeout=60)
        try:
            assert group.id.hex() in placement_group_ids()
        finally:
            remove_placement_group(group)
    finally:
        other.stdin.close()  # the other driver shuts its cluster down and exits
        other.wait(timeout=60)


def test_start_retries_keep_ray_trains_attempts_within_the_timeout(monkeypatch):
    from ltray.cluster.resources import TRAIN_START_TIMEOUT_ENV, start_retries_within

    monkeypatch.delenv(TRAIN_START_TIMEOUT_ENV, raising=False)
    assert start_retries_within(300.0) == 4  # five attempts of Ray's default 60 s
    assert start_retries_within(30.0) == 0
    monkeypatch.setenv(TRAIN_START_TIMEOUT_ENV, "2")
    assert start_retries_within(5.0) == 2
    monkeypatch.setenv(TRAIN_START_TIMEOUT_ENV, "0")
    with pytest.raises(LtrayError, match="must be > 0"):
        start_retries_within(5.0)


@pytest.mark.slow
def test_a_run_whose_resources_are_taken_after_the_check_fails_in_bounded_time(connected, monkeypatch, tmp_path):
    """The CPUs a trial saw free are taken (here by a placement group) before Ray Train places its workers: Ray
    would retry starting the worker group without end; the run fails after its bounded retries and leaves no
    placement group of its own behind."""
    import threading
    import time

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    import ltray.cluster.resources as resources
    from ltray.cluster.train_worker import TrainSettings, fit_training
    from ltray.config import load_config
    from ltray.shipped import shipped_config_dir

    monkeypatch.setenv(resources.TRAIN_START_TIMEOUT_ENV, "2")
    monkeypatch.setenv(RESOURCE_TIMEOUT_ENV, "4")
    monkeypatch.setattr(resources, "wait_for_resources", lambda needed, what: None)  # the check saw them free
    holder = placement_group([{"CPU": 2}])
    ray.get(holder.ready(), timeout=60)
    try:
        before = resources.placement_group_ids()
        cfg = load_config(shipped_config_dir() / "digits_tiny.yaml",
                          {"optim.epochs": 1, "run.name": "starved"})
        outcome: dict[str, BaseException] = {}

        def train() -> None:
            try:
                fit_training(cfg, "starved", TrainSettings(storage_path=str(tmp_path / "train"), max_failures=0))
            except BaseException as error:  # reported by the assertions below
                outcome["error"] = error

        started = time.monotonic()
        thread = threading.Thread(target=train, daemon=True)
        thread.start()
        thread.join(timeout=180)
        assert not thread.is_alive(), "the starved run still waits after 180 s"
        assert "timed out" in str(outcome.get("error")), outcome
        assert time.monotonic() - started < 120
        assert resources.placement_group_ids() <= before
    finally:
        remove_placement_group(holder)
