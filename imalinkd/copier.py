"""Stage 3, copy: files copied, verified and committed by worker threads.

The workers touch only the disk (through :mod:`imalinkd.durable`); every catalog and
manifest write happens in the thread that runs the stage, one file at a time as results
come in. Verifying one file overlaps with reading the next, so the source — the slowest
device — stays busy.
"""

from __future__ import annotations

import errno
import os
import stat
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import structlog

from imalinkd import durable, paths, readback, storage
from imalinkd.backups import finish_copy as backups_finish
from sqlalchemy import insert, update

from imalinkd.catalog import Catalog, Image, ImportSession, SkippedFile
from imalinkd.verdict import record_copies
from imalinkd.config import Config
from imalinkd.manifest import FileEntry, SessionManifest, SkippedEntry, write_manifest
from imalinkd.photos import PostProcessor, record_thumbnails, thumbnails_by_shot
from imalinkd.progress import Progress, ProgressCallback  # noqa: F401 (their home before imalinkd.progress)
from imalinkd.scan import ScanResult, SourceFile

log = structlog.get_logger()

# errno values meaning the source device itself went away (card pulled, FUSE gone)
SOURCE_GONE = {errno.ENODEV, errno.ENXIO, errno.ENOTCONN, errno.ESHUTDOWN, errno.ENOENT, errno.ESTALE}




@dataclass
class Copied:
    file: SourceFile
    storage_rel: str  # below files/
    sha256: str
    copied_at: str
    size: int  # of the bytes read, hashed and written (the scan may have seen another)
    mtime_ns: int  # the source's, unchanged from the start of the read to its end
    readback: str | None = None  # how its verification re-read it (imalinkd.readback); None: size only
    backups: list = field(default_factory=list)  # the Destinations that verified a copy too


@dataclass
class NotCopied:
    file: SourceFile
    reason: str
    fatal: bool  # True: the session cannot go on (archive full, card gone, cancelled)
    knock_on: bool = False  # not attempted because of another file's fatal error


@dataclass
class Written:
    """A source file read to its end into a temporary copy, not yet durable or verified."""

    file: SourceFile
    sink: durable.Sink
    outcome: durable.CopyOutcome
    times_ns: tuple[int, int]
    extra: list = field(default_factory=list)  # (Destination, BackupSink) fed by the same read

    def discard(self) -> None:
        self.sink.discard()
        for _dest, sink in self.extra:
            sink.discard()


CHANGED_DURING_COPY = ("changed while it was being copied (its size or modification time moved during the read); "
                       "not archived from that read: resume copies it once it is no longer written to")


def _changed(before: os.stat_result, after: os.stat_result) -> bool:
    return (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns)


def not_archived_summary(items: list[tuple[str, str]]) -> str:
    """The session's error when files it meant to import were not archived: the first by
    name with its reason, and how many more (each is in the session's skipped list)."""
    rel, reason = items[0]
    more = f"; {len(items) - 1} more are listed among the session's skipped files" if len(items) > 1 else ""
    return f"{len(items)} file(s) not archived: {paths.display(rel)}: {reason}{more}"


class _Either:
    """Set when either event is: a read half-way stops for a stop request or an abort."""

    def __init__(self, a: threading.Event, b: threading.Event) -> None:
        self.a, self.b = a, b

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()


# --- the engine --------------------------------------------------------------------------------


