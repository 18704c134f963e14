"""One scrub of one storage root: a slice of its files read back from the disk and checked
against the sha256 recorded when they were copied.

Which files: those the catalog knows on this drive (sessions whose home is this root or
that have a replica on it) not yet checked in the drive's current pass, never-checked
first, then oldest-checked (each check takes the drive's next sequence number, so the order
does not depend on the clock). The scrub stops when its budget is spent or the pass is
complete; when the pass is complete the next scrub begins a new one.

How: each file is opened without following symlinks (below a session directory that is a
real directory), its cached pages are dropped so that the disk is read and not memory, and
it is read in chunks at idle I/O priority. Between chunks the scrub waits while ``pause()``
is true (a card is being imported) and stops when ``cancel`` is set; a file it stopped in is
not recorded. Results are written to the catalog every few seconds and at the end, each as
the file's ``file_checks`` row on this drive: ``ok``, ``damaged`` (bytes or size differ),
``missing`` or ``unreadable``.

Reads only: nothing on the drive is written.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable

import structlog
from sqlalchemy import insert, or_, select, update

from imalinkd import durable, paths, readback, storage
from imalinkd.catalog import Catalog, FileCheck, Image, ImportSession, SessionCopy, StorageRoot
from imalinkd.locate import SafeTree, is_real_dir
from imalinkd.scrub.budget import Budget
from imalinkd.scrub.findings import Finding, other_copies

log = structlog.get_logger(__name__)

CHUNK = 1 << 20
FLUSH_SECONDS = 5.0  # results written to the catalog at least this often
FLUSH_FILES = 200
_clock = time.monotonic  # the time budget's clock (a test gives its own)


@dataclass(frozen=True)
class FileToCheck:
    image_id: int
    session_uuid: str
    directory_name: str
    rel: str  # below files/
    size: int
    sha256: str
    check_id: int | None  # its file_checks row on this drive, if any


@dataclass
class ScrubReport:
    storage_id: str
    label: str
    root: str
    budget: str
    files_on_drive: int = 0
    bytes_on_drive: int = 0
    checked: int = 0
    bytes_checked: int = 0
    ok: int = 0
    findings: list[Finding] = field(default_factory=list)
    sessions_absent: list[str] = field(default_factory=list)  # directories not on the drive now
    pass_completed: bool = False
    left_in_pass: int = 0
    stopped: str | None = None  # "budget", "cancelled", "drive_gone", or None (the pass is complete)

    @property
    def clean(self) -> bool:
        return not self.findings

    def as_json(self) -> dict:
        return {
            "storage_id": self.storage_id, "label": self.label, "path": self.root, "budget": self.budget,
            "files_on_drive": self.files_on_drive, "bytes_on_drive": self.bytes_on_drive,
            "checked": self.checked, "bytes_checked": self.bytes_checked, "ok": self.ok,
            "damaged": [f.as_json() for f in self.findings], "sessions_absent": self.sessions_absent,
            "pass_completed": self.pass_completed, "left_in_pass": self.left_in_pass, "stopped": self.stopped,
        }


class _Stop(Exception):
    """The scrub stops inside a file (cancelled, or its time is up); that file is not recorded."""


def lower_io_priority() -> None:
    """Idle I/O class (the disk serves this thread only when nothing else wants it; the CFQ
    and BFQ schedulers honour it, others ignore it) and the lowest CPU priority, for the
    calling thread only."""
    tid = threading.get_native_id()
    try:
        import psutil

        psutil.Process(tid).ionice(psutil.IOPRIO_CLASS_IDLE)
    except Exception as e:  # not Linux, or not allowed: the scrub still runs, only less politely
        log.debug("scrub_ionice_failed", error=str(e))
    try:
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    except OSError:
        pass


def _drive_files(s, storage_id: str) -> tuple[list[FileToCheck], dict[int, int]]:
    """Every file the catalog knows on this drive (sessions whose home it is, then those
    with a replica on it), and the sequence number of each one's last check here (image id
    → seq). Sessions being written now are left out: their files were just verified."""
    wanted = (Image.id, ImportSession.storage_uuid, Image.storage_relative_path, Image.file_size, Image.sha256)
    live = (ImportSession.copy_files.is_(True), ImportSession.copy_status != "in_progress")
    home = (select(*wanted, ImportSession.storage_directory_name).join(ImportSession, Image.session_id == ImportSession.id)
            .where(ImportSession.storage_id == storage_id, ImportSession.storage_directory_name.is_not(None), *live))
    replica = (select(*wanted, SessionCopy.storage_directory_name).join(ImportSession, Image.session_id == ImportSession.id)
               .join(SessionCopy, SessionCopy.session_id == ImportSession.id)
               .where(SessionCopy.storage_id == storage_id, or_(ImportSession.storage_id.is_(None), ImportSession.storage_id != storage_id),
                      *live))
    checks = {image_id: (cid, seq) for cid, image_id, seq in s.execute(
        select(FileCheck.id, FileCheck.image_id, FileCheck.seq).where(FileCheck.storage_id == storage_id))}
    files: list[FileToCheck] = []
    seqs: dict[int, int] = {}
    seen: set[int] = set()
    for query in (home, replica):
        for image_id, uuid_, rel, size, sha, name in s.execute(query):
            if image_id in seen:
                continue
            seen.add(image_id)
            cid, seq = checks.get(image_id, (None, None))
            files.append(FileToCheck(image_id, uuid_, name, rel, size, sha, cid))
            if seq is not None:
                seqs[image_id] = seq
    return files, seqs


def _in_pass_order(files: list[FileToCheck], seqs: dict[int, int], pass_seq: int) -> list[FileToCheck]:
    """The files not yet checked in the pass that began at ``pass_seq``: never checked
    first, then by when they were last checked (oldest first)."""
    due = [f for f in files if seqs.get(f.image_id, -1) <= pass_seq]
    due.sort(key=lambda f: (seqs.get(f.image_id, -1), f.image_id))
    return due


def check_file(path: str | None, size: int, sha256: str, pause: Callable[[], bool],
               cancel: threading.Event, deadline: list[float] | None) -> tuple[str, str | None]:
    """Read one file back from the disk: ``(result, detail)``. ``deadline`` is a one-item
    list holding the monotonic time the scrub must stop by (moved later while paused)."""
    if path is None:
        return "missing", "reached through a symlink or not below a real directory"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return "missing", None
    except OSError as e:
        return ("missing" if e.errno == 40 else "unreadable"), e.strerror or str(e)  # ELOOP: a symlink in its place
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "damaged", "not a regular file any more"
        durable.drop_cache(fd)
        # On FUSE (exfat-fuse, ntfs-3g) the file's own pages are not all: the server reads
        # the block device through the device's cache, which must be dropped too, or the
        # scrub would check a cached copy instead of the disk (see imalinkd.readback).
        route = readback.route_for(path)
        if route.device is not None:
            readback.drop_device_cache(route.device)
        h = hashlib.sha256()
        n = 0
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while True:
            _wait_while_paused(pause, cancel, deadline)
            if cancel.is_set() or (deadline is not None and _clock() >= deadline[0]):
                raise _Stop()
            try:
                k = os.readv(fd, [buf])
            except OSError as e:
                return "unreadable", f"read error after {n} bytes: {e.strerror or e}"
            if not k:
                break
            h.update(view[:k])
            n += k
        durable.drop_cache(fd)
    finally:
        os.close(fd)
    if n != size:
        return "damaged", f"size on disk {n}, recorded {size}"
    digest = h.hexdigest()
    if digest != sha256:
        return "damaged", f"sha256 on disk {digest[:16]}…, recorded {sha256[:16]}…"
    return "ok", None


def _wait_while_paused(pause: Callable[[], bool], cancel: threading.Event, deadline: list[float] | None) -> None:
    if not pause():
        return
    began = _clock()
    log.info("scrub_paused", reason="a card is being imported")
    while pause() and not cancel.is_set():
        cancel.wait(0.5)
    if deadline is not None:
        deadline[0] += _clock() - began  # the time paused is not spent
    log.info("scrub_resumed")


class _Recorder:
    """The results of a scrub, written to the catalog in short transactions."""

    def __init__(self, catalog: Catalog, storage_id: str, seq: int) -> None:
        self.catalog, self.storage_id, self.seq = catalog, storage_id, seq
        self.pending: list[tuple[FileToCheck, int, datetime, str, str | None]] = []
        self.last = _clock()

    def add(self, f: FileToCheck, result: str, detail: str | None) -> None:
        self.seq += 1
        self.pending.append((f, self.seq, storage.utcnow(), result, detail))
        if len(self.pending) >= FLUSH_FILES or _clock() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self, **root_values) -> None:
        pending, self.pending = self.pending, []
        self.last = _clock()
        with self.catalog.session() as s:
            new = [{"image_id": f.image_id, "storage_id": self.storage_id, "seq": seq, "checked_at": at, "result": r, "detail": d}
                   for f, seq, at, r, d in pending if f.check_id is None]
            if new:
                s.execute(insert(FileCheck), new)
            for f, seq, at, r, d in pending:
                if f.check_id is not None:
                    s.execute(update(FileCheck).where(FileCheck.id == f.check_id).values(seq=seq, checked_at=at, result=r, detail=d))
            s.execute(update(StorageRoot).where(StorageRoot.storage_id == self.storage_id)
                      .values(scrub_seq=self.seq, **root_values))


def scrub_root(catalog: Catalog, root: str, marker: storage.Marker, budget: Budget, *,
               pause: Callable[[], bool] = lambda: False, cancel: threading.Event | None = None,
               on_damage: Callable[[Finding], None] | None = None,
               on_checked: Callable[[str, int], None] | None = None) -> ScrubReport:
    """Scrub the storage root at ``root`` (whose marker is ``marker``) within ``budget``;
    see the module's docstring. ``on_damage`` is called once per file found not intact
    (after it is logged); ``on_checked(result, bytes)`` once per file checked."""
    cancel = cancel or threading.Event()
    sid = marker.storage_id
    report = ScrubReport(sid, marker.label, root, str(budget))
    with catalog.session() as s:
        row = s.scalars(select(StorageRoot).where(StorageRoot.storage_id == sid)).first()
        if row is None:
            log.info("scrub_nothing_known", storage_id=sid, storage_root=root, message="the catalog knows no files on this drive yet")
            return report
        seq, pass_seq, passes = row.scrub_seq or 0, row.scrub_pass_seq or 0, row.scrub_passes or 0
        files, seqs = _drive_files(s, sid)
    began_pass_seq = pass_seq
    report.files_on_drive, report.bytes_on_drive = len(files), sum(f.size for f in files)
    due = _in_pass_order(files, seqs, pass_seq)
    if not due and files:  # the last pass ended without being closed: the next one begins
        pass_seq = seq
        due = _in_pass_order(files, seqs, pass_seq)
    max_bytes = budget.bytes_for(report.bytes_on_drive)
    deadline = [_clock() + budget.seconds] if budget.seconds is not None else None
    log.info("scrub_started", storage_id=sid, label=marker.label, storage_root=root, budget=str(budget),
             files_on_drive=len(files), left_in_pass=len(due))
    root_dev = os.stat(root).st_dev
    recorder = _Recorder(catalog, sid, seq)
    trees: dict[str, SafeTree | None] = {}
    done = 0
    try:
        for f in due:
            if report.checked and max_bytes is not None and report.bytes_checked >= max_bytes:
                report.stopped = "budget"
                break
            tree = trees.get(f.directory_name, False)
            if tree is False:
                sdir = os.path.join(root, f.directory_name)
                tree = trees[f.directory_name] = SafeTree(os.path.join(sdir, "files")) if is_real_dir(sdir) else None
                if tree is None:
                    report.sessions_absent.append(f.directory_name)
            if tree is None:
                done += 1  # its session is not on the drive now (a reindex says so): nothing to read
                continue
            try:
                result, detail = check_file(tree.path(f.rel), f.size, f.sha256, pause, cancel, deadline)
            except _Stop:
                report.stopped = "cancelled" if cancel.is_set() else "budget"
                break
            if result != "ok" and not _still_there(root, root_dev):
                report.stopped = "drive_gone"  # what failed is the drive leaving, not the file
                break
            done += 1
            recorder.add(f, result, detail)
            report.checked += 1
            report.bytes_checked += f.size
            if on_checked is not None:
                on_checked(result, f.size)
            if result == "ok":
                report.ok += 1
            else:
                _found(catalog, report, f, result, detail, on_damage)
    finally:
        report.left_in_pass = len(due) - done
        closing: dict = {"last_scrub_at": storage.utcnow()}
        if report.left_in_pass == 0 and files:
            report.pass_completed = True
            closing.update(scrub_pass_seq=recorder.seq, scrub_passes=passes + 1)
        elif pass_seq != began_pass_seq:  # this scrub began a new pass (the last one was not closed)
            closing["scrub_pass_seq"] = pass_seq
        recorder.flush(**closing)
    if report.pass_completed:
        log.info("scrub_pass_completed", storage_id=sid, label=marker.label, passes=passes + 1, files=len(files))
    log.info("scrub_finished", storage_id=sid, label=marker.label, checked=report.checked, bytes=report.bytes_checked,
             damaged=len(report.findings), pass_completed=report.pass_completed, left_in_pass=report.left_in_pass,
             stopped=report.stopped)
    return report


def _still_there(root: str, dev: int) -> bool:
    """Is the drive the scrub began on still mounted at ``root``? (A pulled drive makes its
    files look missing or unreadable; that is not damage.)"""
    try:
        return os.stat(root).st_dev == dev and storage.read_marker(root) is not None
    except Exception:
        return False


def _found(catalog: Catalog, report: ScrubReport, f: FileToCheck, result: str, detail: str | None,
           on_damage: Callable[[Finding], None] | None) -> None:
    """A file not intact: named in the log with its session and the other copies, kept in
    the report, and handed to ``on_damage`` (the one place a notification is sent from)."""
    with catalog.session() as s:
        others = other_copies(s, f.sha256, f.size, f.image_id, report.storage_id)
    finding = Finding(storage_id=report.storage_id, label=report.label, session_id=f.session_uuid,
                      directory_name=f.directory_name, path="files/" + paths.display(f.rel), result=result,
                      detail=detail, other_copies=others)
    report.findings.append(finding)
    log.error("scrub_damage_found", **finding.as_json())
    if on_damage is not None:
        try:
            on_damage(finding)
        except Exception:
            log.exception("scrub_damage_notification_failed")
