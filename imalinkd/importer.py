"""The import engine: one source (a card, a folder) becomes one import session.

Stages (DESIGN §3): scan → plan → copy + verify + commit → record → post-process. The copy
stage runs in worker threads and is the only one that writes to the archive (through
:mod:`imalinkd.durable`); everything that touches the catalog or the manifest runs in the
calling thread, so the catalog is written by one thread per import.

Crash safety: a file is under its final name only after it was fsynced and verified. The
catalog gets a row right after each commit; ``metadata.json`` is rewritten at checkpoints and
at the end. ``resume`` reconciles both with the disk: committed files are kept (never copied
again), temporary files are discarded, the rest is copied.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import stat
import threading
import time
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import psutil
import structlog
from sqlalchemy import delete, select

from imalinkd import durable, paths, storage
from imalinkd.catalog import Catalog, Image, ImportSession, Photo, SkippedFile, StorageRoot, find_session
from imalinkd.config import Config
from imalinkd.errors import (
    ImalinkError,
    SessionBusyError,
    SessionStateError,
    SourceError,
    StorageError,
    StorageFullError,
    StorageNotFoundError,
    StorageNotMountedError,
    human_bytes,
)
from imalinkd.manifest import FileEntry, SessionManifest, SkippedEntry, read_manifest, write_manifest
from imalinkd.plan import Plan, group_photos, photo_key, plan_copy
from imalinkd.scan import ScanResult, SourceFile, scan_source

log = structlog.get_logger()

LOCK_NAME = ".imalinkd.lock"
# errno values meaning the source device itself went away (card pulled, FUSE gone)
SOURCE_GONE = {errno.ENODEV, errno.ENXIO, errno.ENOTCONN, errno.ESHUTDOWN, errno.ENOENT, errno.ESTALE}
# errno values on the archive side that end the session (it stays resumable)
FATAL_DEST = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.ENODEV, errno.ENOTCONN, errno.ESHUTDOWN, errno.EUCLEAN if hasattr(errno, "EUCLEAN") else errno.EIO}

# sessions being imported by this process (a daemon runs several in threads)
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceInfo:
    kind: str = "manual"  # card | drop_folder | manual
    label: str | None = None
    fs_uuid: str | None = None
    device: str | None = None

    def as_json(self) -> dict:
        return {k: v for k, v in (("kind", self.kind), ("label", self.label), ("fs_uuid", self.fs_uuid), ("device", self.device)) if v is not None}


@dataclass
class Progress:
    """Live progress of one import; handed to the ``progress`` callback (read-only there)."""

    phase: str = "scanning"  # scanning, database_import, file_copying, post_processing, done
    session_uuid: str | None = None
    source: str = ""
    storage_path: str | None = None
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    current_file: str | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-6)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_done / self.elapsed / 1e6

    @property
    def eta_seconds(self) -> float | None:
        if not self.bytes_done or self.bytes_done >= self.bytes_total:
            return None
        return (self.bytes_total - self.bytes_done) / (self.bytes_done / self.elapsed)

    def as_json(self) -> dict:
        return {
            "phase": self.phase,
            "session_uuid": self.session_uuid,
            "source": self.source,
            "storage_path": self.storage_path,
            "files_total": self.files_total,
            "files_done": self.files_done,
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "current_file": paths.display(self.current_file) if self.current_file else None,
            "mb_per_s": round(self.mb_per_s, 2),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
        }


ProgressCallback = Callable[[Progress], None]


@dataclass
class ImportResult:
    session_uuid: str | None
    storage_directory_name: str | None
    storage_path: str | None
    copy_status: str
    total_files: int = 0
    total_size_bytes: int = 0
    photos_created: int = 0
    duplicates_skipped: int = 0
    skipped: list[SkippedEntry] = field(default_factory=list)
    new_files: int = 0  # copied by this run (a resume counts only what it copied)
    error: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.copy_status == "completed"

    def as_json(self) -> dict:
        return {
            "import_session_id": self.session_uuid,
            "storage_directory_name": self.storage_directory_name,
            "storage_path": self.storage_path,
            "copy_status": self.copy_status,
            "total_files": self.total_files,
            "total_size_bytes": self.total_size_bytes,
            "photos_created": self.photos_created,
            "duplicates_skipped": self.duplicates_skipped,
            "skipped_count": sum(1 for s in self.skipped if not s.duplicate_of),
            "skipped": [s.as_json() for s in self.skipped if not s.duplicate_of],
            "new_files": self.new_files,
            "error": self.error,
            "message": self.message,
        }


class _Abort(Exception):
    """Ends a session's copy stage: the session is marked failed and stays resumable."""


@dataclass
class _Copied:
    file: SourceFile
    storage_rel: str  # below files/
    sha256: str
    copied_at: str


@dataclass
class _NotCopied:
    file: SourceFile
    reason: str
    fatal: bool  # True: the session cannot go on (archive full, card gone, cancelled)
    knock_on: bool = False  # not attempted because of another file's fatal error


# --- storage resolution ----------------------------------------------------------------------


