"""The import engine: one source (a card, a folder) becomes one import session.

Stages (DESIGN §3): scan → plan → copy + verify + commit → record → post-process. The copy
stage runs in worker threads and is the only one that writes to the archive (through
:mod:`imalinkd.durable`); everything that touches the catalog or the manifest runs in the
calling thread, so the catalog is written by one thread per import. Everything written into
a session goes through a handle on its directory (:mod:`imalinkd.heldroot`), never through
the archive's mount path again: a drive pulled mid-import fails the session, and nothing
lands on the disk below its mount point. Before planning, the sessions the catalog lacks
are taken from the drive (:mod:`imalinkd.catchup`).

Crash safety: a file is under its final name only after it was fsynced and verified. The
catalog rows and ``metadata.json`` are brought up to date at checkpoints and at the end, so
after a crash the disk may hold committed files that neither lists yet: ``resume``
reconciles both with the disk — committed files are kept (checked, never copied again),
temporary files are discarded, the rest is copied.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable

import structlog
from sqlalchemy import delete, select

from imalinkd import backups, durable, paths, readback, samefiles, shots, sourcelock, storage, verdict
from imalinkd.catalog import Catalog, ImportSession, SkippedFile, find_session
from imalinkd.config import Config
from imalinkd.catchup import take_unknown_sessions
from imalinkd.copier import CopyStage, not_archived_summary
from imalinkd.heldroot import HeldRoot, HeldSession, hold_session
from imalinkd.progress import Progress, ProgressCallback
from imalinkd.duplicates import UNCHECKED_DUPLICATE, ArchivedCopies
from imalinkd.errors import (
    CatalogError,
    ImalinkError,
    SessionBusyError,
    SessionStateError,
    SourceError,
    StorageError,
    StorageFullError,
    StorageNotFoundError,
    human_bytes,
)
from imalinkd.maintenance import VerifyReport, rollback_session, verify_sessions
from imalinkd.manifest import SessionManifest, SkippedEntry, read_manifest, write_manifest
from imalinkd.naming import render_description
from imalinkd.photos import build_photos, make_thumbnails
from imalinkd.plan import Plan, plan_copy
from imalinkd.reconcile import reconcile
from imalinkd.scan import ScanResult, SourceFile, scan_source
from imalinkd.sessions import (
    SessionLock,
    effective_status,
    find_root_by_id,
    importer_alive,
    open_storage,
    record_root,
    session_dir_of,
    session_json,
)

__all__ = [
    "ImportResult", "Progress", "ProgressCallback", "SourceInfo", "VerifyReport", "build_photos", "effective_status",
    "take_unknown_sessions",
    "find_resumable_session", "find_root_by_id", "holding_source", "import_source", "importer_alive", "make_thumbnails", "open_storage",
    "preflight", "record_root", "resume_session", "rollback_session", "session_dir_of", "session_json", "verify_sessions",
]

log = structlog.get_logger()


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceInfo:
    kind: str = "manual"  # card | camera | drop_folder | manual
    label: str | None = None
    fs_uuid: str | None = None
    device: str | None = None

    def as_json(self) -> dict:
        return {k: v for k, v in (("kind", self.kind), ("label", self.label), ("fs_uuid", self.fs_uuid), ("device", self.device)) if v is not None}


@dataclass
class ImportResult:
    session_uuid: str | None
    storage_directory_name: str | None
    storage_path: str | None
    copy_status: str
    total_files: int = 0
    total_size_bytes: int = 0
    photos_created: int = 0
    other_files: int = 0  # archived files that are no photo or video, nor a sidecar of one
    duplicates_skipped: int = 0
    skipped: list[SkippedEntry] = field(default_factory=list)
    new_files: int = 0  # copied by this run (a resume counts only what it copied)
    error: str | None = None
    message: str | None = None
    archive_gone: bool = False  # failed because the archive drive went away: resumable once it is back
    source_no_longer_needed: bool = False  # completed, every duplicate checked on a drive now, and safe
    verdict: dict = field(default_factory=dict)  # imalinkd.verdict: safe_to_format, copies_verified, short files
    backups: list[dict] = field(default_factory=list)  # each configured backup: reached or why not

    @property
    def ok(self) -> bool:
        return self.copy_status == "completed"

    @property
    def safe_to_format(self) -> bool:
        return bool(self.verdict.get("safe_to_format"))

    @property
    def copies_verified(self) -> int:
        return int(self.verdict.get("copies_verified", 0))

    @property
    def copies_wanted(self) -> int:
        return int(self.verdict.get("copies_wanted", 1))

    def as_json(self) -> dict:
        return {
            "import_session_id": self.session_uuid,
            "storage_directory_name": self.storage_directory_name,
            "storage_path": self.storage_path,
            "copy_status": self.copy_status,
            "total_files": self.total_files,
            "total_size_bytes": self.total_size_bytes,
            "photos_created": self.photos_created,
            "other_files": self.other_files,
            "duplicates_skipped": self.duplicates_skipped,
            "skipped_count": sum(1 for s in self.skipped if not s.duplicate_of),
            "skipped": [s.as_json() for s in self.skipped if not s.duplicate_of],
            "new_files": self.new_files,
            "error": self.error,
            "message": self.message,
            "source_no_longer_needed": self.source_no_longer_needed,
            "safe_to_format": self.safe_to_format,
            "copies_verified": self.copies_verified,
            "copies_wanted": self.copies_wanted,
            "short_count": self.verdict.get("short_count", 0),
            "short_files": self.verdict.get("short_files", []),
            "verdict": self.verdict.get("verdict"),
            "backups": self.backups,
        }


# --- planning helpers -------------------------------------------------------------------------


def _plan(config: Config, catalog: Catalog, source: str, files: list[SourceFile]) -> tuple[Plan, list[SkippedEntry]]:
    """The plan for ``files`` (duplicates only of archived copies that are there now) and
    the skipped entries of its duplicates."""
    copies = ArchivedCopies(config, catalog)
    plan = plan_copy(files, copies.sizes, _hash_source(source), copies.find)
    dups = [SkippedEntry(d.file.rel, copies.reason(d.duplicate_of), d.file.size, d.sha256, d.duplicate_of) for d in plan.duplicates]
    return plan, dups


def _unchecked(skipped: list[SkippedEntry]) -> int:
    return sum(1 for e in skipped if e.duplicate_of and e.reason == UNCHECKED_DUPLICATE)


def _hash_source(root: str) -> Callable[[SourceFile], str | None]:
    def h(f: SourceFile) -> str | None:
        try:
            return durable.hash_file(os.path.join(root, f.rel))[0]
        except OSError:
            return None

    return h


def preflight(root: str, needed: int, margin_mb: int, disk_free: Callable[[str], tuple[int, int]] = storage.disk_free, session: str | None = None,
              held: HeldRoot | None = None) -> None:
    """Refuse before copying when the archive is not writable or lacks room (DESIGN §3).
    With ``held``, the write probe goes through the root's handle."""
    storage.check_writable(held.via if held is not None else root, shown=root)
    free, _total = disk_free(root)
    want = needed + margin_mb * 1024 * 1024
    if free < want:
        raise StorageFullError(
            path=root, free=human_bytes(free), needed=human_bytes(want),
            resume_hint=f" (or 'imalinkd resume {session}')" if session else "",
        )


