"""Maintenance of existing sessions: verification against the recorded sha256, rollback."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Callable

import structlog
from sqlalchemy import delete, select

from imalinkd import durable, paths, readback, storage
from imalinkd.catalog import Catalog, FileCheck, Image, ImportSession, StorageRoot, find_session
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


def _check(path: str, size: int, sha: str) -> tuple[str, str | None, str | None]:
    """One file against its recorded size and sha256, re-read: ``ok``, ``damaged``,
    ``missing`` or ``unreadable``, with a detail, and how the re-read was made."""
    try:
        digest, actual, how = readback.reread_hash(path)
    except FileNotFoundError:
        return "missing", None, None
    except OSError as e:
        return "unreadable", f"unreadable: {e.strerror}", None
    if actual != size:
        return "damaged", f"size on disk {actual}, recorded {size}", how
    if digest != sha:
        return "damaged", f"sha256 on disk {digest[:12]}…, recorded {sha[:12]}…", how
    return "ok", None, how


def _marker_of(root: str) -> storage.Marker | None:
    try:
        return storage.read_marker(root)
    except (ImalinkError, OSError):
        return None


def _record_checks(catalog: Catalog, marker: storage.Marker | None, checks: list[tuple[int, str, str | None]]) -> None:
    """Keep each file's result as its drive's latest check (``file_checks``, as a scrub
    does): a copy found bad is flagged, so that no later import counts a file as a
    duplicate of it, and a copy found intact is not read again in the drive's scrub pass."""
    if marker is None or not checks:
        return
    at = storage.utcnow()
    with catalog.session() as s:
        root = s.scalars(select(StorageRoot).where(StorageRoot.storage_id == marker.storage_id)).first()
        if root is None:
            return
        seq = root.scrub_seq or 0
        existing = {image_id: check for image_id, check in s.execute(
            select(FileCheck.image_id, FileCheck).where(FileCheck.storage_id == marker.storage_id,
                                                        FileCheck.image_id.in_([c[0] for c in checks])))}
        for image_id, result, detail in checks:
            seq += 1
            check = existing.get(image_id)
            if check is None:
                s.add(FileCheck(image_id=image_id, storage_id=marker.storage_id, seq=seq, checked_at=at, result=result, detail=detail))
            else:
                check.seq, check.checked_at, check.result, check.detail = seq, at, result, detail
        root.scrub_seq = seq


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
            image_ids: dict[str, int] = {}
            checks: list[tuple[int, str, str | None]] = []  # image id, result, detail: kept in the catalog
            with catalog.session() as s:
                for img in s.scalars(select(Image).where(Image.session_id == row.id)):
                    entries[img.storage_relative_path] = (img.file_size, img.sha256)
                    image_ids[img.storage_relative_path] = img.id
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
                result, detail, how = _check(path, size, sha)
                report.readback = readback.weakest(report.readback, how)
                if rel in image_ids:
                    checks.append((image_ids[rel], result, detail))
                if result == "missing":
                    report.missing.append(shown)
                elif result == "unreadable":
                    report.damaged.append(f"{shown} ({detail})")
                elif result == "damaged":
                    report.damaged.append(shown)
            _record_checks(catalog, _marker_of(os.path.dirname(session_dir)), checks)
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