def open_storage(config: Config, catalog: Catalog, root_override: str | os.PathLike[str] | None = None) -> tuple[str, storage.Marker]:
    """The live storage root to import into, made a root on first use.

    Mount guard: a configured root that the catalog has seen before but whose marker is gone
    is an unplugged drive, not an empty folder: refuse rather than start a new archive on
    the bare mount point."""
    root = os.fspath(root_override) if root_override else (str(config.storage_root) if config.storage_root else None)
    wanted = config.storage.storage_id if not root_override else None
    if root is None:
        found = find_root_by_id(config, catalog, wanted or "")
        if found is None:
            raise StorageNotFoundError(path=wanted, storage_id=wanted, where=" (searched every mounted file system)")
        root = found
    root = os.path.abspath(root)
    marker = storage.read_marker(root) if os.path.isdir(root) else None
    if marker is None:
        with catalog.session() as s:
            known = s.scalars(select(StorageRoot).where(StorageRoot.last_seen_path == root)).first()
            if known is not None:
                raise StorageNotMountedError(path=root, storage_id=known.storage_id)
        marker = storage.init_storage(root)
        log.info("storage_initialised", storage_path=root, storage_id=marker.storage_id)
    if wanted and marker.storage_id != wanted:
        raise StorageError(path=root, message=f"holds storage {marker.storage_id}, but the config asks for {wanted}")
    record_root(catalog, root, marker)
    return root, marker


def find_root_by_id(config: Config, catalog: Catalog, storage_id: str) -> str | None:
    """Where the storage with this identity is mounted now (None: not reachable)."""
    try:
        from imalinkd.locate import resolve_root
    except ImportError:
        resolve_root = None
    if resolve_root is not None:
        return resolve_root(config, catalog, storage_id)
    with catalog.session() as s:
        row = s.scalars(select(StorageRoot).where(StorageRoot.storage_id == storage_id)).first()
        last = row.last_seen_path if row else None
    candidates = [p for p in (str(config.storage.root) if config.storage.root else None, last) if p]
    for p in candidates:
        try:
            m = storage.read_marker(p)
        except ImalinkError:
            m = None
        if m is not None and m.storage_id == storage_id:
            return p
    for found in storage.scan_all_mounts(config.storage.search_depth):
        if found.marker.storage_id == storage_id:
            return found.path
    return None


def record_root(catalog: Catalog, root: str, marker: storage.Marker) -> None:
    now = storage.utcnow()
    try:
        free, total = storage.disk_free(root)
    except OSError:
        free = total = None
    with catalog.session() as s:
        row = s.scalars(select(StorageRoot).where(StorageRoot.storage_id == marker.storage_id)).first()
        if row is None:
            row = StorageRoot(storage_id=marker.storage_id, first_seen_at=now)
            s.add(row)
        row.label = marker.label
        row.last_seen_path = root
        row.last_seen_at = now
        row.free_bytes, row.total_bytes = free, total


def session_dir_of(config: Config, catalog: Catalog, row: ImportSession) -> str | None:
    """The session's directory at its live path now, or None when its drive is away."""
    try:
        from imalinkd.locate import session_path
    except ImportError:
        session_path = None
    if session_path is not None:
        return session_path(config, catalog, row)
    if not row.storage_id or not row.storage_directory_name:
        return None
    root = find_root_by_id(config, catalog, row.storage_id)
    if root is None:
        return None
    d = os.path.join(root, row.storage_directory_name)
    return d if os.path.isdir(d) and not os.path.islink(d) else None


# --- liveness --------------------------------------------------------------------------------


def importer_alive(row: ImportSession) -> bool:
    """Is some process still importing this session? (A crashed one is not.)"""
    if row.importer_pid is None or row.importer_host != socket.gethostname():
        return False
    if row.importer_pid == os.getpid():
        with _ACTIVE_LOCK:
            return row.storage_uuid in _ACTIVE
    try:
        proc = psutil.Process(row.importer_pid)
        return proc.status() != psutil.STATUS_ZOMBIE and any("imalinkd" in part for part in proc.cmdline())
    except (psutil.Error, OSError):
        return False


def effective_status(row: ImportSession) -> str:
    """DESIGN §2: a session left ``in_progress`` with no importer alive counts as failed."""
    if row.copy_status == "in_progress" and not importer_alive(row):
        return "failed"
    return row.copy_status


def session_json(row: ImportSession, storage_path: str | None) -> dict:
    """The JSON shape of a session in ``sessions``/``import`` output (DESIGN §6)."""
    return {
        "id": row.id,
        "import_session_id": row.storage_uuid,
        "storage_directory_name": row.storage_directory_name,
        "storage_path": storage_path,
        "storage_id": row.storage_id,
        "copy_status": effective_status(row),
        "description": row.description,
        "created_at": storage.iso(row.created_at),
        "copy_started_at": storage.iso(row.copy_started_at),
        "copy_completed_at": storage.iso(row.copy_completed_at),
        "total_files": row.total_files,
        "total_size_bytes": row.total_size_bytes,
        "storage_size_mb": row.storage_size_mb,
        "photos_created": row.photos_created,
        "duplicates_skipped": row.duplicates_skipped,
        "skipped_count": row.skipped_count,
        "original_source_path": paths.display(row.original_source_path) if row.original_source_path else None,
        "source": {k: v for k, v in (("kind", row.source_kind), ("label", row.source_label), ("fs_uuid", row.source_fs_uuid)) if v},
        "copy_files": row.copy_files,
        "missing": row.missing,
        "error": row.error,
    }


# --- the session lock --------------------------------------------------------------------------