# --- public operations -----------------------------------------------------------------------


def import_source(
    config: Config,
    source: str | os.PathLike[str],
    *,
    description: str | None = None,
    source_info: SourceInfo | None = None,
    storage_root: str | os.PathLike[str] | None = None,
    verify: str | None = None,
    include: Iterable[str] | None = None,
    thumbnails: bool | None = None,
    files: Iterable[str] | None = None,
    cancel: threading.Event | None = None,
    progress: ProgressCallback | None = None,
    catalog: Catalog | None = None,
    disk_free: Callable[[str], tuple[int, int]] = storage.disk_free,
    template_values: dict[str, str] | None = None,
    on_source_wait: Callable[[sourcelock.Claim], None] | None = None,
    lock_source: bool = True,
) -> ImportResult:
    """Import ``source`` into the archive as one new session.

    Only one import or resume reads a source at a time, across processes
    (:mod:`imalinkd.sourcelock`): while another one holds it, this waits (``on_source_wait``
    is told once, with what is running; ``cancel`` ends the wait). ``lock_source=False``
    when the caller holds the source's lock already.

    With ``template_values`` (for example ``label`` and ``folder`` from a card policy),
    ``description`` is a template (:mod:`imalinkd.naming`); ``{camera_model}`` and ``{date}``
    (the first capture date) are then read from the metadata of the files being imported.

    Without ``description`` and ``template_values`` (a folder given by hand) the session
    is named after the source folder. Identical files within the source are copied once;
    the others are recorded as duplicates of that copy.

    Returns the result; ``copy_status`` is ``failed`` when the copy stopped (archive full or
    read-only, card pulled, stop requested): the session is then resumable. When nothing is
    new (everything is already archived) no session is created and ``session_uuid`` is None.
    Raises ImalinkError for what prevents starting (no archive, not enough room, bad source).
    """
    source = os.path.abspath(os.fspath(source))
    info = source_info or SourceInfo()
    own_catalog = catalog is None
    catalog = catalog or Catalog.open(config)
    try:
        root, marker = open_storage(config, catalog, storage_root)
        with holding_source(config, source, info.fs_uuid, cancel, on_source_wait, lock_source):
            return _import(config, catalog, source, description, info, root, marker, verify or config.import_.verify, include,
                           thumbnails, files, cancel, progress, disk_free, template_values)
    finally:
        if own_catalog:
            catalog.close()


