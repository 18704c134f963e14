"""The SQL catalog: opening it, migrating it, and the session-lookup helpers every command
needs. SQLite in WAL mode is the embedded default; any SQLAlchemy URL works."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event, or_, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError, ProgrammingError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from imalinkd.catalog.models import (
    Base, FileCheck, Image, ImageCopy, ImportSession, Photo, RootPath, SessionCopy, SkippedFile, StorageRoot, media_json,
)
from imalinkd.errors import AmbiguousSessionError, CatalogError, SessionNotFoundError, human_bytes

__all__ = [
    "Base", "Catalog", "FileCheck", "Image", "ImageCopy", "ImportSession", "Photo", "RootPath", "SessionCopy", "SkippedFile",
    "StorageRoot", "media_json",
]

MIGRATIONS = Path(__file__).parent / "migrations"


def _head_revision() -> str:
    """The newest migration: the one revision no other revises (read from the files)."""
    import re

    revisions, parents = set(), set()
    for path in (MIGRATIONS / "versions").glob("*.py"):
        text = path.read_text()
        rev = re.search(r"^revision\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
        down = re.search(r"^down_revision\s*=\s*['\"]([^'\"]+)['\"]", text, re.M)
        if rev:
            revisions.add(rev.group(1))
        if down:
            parents.add(down.group(1))
    heads = revisions - parents
    if len(heads) != 1:
        raise RuntimeError(f"migrations have {len(heads)} heads: {sorted(heads)}")
    return heads.pop()


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


class Catalog:
    """A handle on the catalog database. Thread-safe: each unit of work opens its own
    ``Session`` with :meth:`session`."""

    def __init__(self, engine: Engine, url: str) -> None:
        self.engine = engine
        self.url = url
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, config_or_url) -> "Catalog":
        """Open (creating and migrating as needed) the catalog of a Config or a URL."""
        url = config_or_url if isinstance(config_or_url, str) else config_or_url.catalog_url
        try:
            parsed = make_url(url)
        except Exception as e:
            raise CatalogError(url=url, message=f"not a database URL ({e})") from None
        is_sqlite = parsed.get_backend_name() == "sqlite"
        if is_sqlite and parsed.database and parsed.database != ":memory:":
            try:
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise CatalogError(url=url, message=f"cannot create its directory: {e.strerror}") from None
        try:
            engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False} if is_sqlite else {})
        except Exception as e:
            raise CatalogError(url=url, message=str(e)) from None
        if is_sqlite:
            event.listen(engine, "connect", _sqlite_pragmas)
        catalog = cls(engine, url)
        catalog.migrate()
        return catalog

    def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (a no-op when it is there).

        The common case — schema already current — is decided without importing Alembic
        (a tenth of a second on every command). Otherwise one process at a time migrates
        (see :meth:`_migration_lock`) and every step of it is one transaction: processes
        racing to open a fresh catalog all find it migrated once, and a process killed
        half-way leaves the catalog as it was before, to be migrated by the next one."""
        head = _head_revision()
        try:
            try:
                if not self._is_new_file() and self._current_revision() == head:
                    return
            except OperationalError:
                pass  # busy while another process creates or migrates the file: decided below, under the lock
            with self._migration_lock():
                # A fresh file is also first connected to here (its journal mode is set on
                # the first connection): racing processes do that one at a time.
                if self._current_revision() != head:
                    self._upgrade()
        except SQLAlchemyError as e:
            hint = ""
            if isinstance(e, DatabaseError) and not isinstance(e, OperationalError) and self.engine.url.get_backend_name() == "sqlite":
                hint = (". The catalog is a cache of the archive drives: move this file aside (with its -wal and -shm) "
                        "and 'imalinkd reindex' rebuilds it from them")
            raise CatalogError(url=self.url, message=f"cannot open or migrate: {e.__class__.__name__}: "
                                                     f"{e.orig if hasattr(e, 'orig') else e}{self._room()}{hint}") from None

    def _is_new_file(self) -> bool:
        """Is the catalog a SQLite file that does not exist yet, or is still empty?"""
        url = self.engine.url
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return False
        try:
            return os.stat(url.database).st_size == 0
        except FileNotFoundError:
            return True

    def _current_revision(self) -> str | None:
        with self.engine.begin() as conn:
            try:
                return conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            except SQLAlchemyError:
                return None

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """One migrating process at a time: for a SQLite file, an exclusive ``flock`` on
        ``<catalog>.lock`` beside it (the others wait for it however long a migration
        takes, rather than for SQLite's busy timeout). Other databases lock inside the
        migration's transaction (:meth:`_upgrade`)."""
        url = self.engine.url
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            yield
            return
        import fcntl

        path = f"{url.database}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        except OSError:  # a read-only catalog directory: SQLite's own locking still holds
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _upgrade(self) -> None:
        """Run the migrations up to head in one transaction, from whatever revision the
        catalog holds once this process has the database to itself."""
        from alembic import command
        from alembic.config import Config as AlembicConfig

        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        backend = self.engine.url.get_backend_name()
        with self.engine.connect() as conn:
            if backend == "sqlite":
                # The driver would run each CREATE in a transaction of its own (and commit
                # it): a kill between two of them left a catalog that never migrated again.
                # One explicit transaction, holding the write lock from its start, holds
                # them all.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif backend == "postgresql":
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7362891045)")  # 'imalinkd migrate', any constant
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")  # in our transaction: Alembic adds none of its own
            conn.commit()

    def _room(self) -> str:
        """For a SQLite file whose file system is (nearly) full, a note saying so: SQLite
        reports a shared-memory file it cannot extend as a mere 'disk I/O error'."""
        url = self.engine.url
        if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
            return ""
        try:
            free = shutil.disk_usage(os.path.dirname(os.path.abspath(url.database))).free
        except OSError:
            return ""
        return f" (its file system is full: {human_bytes(free)} free)" if free < 16 * 1024 * 1024 else ""

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: committed when the block ends, rolled back on an exception.

        The database failing underneath (its disk full or read-only, an I/O error, a lock
        held past the busy timeout) is raised as CatalogError saying so, whether it came
        through SQLAlchemy or straight from the driver (reindex's bulk inserts)."""
        s = self._sessions()
        try:
            yield s
            s.commit()
        except (DatabaseError, sqlite3.DatabaseError) as e:
            _rollback(s)
            if not is_database_failure(e):
                raise
            detail = e.orig if isinstance(e, DatabaseError) else e
            raise CatalogError(url=self.url, message=f"cannot read or write it: {detail}{self._room()}{self._damaged(e)}; "
                                                     "this change was not recorded") from e
        except BaseException:
            _rollback(s)
            raise
        finally:
            s.close()

    def _damaged(self, e: BaseException) -> str:
        """For a SQLite file whose pages are damaged (its disk failing, a power cut on a
        drive that lies about flushing), what to do: the drives can rebuild it."""
        if self.engine.url.get_backend_name() != "sqlite" or "malformed" not in str(e) and "not a database" not in str(e):
            return ""
        return (". The catalog file is damaged; it is a cache of the archive drives: move it aside (with its -wal and "
                "-shm files) and 'imalinkd reindex' rebuilds it from them")

    def close(self) -> None:
        self.engine.dispose()


def is_database_failure(e: BaseException) -> bool:
    """Is ``e`` the database failing underneath (its disk full, failing or read-only, its
    file damaged, a lock held past the busy timeout), as opposed to a constraint the caller
    handles (IntegrityError) or a bug in a statement (ProgrammingError)?"""
    if isinstance(e, (IntegrityError, ProgrammingError, sqlite3.IntegrityError, sqlite3.ProgrammingError)):
        return False
    return isinstance(e, (DatabaseError, sqlite3.DatabaseError))


def _rollback(s: Session) -> None:
    try:
        s.rollback()
    except SQLAlchemyError:  # the connection is gone with the failure: nothing to undo
        pass


def find_session(s: Session, ref: str | int) -> ImportSession:
    """A session by catalog id, UUID, UUID prefix (8+ hex digits) or directory name."""
    ref_s = str(ref).strip()
    if not ref_s:
        raise SessionNotFoundError(ref=ref_s)
    if ref_s.isdigit() and len(ref_s) < 8:
        row = s.get(ImportSession, int(ref_s))
        if row is not None:
            return row
    q = select(ImportSession).where(
        or_(
            ImportSession.storage_uuid == ref_s.lower(),
            ImportSession.storage_directory_name == ref_s,
            ImportSession.storage_uuid.startswith(ref_s.lower()) if len(ref_s) >= 4 and all(c in "0123456789abcdef-" for c in ref_s.lower()) else False,
        )
    )
    rows = list(s.scalars(q))
    if not rows:
        raise SessionNotFoundError(ref=ref_s)
    exact = [r for r in rows if r.storage_uuid == ref_s.lower() or r.storage_directory_name == ref_s]
    if len(exact) == 1:
        return exact[0]
    if len(rows) > 1:
        raise AmbiguousSessionError(ref=ref_s, matches=", ".join(r.storage_uuid[:13] for r in rows[:5]))
    return rows[0]


def upsert_storage_root(s: Session, storage_id: str, label: str, path: str, now, free_bytes: int | None,
                        total_bytes: int | None, verified: bool = False, device_key: str | None = None) -> StorageRoot:
    """Record that the root ``storage_id`` was seen at ``path`` now (information only: the
    live path is always resolved again from the marker)."""
    row = s.scalars(select(StorageRoot).where(StorageRoot.storage_id == storage_id)).first()
    if row is None:
        row = StorageRoot(storage_id=storage_id, first_seen_at=now)
        s.add(row)
    row.label = label
    row.last_seen_path = path
    row.last_seen_at = now
    row.free_bytes, row.total_bytes = free_bytes, total_bytes
    if verified:
        row.last_verified_at = now
    if device_key:
        row.device_key = device_key
    record_root_path(s, storage_id, path, now)
    return row


def this_station() -> str:
    """The name of the machine this process runs on, as the catalog records it."""
    return socket.gethostname()


def record_root_path(s: Session, storage_id: str, path: str, now) -> None:
    """Remember that the root ``storage_id`` was seen at ``path`` on this station; kept for
    ever (see :class:`RootPath`)."""
    station = this_station()
    row = s.scalar(select(RootPath).where(RootPath.station == station, RootPath.path == path, RootPath.storage_id == storage_id))
    if row is None:
        s.add(RootPath(storage_id=storage_id, station=station, path=path, first_seen_at=now, last_seen_at=now))
    else:
        row.last_seen_at = now


def roots_ever_at(s: Session, path: str) -> list[str]:
    """The storage_ids of the roots ever seen at ``path`` on this station (oldest first)."""
    q = select(RootPath.storage_id).where(RootPath.station == this_station(), RootPath.path == path).order_by(RootPath.id)
    return list(s.scalars(q))
