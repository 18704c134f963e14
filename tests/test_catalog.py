"""The catalog: migrations match the models, WAL mode, lossless paths, session look-up."""

from __future__ import annotations

import os

import pytest
from sqlalchemy import select

from imalinkd.catalog import MIGRATIONS, Catalog, ImportSession, _head_revision, find_session
from imalinkd.errors import AmbiguousSessionError, CatalogError, SessionNotFoundError
from imalinkd.storage import utcnow


def test_migrations_build_exactly_the_models(tmp_path):
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config as AlembicConfig
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from imalinkd.catalog.models import Base

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert _head_revision() == ScriptDirectory.from_config(cfg).get_current_head()
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'c.db'}")
    with catalog.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations differ: {diff}"


def test_sqlite_catalog_runs_in_wal_mode(tmp_path):
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'sub' / 'c.db'}")
    with catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_paths_that_are_not_utf8_survive_the_catalog(tmp_path):
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'c.db'}")
    weird = os.fsdecode(b"/media/\xff\xfe")
    with catalog.session() as s:
        s.add(ImportSession(storage_uuid="1a2b3c4d-0000-4000-8000-000000000000", created_at=utcnow(), original_source_path=weird))
    with catalog.session() as s:
        assert s.scalars(select(ImportSession)).one().original_source_path == weird


def test_find_session_by_id_uuid_prefix_and_directory(tmp_path):
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'c.db'}")
    with catalog.session() as s:
        for u, name in (("1a2b3c4d-0000-4000-8000-000000000001", "20261124_import_a_1a2b3c4d"),
                        ("1a2b3c4d-0000-4000-8000-000000000002", "20261124_import_b_1a2b3c4d"),
                        ("99999999-0000-4000-8000-000000000003", "20261124_import_c_99999999")):
            s.add(ImportSession(storage_uuid=u, storage_directory_name=name, created_at=utcnow()))
    with catalog.session() as s:
        assert find_session(s, "99999999").storage_directory_name == "20261124_import_c_99999999"
        assert find_session(s, "20261124_import_b_1a2b3c4d").storage_uuid.endswith("2")
        assert find_session(s, "1").storage_uuid.endswith("1")
        with pytest.raises(AmbiguousSessionError):
            find_session(s, "1a2b3c4d")
        with pytest.raises(SessionNotFoundError):
            find_session(s, "deadbeef")


def test_bad_catalog_url_is_a_clear_error():
    with pytest.raises(CatalogError) as e:
        Catalog.open("nonsense://")
    assert "nonsense://" in str(e.value)


def test_a_damaged_catalog_file_is_a_clear_error_saying_how_to_rebuild_it(tmp_path):
    path = tmp_path / "catalog.db"
    path.write_bytes(os.urandom(100_000))
    with pytest.raises(CatalogError, match="file is not a database.*move this file aside.*'imalinkd reindex' rebuilds it"):
        Catalog.open(f"sqlite:///{path}")
