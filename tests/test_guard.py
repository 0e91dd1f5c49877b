"""ltray.guard: a command and everything it forks end with the guard's owner, on a stop signal, or with the
command itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ltray.guard import guarded

FORKS_TWO = ["sh", "-c", "sleep 300 & sleep 300 & wait"]


def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:  # it may end between any two questions
        return False


def _gone(pids: list[int], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not [p for p in pids if _alive(p)]:
            return True
        time.sleep(0.1)
    return False


def _start(owner: int) -> tuple[subprocess.Popen[bytes], list[int]]:
    guard = subprocess.Popen(guarded(FORKS_TWO, owner=owner, grace_s=2), start_new_session=True)
    deadline = time.monotonic() + 20
    while len(_descendants(guard.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    return guard, _descendants(guard.pid)


def test_the_group_ends_when_the_owner_dies():
    owner = subprocess.Popen(["sleep", "300"])
    guard, started = _start(owner.pid)
    try:
        assert len(started) == 3  # sh and its two sleeps
        owner.kill()  # not reaped yet: a zombie counts as dead
        assert _gone([guard.pid, *started])
        assert guard.wait(timeout=5) == 0
    finally:
        owner.wait()
        if guard.poll() is None:
            os.killpg(guard.pid, signal.SIGKILL)


def test_sigterm_to_the_guard_ends_the_group():
    guard, started = _start(os.getpid())
    try:
        guard.send_signal(signal.SIGTERM)
        assert _gone([guard.pid, *started])
        assert guard.wait(timeout=5) == 0
    finally:
        if guard.poll() is None:
            os.killpg(guard.pid, signal.SIGKILL)


def test_the_guard_exits_with_the_command():
    done = subprocess.run(guarded([sys.executable, "-c", "raise SystemExit(3)"]), timeout=60)
    assert done.returncode == 3
