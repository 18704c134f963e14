"""The session list is read a page at a time: the page's rows with LIMIT/OFFSET, the total
counted in SQL, the page's locations resolved together. Its cost in queries does not grow
with the number of sessions in the catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import event

from imalinkd import session_list, storage
from imalinkd.catalog import Catalog, ImportSession, SessionCopy
from imalinkd.config import load_config


def make_config(tmp_path: Path) -> Path:
    p = tmp_path / "imalinkd.toml"
    p.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/catalog.db"\n\n[storage]\nroot = "{tmp_path}/archive"\n\n'
                 '[api]\nlisten = ""\n')
    return p


def add_sessions(catalog: Catalog, n: int, status: str = "completed", storage_id: str | None = None, start: int = 0) -> list[str]:
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ids = []
    with catalog.session() as s:
        for i in range(start, start + n):
            sid = str(uuid.uuid4())
            ids.append(sid)
            s.add(ImportSession(storage_uuid=sid, created_at=base + timedelta(minutes=i), copy_status=status, storage_id=storage_id,
                                storage_directory_name=f"20260101_import_n{i}_{sid[:8]}" if storage_id else None,
                                importer_host="no-such-host", importer_pid=1))
    return ids


def statements_for(catalog: Catalog, fn) -> int:
    seen = []

    def count(*_a):
        seen.append(1)

    event.listen(catalog.engine, "before_cursor_execute", count)
    try:
        fn()
    finally:
        event.remove(catalog.engine, "before_cursor_execute", count)
    return len(seen)


def test_pages_newest_first_with_the_total(tmp_path):
    catalog = Catalog.open(f"sqlite:///{tmp_path}/catalog.db")
    ids = add_sessions(catalog, 12)
    first = session_list.page(catalog, limit=5)
    second = session_list.page(catalog, limit=5, offset=5)
    rest = session_list.page(catalog, offset=10)
    assert first.total == second.total == rest.total == 12
    assert [r.storage_uuid for r in first.rows + second.rows + rest.rows] == ids[::-1]


def test_status_is_the_effective_one(tmp_path):
    catalog = Catalog.open(f"sqlite:///{tmp_path}/catalog.db")
    done = add_sessions(catalog, 3)
    dead = add_sessions(catalog, 2, status="in_progress", start=3)  # no importer alive: counts as failed
    failed = add_sessions(catalog, 1, status="failed", start=5)
    page = session_list.page(catalog, "failed", limit=10)
    assert [r.storage_uuid for r in page.rows] == (dead + failed)[::-1] and page.total == 3
    assert session_list.page(catalog, "in_progress").total == 0
    assert [r.storage_uuid for r in session_list.page(catalog, "completed", limit=2, offset=1).rows] == done[::-1][1:3]


def test_a_page_costs_the_same_queries_whatever_the_catalog_size(tmp_path):
    cfg = load_config(str(make_config(tmp_path)))
    root = tmp_path / "archive"
    marker = storage.init_storage(str(root))
    catalog = Catalog.open(cfg)

    def one_page():
        page = session_list.page(catalog, limit=10)
        where = session_list.locations(cfg, catalog, page.rows)
        assert len(where) == 10

    add_sessions(catalog, 20, storage_id=marker.storage_id)
    small = statements_for(catalog, one_page)
    ids = add_sessions(catalog, 300, storage_id=marker.storage_id, start=20)
    with catalog.session() as s:  # replicas on another drive, not plugged in
        for r in s.query(ImportSession).filter(ImportSession.storage_uuid.in_(ids)):
            s.add(SessionCopy(session_id=r.id, storage_id=str(uuid.uuid4()), storage_directory_name=r.storage_directory_name))
    large = statements_for(catalog, one_page)
    assert large <= small + 10  # the replicas' drive is looked for once, not once per session


def test_locations_found_on_the_drive(tmp_path):
    cfg = load_config(str(make_config(tmp_path)))
    marker = storage.init_storage(str(tmp_path / "archive"))
    catalog = Catalog.open(cfg)
    add_sessions(catalog, 3, storage_id=marker.storage_id)
    page = session_list.page(catalog)
    there = page.rows[0]
    (tmp_path / "archive" / there.storage_directory_name).mkdir()
    where = session_list.locations(cfg, catalog, page.rows)
    assert where[there.id] == os.path.join(str(tmp_path / "archive"), there.storage_directory_name)
    assert [where[r.id] for r in page.rows[1:]] == [None, None]


def test_sessions_command_limit_and_offset(tmp_path):
    cfg = make_config(tmp_path)
    catalog = Catalog.open(f"sqlite:///{tmp_path}/catalog.db")
    ids = add_sessions(catalog, 4)
    catalog.close()

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(cfg), "sessions", *args],
                           capture_output=True, text=True, timeout=120)
        return r

    r = run("--json", "--limit", "2", "--offset", "1")
    assert r.returncode == 0, r.stderr
    assert [o["import_session_id"] for o in json.loads(r.stdout)] == ids[::-1][1:3]
    assert len(json.loads(run("--json").stdout)) == 4  # without --limit: every session, as before
    assert "sessions 2-3 of 4" in run("--limit", "2", "--offset", "1").stdout
    bad = run("--limit", "0")
    assert bad.returncode == 2 and "--limit" in bad.stderr