@contextmanager
def holding_source(config: Config, source: str, fs_uuid: str | None = None, cancel: threading.Event | None = None,
                   on_wait: Callable[[sourcelock.Claim], None] | None = None, lock: bool = True):
    """The source's import lock (see :mod:`imalinkd.sourcelock`) held for the block; a
    source that is not there (yet) is left for the import to report."""
    if not lock or not os.path.isdir(source):
        yield
        return
    with sourcelock.holding_source(sourcelock.locks_dir(config), source, fs_uuid, cancel, on_wait):
        yield


def _import(config, catalog, source, description, info, root, marker, verify, include, thumbnails, files, cancel, progress_cb, disk_free,
            template_values) -> ImportResult:
    prog = Progress(source=source)
    take_unknown_sessions(catalog, root, marker)
    include = tuple(include) if include is not None else config.import_.include
    scan = scan_source(source, include, config.import_.exclude, only=files, skip_dirs=[root])
    prog.phase = "database_import"
    prog.files_total = len(scan.files)
    if progress_cb:
        progress_cb(prog)
    plan, dups = _plan(config, catalog, source, scan.files)
    sid = str(uuid.uuid4())
    skipped = [SkippedEntry(s.rel, s.reason) for s in scan.skipped] + dups
    skipped += _store_same_files_once(plan, source, sid)
    for s in scan.skipped:
        log.info("source_entry_skipped", source=source, path=paths.display(s.rel), reason=s.reason)
    if not plan.to_copy:  # (identical files of the source keep one of them in to_copy)
        log.info("import_nothing_new", source=source, duplicates=len(plan.duplicates), skipped=len(scan.skipped))
        return _nothing_new(config, catalog, scan, plan, skipped)
    if description is None and template_values is None:  # a folder given by hand: named after it
        description = os.path.basename(source.rstrip("/")) or None
    held_root = HeldRoot(root, marker)  # from here on the archive is written through its handle
    try:
        preflight(root, plan.planned_bytes, config.storage.safety_margin_mb, disk_free, held=held_root)
        if template_values is not None:
            description = render_description(description, **{**template_values, **describe_files(source, plan.to_copy)})
    except BaseException:
        held_root.close()
        raise

    started = storage.utcnow()
    dirname = storage.session_dir_name(started, description, sid)
    session_dir = os.path.join(root, dirname)
    manifest = SessionManifest(
        import_session_id=sid, storage_id=marker.storage_id, created_at=storage.iso(started) or "",
        source_path=source, description=description, source=info.as_json(), copy_status="in_progress",
        copy_started_at=storage.iso(started), verification=verify, skipped=skipped,
    )
    held: HeldSession | None = None
    lock: SessionLock | None = None
    try:
        held = held_root.make_session(dirname)
        lock = SessionLock(held.via, sid)
        lock.acquire()
        write_manifest(held.via, manifest)
        row_id = _add_session_row(catalog, sid, session_dir, dirname, marker, description, started, source, info, verify,
                                  plan, scan, skipped)
    except BaseException as e:
        if lock is not None:
            lock.release(remove=False)  # the session stays on the drive, failed and resumable, but not held
        (held or held_root).close()
        if isinstance(e, OSError):
            raise StorageError(path=session_dir, message=f"cannot create the session directory: {e.strerror}") from None
        raise
    dests, backup_report = _open_backups(config, catalog, marker.storage_id, row_id, dirname, manifest, plan.planned_bytes, disk_free)
    log.info("import_started", session_id=sid, source=source, storage_path=session_dir, files=len(plan.to_copy), bytes=plan.planned_bytes,
             duplicates=len(plan.duplicates), skipped=len(scan.skipped), source_kind=info.kind, card_label=info.label, card_uuid=info.fs_uuid)
    prog.session_uuid, prog.storage_path = sid, session_dir
    prog.files_total, prog.bytes_total = len(plan.to_copy), plan.planned_bytes
    return _copy_and_finish(config, catalog, row_id, held, manifest, source, scan, plan.to_copy, plan.known_hashes,
                            verify, thumbnails, cancel, progress_cb, prog, lock, dests, backup_report)


