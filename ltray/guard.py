"""A child process tree that never outlives its owner.

`python -m ltray.guard --owner PID -- COMMAND ...` leads its own process group (start it with
`start_new_session=True`, or it makes one), runs COMMAND in that group, and ends the whole group (SIGTERM, then
SIGKILL after `--grace` seconds) as soon as:

- the owner process PID is gone, however it ended (SIGKILL included; checked every `POLL_S` seconds);
- the guard gets SIGTERM, SIGINT or SIGHUP;
- COMMAND exits (the guard then exits with COMMAND's status).

Servers that fork workers of their own (`mlflow server` starts uvicorn) are ended with all their workers, because
they all stay in the guard's group. `guarded(argv)` is the command line that runs `argv` under a guard owned by the
calling process.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

POLL_S = 0.5
DEFAULT_GRACE_S = 10.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def guarded(argv: Sequence[str], owner: int | None = None, grace_s: float = DEFAULT_GRACE_S) -> list[str]:
    """`argv` run under a guard owned by `owner` (default: this process)."""
    return [sys.executable, "-m", "ltray.guard", "--owner", str(owner or os.getpid()), "--grace", f"{grace_s:g}",
            "--", *argv]


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def _group_members(group: int) -> list[int]:
    """The other processes of process group `group` (read from /proc; empty where /proc is not there)."""
    members = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if os.getpgid(int(entry)) == group:
                    members.append(int(entry))
            except OSError:
                continue
    return members


def end_group(child: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM to every process of this group but the guard, SIGKILL to what is left after `grace_s`."""
    group = os.getpgrp()
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in _group_members(group) or ([child.pid] if child.poll() is None else []):
            try:
                os.kill(pid, signum)
            except OSError:
                pass
        deadline = time.monotonic() + (grace_s if signum == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline:
            child.poll()
            if not _group_members(group) and child.returncode is not None:
                return
            time.sleep(0.1)


def run(owner: int, command: Sequence[str], grace_s: float) -> int:
    if os.getpgrp() != os.getpid():
        os.setsid()
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stop)
    child = subprocess.Popen(list(command))
    try:
        while child.poll() is None and _alive(owner):
            time.sleep(POLL_S)
    except _Stop:
        pass
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    exited = child.poll()
    end_group(child, grace_s)
    if exited is None:  # stopped by a signal or by the owner's end: a requested stop
        return 0
    return exited if exited >= 0 else 128 - exited


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ltray.guard",
                                     description="Run COMMAND in this process group; end the group when OWNER dies.")
    parser.add_argument("--owner", type=int, required=True, help="process whose end ends COMMAND")
    parser.add_argument("--grace", type=float, default=DEFAULT_GRACE_S, help="seconds between SIGTERM and SIGKILL")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no COMMAND given")
    return run(args.owner, command, args.grace)


if __name__ == "__main__":
    sys.exit(main())