class CopyStage:
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
        backups: list | None = None,
        archive_gone: Callable[[], str | None] | None = None,
    ) -> None:
        self.config = config
        self.backups = backups or []  # imalinkd.backups.Destination: the same session on backup archives
        self.catalog = catalog
        self.row_id = session_row_id
        self.session_dir = session_dir
        self.files_dir = os.path.join(session_dir, "files")
        self.manifest = manifest
        self.source_root = source_root
        self.scan = scan
        self.verify = verify
        self.workers = workers
        self.readers = config.import_.readers
        self.thumbnails = thumbnails
        self.cancel = cancel or threading.Event()
        self.abort = threading.Event()
        self.stop = _Either(self.cancel, self.abort)  # what ends a read half-way
        self.temp_dir = os.path.join(session_dir, durable.TEMP_DIR)
        # files the policy meant to import that this run did not archive, with the reason:
        # each keeps the session from completing (those the scan could not even list too)
        self.not_archived: list[tuple[str, str]] = [(s.rel, s.reason) for s in scan.skipped if getattr(s, "error", False)]
        self.progress_cb = progress_cb
        self.progress = progress
        self._bytes_lock = threading.Lock()
        self._last_report = 0.0
        self.copied_now = 0
        self.fatal: str | None = None
        self.readback: str | None = None  # the weakest re-read of this run's verifications
        # asked before each commit: the message saying that the archive's path no longer
        # leads to the drive written to (see imalinkd.heldroot), or None while it does
        self.archive_gone = archive_gone or (lambda: None)
        self.archive_went_away = False
        self.photos: int | None = None  # Photos of the session, once post-processing built them
        self._pending_images: list[FileEntry] = []
        self._pending_skips: list[SkippedEntry] = []
        self._pending_copies: list[tuple[str, str]] = []  # (path below files/, backup storage_id)

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

    def read_one(self, f: SourceFile, known_sha: str | None) -> Written | NotCopied:
        """Reader thread: stream one source file into its temporary copy, hashing it. The
        source is read exactly once, here; nothing waits on the archive's fsync."""
        if self.cancel.is_set():
            return NotCopied(f, "interrupted (stop requested)", fatal=True)
        if self.abort.is_set():
            return NotCopied(f, "not attempted: the session stopped on an earlier error", fatal=True, knock_on=True)
        src = os.path.join(self.source_root, f.rel)
        self.progress.current_file = f.rel
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            return self._source_failure(f, e)
        sink = durable.Sink(os.path.join(self.files_dir, f.rel), self.temp_dir)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return NotCopied(f, "no longer a regular file", fatal=False)
            try:
                sink.open()
            except OSError as e:
                return self._dest_failure(f, "create", e)
            w = Written(f, sink, durable.CopyOutcome("", 0), (st.st_atime_ns, st.st_mtime_ns), self._backup_sinks(f))
            got = self._stream(f, fd, st, [sink] + [b for _d, b in w.extra], known_sha)
            if isinstance(got, NotCopied):
                w.discard()
                return got
            w.outcome = got
            return w
        finally:
            os.close(fd)

    def _stream(self, f: SourceFile, fd: int, st: os.stat_result, sinks: list[durable.Sink], known_sha: str | None) -> durable.CopyOutcome | NotCopied:
        """Copy ``fd`` into every sink (one read); the bytes count only if the file stayed
        as it was (size and modification time) from the start of the read to its end."""
        try:
            outcome = durable.copy_to_sinks(fd, sinks, on_bytes=self._on_bytes, cancel=self.stop)
        except durable.SourceIOError as e:
            return self._source_failure(f, e)
        except InterruptedError:
            if self.cancel.is_set():
                return NotCopied(f, "interrupted (stop requested)", fatal=True)
            return NotCopied(f, "not finished: the session stopped on an earlier error", fatal=True, knock_on=True)
        except OSError as e:
            return self._dest_failure(f, "write", e)
        try:
            after = os.fstat(fd)
        except OSError as e:
            return self._source_failure(f, e)
        if _changed(st, after) or outcome.size != after.st_size:
            return NotCopied(f, CHANGED_DURING_COPY, fatal=False)
        if known_sha is not None and known_sha != outcome.sha256:
            return NotCopied(f, "changed while it was being imported (hash differs from the planning read)", fatal=False)
        return outcome

    def _backup_sinks(self, f: SourceFile) -> list:
        """An open sink on every backup still taking files; one that cannot be created here
        drops out of this session (the verdict then counts one copy fewer)."""
        out = []
        for dest in self.backups:
            if dest.failed:
                continue
            if not dest.archive.still_there(dest.session_dir):
                dest.fail("the backup drive went away")
                continue
            sink = durable.BackupSink(os.path.join(dest.files_dir, f.rel), dest.temp_dir)
            try:
                sink.open()
            except OSError as e:
                sink.discard()
                dest.fail(f"create: {e.strerror or e}")
                continue
            out.append((dest, sink))
        return out

    def finish_one(self, w: Written) -> Copied | NotCopied:
        """Finisher threads: fsync, verify against a re-read from disk, commit (on the
        primary, then on each backup under the same name). Runs while the reader is
        already streaming the next files."""
        result = self._finish_primary(w)
        if isinstance(result, Copied):
            result.backups = [d for d, sink in w.extra if backups_finish(d, sink, self.verify, w, result.storage_rel)]
        else:
            for _d, sink in w.extra:
                sink.discard()
        return result

    def _finish_primary(self, w: Written) -> Copied | NotCopied:
        f, sink, outcome = w.file, w.sink, w.outcome
        try:
            try:
                sink.finish(w.times_ns)
            except OSError as e:
                # never retried: after a failed fsync the data may already be lost
                sink.discard()
                return self._dest_failure(f, "fsync", e)
            try:
                problem = sink.verify(self.verify, outcome.sha256, outcome.size)
            except OSError as e:
                sink.discard()
                return self._dest_failure(f, "verify", e)
            how = sink.readback
            if problem is None and self.verify == "paranoid":
                try:
                    digest, _, source_how = readback.reread_hash(os.path.join(self.source_root, f.rel))
                except OSError as e:
                    sink.discard()
                    return self._source_failure(f, e)
                how = readback.weakest(how, source_how)
                if digest != outcome.sha256:
                    problem = "source re-read gives a different sha256"
            if problem is not None:
                sink.discard()
                return NotCopied(f, f"verification failed: {problem}", fatal=False)
            gone = self.archive_gone()
            if gone is not None:
                sink.discard()
                self.abort.set()
                self.archive_went_away = True
                return NotCopied(f, gone, fatal=True)
            storage_rel = self._commit(sink, f.rel)
            if storage_rel is None:
                return NotCopied(f, "no free name in the archive for it", fatal=False)
            return Copied(f, storage_rel, outcome.sha256, storage.iso(storage.utcnow()) or "", outcome.size, w.times_ns[1], how)
        except OSError as e:
            sink.discard()
            return self._dest_failure(f, "commit", e)

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

    def _source_failure(self, f: SourceFile, e: OSError) -> NotCopied:
        if e.errno in SOURCE_GONE or self._source_gone():
            self.abort.set()
            return NotCopied(f, f"the source went away ({e.strerror or e}); the card was probably removed", fatal=True)
        return NotCopied(f, f"unreadable: {e.strerror or e}", fatal=False)

    def _archive_read_only(self) -> bool:
        """Has the kernel turned the archive read-only (ext4 errors=remount-ro, a failing
        drive)? Its writes then fail with EIO as often as with EROFS; a probe tells."""
        probe = os.path.join(self.session_dir, f".imalinkd-rw-probe-{threading.get_ident()}")
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
            return False
        except OSError as e:
            return e.errno == errno.EROFS

    def _dest_failure(self, f: SourceFile, op: str, e: OSError) -> NotCopied:
        self.abort.set()
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            msg = f"the archive is full ({op}: {e.strerror})"
        elif e.errno == errno.EROFS or self._archive_read_only():
            msg = f"the archive became read-only ({op}: {e.strerror}); check the drive, then resume"
        else:
            msg = f"archive {op} failed: {e.strerror or e}"
        return NotCopied(f, msg, fatal=True)

    # the stage -------------------------------------------------------------------------

    def run(self, to_copy: list[SourceFile], known: dict[str, str]) -> None:
        """Copy ``to_copy``; record committed files in the catalog and the manifest.

        ``readers`` threads stream the source (one, in order, suits a card best: it reads
        fastest sequentially and is never left idle while a copy is fsynced or verified);
        ``workers`` finisher threads fsync, verify and commit. At most ``2 × workers`` written files wait to be
        finished, which bounds the dirty data and what a stop leaves behind."""
        self.progress.phase = "file_copying"
        self._report(force=True)
        durable.make_dirs(self.temp_dir)  # a new directory of the session: durable in it
        post = PostProcessor(self.catalog, self.row_id, self.session_dir, self.config.import_.thumbnail_size, self.thumbnails)
        results: queue.Queue = queue.Queue()
        slots = threading.Semaphore(self.workers * 2)
        done_reading = object()
        unattempted = [0]

        def finish(w: Written) -> None:
            try:
                results.put(self.finish_one(w))
            except BaseException as e:  # a bug: the file is not copied, the session fails
                w.discard()
                results.put(NotCopied(w.file, f"internal error: {e.__class__.__name__}: {e}", fatal=True))
            finally:
                slots.release()

        next_index = [0]
        index_lock = threading.Lock()

        def take() -> int | None:
            with index_lock:
                i = next_index[0]
                if i >= len(to_copy):
                    return None
                if self.cancel.is_set() or self.abort.is_set():
                    unattempted[0] = len(to_copy) - i
                    next_index[0] = len(to_copy)
                    return None
                next_index[0] = i + 1
                return i

        def read_all(pool: ThreadPoolExecutor) -> None:
            i = None
            try:
                while (i := take()) is not None:
                    f = to_copy[i]
                    slots.acquire()
                    written = self.read_one(f, known.get(f.rel))
                    if isinstance(written, Written):
                        pool.submit(finish, written)
                    else:
                        slots.release()
                        results.put(written)
            except BaseException as e:  # a bug: stop the session, keep it resumable
                self.abort.set()
                results.put(NotCopied(to_copy[i or 0], f"internal error: {e.__class__.__name__}: {e}", fatal=True))

        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="imalinkd-finish")
        readers = [threading.Thread(target=read_all, args=(pool,), name=f"imalinkd-read-{n}", daemon=True)
                   for n in range(max(1, min(self.readers, len(to_copy))))]

        def supervise() -> None:
            for t in readers:
                t.join()
            pool.shutdown(wait=True)
            results.put(done_reading)

        for t in readers:
            t.start()
        supervisor = threading.Thread(target=supervise, name="imalinkd-copy-supervisor", daemon=True)
        supervisor.start()
        try:
            self._collect(results, done_reading, post)
            supervisor.join()
            self.flush()
        except BaseException:
            # A checkpoint failed (the catalog's disk full, say): no thread of this copy may
            # go on writing once the caller marks the session failed and lets go of its
            # lock. Stop them, wait for them, and take what they committed into the
            # manifest (the catalog learns it from there, on resume).
            self.abort.set()
            supervisor.join()
            self._drain(results, done_reading)
            post.abandon()
            raise
        self.progress.current_file = None
        if unattempted[0] and self.fatal is None:
            self.fatal = "interrupted (stop requested)" if self.cancel.is_set() else "stopped on an earlier error"
        if self.fatal is None and self.not_archived:
            self.fatal = not_archived_summary(self.not_archived)
        if self.fatal is None and self.thumbnails:
            self.progress.phase = "post_processing"
            self._report(force=True)
        self.photos = post.finish(self.thumbnails and self.fatal is None)
        record_thumbnails(self.manifest.file_manifest, thumbnails_by_shot(self.catalog, self.row_id))

    def _collect(self, results: queue.Queue, done_reading: object, post: PostProcessor) -> None:
        """Record results as they come, with a checkpoint now and then, until all are in."""
        last_checkpoint = time.monotonic()
        while True:
            try:
                item = results.get(timeout=0.5)
            except queue.Empty:
                item = None
            if item is done_reading:
                return
            if item is not None:
                self._record(item, post)
            if time.monotonic() - last_checkpoint >= self.config.import_.checkpoint_seconds:
                self.checkpoint()
                last_checkpoint = time.monotonic()
            self._report()

    def _drain(self, results: queue.Queue, done_reading: object) -> None:
        """After the threads ended: what they left in the queue, into the manifest only."""
        while True:
            try:
                item = results.get_nowait()
            except queue.Empty:
                return
            if item is not done_reading:
                self._record(item, None)

    def _record(self, result: Copied | NotCopied, post: PostProcessor | None) -> None:
        """Take one result into the manifest and the pending catalog rows (main thread)."""
        if isinstance(result, NotCopied):
            if result.fatal:
                if result.knock_on:
                    return
                if self.fatal is None:
                    self.fatal = result.reason
                    log.error("import_stopped", session_id=self.manifest.import_session_id, file=paths.display(result.file.rel), reason=result.reason)
                return
            log.warning("file_not_imported", session_id=self.manifest.import_session_id, file=paths.display(result.file.rel), reason=result.reason)
            self.not_archived.append((result.file.rel, result.reason))
            entry = SkippedEntry(result.file.rel, result.reason, result.file.size)
            self.manifest.skipped.append(entry)
            self._pending_skips.append(entry)
            return
        f = result.file
        entry = FileEntry(
            original_path=f.rel,
            storage_path="files/" + result.storage_rel,
            file_size=result.size,
            sha256=result.sha256,
            copied_at=result.copied_at,
            mtime=result.mtime_ns / 1e9,
        )
        self.manifest.file_manifest.append(entry)
        self._pending_images.append(entry)
        self.readback = readback.weakest(self.readback, result.readback)
        for dest in result.backups:
            dest.record(entry)
            self._pending_copies.append((entry.files_relative, dest.archive.storage_id))
        self.copied_now += 1
        self.progress.files_done += 1
        self._report(force=True)
        if post is not None:
            post.submit(entry)

    def flush(self) -> None:
        """Write the pending catalog rows in one transaction. Files committed on disk but
        not yet here after a crash are found and kept by resume (:func:`imalinkd.reconcile.reconcile`)."""
        if not self._pending_images and not self._pending_skips:
            return
        images, skips, copies = self._pending_images, self._pending_skips, self._pending_copies
        self._pending_images, self._pending_skips, self._pending_copies = [], [], []
        with self.catalog.session() as s:
            if images:
                s.execute(insert(Image), [
                    {"session_id": self.row_id, "storage_relative_path": e.files_relative, "original_import_path": e.original_path,
                     "file_size": e.file_size, "sha256": e.sha256, "mtime": e.mtime, "copied_at": storage.parse_iso(e.copied_at),
                     "size_mismatch": False}
                    for e in images
                ])
                added = sum(e.file_size for e in images)
                s.execute(
                    update(ImportSession).where(ImportSession.id == self.row_id).values(
                        total_files=ImportSession.total_files + len(images),
                        total_size_bytes=ImportSession.total_size_bytes + added,
                        storage_size_mb=(ImportSession.total_size_bytes + added) // (1024 * 1024),
                    )
                )
            for e in skips:
                s.add(SkippedFile(session_id=self.row_id, original_path=e.original_path, reason=e.reason, file_size=e.file_size))
            if copies:
                record_copies(s, self.row_id, copies)

    def checkpoint(self) -> None:
        """Catalog rows, then metadata.json, brought up to what is committed so far."""
        self.flush()
        try:
            write_manifest(self.session_dir, self.manifest)
        except OSError as e:
            log.warning("manifest_checkpoint_failed", session_id=self.manifest.import_session_id, error=e.strerror)
        for dest in self.backups:
            if not dest.failed:
                dest.write_manifest()
