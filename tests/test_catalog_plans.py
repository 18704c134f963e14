"""The catalog's hot look-ups use the index that makes them cheap, whatever statistics the
planner has: a duplicate look-up finds a file by its sha256, not by scanning every archived
file of the same size (800,000 uncompressed RAW files share one size)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timezone

from sqlalchemy.dialects import sqlite

from imalinkd.catalog import Catalog, ImportSession
from imalinkd.duplicates import candidates_query


def plan_of(catalog: Catalog, query) -> str:
    sql = str(query.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    with catalog.engine.connect() as conn:
        return "\n".join(str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))


def fill_one_size(catalog: Catalog, sessions: int = 4, per_session: int = 2500, size: int = 25_000_000) -> None:
    now = datetime.now(timezone.utc)
    with catalog.session() as s:
        for _ in range(sessions):
            s.add(ImportSession(storage_uuid=str(uuid.uuid4()), created_at=now, copy_status="completed"))
    with catalog.engine.begin() as conn:
        ids = [r[0] for r in conn.exec_driver_sql("SELECT id FROM import_sessions")]
        rows = [(sid, f"DCIM/IMG_{n:05d}.NEF", size, hashlib.sha256(f"{sid}/{n}".encode()).hexdigest())
                for sid in ids for n in range(per_session)]
        conn.exec_driver_sql("INSERT INTO images (session_id, storage_relative_path, file_size, sha256, size_mismatch) "
                             "VALUES (?, ?, ?, ?, 0)", rows)


def test_duplicate_lookup_uses_the_sha256_index_among_many_files_of_one_size(tmp_path):
    catalog = Catalog.open(f"sqlite:///{tmp_path}/catalog.db")
    fill_one_size(catalog)
    query = candidates_query("ab" * 32, 25_000_000)
    assert "ix_images_sha256" in plan_of(catalog, query)
    with catalog.engine.begin() as conn:  # and with the statistics ANALYZE gathers
        conn.exec_driver_sql("ANALYZE")
    assert "ix_images_sha256" in plan_of(catalog, query)
    catalog.close()
