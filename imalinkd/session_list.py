"""One page of the session list, newest first: the page's rows read with LIMIT/OFFSET, the
total counted in SQL, and the page's locations resolved together (one query for every
replica of the page, each storage root looked for once), so listing costs the same with ten
sessions as with ten thousand."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, or_, select

from imalinkd import locate
from imalinkd.catalog import Catalog, ImportSession, SessionCopy
from imalinkd.sessions import importer_alive


@dataclass
class SessionPage:
    rows: list[ImportSession]
    total: int  # sessions matching the filter, on every page


def _status_filter(s, status: str | None):
    """The SQL condition for an effective status (DESIGN §2: ``in_progress`` with no live
    importer counts as failed). Only the few ``in_progress`` rows are looked at in Python."""
    if status is None:
        return None
    if status not in ("in_progress", "failed"):
        return ImportSession.copy_status == status
    running = list(s.scalars(select(ImportSession).where(ImportSession.copy_status == "in_progress")))
    alive = [r.id for r in running if importer_alive(r)]
    if status == "in_progress":
        return ImportSession.id.in_(alive)
    dead = [r.id for r in running if r.id not in set(alive)]
    return or_(ImportSession.copy_status == "failed", ImportSession.id.in_(dead))


def page(catalog: Catalog, status: str | None = None, limit: int | None = None, offset: int = 0) -> SessionPage:
    """The sessions with this effective ``status`` (all when None), newest first, ``limit``
    of them (all when None) after skipping ``offset``."""
    with catalog.session() as s:
        cond = _status_filter(s, status)
        q = select(ImportSession).order_by(ImportSession.created_at.desc(), ImportSession.id.desc()).offset(offset)
        count = select(func.count(ImportSession.id))
        if cond is not None:
            q, count = q.where(cond), count.where(cond)
        if limit is not None:
            q = q.limit(limit)
        return SessionPage(list(s.scalars(q)), s.scalar(count) or 0)


def locations(config, catalog: Catalog, rows: list[ImportSession]) -> dict[int, str | None]:
    """Each row's session directory at its live path now (None: no copy reachable), for a
    whole page at once: home root first, then replicas, as :func:`locate.session_path`."""
    copies: dict[int, list[locate.KnownCopy]] = {r.id: [] for r in rows}
    for r in rows:
        if r.storage_id and r.storage_directory_name:
            copies[r.id].append(locate.KnownCopy(r.storage_id, r.storage_directory_name, True))
    if rows:
        with catalog.session() as s:
            replicas = s.scalars(select(SessionCopy).where(SessionCopy.session_id.in_(list(copies)))
                                .order_by(SessionCopy.id)).all()
        home = {r.id: r.storage_id for r in rows}
        for c in replicas:
            known = copies[c.session_id]
            if not any(k.storage_id == c.storage_id for k in known):
                known.append(locate.KnownCopy(c.storage_id, c.storage_directory_name, c.storage_id == home[c.session_id]))
    scan = locate._Scan.of(config)
    roots: dict[str, str | None] = {}
    out: dict[int, str | None] = {}
    for r in rows:
        out[r.id] = None
        for copy in copies[r.id]:
            if copy.storage_id not in roots:
                roots[copy.storage_id] = locate.resolve_root(config, catalog, copy.storage_id, scan)
            found = locate._copy_dir(roots[copy.storage_id], copy.directory_name)
            if found:
                out[r.id] = found
                break
    return out