class SessionLock:
    """An exclusive ``flock`` on ``<session>/.imalinkd.lock``: one importer per session."""

    def __init__(self, session_dir: str, session_uuid: str) -> None:
        self.path = os.path.join(session_dir, LOCK_NAME)
        self.session_uuid = session_uuid
        self.fd = -1

    def acquire(self) -> None:
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = -1
            raise SessionBusyError(session=self.session_uuid) from None
        with _ACTIVE_LOCK:
            _ACTIVE.add(self.session_uuid)

    def release(self, remove: bool) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self.session_uuid)
        if self.fd < 0:
            return
        if remove:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = -1


# --- the engine --------------------------------------------------------------------------------


class _Run:
    """One run of the copy stage for one session (a new import or a resume)."""

    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        session_row_id: int,
        session_dir: str,
        manifest: SessionManifest,
        source_root: str,
        scan: ScanResult,
        verify: str,
        workers: int,
        thumbnails: bool,
        cancel: threading.Event | None,
        progress_cb: ProgressCallback | None,
        progress: Progress,
    ) -> None:
        self.config = config
        self.catalog = catalog
        self.row_id = session_row_id
        self.session_dir = session_dir
        self.files_dir = os.path.join(session_dir, "files")
        self.manifest = manifest
        self.source_root = source_root
        self.scan = scan
        self.verify = verify
        self.workers = workers
        self.thumbnails = thumbnails
        self.cancel = cancel or threading.Event()
        self.abort = threading.Event()
        self.progress_cb = progress_cb
        self.progress = progress
        self._bytes_lock = threading.Lock()
        self._last_report = 0.0
        self.copied_now = 0
        self.fatal: str | None = None

    # progress ----------------------------------------------------------------------------

    def _report(self, force: bool = False) -> None:
        if self.progress_cb is None:
            return
        now = time.monotonic()
        if force or now - self._last_report >= 0.1:
            self._last_report = now
            try:
                self.progress_cb(self.progress)
            except Exception:  # a broken display never breaks an import
                log.debug("progress_callback_failed", exc_info=True)

    def _on_bytes(self, n: int) -> None:
        with self._bytes_lock:
            self.progress.bytes_done += n

    # workers -----------------------------------------------------------------------------

    def _source_gone(self) -> bool:
        try:
            return os.stat(self.source_root).st_dev != self.scan.device
        except OSError:
            return True

    def copy_one(self, f: SourceFile, known_sha: str | None) -> _Copied | _NotCopied:
        """Copy, verify and commit one file. Runs in a worker thread; touches only the disk."""
        if self.cancel.is_set():
            return _NotCopied(f, "interrupted (stop requested)", fatal=True)
        if self.abort.is_set():
            return _NotCopied(f, "not attempted: the session stopped on an earlier error", fatal=True, knock_on=True)
        src = os.path.join(self.source_root, f.rel)
        self.progress.current_file = f.rel
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            return self._source_failure(f, e)
        sink = durable.Sink(os.path.join(self.files_dir, f.rel))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return _NotCopied(f, "no longer a regular file", fatal=False)
            try:
                sink.open()
            except OSError as e:
                return self._dest_failure(f, "create", e)
            try:
                outcome = durable.copy_to_sinks(fd, [sink], on_bytes=self._on_bytes, cancel=self.cancel)
            except durable.SourceIOError as e:
                sink.discard()
                return self._source_failure(f, e)
            except InterruptedError:
                sink.discard()
                return _NotCopied(f, "interrupted (stop requested)", fatal=True)
            except OSError as e:
                sink.discard()
                return self._dest_failure(f, "write", e)
            try:
                sink.finish((st.st_atime_ns, st.st_mtime_ns))
            except OSError as e:
                # never retried: after a failed fsync the data may already be lost
                sink.discard()
                return self._dest_failure(f, "fsync", e)
            if known_sha is not None and known_sha != outcome.sha256:
                sink.discard()
                return _NotCopied(f, "changed while it was being imported (hash differs from the planning read)", fatal=False)
            try:
                problem = sink.verify(self.verify, outcome.sha256, outcome.size)
            except OSError as e:
                sink.discard()
                return self._dest_failure(f, "verify", e)
            if problem is None and self.verify == "paranoid":
                try:
                    digest, _ = durable.hash_from_disk(src)
                except OSError as e:
                    sink.discard()
                    return self._source_failure(f, e)
                if digest != outcome.sha256:
                    problem = "source re-read gives a different sha256"
            if problem is not None:
                sink.discard()
                return _NotCopied(f, f"verification failed: {problem}", fatal=False)
            storage_rel = self._commit(sink, f.rel)
            if storage_rel is None:
                return _NotCopied(f, "no free name in the archive for it", fatal=False)
            return _Copied(f, storage_rel, outcome.sha256, storage.iso(storage.utcnow()) or "")
        except OSError as e:
            sink.discard()
            return self._dest_failure(f, "commit", e)
        finally:
            os.close(fd)

    def _commit(self, sink: durable.Sink, rel: str) -> str | None:
        """Commit under the file's own name, or ``name~N.ext`` when that is taken (a
        case-insensitive archive, or a file left by an earlier run that is not this one)."""
        base_dir, name = os.path.split(rel)
        stem, ext = os.path.splitext(name)
        for n in range(0, 1000):
            candidate = rel if n == 0 else (f"{base_dir}/{stem}~{n}{ext}" if base_dir else f"{stem}~{n}{ext}")
            sink.target = os.path.join(self.files_dir, candidate)
            try:
                sink.commit()
                return candidate
            except FileExistsError:
                continue
        sink.discard()
        return None

    def _source_failure(self, f: SourceFile, e: OSError) -> _NotCopied:
        if e.errno in SOURCE_GONE or self._source_gone():
            self.abort.set()
            return _NotCopied(f, f"the source went away ({e.strerror or e}); the card was probably removed", fatal=True)
        return _NotCopied(f, f"unreadable: {e.strerror or e}", fatal=False)

    def _dest_failure(self, f: SourceFile, op: str, e: OSError) -> _NotCopied:
        self.abort.set()
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            msg = f"the archive is full ({op}: {e.strerror})"
        elif e.errno == errno.EROFS:
            msg = f"the archive became read-only ({op}: {e.strerror})"
        else:
            msg = f"archive {op} failed: {e.strerror or e}"
        return _NotCopied(f, msg, fatal=True)

    # the stage -------------------------------------------------------------------------

    def run(self, to_copy: list[SourceFile], known: dict[str, str]) -> None:
        """Copy ``to_copy``; record each committed file in the catalog and the manifest."""
        self.progress.phase = "file_copying"
        self._report(force=True)
        post = _PostProcessor(self, enabled=True)
        pending: set[Future] = set()
        last_checkpoint = time.monotonic()
        items = iter(to_copy)
        # Submit at most a few files beyond the workers, so a stop leaves little queued.
        stopped = False  # files were left unsubmitted: the session cannot be complete
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="imalinkd-copy") as pool:
            exhausted = False
            while True:
                while not exhausted and len(pending) < self.workers * 2:
                    f = next(items, None)
                    if f is None:
                        exhausted = True
                        break
                    pending.add(pool.submit(self.copy_one, f, known.get(f.rel)))
                if not pending:
                    break
                done, pending = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                for fut in done:
                    self._record(fut.result(), post)
                if (self.abort.is_set() or self.cancel.is_set()) and not exhausted:
                    exhausted = stopped = next(items, None) is not None or stopped
                if time.monotonic() - last_checkpoint >= self.config.import_.checkpoint_seconds:
                    self.checkpoint()
                    last_checkpoint = time.monotonic()
                self._report()
        self.progress.current_file = None
        if stopped and self.fatal is None:
            self.fatal = "interrupted (stop requested)" if self.cancel.is_set() else "stopped on an earlier error"
        if self.fatal is None and self.thumbnails is not None:
            self.progress.phase = "post_processing"
            self._report(force=True)
        post.finish(self.thumbnails and self.fatal is None)

    def _record(self, result: _Copied | _NotCopied, post: "_PostProcessor") -> None:
        if isinstance(result, _NotCopied):
            if result.fatal:
                if result.knock_on:
                    return
                if self.fatal is None:
                    self.fatal = result.reason
                    log.error("import_stopped", session_id=self.manifest.import_session_id, file=paths.display(result.file.rel), reason=result.reason)
                return
            log.warning("file_not_imported", session_id=self.manifest.import_session_id, file=paths.display(result.file.rel), reason=result.reason)
            entry = SkippedEntry(result.file.rel, result.reason, result.file.size)
            self.manifest.skipped.append(entry)
            with self.catalog.session() as s:
                s.add(SkippedFile(session_id=self.row_id, original_path=entry.original_path, reason=entry.reason, file_size=entry.file_size))
            return
        f = result.file
        entry = FileEntry(
            original_path=f.rel,
            storage_path="files/" + result.storage_rel,
            file_size=f.size,
            sha256=result.sha256,
            copied_at=result.copied_at,
            mtime=f.mtime_ns / 1e9,
        )
        self.manifest.file_manifest.append(entry)
        with self.catalog.session() as s:
            img = Image(
                session_id=self.row_id,
                storage_relative_path=result.storage_rel,
                original_import_path=f.rel,
                file_size=f.size,
                sha256=result.sha256,
                mtime=f.mtime_ns / 1e9,
                copied_at=storage.parse_iso(result.copied_at),
            )
            s.add(img)
            row = s.get(ImportSession, self.row_id)
            row.total_files += 1
            row.total_size_bytes += f.size
            row.storage_size_mb = row.total_size_bytes // (1024 * 1024)
        self.copied_now += 1
        self.progress.files_done += 1
        self._report(force=True)
        post.submit(entry)

    def checkpoint(self) -> None:
        """Rewrite metadata.json with what is committed so far."""
        try:
            write_manifest(self.session_dir, self.manifest)
        except OSError as e:
            log.warning("manifest_checkpoint_failed", session_id=self.manifest.import_session_id, error=e.strerror)