def _open_backups(config, catalog, primary_id, row_id, dirname, manifest, needed, disk_free) -> tuple[list, list[dict]]:
    """The session's directory on every reachable backup archive with room for it; a report
    of each configured backup (reached, or why not)."""
    found, absent = backups.reachable_backups(config, catalog, primary_id)
    report = [{"backup": a.spec, "reached": False, "reason": a.reason} for a in absent]
    dests = []
    for archive in found:
        try:
            preflight(archive.root, needed, config.storage.safety_margin_mb, disk_free)
        except ImalinkError as e:
            log.warning("backup_not_used", storage_id=archive.storage_id, root=archive.root, reason=str(e))
            report.append({"backup": archive.root, "storage_id": archive.storage_id, "reached": False, "reason": str(e)})
            continue
        dest = backups.open_destination(catalog, archive, row_id, dirname, manifest)
        if dest is None:
            report.append({"backup": archive.root, "storage_id": archive.storage_id, "reached": False,
                           "reason": "the session directory could not be written there"})
            continue
        dests.append(dest)
        report.append({"backup": archive.root, "storage_id": archive.storage_id, "reached": True})
    return dests, report


def _nothing_new(config, catalog, scan: ScanResult, plan: Plan, skipped: list[SkippedEntry]) -> ImportResult:
    """No file to copy: no session. Still not "done" when some of the source could not be
    read, and the source still needed when duplicates were counted unchecked."""
    unread = [(s.rel, s.reason) for s in scan.skipped if s.error]
    n = len(plan.duplicates)
    if unread:
        error = not_archived_summary(unread)
        return ImportResult(None, None, None, "failed", duplicates_skipped=n, skipped=skipped, error=error,
                            message=f"{error}. Nothing was copied; import the source again once it can be read")
    message = f"nothing new: {n} file(s) already archived; no session created"
    if unchecked := _unchecked(skipped):
        message += (f"; {unchecked} of them only on a drive that is not plugged in (not checked now): keep the source "
                    f"until that drive has been checked")
    with catalog.session() as s:
        v = verdict.judge(s, [(d.file.rel, (d.sha256, d.file.size), None) for d in plan.duplicates], config.storage.copies_wanted)
    v["safe_to_format"] = v["short_count"] == 0 and not _unchecked(skipped)
    v["verdict"] = verdict.verdict_text(v)
    if not v["safe_to_format"]:
        message += f"; {v['verdict']}"
    return ImportResult(None, None, None, "completed", duplicates_skipped=n, skipped=skipped, message=message,
                        source_no_longer_needed=v["safe_to_format"], verdict=v)


