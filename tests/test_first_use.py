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
from pathlib import Path

from sqlalchemy import inspect

from imalinkd.catalog import Catalog, _head_revision
from test_check_config import postgres  # noqa: F401 - the fixture
from waiting import wait_until

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


# --- the default storage root, made on first use by two imports at once -----------------------------

# An import (the command line) with the embedded default storage root at argv[2]; with
# argv[4] (a directory) it stops right after first finding no marker there, as a process
# does that another overtakes: it creates <dir>/paused, then waits for <dir>/go.
IMPORTER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import imalinkd.config, imalinkd.storage as storage
    imalinkd.config.default_storage_root = lambda: Path(sys.argv[2])
    if len(sys.argv) > 4:
        real = storage.read_marker
        def read_marker(root):
            marker = real(root)
            if marker is None and not os.path.exists(os.path.join(sys.argv[4], "paused")):
                open(os.path.join(sys.argv[4], "paused"), "w").close()
                while not os.path.exists(os.path.join(sys.argv[4], "go")):
                    time.sleep(0.01)
            return marker
        storage.read_marker = read_marker
    from imalinkd.cli import main
    raise SystemExit(main(["--config", sys.argv[1], "import", sys.argv[3], "--json"]))
""")


def test_two_imports_making_the_default_storage_root_at_once_both_complete(tmp_path):
    from cards import make_card

    cfg = tmp_path / "imalinkd.toml"
    cfg.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/state/catalog.db"\n\n[import]\nthumbnails = false\n\n'
                   f'[api]\nlisten = ""\n\n[daemon]\nstate_dir = "{tmp_path}/state"\n')
    root = tmp_path / "default-archive"
    root.mkdir()  # there, empty (its marker is what is looked for)
    cards = [make_card(tmp_path / f"card{i}", shots=2, raw_kb=16, seed=i) for i in (1, 2)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    Catalog.open(f"sqlite:///{tmp_path}/state/catalog.db").close()  # the catalog's own first use is another test

    def start(card, *pause):
        return subprocess.Popen([sys.executable, "-c", IMPORTER, str(cfg), str(root), str(card.root), *pause], cwd=REPO,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    first = start(cards[0], str(tmp_path))
    try:
        wait_until(lambda: (tmp_path / "paused").exists() or first.poll() is not None, "the first import to find no marker")
        assert first.poll() is None, first.communicate()
        second = start(cards[1])  # overtakes it: makes the root, records it, imports
        out2, err2 = second.communicate(timeout=120)
        assert second.returncode == 0, err2
        (tmp_path / "go").touch()
        out1, err1 = first.communicate(timeout=120)
    finally:
        (tmp_path / "go").touch()
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err1  # not "config.json is gone": the marker is there, made by the other
    import json

    assert {json.loads(out)["copy_status"] for out in (out1, out2)} == {"completed"}
    assert len([p for p in root.iterdir() if p.name.endswith(tuple("0123456789abcdef"))]) == 2


def test_processes_opening_a_fresh_postgresql_catalog_at_once_all_open_it(postgres):
    """The same race on PostgreSQL: the migration runs under an advisory lock, in one transaction."""
    from test_check_config import SECRET

    url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:{postgres}/postgres"
    procs = [start_child(url) for _ in range(4)]
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.strip() == "opened", err
    catalog = Catalog.open(url)
    try:
        with catalog.engine.connect() as c:
            assert c.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == _head_revision()
            assert {"import_sessions", "images", "photos", "storage_roots"} <= set(inspect(c).get_table_names())
    finally:
        catalog.close()