class _PostProcessor:
    """EXIF and thumbnails, off the copy's critical path: one background thread reads the
    archived copies while the copy stage goes on; the copy never waits for it."""

    def __init__(self, run: _Run, enabled: bool) -> None:
        self.run = run
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imalinkd-media") if enabled else None
        self.futures: list[tuple[FileEntry, Future]] = []

    def submit(self, entry: FileEntry) -> None:
        if self.pool is None:
            return
        path = os.path.join(self.run.session_dir, entry.storage_path)
        self.futures.append((entry, self.pool.submit(_extract_media, path)))

    def finish(self, thumbnails: bool) -> None:
        """Collect metadata into the manifest and catalog, then make thumbnails."""
        if self.pool is None:
            return
        by_path: dict[str, dict] = {}
        for entry, fut in self.futures:
            try:
                media, error = fut.result()
            except Exception as e:  # a reader bug must not fail the import
                media, error = None, f"metadata reader failed: {e.__class__.__name__}"
            entry.media = media or None
            entry.media_error = error
            by_path[entry.files_relative] = {"media": media, "error": error}
        if by_path:
            with self.run.catalog.session() as s:
                for img in s.scalars(select(Image).where(Image.session_id == self.run.row_id)):
                    got = by_path.get(img.storage_relative_path)
                    if got is not None:
                        img.media_json = json.dumps(got["media"]) if got["media"] else None
                        img.media_error = got["error"]
        if thumbnails:
            make_thumbnails(self.run.catalog, self.run.row_id, self.run.session_dir, self.run.config.import_.thumbnail_size, self.pool)
        self.pool.shutdown(wait=True)


