"""Legacy (reference) imports and their adoption into the archive.

``import_in_place`` catalogues files where they are, without copying them: a *legacy*
session. It is clearly marked: ``copy_files`` is false in its manifest and its catalog row.
Its manifest lives in an ordinary session directory on the storage root, so the drive still
describes everything the catalog knows (a deleted catalog is rebuilt with it), but that
directory has no ``files/``. Each entry keeps ``original_path`` (relative to the manifest's
absolute ``source_path``, where the bytes are) and ``storage_path`` (``files/…``, where
adoption will put them); ``copied_at`` is null until then.

``adopt`` copies a legacy session into its session directory with full verification (each
file hashed while copied and checked against the sha256 recorded at cataloguing, fsynced,
re-read from disk, and only then given its final name). When every file is in, the
manifest is rewritten with ``copy_files`` true and the session is an ordinary completed
one: the source is no longer needed. An adoption interrupted or partly failed keeps the
files it committed; running it again copies only the rest.
"""

from __future__ import annotations

import os
import stat
import uuid
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select, update

from imalinkd import drivefile, durable, manifest as mf, paths, readback, storage
from imalinkd.catalog import Catalog, Image, ImportSession, find_session
from imalinkd.errors import (
    SessionStateError,
    SourceError,
    StorageFullError,
    StorageNotFoundError,
    human_bytes,
)
from imalinkd.heldroot import HeldRoot
from imalinkd.locate import SafeTree, is_real_dir, session_path
from imalinkd.reading import DriveSession, DriveState
from imalinkd.reindex import apply_plan, load_catalog_state, plan_reindex

log = structlog.get_logger(__name__)


@dataclass
class LegacyResult:
    import_session_id: str
    storage_directory_name: str
    storage_path: str  # the session directory holding the manifest
    source_path: str
    total_files: int
    total_size_bytes: int
    photos_created: int
    duplicates_skipped: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "import_session_id": self.import_session_id,
            "storage_directory_name": self.storage_directory_name,
            "storage_path": self.storage_path,
            "source_path": self.source_path,
            "copy_status": "completed",
            "copy_files": False,
            "legacy": True,
            "total_files": self.total_files,
            "total_size_bytes": self.total_size_bytes,
            "photos_created": self.photos_created,
            "duplicates_skipped": self.duplicates_skipped,
            "skipped": [{"path": paths.display(p), "reason": r} for p, r in self.skipped],
        }


@dataclass
class AdoptResult:
    import_session_id: str
    storage_path: str
    copied: int = 0
    already_there: int = 0
    copied_bytes: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "import_session_id": self.import_session_id,
            "storage_path": self.storage_path,
            "copy_status": "completed" if self.ok else "failed",
            "copy_files": self.ok,
            "copied": self.copied,
            "already_there": self.already_there,
            "copied_bytes": self.copied_bytes,
            "failed": [{"path": paths.display(p), "reason": r} for p, r in self.failed],
        }


def _storage_root(config, catalog: Catalog) -> tuple[str, storage.Marker]:
    from imalinkd.sessions import open_storage

    return open_storage(config, catalog)


def _wanted(config, rel: str) -> bool:
    include = tuple(x.lower().lstrip(".") for x in config.import_.include)
    if include and os.path.splitext(rel)[1].lower().lstrip(".") not in include:
        return False
    import fnmatch

    return not any(fnmatch.fnmatch(rel, pat) for pat in config.import_.exclude)


def _scan(source: str) -> tuple[list[tuple[str, os.stat_result]], list[tuple[str, str]]]:
    """Regular files below ``source`` (relative paths), never following a symlink, and the
    entries left out with the reason."""
    files, skipped = [], []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        try:
            entries = sorted(os.scandir(os.path.join(source, rel_dir) if rel_dir else source), key=lambda e: e.name)
        except OSError as e:
            skipped.append((rel_dir or ".", f"unreadable directory: {e.strerror}"))
            continue
        for e in entries:
            rel = f"{rel_dir}/{e.name}" if rel_dir else e.name
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as err:
                skipped.append((rel, f"cannot stat: {err.strerror}"))
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(rel)
            elif stat.S_ISREG(st.st_mode):
                files.append((rel, st))
            elif stat.S_ISLNK(st.st_mode):
                skipped.append((rel, "symlink"))
            else:
                skipped.append((rel, "not a regular file"))
    return sorted(files), skipped


