"""First use by several processes at once, and processes killed half-way through it: a
fresh catalog opened by racing processes, a migration killed by ``kill -9``. Real processes
throughout; a test pauses one at a chosen step (a file appears, the process waits) so that
the race is the same on every run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sqlalchemy import inspect

from imalinkd.catalog import Catalog, _head_revision

REPO = Path(__file__).resolve().parents[1]

# A child that opens the catalog at argv[1]; with argv[2] (a directory) it stops after the
# Nth DDL statement of the migration: it creates <dir>/paused, then waits for <dir>/go.
CHILD = textwrap.dedent("""
    import os, sys, time
    from imalinkd.catalog import Catalog
    if len(sys.argv) > 3:
        from alembic.ddl.impl import DefaultImpl
        real, seen = DefaultImpl._exec, [0]
        pause_dir, after = sys.argv[2], int(sys.argv[3])
        def exec_(self, *args, **kwargs):
            out = real(self, *args, **kwargs)
            seen[0] += 1
            if seen[0] == after:
                open(os.path.join(pause_dir, "paused"), "w").close()
                while not os.path.exists(os.path.join(pause_dir, "go")):
                    time.sleep(0.01)
            return out
        DefaultImpl._exec = exec_
    Catalog.open(sys.argv[1]).close()
    print("opened")
""")


def start_child(url: str, pause_dir: Path | None = None, after: int = 3) -> subprocess.Popen:
    args = [sys.executable, "-c", CHILD, url] + ([str(pause_dir), str(after)] if pause_dir else [])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(predicate, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def blocked_on_a_lock(pid: int) -> bool:
    """Is ``pid`` waiting for a file lock (a ``->`` line of /proc/locks)?"""
    with open("/proc/locks") as f:
        return any(line.split()[1] == "->" and line.split()[5] == str(pid) for line in f)


def assert_migrated(db: Path) -> None:
    catalog = Catalog.open(f"sqlite:///{db}")
    try:
        with catalog.engine.connect() as c:
            assert c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == _head_revision()
            assert {"import_sessions", "images", "photos", "storage_roots"} <= set(inspect(c).get_table_names())
    finally:
        catalog.close()


def test_a_migration_killed_half_way_leaves_a_catalog_that_opens(tmp_path):
    db = tmp_path / "state" / "catalog.db"
    proc = start_child(f"sqlite:///{db}", tmp_path, after=3)  # three tables made, the rest not yet
    try:
        wait_until(lambda: (tmp_path / "paused").exists() or proc.poll() is not None, "the migration to pause")
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert_migrated(db)  # the next process migrates it from the start


def test_processes_racing_to_open_a_fresh_catalog_all_open_it(tmp_path):
    db = tmp_path / "state" / "catalog.db"
    first = start_child(f"sqlite:///{db}", tmp_path, after=3)
    second = None
    try:
        wait_until(lambda: (tmp_path / "paused").exists() or first.poll() is not None, "the first migration to pause")
        assert first.poll() is None, first.communicate()
        second = start_child(f"sqlite:///{db}")
        # the second either waits for the first (the lock) or has already given up
        wait_until(lambda: second.poll() is not None or blocked_on_a_lock(second.pid), "the second process to wait or end")
        (tmp_path / "go").touch()
        for proc in (first, second):
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0 and out.strip() == "opened", err
    finally:
        (tmp_path / "go").touch()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert_migrated(db)


def test_many_processes_opening_a_fresh_catalog_at_once(tmp_path):
    db = tmp_path / "catalog.db"
    procs = [start_child(f"sqlite:///{db}") for _ in range(6)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "opened", err
    assert_migrated(db)