def _extract_media(path: str) -> tuple[dict | None, str | None]:
    try:
        from imalinkd.media import extract_media
    except ImportError:
        return None, None
    info = extract_media(path)
    return info.as_manifest(), info.error


def build_photos(catalog: Catalog, row_id: int) -> int:
    """(Re)build the session's Photo rows from its Images: one per directory + stem.
    Returns the number of Photos. Capture time and camera come from the best member."""
    try:
        from imalinkd.media import best_member
    except ImportError:
        best_member = None
    with catalog.session() as s:
        images = list(s.scalars(select(Image).where(Image.session_id == row_id)))
        existing = {p.key: p for p in s.scalars(select(Photo).where(Photo.session_id == row_id))}
        groups: dict[str, list[Image]] = {}
        for img in images:
            groups.setdefault(photo_key(img.storage_relative_path), []).append(img)
        for key, members in groups.items():
            photo = existing.get(key)
            if photo is None:
                photo = Photo(session_id=row_id, key=key)
                s.add(photo)
            best = members[0]
            if best_member is not None:
                try:
                    chosen = best_member([m.storage_relative_path for m in members])
                    best = next((m for m in members if m.storage_relative_path == chosen), best)
                except Exception:
                    pass
            media = json.loads(best.media_json) if best.media_json else {}
            if not media:
                media = next((json.loads(m.media_json) for m in members if m.media_json), {})
            photo.taken_at = media.get("taken_at")
            photo.camera_make = media.get("camera_make")
            photo.camera_model = media.get("camera_model")
            photo.camera_serial = media.get("camera_serial")
            photo.lens_model = media.get("lens_model")
            photo.orientation = media.get("orientation")
            photo.width = media.get("width")
            photo.height = media.get("height")
            gps = media.get("gps") or {}
            photo.gps_lat, photo.gps_lon, photo.gps_alt = gps.get("lat"), gps.get("lon"), gps.get("alt")
            for m in members:
                m.photo = photo
        row = s.get(ImportSession, row_id)
        row.photos_created = len(groups)
        return len(groups)


def make_thumbnails(catalog: Catalog, row_id: int, session_dir: str, size: int, pool: ThreadPoolExecutor | None = None) -> int:
    """A JPEG per Photo under ``thumbnails/``; returns how many were made."""
    try:
        from imalinkd.thumbnails import make_thumbnail, pick_thumbnail_source
    except ImportError:
        return 0
    build_photos(catalog, row_id)
    with catalog.session() as s:
        photos = [(p.id, p.key, p.orientation, [m.storage_relative_path for m in p.images]) for p in s.scalars(select(Photo).where(Photo.session_id == row_id))]
    made: dict[int, str] = {}

    def one(item):
        pid, key, orientation, members = item
        src = pick_thumbnail_source([os.path.join(session_dir, "files", m) for m in members])
        if src is None:
            return pid, None
        rel = "thumbnails/" + key.replace("/", "__") + ".jpg"
        dest = os.path.join(session_dir, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        result = make_thumbnail(src, dest, size=size)
        return pid, rel if getattr(result, "ok", False) else None

    results = pool.map(one, photos) if pool is not None else map(one, photos)
    for pid, rel in results:
        if rel:
            made[pid] = rel
    with catalog.session() as s:
        for pid, rel in made.items():
            p = s.get(Photo, pid)
            if p is not None:
                p.thumbnail_path = rel
    return len(made)


# --- planning helpers that ask the catalog ---------------------------------------------


def _archived_sizes(catalog: Catalog) -> Callable[[set[int]], set[int]]:
    def look(sizes: set[int]) -> set[int]:
        found: set[int] = set()
        ordered = sorted(sizes)
        with catalog.session() as s:
            for i in range(0, len(ordered), 500):
                chunk = ordered[i : i + 500]
                q = (
                    select(Image.file_size).distinct()
                    .join(ImportSession, Image.session_id == ImportSession.id)
                    .where(ImportSession.copy_status == "completed", Image.file_size.in_(chunk))
                )
                found.update(s.scalars(q))
        return found

    return look


def _find_archived(catalog: Catalog) -> Callable[[str, int], str | None]:
    def look(sha: str, size: int) -> str | None:
        with catalog.session() as s:
            q = (
                select(ImportSession.storage_uuid, Image.storage_relative_path)
                .join(ImportSession, Image.session_id == ImportSession.id)
                .where(ImportSession.copy_status == "completed", Image.sha256 == sha, Image.file_size == size)
                .limit(1)
            )
            hit = s.execute(q).first()
        return f"{hit[0]}:files/{paths.display(hit[1])}" if hit else None

    return look


def _hash_source(root: str) -> Callable[[SourceFile], str | None]:
    def h(f: SourceFile) -> str | None:
        try:
            return durable.hash_file(os.path.join(root, f.rel))[0]
        except OSError:
            return None

    return h


def preflight(root: str, needed: int, margin_mb: int, disk_free: Callable[[str], tuple[int, int]] = storage.disk_free, session: str | None = None) -> None:
    """Refuse before copying when the archive is not writable or lacks room (DESIGN §3)."""
    storage.check_writable(root)
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
) -> ImportResult:
    """Import ``source`` into the archive as one new session.

    Returns the result; ``copy_status`` is ``failed`` when the copy stopped (archive full or
    read-only, card pulled, stop requested): the session is then resumable. When nothing is
    new (everything is already archived) no session is created and ``session_uuid`` is None.
    Raises ImalinkError for what prevents starting (no archive, not enough room, bad source).
    """
    own_catalog = catalog is None
    catalog = catalog or Catalog.open(config)
    try:
        return _import(config, catalog, os.path.abspath(os.fspath(source)), description, source_info or SourceInfo(),
                       storage_root, verify or config.import_.verify, include, thumbnails, files, cancel, progress, disk_free)
    finally:
        if own_catalog:
            catalog.close()