def _media(path: str) -> tuple[dict | None, str | None]:
    try:
        from imalinkd.media import extract_media
    except ImportError:
        return None, None
    info = extract_media(path)
    return (info.as_manifest() or None), info.error


def import_in_place(config, catalog: Catalog, source: str, description: str | None = None) -> LegacyResult:
    """Catalogue the files below ``source`` where they are (a legacy session).

    Each file is hashed once (so that adoption can verify it later) and its metadata read;
    nothing is copied and the source is not modified. The session's manifest is written to
    a new session directory on the storage root, then the catalog rows are added from it.
    A file already archived (same sha256 in a completed, copied session) is recorded as a
    skipped duplicate."""
    source = os.path.abspath(os.fspath(source))
    if not is_real_dir(source):
        raise SourceError(path=source, message="not a directory")
    root, marker = _storage_root(config, catalog)
    files, skipped_raw = _scan(source)
    now = storage.utcnow()
    sid = str(uuid.uuid4())
    name = storage.session_dir_name(now, description, sid)
    entries: list[mf.FileEntry] = []
    skipped: list[mf.SkippedEntry] = [mf.SkippedEntry(p, r) for p, r in skipped_raw]
    seen: dict[str, str] = {}
    with catalog.session() as s:
        for rel, st in files:
            if not _wanted(config, rel):
                continue
            full = os.path.join(source, rel)
            try:
                digest, size = durable.hash_file(full)
            except OSError as e:
                skipped.append(mf.SkippedEntry(rel, f"unreadable: {e.strerror}", st.st_size))
                continue
            dup = s.execute(
                select(ImportSession.storage_uuid, Image.storage_relative_path).join(ImportSession, Image.session_id == ImportSession.id)
                .where(Image.sha256 == digest, ImportSession.copy_status == "completed").limit(1)
            ).first()
            if dup is not None or digest in seen:
                where = f"{dup[0]}:files/{dup[1]}" if dup is not None else f"{sid}:files/{seen[digest]}"
                skipped.append(mf.SkippedEntry(rel, "duplicate", size, digest, where))
                continue
            seen[digest] = rel
            media, media_error = _media(full)
            entries.append(mf.FileEntry(rel, "files/" + rel, size, digest, None, st.st_mtime, media, media_error))
    m = mf.SessionManifest(
        import_session_id=sid, storage_id=marker.storage_id, created_at=storage.iso(now) or "", source_path=source,
        description=description, source={"kind": "manual", "in_place": True}, copy_status="completed",
        copy_started_at=storage.iso(now), copy_completed_at=storage.iso(storage.utcnow()), copy_files=False,
        file_manifest=entries, skipped=skipped,
    )
    from imalinkd.shots import count_shots

    m.photos_created, m.other_files = count_shots(e.files_relative for e in entries)
    sdir = os.path.join(root, name)
    held = HeldRoot(root, marker)  # written through the handle: never below an absent drive's mount point
    os.mkdir(name, 0o755, dir_fd=held.fd)
    os.fsync(held.fd)
    session = held.open_session(name)
    try:
        mf.write_manifest(session.via, m)
    finally:
        session.close()
    drive = DriveState(marker.storage_id, marker.label, (DriveSession(name, m, {}),), frozenset({name}))
    with catalog.session() as s:
        apply_plan(s, plan_reindex(drive, load_catalog_state(s, drive)), storage.utcnow())
    log.info("legacy_import_done", session_id=sid, source=source, files=len(entries), skipped=len(skipped))
    return LegacyResult(sid, name, sdir, source, m.total_files, m.total_size_bytes, m.photos_created,
                        m.duplicates_skipped, [(s_.original_path, s_.reason) for s_ in skipped])


def _open_source(tree: SafeTree, rel: str) -> int:
    full = tree.path(rel)
    if full is None:
        raise OSError(f"{paths.display(rel)} is reached through a symlink or has an unsafe name")
    return drivefile.open_regular(full)[0]  # never blocks on a FIFO put in a file's place


