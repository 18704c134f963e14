"""Catch-up (DESIGN §8): copies that a backup archive is short of, made from the primary.

``imalinkd replicate [SESSION|--all]`` and the daemon (when a backup drive is plugged in)
copy every archived file of a session that a reachable backup does not hold a verified
copy of: read from the session's home root, hashed while it is read and checked against
the sha256 the catalog recorded (a copy that rotted on the primary is never spread), then
fsynced, read back from the backup's disk and committed under the same name, in the
session directory of the same name. The backup's own ``metadata.json`` and
``manifest-sha256.txt`` then list what it holds. Sessions being imported are left alone;
a session whose home drive is away is reported, not guessed at.
"""

from __future__ import annotations

import copy
import fcntl
import os
from dataclasses import dataclass, field

import structlog
from sqlalchemy import select

from imalinkd import backups, durable, locate, readback, storage
from imalinkd.catalog import Catalog, Image, ImageCopy, ImportSession, SessionCopy, find_session
from imalinkd.drivefile import open_regular
from imalinkd.errors import ImalinkError
from imalinkd.manifest import FileEntry, SessionManifest, read_manifest, write_manifest
from imalinkd.verdict import record_copies

log = structlog.get_logger()

LOCK_NAME = ".imalinkd-replicate.lock"


@dataclass
class ReplicateReport:
    copied: int = 0
    bytes: int = 0
    sessions: list[dict] = field(default_factory=list)  # per session and backup: copied, problems
    problems: list[str] = field(default_factory=list)
    absent: list[dict] = field(default_factory=list)  # backups not reachable, with the reason

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict:
        return {"ok": self.ok, "copied": self.copied, "bytes": self.bytes, "sessions": self.sessions,
                "problems": self.problems, "backups_absent": self.absent}


def replicate(config, catalog: Catalog, refs: list[str] | None = None, only_storage: str | None = None) -> ReplicateReport:
    """Bring every reachable backup up to the sessions ``refs`` (None: all); with
    ``only_storage``, only that backup archive (the drive just plugged in)."""
    report = ReplicateReport()
    with catalog.session() as s:
        if refs is None:
            rows = list(s.scalars(select(ImportSession).where(ImportSession.copy_files.is_(True)).order_by(ImportSession.id)))
        else:
            rows = [find_session(s, r) for r in refs]
    found_all: dict[str, tuple[list, list]] = {}
    for row in rows:
        home = row.storage_id or ""
        if home not in found_all:
            found_all[home] = backups.reachable_backups(config, catalog, home)
        found, absent = found_all[home]
        report.absent = [{"backup": a.spec, "reason": a.reason} for a in absent]
        targets = [a for a in found if only_storage is None or a.storage_id == only_storage]
        if targets:
            _session(config, catalog, row, targets, report)
    return report


def _missing_on(catalog: Catalog, row: ImportSession, storage_id: str) -> list[Image]:
    with catalog.session() as s:
        have = select(ImageCopy.image_id).where(ImageCopy.storage_id == storage_id)
        return list(s.scalars(select(Image).where(Image.session_id == row.id, Image.size_mismatch.is_(False),
                                                  Image.id.not_in(have)).order_by(Image.id)))


def _session(config, catalog: Catalog, row: ImportSession, targets: list, report: ReplicateReport) -> None:
    from imalinkd.sessions import effective_status

    status = effective_status(row)
    if status == "in_progress":
        return
    wanting = [(a, _missing_on(catalog, row, a.storage_id)) for a in targets]
    wanting = [(a, imgs) for a, imgs in wanting if imgs]
    if not wanting:
        return
    home_root = locate.resolve_root(config, catalog, row.storage_id)
    home_dir = os.path.join(home_root, row.storage_directory_name) if home_root and row.storage_directory_name else None
    if home_dir is None or not locate.is_real_dir(home_dir):
        report.problems.append(f"session {row.storage_uuid[:8]}: its primary archive ({row.storage_id}) is not reachable; "
                               "plug it in to copy to the backup")
        return
    try:
        home_manifest = read_manifest(home_dir)
    except ImalinkError as e:
        log.warning("replicate_home_manifest_unreadable", session_id=row.storage_uuid, error=str(e))
        home_manifest = None
    for archive, images in wanting:
        try:
            _to_backup(catalog, row, home_dir, home_manifest, archive, images, report)
        except OSError as e:
            report.problems.append(f"session {row.storage_uuid[:8]} on backup {archive.root}: {e.strerror or e}")


def _backup_manifest(row: ImportSession, session_dir: str, home: SessionManifest | None) -> SessionManifest:
    try:
        return read_manifest(session_dir)
    except ImalinkError:
        pass
    if home is not None:
        m = copy.copy(home)
        m.file_manifest, m.skipped = [], list(home.skipped)
        return m
    return SessionManifest(import_session_id=row.storage_uuid, storage_id=row.storage_id or "",
                           created_at=storage.iso(row.created_at) or "", source_path=row.original_source_path or "",
                           description=row.description, copy_status=row.copy_status)


