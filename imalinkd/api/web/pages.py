"""What each page shows, gathered from the same functions the JSON API and the CLI call.

Every value is read at request time from the catalog and the drives as they are now (a
session whose drive is away shows "not accessible", never a stale path). Functions here
touch disks and the catalog, so they run in the server's thread pool (plain ``def``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

from fastapi.routing import APIRoute
from sqlalchemy import func, select

from imalinkd import locate, paths, storage
from imalinkd.catalog import ImportSession, SkippedFile, find_session
from imalinkd.errors import ImalinkError, MarkerError
from imalinkd.sessions import effective_status, is_embedded_default, session_json

PAGE_SIZES = (25, 50, 100)
FILES_PER_PAGE = 60
MAX_PER_PAGE = 200
SKIPPED_SHOWN = 500
STATUSES = ("in_progress", "failed", "completed", "not_started")

# The JSON API's own handlers the pages call, so that a page and the API never disagree.
API_HANDLERS = ("get_session", "list_images", "get_storage_status", "get_scan_locations", "post_update_storage_path",
                "post_resume", "post_rollback", "post_reindex")


class ApiHandlers:
    """The API's route functions, looked up by name once (a missing one fails at start)."""

    def __init__(self, app: Any) -> None:
        found = {r.name: r.endpoint for r in app.routes if isinstance(r, APIRoute)}
        missing = [n for n in API_HANDLERS if n not in found]
        if missing:
            raise RuntimeError(f"the web UI needs API handlers that do not exist: {', '.join(missing)}")
        self._found: dict[str, Callable[..., Any]] = {n: found[n] for n in API_HANDLERS}

    def __getattr__(self, name: str) -> Callable[..., Any]:
        try:
            return self.__dict__["_found"][name]
        except KeyError:
            raise AttributeError(name) from None


@dataclass(frozen=True)
class Pager:
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


def pager(page: int, per_page: int, total: int) -> Pager:
    per_page = min(max(1, per_page), MAX_PER_PAGE)
    pages = max(1, math.ceil(total / per_page))
    return Pager(min(max(1, page), pages), per_page, total)


# --- sessions ------------------------------------------------------------------------------------


def _all_sessions(catalog) -> list[ImportSession]:
    with catalog.session() as s:
        return list(s.scalars(select(ImportSession).order_by(ImportSession.created_at.desc(), ImportSession.id.desc())))


def _matches(row: ImportSession, text: str) -> bool:
    hay = " ".join(str(v) for v in (row.storage_uuid, row.storage_directory_name, row.description, row.source_label,
                                    paths.display(row.original_source_path) if row.original_source_path else "") if v)
    return text.casefold() in hay.casefold()


def sessions_list(config, catalog, *, status: str | None, text: str | None, page: int, per_page: int) -> dict:
    """One page of sessions, newest first, filtered by (effective) status and a text."""
    rows = _all_sessions(catalog)
    if status in STATUSES:
        rows = [r for r in rows if effective_status(r) == status]
    if text:
        rows = [r for r in rows if _matches(r, text)]
    p = pager(page, per_page, len(rows))
    scan = locate._Scan(config.storage.search_depth)
    items = [session_json(r, locate.session_path(config, catalog, r, scan)) for r in rows[p.offset: p.offset + p.per_page]]
    return {"items": items, "pager": p, "status": status if status in STATUSES else "", "text": text or ""}


def recent_sessions(config, catalog, n: int = 8) -> list[dict]:
    return sessions_list(config, catalog, status=None, text=None, page=1, per_page=PAGE_SIZES[0])["items"][:n]


def load_session(catalog, ref: str) -> ImportSession:
    with catalog.session() as s:
        return find_session(s, ref)


def session_detail(catalog, api: ApiHandlers, row: ImportSession, page: int) -> dict:
    """The session page: the API's session object, storage status, one page of files and
    the skipped files with their reasons."""
    body = api.get_session(row.storage_uuid)
    status = api.get_storage_status(row.storage_uuid)
    total = body["counts"]["images"]
    p = pager(page, FILES_PER_PAGE, total)
    images = api.list_images(row.storage_uuid, limit=p.per_page, offset=p.offset)["items"] if total else []
    with catalog.session() as s:
        skipped = [{"path": paths.display(k.original_path), "reason": k.reason, "size": k.file_size, "duplicate_of": k.duplicate_of}
                   for k in s.scalars(select(SkippedFile).where(SkippedFile.session_id == row.id).order_by(SkippedFile.id).limit(SKIPPED_SHOWN))]
        n_skipped = s.scalar(select(func.count(SkippedFile.id)).where(SkippedFile.session_id == row.id)) or 0
    return {"session": body, "storage": status, "images": images, "pager": p, "skipped": skipped, "skipped_total": n_skipped}


# --- the import dialog's storage check -------------------------------------------------------------


def storage_check(config, catalog, path: str) -> dict:
    """Can an import write into ``path`` now? ``accessible`` and, when not, why (for the
    dialog's "Storage path not accessible" as the path is typed)."""
    path = (path or "").strip()
    out: dict[str, Any] = {"path": path, "accessible": False}
    if not path:
        out["reason"] = "no path given"
        return out
    if not os.path.isabs(path):
        out["reason"] = "not an absolute path"
        return out
    if not os.path.isdir(path):
        out["reason"] = "no such directory (is the drive connected?)" if not os.path.exists(path) else "not a directory"
        return out
    try:
        marker = storage.read_marker(path)
    except (MarkerError, OSError) as e:
        out["reason"] = f"its storage marker cannot be read: {e}"
        return out
    configured = str(config.storage_root) if config.storage_root else None
    # only the embedded default root is made on first use; any other needs init-storage
    if marker is None and not (is_embedded_default(config) and os.path.abspath(path) == configured):
        out["reason"] = f"not a storage root yet (run 'imalinkd init-storage {path}')"
        return out
    if not os.access(path, os.W_OK):
        out["reason"] = "not writable by the daemon"
        return out
    out["accessible"] = True
    if marker is not None:
        out.update(storage_id=marker.storage_id, label=marker.label)
    try:
        out.update(locate.root_health(config, path, catalog, marker.storage_id if marker else None))
    except (OSError, ImalinkError):
        pass
    return out


def default_storage_root(config, catalog) -> str:
    if config.storage_root:
        return str(config.storage_root)
    return locate.resolve_root(config, catalog, config.storage.storage_id) or ""
