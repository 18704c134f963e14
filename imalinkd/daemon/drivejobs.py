"""Work on an archive drive (a reindex) in a child process, so that no drive can stop cards
from being imported.

A reindex reads a whole drive; a drive can be slow, huge or stuck in the kernel (a dying
disk, a hung USB bridge), and a thread stuck in a system call can be neither stopped nor
trusted to stay stuck. So the daemon runs ``imalinkd reindex ROOT`` as a child process
(the same interpreter and code as the daemon, the same config file) and:

- stops it when a card or drop-folder import is waiting for it (imports come first; the
  daemon runs the reindex again once they are done). A reindex is written a slice of
  session directories at a time in its own transaction, so a stopped one has recorded
  whole sessions and the next one does the rest;
- stops it after ``[daemon] drive_job_seconds`` (a bounded time per drive), and does not
  run it again by itself: the drive is logged as too slow, with the next step;
- never waits for a stopped child: one stuck in the kernel cannot return to its own code
  once SIGKILL is pending, so it can write nothing more, and is reaped when the kernel
  lets it go.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger()

KILL_GRACE_SECONDS = 3.0  # from SIGTERM to SIGKILL, and from SIGKILL to giving up on the child


@dataclass
class DriveJobResult:
    outcome: str  # completed | failed | preempted | cancelled | timed_out | stuck
    report: Any = None  # the reindex report (JSON) when the child finished
    exit_code: int | None = None


def _command(config_path: str | None, *command: str) -> list[str]:
    """``imalinkd COMMAND…`` with this interpreter and this package."""
    package_parent = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    boot = (f"import sys; sys.path.insert(0, {package_parent!r}); from imalinkd.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    args = ["--config", config_path] if config_path else []
    return [sys.executable, "-c", boot, *args, *command]


def reindex_command(config_path: str | None, root: str) -> list[str]:
    """``imalinkd reindex --json ROOT``."""
    return _command(config_path, "reindex", "--json", root)


def replicate_command(config_path: str | None) -> list[str]:
    """``imalinkd replicate --all --json``: the backup archives' catch-up (DESIGN §8)."""
    return _command(config_path, "replicate", "--all", "--json")


def _stop(proc: subprocess.Popen, reaped: threading.Event) -> bool:
    """SIGTERM, then SIGKILL: whether the child exited (False: stuck in the kernel)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            proc.send_signal(sig)
        except OSError:
            return True
        if reaped.wait(KILL_GRACE_SECONDS):
            return True
    return False


def run_reindex(config_path: str | None, root: str, *, cancel: threading.Event, preempt: threading.Event,
                limit_seconds: float) -> DriveJobResult:
    """Reindex the storage root ``root`` in a child process; see the module's docstring.
    Returns when the child is done, or stopped (``cancel``: the daemon stops; ``preempt``:
    an import waits), or over its time."""
    return run_child(reindex_command(config_path, root), root, cancel=cancel, preempt=preempt, limit_seconds=limit_seconds)


def run_replicate(config_path: str | None, *, cancel: threading.Event, preempt: threading.Event,
                  limit_seconds: float) -> DriveJobResult:
    """Copy what the backup archives are short of, in a child process, like a reindex (a
    stopped catch-up is taken up by the next: what it committed is found and counted)."""
    return run_child(replicate_command(config_path), "backups", cancel=cancel, preempt=preempt, limit_seconds=limit_seconds)


def run_child(command: list[str], root: str, *, cancel: threading.Event, preempt: threading.Event,
              limit_seconds: float) -> DriveJobResult:
    """Run one drive job's ``command`` (its JSON report on stdout) with these bounds."""
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=None, close_fds=True, start_new_session=True)
    except OSError as e:
        log.error("drive_job_failed", storage_root=root, error=str(e))
        return DriveJobResult("failed")
    out: list[bytes] = []
    reaped = threading.Event()

    def reap() -> None:  # the only wait for the child: a child stuck in the kernel keeps only this thread
        out.append(proc.communicate()[0] or b"")
        reaped.set()

    threading.Thread(target=reap, name=f"drive job {root}", daemon=True).start()
    deadline = time.monotonic() + limit_seconds
    while not reaped.is_set():
        if cancel.is_set() or preempt.is_set() or time.monotonic() >= deadline:
            why = "cancelled" if cancel.is_set() else "preempted" if preempt.is_set() else "timed_out"
            exited = _stop(proc, reaped)
            if not exited:
                log.error("drive_job_stuck", storage_root=root, pid=proc.pid,
                          message="the reindex does not exit even when killed: the drive is stuck in the kernel; "
                                  "imports go on, the drive is not read again until it is plugged in again")
                return DriveJobResult("stuck")
            return DriveJobResult(why)
        # woken at once when the child ends; the events are looked at a few times a second
        reaped.wait(0.2)
    try:
        report = json.loads(out[0]) if out and out[0] else None
    except ValueError:
        report = None
    code = proc.returncode
    return DriveJobResult("completed" if code in (0, 1) and report is not None else "failed", report, code)