def _import(config, catalog, source, description, info, storage_root, verify, include, thumbnails, files, cancel, progress_cb, disk_free) -> ImportResult:
    prog = Progress(source=source)
    root, marker = open_storage(config, catalog, storage_root)
    include = tuple(include) if include is not None else config.import_.include
    scan = scan_source(source, include, config.import_.exclude, only=files, skip_dirs=[root])
    prog.phase = "database_import"
    prog.files_total = len(scan.files)
    if progress_cb:
        progress_cb(prog)
    plan = plan_copy(scan.files, _archived_sizes(catalog), _hash_source(source), _find_archived(catalog))
    skipped = [SkippedEntry(s.rel, s.reason) for s in scan.skipped]
    skipped += [SkippedEntry(d.file.rel, "duplicate of an archived file", d.file.size, d.sha256, d.duplicate_of) for d in plan.duplicates]
    for s in scan.skipped:
        log.info("source_entry_skipped", source=source, path=paths.display(s.rel), reason=s.reason)
    if not plan.to_copy:
        log.info("import_nothing_new", source=source, duplicates=len(plan.duplicates), skipped=len(scan.skipped))
        return ImportResult(None, None, None, "completed", duplicates_skipped=len(plan.duplicates), skipped=skipped,
                            message=f"nothing new: {len(plan.duplicates)} file(s) already archived; no session created")
    preflight(root, plan.planned_bytes, config.storage.safety_margin_mb, disk_free)

    started = storage.utcnow()
    sid = str(uuid.uuid4())
    dirname = storage.session_dir_name(started, description, sid)
    session_dir = os.path.join(root, dirname)
    manifest = SessionManifest(
        import_session_id=sid, storage_id=marker.storage_id, created_at=storage.iso(started) or "",
        source_path=source, description=description, source=info.as_json(), copy_status="in_progress",
        copy_started_at=storage.iso(started), verification=verify, skipped=skipped,
    )
    try:
        os.makedirs(os.path.join(session_dir, "files"))
        lock = SessionLock(session_dir, sid)
        lock.acquire()
        write_manifest(session_dir, manifest)
    except OSError as e:
        raise StorageError(path=session_dir, message=f"cannot create the session directory: {e.strerror}") from None
    with catalog.session() as s:
        row = ImportSession(
            storage_uuid=sid, storage_id=marker.storage_id, storage_directory_name=dirname, description=description,
            created_at=started, copy_status="in_progress", copy_started_at=started, original_source_path=source,
            source_kind=info.kind, source_label=info.label, source_fs_uuid=info.fs_uuid, source_device=info.device,
            verification=verify, copy_files=True, duplicates_skipped=len(plan.duplicates),
            skipped_count=len(scan.skipped), planned_files=len(plan.to_copy), planned_bytes=plan.planned_bytes,
            importer_host=socket.gethostname(), importer_pid=os.getpid(),
        )
        s.add(row)
        s.flush()
        row_id = row.id
        for e in skipped:
            s.add(SkippedFile(session_id=row_id, original_path=e.original_path, reason=e.reason, file_size=e.file_size, sha256=e.sha256, duplicate_of=e.duplicate_of))
    log.info("import_started", session_id=sid, source=source, storage_path=session_dir, files=len(plan.to_copy), bytes=plan.planned_bytes,
             duplicates=len(plan.duplicates), skipped=len(scan.skipped), source_kind=info.kind, card_label=info.label, card_uuid=info.fs_uuid)
    prog.session_uuid, prog.storage_path = sid, session_dir
    prog.files_total, prog.bytes_total = len(plan.to_copy), plan.planned_bytes
    return _copy_and_finish(config, catalog, row_id, session_dir, manifest, source, scan, plan.to_copy, plan.known_hashes,
                            verify, thumbnails, cancel, progress_cb, prog, lock)