def adopt(config, catalog: Catalog, session_ref) -> AdoptResult:
    """Copy a legacy session's files into its session directory with full verification.

    After it returns with ``ok``, the session is an ordinary completed session (its
    manifest and catalog row say ``copy_files`` true) and the source is not needed. A file
    whose bytes at the source no longer hash to what was catalogued is not adopted; it is
    listed in ``failed`` and the session stays legacy until a later run succeeds."""
    with catalog.session() as s:
        row = find_session(s, session_ref)
    if row.copy_files:
        raise SessionStateError(session=row.storage_uuid, status=row.copy_status,
                                message="its files are already in the archive; nothing to adopt")
    sdir = session_path(config, catalog, row)
    if sdir is None:
        raise StorageNotFoundError(path="", storage_id=row.storage_id, where=f" for session {row.storage_uuid}")
    m = mf.read_manifest(sdir)
    source = m.source_path
    if not source or not os.path.isabs(source) or not is_real_dir(source):
        raise SourceError(path=source or "?", message="the legacy session's source is not reachable; mount it where it was catalogued")
    result = AdoptResult(row.storage_uuid, sdir)
    how: str | None = None  # the weakest re-read of the verifications (imalinkd.readback)
    files_dir = os.path.join(sdir, "files")
    if os.path.lexists(files_dir) and not is_real_dir(files_dir):
        raise SessionStateError(session=row.storage_uuid, status=row.copy_status, message=f"{files_dir} is not a directory")
    here = SafeTree(files_dir)
    todo = [e for e in m.file_manifest if here.size(e.files_relative) is None]
    need = sum(e.file_size for e in todo) + config.storage.safety_margin_mb * 1024 * 1024
    free, _total = storage.disk_free(sdir)
    if free < need:
        raise StorageFullError(path=sdir, free=human_bytes(free), needed=human_bytes(need),
                               resume_hint=f" ('imalinkd adopt {row.storage_uuid[:8]}')")
    src_tree = SafeTree(source)
    pending = {id(e) for e in todo}
    now = storage.iso(storage.utcnow())
    for e in m.file_manifest:
        target = os.path.join(sdir, e.storage_path)
        if id(e) not in pending:
            digest, size, kind = readback.reread_hash(target)
            how = readback.weakest(how, kind)
            if digest == e.sha256 and size == e.file_size:
                result.already_there += 1
                e.copied_at = e.copied_at or now
            else:
                result.failed.append((e.storage_path, "a different file is already at this name in the session directory"))
            continue
        sink = durable.Sink(target)
        try:
            fd = _open_source(src_tree, e.original_path)
            try:
                st = os.fstat(fd)
                sink.open()
                outcome = durable.copy_to_sinks(fd, [sink])
            finally:
                os.close(fd)
            if outcome.sha256 != e.sha256 or outcome.size != e.file_size:
                sink.discard()
                result.failed.append((e.original_path, "the source file changed since it was catalogued (sha256 or size differs)"))
                continue
            sink.finish((st.st_atime_ns, st.st_mtime_ns))
            problem = sink.verify("sha256", outcome.sha256, outcome.size)
            how = readback.weakest(how, sink.readback)
            if problem:
                sink.discard()
                result.failed.append((e.storage_path, f"verification failed: {problem}"))
                continue
            sink.commit()
        except OSError as err:
            sink.discard()
            result.failed.append((e.original_path, f"copy failed: {err.strerror or err}"))
            continue
        e.copied_at = storage.iso(storage.utcnow())
        result.copied += 1
        result.copied_bytes += e.file_size
    if result.failed:
        log.warning("adopt_incomplete", session_id=row.storage_uuid, failed=len(result.failed), copied=result.copied)
        return result
    m.copy_files = True
    m.copy_status = "completed"
    m.copy_completed_at = storage.iso(storage.utcnow())
    m.verification = "sha256"
    m.readback = how
    m.source = {**m.source, "adopted_at": m.copy_completed_at}
    mf.write_manifest(sdir, m)
    copied_at = {e.files_relative: storage.parse_iso(e.copied_at) for e in m.file_manifest}
    with catalog.session() as s:
        s.execute(update(ImportSession).where(ImportSession.id == row.id).values(
            copy_files=True, copy_status="completed", copy_completed_at=storage.parse_iso(m.copy_completed_at),
            verification="sha256", readback=how, missing=False))
        for image_id, rel in s.execute(select(Image.id, Image.storage_relative_path).where(Image.session_id == row.id)).all():
            s.execute(update(Image).where(Image.id == image_id).values(copied_at=copied_at.get(rel), size_mismatch=False))
    log.info("adopt_done", session_id=row.storage_uuid, copied=result.copied, bytes=result.copied_bytes)
    return result