def _to_backup(catalog, row, home_dir, home_manifest, archive, images, report) -> None:
    session_dir = os.path.join(archive.root, row.storage_directory_name)
    if not archive.still_there():
        report.problems.append(f"backup {archive.root}: the drive went away")
        return
    os.makedirs(os.path.join(session_dir, "files"), exist_ok=True)
    temp_dir = os.path.join(session_dir, durable.TEMP_DIR)
    os.makedirs(temp_dir, exist_ok=True)
    lock_fd = os.open(os.path.join(session_dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            report.problems.append(f"session {row.storage_uuid[:8]} on backup {archive.root}: another catch-up is running")
            return
        backups.record_archive(catalog, archive)
        manifest = _backup_manifest(row, session_dir, home_manifest)
        listed = {e.storage_path for e in manifest.file_manifest}
        by_path = {e.storage_path: e for e in (home_manifest.file_manifest if home_manifest else [])}
        done: list[tuple[str, str]] = []
        problems: list[str] = []
        for img in images:
            problem = _copy_one(home_dir, session_dir, temp_dir, img)
            if problem:
                problems.append(f"{img.storage_relative_path}: {problem}")
                continue
            done.append((img.storage_relative_path, archive.storage_id))
            report.copied += 1
            report.bytes += img.file_size
            sp = "files/" + img.storage_relative_path
            if sp not in listed:
                listed.add(sp)
                manifest.file_manifest.append(copy.copy(by_path.get(sp)) if sp in by_path else FileEntry(
                    img.original_import_path or img.storage_relative_path, sp, img.file_size, img.sha256,
                    storage.iso(img.copied_at), img.mtime))
        _finish(catalog, row, archive, session_dir, manifest, home_manifest, done)
        report.problems += [f"session {row.storage_uuid[:8]} on backup {archive.root}: {p}" for p in problems]
        report.sessions.append({"import_session_id": row.storage_uuid, "backup": archive.root, "storage_id": archive.storage_id,
                                "copied": len(done), "problems": problems})
        log.info("replicated", session_id=row.storage_uuid, backup=archive.root, files=len(done), problems=len(problems))
    finally:
        os.close(lock_fd)
        try:
            os.rmdir(temp_dir)
        except OSError:
            pass


def _finish(catalog, row, archive, session_dir, manifest, home_manifest, done) -> None:
    """The backup's manifest, then the catalog: a copy is counted only once its manifest
    lists it."""
    holds = {e.storage_path for e in manifest.file_manifest}
    wanted = [e.storage_path for e in (home_manifest.file_manifest if home_manifest else [])]
    complete = row.copy_status == "completed" and all(p in holds for p in wanted)
    manifest.copy_status = "completed" if complete else "failed"
    manifest.error = None if complete else "not every file of the session is on this backup yet: 'imalinkd replicate' copies them"
    if home_manifest is not None:
        manifest.copy_completed_at, manifest.photos_created = home_manifest.copy_completed_at, home_manifest.photos_created
    write_manifest(session_dir, manifest)
    with catalog.session() as s:
        if s.scalar(select(SessionCopy).where(SessionCopy.session_id == row.id, SessionCopy.storage_id == archive.storage_id)) is None:
            s.add(SessionCopy(session_id=row.id, storage_id=archive.storage_id, storage_directory_name=row.storage_directory_name,
                              last_seen_at=storage.utcnow(), missing=False))
        if done:
            record_copies(s, row.id, done)


def _copy_one(home_dir: str, session_dir: str, temp_dir: str, img: Image) -> str | None:
    """One file, primary → backup, checked against the recorded sha256 on both sides.
    Returns the problem, or None when the backup holds a verified copy (already, or now)."""
    target = os.path.join(session_dir, "files", img.storage_relative_path)
    if os.path.lexists(target):
        try:
            digest, size, _how = readback.reread_hash(target)
        except OSError as e:
            return f"a file is in its place on the backup and cannot be read ({e.strerror or e})"
        if (digest, size) == (img.sha256, img.file_size):
            return None
        return "a different file is in its place on the backup; left alone"
    try:
        fd, st = open_regular(os.path.join(home_dir, "files", img.storage_relative_path))
    except OSError as e:
        return f"cannot be read on the primary ({e.strerror or e})"
    sink = durable.Sink(target, temp_dir)
    try:
        sink.open()
        outcome = durable.copy_to_sinks(fd, [sink])
        if (outcome.sha256, outcome.size) != (img.sha256, img.file_size):
            sink.discard()
            return "the primary's copy no longer matches its recorded sha256 (run 'imalinkd verify'); not copied"
        sink.finish((st.st_atime_ns, st.st_mtime_ns))
        problem = sink.verify("sha256", img.sha256, img.file_size)
        if problem:
            sink.discard()
            return f"verification on the backup failed: {problem}"
        sink.commit()
        return None
    except FileExistsError:
        sink.discard()
        return "a file appeared in its place on the backup; left alone"
    except durable.SourceIOError as e:
        sink.discard()
        return f"cannot be read on the primary ({e.strerror or e})"
    except OSError:
        sink.discard()
        raise
    finally:
        os.close(fd)