def _copy_and_finish(config, catalog, row_id, session_dir, manifest, source, scan, to_copy, known, verify, thumbnails, cancel, progress_cb, prog, lock) -> ImportResult:
    thumbs = config.import_.thumbnails if thumbnails is None else thumbnails
    run = _Run(config, catalog, row_id, session_dir, manifest, source, scan, verify, config.import_.workers, thumbs, cancel, progress_cb, prog)
    status = "failed"
    try:
        try:
            run.run(to_copy, known)
        except Exception as e:  # an unexpected bug still leaves a consistent, resumable session
            run.fatal = run.fatal or f"internal error: {e.__class__.__name__}: {e}"
            log.exception("import_crashed", session_id=manifest.import_session_id)
        status = "failed" if run.fatal else "completed"
        photos = build_photos(catalog, row_id)
        now = storage.utcnow()
        manifest.copy_status = status
        manifest.photos_created = photos
        manifest.error = run.fatal
        if status == "completed":
            manifest.copy_completed_at = storage.iso(now)
        try:
            write_manifest(session_dir, manifest)
        except OSError as e:
            log.error("manifest_write_failed", session_id=manifest.import_session_id, error=e.strerror)
            if status == "completed":
                status = "failed"
                run.fatal = f"metadata.json could not be written: {e.strerror}"
        with catalog.session() as s:
            row = s.get(ImportSession, row_id)
            row.copy_status = status
            row.error = run.fatal
            row.skipped_count = len(manifest.skipped) - manifest.duplicates_skipped
            if status == "completed":
                row.copy_completed_at = now
            row.importer_pid = None
            result = _result_of(row, session_dir, manifest.skipped, run.copied_now)
    finally:
        lock.release(remove=status == "completed")
    prog.phase = "done" if status == "completed" else "failed"
    if progress_cb:
        progress_cb(prog)
    if status == "completed":
        log.info("import_completed", session_id=result.session_uuid, storage_path=session_dir, files=result.total_files,
                 bytes=result.total_size_bytes, photos=result.photos_created, duplicates=result.duplicates_skipped,
                 mb_per_s=round(prog.mb_per_s, 1))
        result.message = f"files have been copied to storage; the source is no longer needed ({session_dir})"
    else:
        result.message = f"{result.error}. The session is resumable: 'imalinkd resume {result.session_uuid[:8]}' once the cause is fixed"
    return result


def _result_of(row: ImportSession, session_dir: str | None, skipped: list[SkippedEntry], new_files: int) -> ImportResult:
    return ImportResult(
        session_uuid=row.storage_uuid, storage_directory_name=row.storage_directory_name, storage_path=session_dir,
        copy_status=row.copy_status, total_files=row.total_files, total_size_bytes=row.total_size_bytes,
        photos_created=row.photos_created, duplicates_skipped=row.duplicates_skipped, skipped=skipped,
        new_files=new_files, error=row.error,
    )


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
) -> ImportResult:
    """Finish a failed or interrupted session without copying committed files again.

    ``source`` overrides where the source is now (a card mounted at another path)."""
    own_catalog = catalog is None
    catalog = catalog or Catalog.open(config)
    try:
        return _resume(config, catalog, ref, source, cancel, progress, thumbnails, disk_free)
    finally:
        if own_catalog:
            catalog.close()


def _resume(config, catalog, ref, source_override, cancel, progress_cb, thumbnails, disk_free) -> ImportResult:
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
    session_dir = session_dir_of(config, catalog, row)
    if session_dir is None:
        raise StorageNotFoundError(path=row.storage_directory_name, storage_id=row.storage_id, where=f" for session {sid}")
    if not source or not os.path.isdir(source):
        raise SourceError(path=source or "?", message=f"the source of session {sid[:8]} is not available; insert the card or give --source")
    lock = SessionLock(session_dir, sid)
    lock.acquire()
    try:
        try:
            manifest = read_manifest(session_dir)
        except ImalinkError as e:
            log.warning("manifest_unreadable_on_resume", session_id=sid, error=str(e))
            manifest = SessionManifest(import_session_id=sid, storage_id=row.storage_id or "", created_at=storage.iso(row.created_at) or "",
                                       source_path=source, description=row.description,
                                       source={"kind": row.source_kind, "label": row.source_label, "fs_uuid": row.source_fs_uuid})
        files_dir = os.path.join(session_dir, "files")
        removed = durable.remove_partials(files_dir)
        scan = scan_source(source, config.import_.include, config.import_.exclude, skip_dirs=[os.path.dirname(session_dir)])
        to_copy, known = _reconcile(catalog, row_id, session_dir, manifest, source, scan)
        plan = plan_copy(to_copy, _archived_sizes(catalog), _hash_source(source), _find_archived(catalog))
        for d in plan.duplicates:
            manifest.skipped.append(SkippedEntry(d.file.rel, "duplicate of an archived file", d.file.size, d.sha256, d.duplicate_of))
        known.update(plan.known_hashes)
        with catalog.session() as s:
            row = s.get(ImportSession, row_id)
            row.copy_status = "in_progress"
            row.error = None
            row.importer_host, row.importer_pid = socket.gethostname(), os.getpid()
            row.duplicates_skipped += len(plan.duplicates)
            row.original_source_path = source
            for d in plan.duplicates:
                s.add(SkippedFile(session_id=row_id, original_path=d.file.rel, reason="duplicate of an archived file", file_size=d.file.size, sha256=d.sha256, duplicate_of=d.duplicate_of))
        manifest.copy_status, manifest.error = "in_progress", None
        write_manifest(session_dir, manifest)
        preflight(os.path.dirname(session_dir), plan.planned_bytes, config.storage.safety_margin_mb, disk_free, session=sid[:8])
        log.info("resume_started", session_id=sid, source=source, to_copy=len(plan.to_copy), kept=len(manifest.file_manifest), partials_removed=removed)
        prog = Progress(source=source, session_uuid=sid, storage_path=session_dir, files_total=len(plan.to_copy), bytes_total=plan.planned_bytes)
    except BaseException:
        with catalog.session() as s:
            r = s.get(ImportSession, row_id)
            if r.copy_status == "in_progress":
                r.copy_status, r.importer_pid = "failed", None
        lock.release(remove=False)
        raise
    return _copy_and_finish(config, catalog, row_id, session_dir, manifest, source, scan, plan.to_copy, known, verify, thumbnails, cancel, progress_cb, prog, lock)