def _store_same_files_once(plan, source: str, sid: str) -> list[SkippedEntry]:
    """Identical files within the source are copied once (:mod:`imalinkd.samefiles`): the
    others leave ``plan.to_copy`` and are recorded as duplicates of the copied one."""
    same = samefiles.find_same_files(plan.to_copy, _head_source(source), _hash_source(source), plan.known_hashes)
    plan.to_copy = same.keep
    plan.known_hashes.update(same.hashes)
    for s in same.same:
        log.info("source_file_stored_once", source=source, path=paths.display(s.file.rel), same_as=paths.display(s.kept))
    return [SkippedEntry(s.file.rel, samefiles.REASON, s.file.size, s.sha256, f"{sid}:files/{paths.display(s.kept)}") for s in same.same]


def _head_source(root: str) -> Callable[[SourceFile], bytes | None]:
    def head(f: SourceFile) -> bytes | None:
        try:
            fd = os.open(os.path.join(root, f.rel), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            return os.read(fd, samefiles.HEAD_BYTES) if stat.S_ISREG(os.fstat(fd).st_mode) else None
        except OSError:
            return None
        finally:
            os.close(fd)

    return head


def _add_session_row(catalog, sid, session_dir, dirname, marker, description, started, source, info, verify, plan, scan,
                     skipped) -> int:
    """The new session's catalog row and its skipped entries; returns the row's id."""
    with _catalog_failure_explained(catalog, sid, session_dir), catalog.session() as s:
        row = ImportSession(
            storage_uuid=sid, storage_id=marker.storage_id, storage_directory_name=dirname, description=description,
            created_at=started, copy_status="in_progress", copy_started_at=started, original_source_path=source,
            source_kind=info.kind, source_label=info.label, source_fs_uuid=info.fs_uuid, source_device=info.device,
            verification=verify, copy_files=True, duplicates_skipped=sum(1 for e in skipped if e.duplicate_of),
            skipped_count=len(scan.skipped), planned_files=len(plan.to_copy), planned_bytes=plan.planned_bytes,
            importer_host=socket.gethostname(), importer_pid=os.getpid(),
        )
        s.add(row)
        s.flush()
        row_id = row.id
        for e in skipped:
            s.add(SkippedFile(session_id=row_id, original_path=e.original_path, reason=e.reason, file_size=e.file_size, sha256=e.sha256, duplicate_of=e.duplicate_of))
    return row_id


def _copy_and_finish(config, catalog, row_id, held: HeldSession, manifest, source, scan, to_copy, known, verify, thumbnails, cancel,
                     progress_cb, prog, lock, dests=(), backup_report=()) -> ImportResult:
    """Copy, then record how the session ended. Everything is written through ``held``
    (see :mod:`imalinkd.heldroot`); ``session_dir``, its real path, is what the user is told."""
    session_dir = held.path
    thumbs = config.import_.thumbnails if thumbnails is None else thumbnails
    run = CopyStage(config, catalog, row_id, held.via, manifest, source, scan, verify, config.import_.workers, thumbs, cancel,
                    progress_cb, prog, backups=list(dests), archive_gone=held.gone_message)
    status = "failed"
    try:
        try:
            run.run(to_copy, known)
        except ImalinkError as e:  # the catalog failing under a checkpoint, say
            run.fatal = run.fatal or str(e)
            log.error("import_failed", session_id=manifest.import_session_id, error=str(e))
        except Exception as e:  # an unexpected bug still leaves a consistent, resumable session
            run.fatal = run.fatal or f"internal error: {e.__class__.__name__}: {e}"
            log.exception("import_crashed", session_id=manifest.import_session_id)
        if run.fatal is None and (gone := held.gone_message()) is not None:  # pulled after the last commit
            run.fatal, run.archive_went_away = gone, True
        status = "failed" if run.fatal else "completed"
        photos = run.photos
        if photos is None:
            try:
                photos = build_photos(catalog, row_id)
            except ImalinkError as e:  # the catalog failing: the manifest below still says where things stand
                status, run.fatal, photos = "failed", run.fatal or str(e), 0
        now = storage.utcnow()
        manifest.copy_status = status
        manifest.photos_created = photos
        manifest.other_files = shots.count_shots(e.files_relative for e in manifest.file_manifest)[1]
        manifest.error = run.fatal
        manifest.readback = readback.weakest(manifest.readback, run.readback)
        if status == "completed":
            manifest.copy_completed_at = storage.iso(now)
        try:
            write_manifest(held.via, manifest)  # a drive that went away gets it too, while it can take it
        except OSError as e:
            log.error("manifest_write_failed", session_id=manifest.import_session_id, error=e.strerror)
            if status == "completed":
                status = "failed"
                run.fatal = f"metadata.json could not be written: {e.strerror}"
        for dest in dests:
            for item in backup_report:
                if item.get("storage_id") == dest.archive.storage_id and dest.failed:
                    item["dropped"] = dest.failed
            backups.finish_destination(dest, manifest)
        with _catalog_failure_explained(catalog, manifest.import_session_id, session_dir), catalog.session() as s:
            row = s.get(ImportSession, row_id)
            row.copy_status = status
            row.error = run.fatal
            row.readback = manifest.readback
            row.skipped_count = len(manifest.skipped) - manifest.duplicates_skipped
            if status == "completed":
                row.copy_completed_at = now
            row.importer_pid = None
            result = _result_of(row, session_dir, manifest.skipped, run.copied_now)
            result.other_files = manifest.other_files
            result.archive_gone = run.archive_went_away
        if status == "completed":
            _remove_temp_dir(held.via)
    finally:
        lock.release(remove=status == "completed")
        held.close()
    result.backups = list(backup_report)
    result.verdict = _verdict(config, catalog, row_id, status)
    prog.source_no_longer_needed = status == "completed" and not _unchecked(manifest.skipped) and result.verdict.get("safe_to_format", False)
    prog.phase = "done" if status == "completed" else "failed"
    if progress_cb:
        progress_cb(prog)
    if status == "completed":
        log.info("import_completed", session_id=result.session_uuid, storage_path=session_dir, files=result.total_files,
                 bytes=result.total_size_bytes, photos=result.photos_created, duplicates=result.duplicates_skipped,
                 mb_per_s=round(prog.mb_per_s, 1))
        result.message = f"files have been copied to storage; the source is no longer needed ({session_dir})"
        result.source_no_longer_needed = prog.source_no_longer_needed
        if not result.verdict.get("safe_to_format"):
            result.message = (f"files have been copied to storage ({session_dir}); {result.verdict.get('verdict')}: it becomes safe "
                              f"when 'imalinkd replicate' (or the daemon, when the backup drive is plugged in) has copied them")
        if unchecked := _unchecked(manifest.skipped):
            result.message = (f"files have been copied to storage ({session_dir}); {unchecked} duplicate(s) are archived only "
                              f"on a drive that is not plugged in (not checked now): keep the source until that drive has been checked")
    else:
        result.message = f"{result.error}. The session is resumable: 'imalinkd resume {result.session_uuid[:8]}' once the cause is fixed"
    return result


def _verdict(config, catalog, row_id: int, status: str) -> dict:
    """The session's verdict; a catalog failing here says "not safe", never the opposite."""
    try:
        with catalog.session() as s:
            row = s.get(ImportSession, row_id)
        return verdict.session_verdict(config, catalog, row, status)
    except ImalinkError as e:
        log.error("verdict_failed", error=str(e))
        return {"safe_to_format": False, "copies_verified": 0, "copies_wanted": config.storage.copies_wanted,
                "verdict": f"not known: {e}"}


def _remove_temp_dir(session_dir: str) -> None:
    try:
        os.rmdir(os.path.join(session_dir, durable.TEMP_DIR))
    except OSError:  # not empty (a temporary file that could not be removed): resume clears it
        pass


@contextmanager
def _catalog_failure_explained(catalog: Catalog, sid: str, session_dir: str):
    """A catalog that cannot be written (its disk full, say) while the session directory
    is on the drive: say where the import stands and how to finish it. The manifest is the
    truth, so nothing is lost: a reindex takes the session from it, and resume completes it."""
    try:
        yield
    except CatalogError as e:
        raise CatalogError(url=catalog.url, message=f"{e.fields.get('message')}. The session {sid[:8]} is on the drive at "
                                                    f"{session_dir}, its manifest up to date; once the catalog can be written, "
                                                    f"'imalinkd reindex' takes it from the drive and 'imalinkd resume {sid[:8]}' "
                                                    f"finishes it") from e


def _result_of(row: ImportSession, session_dir: str | None, skipped: list[SkippedEntry], new_files: int) -> ImportResult:
    return ImportResult(
        session_uuid=row.storage_uuid, storage_directory_name=row.storage_directory_name, storage_path=session_dir,
        copy_status=row.copy_status, total_files=row.total_files, total_size_bytes=row.total_size_bytes,
        photos_created=row.photos_created, duplicates_skipped=row.duplicates_skipped, skipped=skipped,
        new_files=new_files, error=row.error,
    )


def describe_files(source: str, files: list[SourceFile], sample: int = 8) -> dict[str, str]:
    """``camera_model`` and ``date`` (first capture date, YYYY-MM-DD) for description
    templates, from the metadata of the first few photos in capture order. Only headers are
    read; files without metadata are passed over."""
    from imalinkd.media import extract_media, kind_of

    dated: list[tuple[str, str]] = []
    looked = 0
    for f in files:
        if kind_of(f.rel) not in ("raw", "jpeg", "heic", "tiff", "video"):
            continue
        info = extract_media(os.path.join(source, f.rel))
        looked += 1
        if info.taken_at or info.camera_model:
            dated.append((info.taken_at or "9999", info.camera_model or ""))
        if looked >= sample:
            break
    if not dated:
        return {}
    taken, model = min(dated)
    out = {"camera_model": model}
    if taken != "9999":
        out["date"] = taken[:10]
    return out


def find_resumable_session(catalog: Catalog, fs_uuid: str | None, label: str | None) -> str | None:
    """The newest unfinished session of this card (same file system UUID and label)."""
    if not fs_uuid and not label:
        return None
    with catalog.session() as s:
        q = select(ImportSession).where(ImportSession.copy_status.in_(("failed", "in_progress")), ImportSession.source_kind == "card")
        if fs_uuid:
            q = q.where(ImportSession.source_fs_uuid == fs_uuid)
        if label:
            q = q.where(ImportSession.source_label == label)
        for row in s.scalars(q.order_by(ImportSession.created_at.desc())):
            if effective_status(row) == "failed":
                return row.storage_uuid
    return None


def resume_session(
    config: Config,
    ref: str,
    *,
    source: str | os.PathLike[str] | None = None,
    cancel: threading.Event | None = None,
    progress: ProgressCallback | None = None,
    catalog: Catalog | None = None,
    thumbnails: bool | None = None,
    disk_free: Callable[[str], tuple[int, int]] = storage.disk_free,
    on_source_wait: Callable[[sourcelock.Claim], None] | None = None,
    lock_source: bool = True,
) -> ImportResult:
    """Finish a failed or interrupted session without copying committed files again.

    ``source`` overrides where the source is now (a card mounted at another path). The
    source's import lock is taken as by :func:`import_source`."""
    own_catalog = catalog is None
    catalog = catalog or Catalog.open(config)
    try:
        return _resume(config, catalog, ref, source, cancel, progress, thumbnails, disk_free, on_source_wait, lock_source)
    finally:
        if own_catalog:
            catalog.close()


def _resume(config, catalog, ref, source_override, cancel, progress_cb, thumbnails, disk_free, on_source_wait, lock_source) -> ImportResult:
    with catalog.session() as s:
        row = find_session(s, ref)
        status = effective_status(row)
        sid = row.storage_uuid
        if status == "completed":
            return _result_of(row, session_dir_of(config, catalog, row), [], 0)
        if status == "in_progress":
            raise SessionBusyError(session=sid)
        if not row.copy_files:
            raise SessionStateError(session=sid, status="a legacy (in-place) session", message="use 'imalinkd adopt' to copy it")
        row_id = row.id
        source = os.path.abspath(os.fspath(source_override)) if source_override else row.original_source_path
        verify = row.verification or config.import_.verify
        fs_uuid = row.source_fs_uuid
    session_dir = session_dir_of(config, catalog, row)
    if session_dir is None:
        raise StorageNotFoundError(path=row.storage_directory_name, storage_id=row.storage_id, where=f" for session {sid}")
    if not source or not os.path.isdir(source):
        raise SourceError(path=source or "?", message=f"the source of session {sid[:8]} is not available; insert the card or give --source")
    with holding_source(config, source, fs_uuid, cancel, on_source_wait, lock_source):
        return _resume_from(config, catalog, row, row_id, sid, session_dir, source, verify, cancel, progress_cb, thumbnails, disk_free)


def _resume_from(config, catalog, row, row_id, sid, session_dir, source, verify, cancel, progress_cb, thumbnails, disk_free) -> ImportResult:
    """The resume itself, with the source held."""
    held = hold_session(session_dir)
    display_dir, session_dir = session_dir, held.via  # written through the handle; the real path is for the user
    lock = SessionLock(session_dir, sid)
    try:
        lock.acquire()
    except BaseException:
        held.close()
        raise
    try:
        try:
            manifest = read_manifest(session_dir)
        except ImalinkError as e:
            log.warning("manifest_unreadable_on_resume", session_id=sid, error=str(e))
            manifest = SessionManifest(import_session_id=sid, storage_id=row.storage_id or "", created_at=storage.iso(row.created_at) or "",
                                       source_path=source, description=row.description,
                                       source={"kind": row.source_kind, "label": row.source_label, "fs_uuid": row.source_fs_uuid})
        removed = durable.clear_temp_dir(os.path.join(session_dir, durable.TEMP_DIR))
        scan = scan_source(source, config.import_.include, config.import_.exclude, skip_dirs=[os.path.dirname(display_dir)])
        to_copy, known = reconcile(catalog, row_id, session_dir, manifest, source, scan)
        plan, dups = _plan(config, catalog, source, to_copy)  # duplicates decided again, against the archive as it is now
        manifest.skipped += dups
        known.update(plan.known_hashes)
        with catalog.session() as s:
            row = s.get(ImportSession, row_id)
            row.copy_status = "in_progress"
            row.error = None
            row.importer_host, row.importer_pid = socket.gethostname(), os.getpid()
            row.duplicates_skipped = len(dups)
            row.original_source_path = source
            s.execute(delete(SkippedFile).where(SkippedFile.session_id == row_id))
            for e in manifest.skipped:
                s.add(SkippedFile(session_id=row_id, original_path=e.original_path, reason=e.reason, file_size=e.file_size,
                                  sha256=e.sha256, duplicate_of=e.duplicate_of))
        manifest.copy_status, manifest.error = "in_progress", None
        write_manifest(session_dir, manifest)
        preflight(held.root.path, plan.planned_bytes, config.storage.safety_margin_mb, disk_free, session=sid[:8], held=held.root)
        log.info("resume_started", session_id=sid, source=source, to_copy=len(plan.to_copy), kept=len(manifest.file_manifest), partials_removed=removed)
        prog = Progress(source=source, session_uuid=sid, storage_path=display_dir, files_total=len(plan.to_copy), bytes_total=plan.planned_bytes)
    except BaseException:
        try:
            with catalog.session() as s:
                r = s.get(ImportSession, row_id)
                if r.copy_status == "in_progress":
                    r.copy_status, r.importer_pid = "failed", None
        except ImalinkError:  # the catalog failing too (its disk full): the drive still says where things stand
            pass
        finally:
            lock.release(remove=False)
            held.close()
        raise
    return _copy_and_finish(config, catalog, row_id, held, manifest, source, scan, plan.to_copy, known, verify, thumbnails, cancel, progress_cb, prog, lock)
