"""Maintenance of existing sessions: verification against the recorded sha256, rollback."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Callable

import structlog
from sqlalchemy import delete, select

from imalinkd import durable, paths, readback, storage
from imalinkd.catalog import Catalog, Image, ImportSession, StorageRoot, find_session
from imalinkd.config import Config
from imalinkd.errors import ImalinkError, SessionBusyError, SessionStateError, StorageError, StorageNotFoundError
from imalinkd.manifest import read_manifest
from imalinkd.sessions import effective_status, session_dir_of

log = structlog.get_logger()


# --- rollback and verify ---------------------------------------------------------------------


def rollback_session(config: Config, ref: str, *, force: bool = False, catalog: Catalog | None = None) -> dict:
    """Remove a failed session's directory and catalog rows (a completed one only with
    ``force``). The source is not touched."""
    own = catalog is None
    catalog = catalog or Catalog.open(config)
    try:
        with catalog.session() as s:
            row = find_session(s, ref)
            status = effective_status(row)
            sid, name = row.storage_uuid, row.storage_directory_name
        if status == "in_progress":
            raise SessionBusyError(session=sid)
        if status == "completed" and not force:
            raise SessionStateError(session=sid, status="completed", message="rolling back removes archived photos; add --force if that is really what you want")
        session_dir = session_dir_of(config, catalog, row)
        removed_dir = None
        if session_dir is not None and row.copy_files:
            if os.path.islink(session_dir) or not storage.is_session_dir_name(os.path.basename(session_dir)):
                raise StorageError(path=session_dir, message="does not look like a session directory; not removed")
            shutil.rmtree(session_dir)
            durable.fsync_dir(os.path.dirname(session_dir))
            removed_dir = session_dir
        elif row.copy_files and row.total_files:
            raise StorageNotFoundError(path=name, storage_id=row.storage_id, where=f" to remove session {sid[:8]} from")
        with catalog.session() as s:
            s.execute(delete(ImportSession).where(ImportSession.storage_uuid == sid))
        log.info("session_rolled_back", session_id=sid, removed=removed_dir, forced=force)
        return {"import_session_id": sid, "storage_directory_name": name, "removed_directory": removed_dir, "copy_status_was": status}
    finally:
        if own:
            catalog.close()


@dataclass
class VerifyReport:
    ok: bool = True
    checked: int = 0
    damaged: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    inaccessible: list[str] = field(default_factory=list)  # sessions whose drive is away
    sessions: list[str] = field(default_factory=list)
    readback: str | None = None  # how the re-reads were made, the weakest (imalinkd.readback)

    def as_json(self) -> dict:
        return {"ok": self.ok, "checked": self.checked, "damaged": self.damaged, "missing": self.missing,
                "inaccessible_sessions": self.inaccessible, "sessions": self.sessions, "readback": self.readback}


def verify_sessions(config: Config, refs: list[str] | None, *, catalog: Catalog | None = None, progress: Callable[[int, int, str], None] | None = None) -> VerifyReport:
    """Re-hash archived files against their recorded sha256, re-read past the caches where
    that can be done (``report.readback`` says whether it was). ``refs`` None: all."""
    own = catalog is None
    catalog = catalog or Catalog.open(config)
    report = VerifyReport()
    try:
        with catalog.session() as s:
            rows = [find_session(s, r) for r in refs] if refs else list(s.scalars(select(ImportSession).where(ImportSession.copy_files.is_(True))))
        for row in rows:
            report.sessions.append(row.storage_uuid)
            session_dir = session_dir_of(config, catalog, row)
            if session_dir is None:
                report.inaccessible.append(row.storage_uuid)
                report.ok = False
                continue
            entries: dict[str, tuple[int, str]] = {}
            with catalog.session() as s:
                for img in s.scalars(select(Image).where(Image.session_id == row.id)):
                    entries[img.storage_relative_path] = (img.file_size, img.sha256)
            try:
                for e in read_manifest(session_dir).file_manifest:
                    entries.setdefault(e.files_relative, (e.file_size, e.sha256))
            except ImalinkError as e:
                log.warning("manifest_unreadable", session_id=row.storage_uuid, error=str(e))
            total = len(entries)
            for i, (rel, (size, sha)) in enumerate(sorted(entries.items())):
                path = os.path.join(session_dir, "files", rel)
                shown = "files/" + paths.display(rel)
                if progress:
                    progress(i, total, shown)
                report.checked += 1
                try:
                    digest, actual, how = readback.reread_hash(path)
                    report.readback = readback.weakest(report.readback, how)
                except FileNotFoundError:
                    report.missing.append(shown)
                    continue
                except OSError as e:
                    report.damaged.append(f"{shown} (unreadable: {e.strerror})")
                    continue
                if actual != size or digest != sha:
                    report.damaged.append(shown)
            with catalog.session() as s:
                root = s.scalars(select(StorageRoot).where(StorageRoot.storage_id == row.storage_id)).first()
                if root is not None:
                    root.last_verified_at = storage.utcnow()
        if report.damaged or report.missing:
            report.ok = False
        log.info("verify_done", ok=report.ok, checked=report.checked, damaged=len(report.damaged), missing=len(report.missing))
        return report
    finally:
        if own:
            catalog.close()