def _reconcile(catalog: Catalog, row_id: int, session_dir: str, manifest: SessionManifest, source: str, scan: ScanResult) -> tuple[list[SourceFile], dict[str, str]]:
    """Make catalog and manifest agree with the disk; return the source files still to copy.

    - a catalog row or manifest entry whose file is gone or has the wrong size (a power cut
      after the row was written) is dropped, and the file copied again;
    - a file under its final name that neither knows (committed just before a crash) is
      checked against the source and kept, not copied again."""
    files_dir = os.path.join(session_dir, "files")
    on_disk: dict[str, int] = {}
    for dirpath, _dirs, names in os.walk(files_dir):
        for name in names:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            on_disk[os.path.relpath(full, files_dir)] = st.st_size
    by_rel: dict[str, FileEntry] = {e.files_relative: e for e in manifest.file_manifest}
    with catalog.session() as s:
        rows = {img.storage_relative_path: img for img in s.scalars(select(Image).where(Image.session_id == row_id))}
        for rel, img in list(rows.items()):
            if on_disk.get(rel) != img.file_size:
                log.warning("committed_file_lost", session_id=manifest.import_session_id, file=paths.display(rel))
                s.delete(img)
                del rows[rel]
        for rel, img in rows.items():  # rows the last checkpoint did not reach
            if rel not in by_rel:
                by_rel[rel] = FileEntry(img.original_import_path or rel, "files/" + rel, img.file_size, img.sha256, storage.iso(img.copied_at), img.mtime)
        for rel in list(by_rel):
            if on_disk.get(rel) != by_rel[rel].file_size:
                del by_rel[rel]
        for rel, entry in by_rel.items():
            if rel not in rows:
                s.add(Image(session_id=row_id, storage_relative_path=rel, original_import_path=entry.original_path, file_size=entry.file_size,
                            sha256=entry.sha256, mtime=entry.mtime, copied_at=storage.parse_iso(entry.copied_at)))
        # committed on disk, recorded nowhere: hash both sides once, keep when equal
        source_by_rel = {f.rel: f for f in scan.files}
        for rel, size in on_disk.items():
            if rel in by_rel or durable.is_partial_name(os.path.basename(rel)):
                continue
            f = source_by_rel.get(rel)
            if f is None or f.size != size:
                continue
            try:
                disk_sha, _ = durable.hash_from_disk(os.path.join(files_dir, rel))
                src_sha, _ = durable.hash_file(os.path.join(source, rel))
            except OSError:
                continue
            if disk_sha == src_sha:
                entry = FileEntry(rel, "files/" + rel, size, disk_sha, storage.iso(storage.utcnow()), f.mtime_ns / 1e9)
                by_rel[rel] = entry
                s.add(Image(session_id=row_id, storage_relative_path=rel, original_import_path=rel, file_size=size, sha256=disk_sha,
                            mtime=entry.mtime, copied_at=storage.utcnow()))
        manifest.file_manifest = sorted(by_rel.values(), key=lambda e: e.storage_path)
        row = s.get(ImportSession, row_id)
        row.total_files = len(manifest.file_manifest)
        row.total_size_bytes = sum(e.file_size for e in manifest.file_manifest)
        row.storage_size_mb = row.total_size_bytes // (1024 * 1024)
    done_sources = {e.original_path for e in manifest.file_manifest}
    done_sources.update(s.original_path for s in manifest.skipped if s.duplicate_of)
    manifest.skipped = [s for s in manifest.skipped if s.duplicate_of]  # other skips are found again by the scan
    manifest.skipped += [SkippedEntry(s.rel, s.reason) for s in scan.skipped]
    return [f for f in scan.files if f.rel not in done_sources], {}


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

    def as_json(self) -> dict:
        return {"ok": self.ok, "checked": self.checked, "damaged": self.damaged, "missing": self.missing,
                "inaccessible_sessions": self.inaccessible, "sessions": self.sessions}


def verify_sessions(config: Config, refs: list[str] | None, *, catalog: Catalog | None = None, progress: Callable[[int, int, str], None] | None = None) -> VerifyReport:
    """Re-hash archived files from disk against their recorded sha256. ``refs`` None: all."""
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
                    digest, actual = durable.hash_from_disk(path)
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
