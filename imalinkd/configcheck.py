"""What ``check-config`` checks beyond parsing: whether the catalog can be reached.

``catalog_reachable`` connects to the catalog the way the daemon would and says whether it
could, in one line fit to print (the URL's password is never in it). It changes nothing:
an existing SQLite file is opened read-only, a missing one is only checked for a folder it
can be created in, a server database is asked ``SELECT 1``.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from imalinkd import redact

CONNECT_TIMEOUT_SECONDS = 5


@dataclass(frozen=True)
class CatalogCheck:
    ok: bool
    url: str  # redacted
    message: str

    def as_json(self) -> dict:
        return {"ok": self.ok, "url": self.url, "message": self.message}


def catalog_reachable(url: str) -> CatalogCheck:
    shown = redact.url(url)
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
    except Exception as e:
        return CatalogCheck(False, shown, f"not a database URL: {redact.text(str(e))}")
    if parsed.get_backend_name() == "sqlite":
        ok, message = _sqlite(parsed.database)
    else:
        ok, message = _server(url, parsed)
    return CatalogCheck(ok, shown, redact.text(message))


def _sqlite(database: str | None) -> tuple[bool, str]:
    if not database or database == ":memory:":
        return True, "an in-memory database (nothing is kept)"
    path = Path(database)
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), Path("/"))
        if not os.access(parent, os.W_OK | os.X_OK):
            return False, f"{path} does not exist and cannot be created: {parent} is not writable by this user"
        return True, f"{path} does not exist yet; it is created on first use"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=CONNECT_TIMEOUT_SECONDS)
        try:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            revision = conn.execute("SELECT version_num FROM alembic_version").fetchone() if "alembic_version" in tables else None
        finally:
            conn.close()
    except sqlite3.Error as e:
        return False, f"{path} cannot be read as a catalog: {e}"
    return True, f"connected to {path}" + (f" (schema revision {revision[0]})" if revision else " (no schema yet)")


def _server(url: str, parsed) -> tuple[bool, str]:
    from sqlalchemy import create_engine
    from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError

    backend = parsed.get_backend_name()
    args = {"connect_timeout": CONNECT_TIMEOUT_SECONDS} if backend in ("postgresql", "mysql", "mariadb") else {}
    try:
        engine = create_engine(url, connect_args=args, pool_pre_ping=False)
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as e:
        hint = " (for PostgreSQL install psycopg and write postgresql+psycopg://…)" if backend == "postgresql" else ""
        return False, f"no database driver for {parsed.drivername}: {e}{hint}"
    except Exception as e:
        return False, f"not usable: {e}"
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except SQLAlchemyError as e:
        lines = [line.strip() for line in str(getattr(e, "orig", None) or e).splitlines() if line.strip()]
        return False, f"cannot connect to {parsed.host or 'the server'}: {'; '.join(lines[:3])}"
    finally:
        engine.dispose()
    return True, f"connected to {backend} database {parsed.database or ''} on {parsed.host or 'the local socket'}"
