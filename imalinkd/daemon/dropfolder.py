"""Drop folders as an event source: watchdog → DropBatchSettled once a burst is complete.

A file is complete when both hold:

- it was closed after writing (inotify's ``IN_CLOSE_WRITE``, watchdog's FileClosedEvent), or
  it arrived by rename (the usual "write ``x.part``, rename to ``x``" pattern), or it was
  already there when watching began;
- its size and mtime have not changed for the settle time.

A burst of files becomes one batch: nothing is reported until the whole folder has been
quiet for the settle time and every file in it is complete; then one DropBatchSettled
carries them all (one import session). Temporary and hidden files (dot-files, ``*.part``,
``*.tmp``, ``*.crdownload``, ``*~``) are never taken; the final name of a renamed download
is.

Events can be missed: a subfolder is watched only once its creation is seen, so files
written into it in between make no event, and the kernel drops events when its queue
overflows. So a subfolder is listed once its watch is in place (a file found there counts
as already there), and every ``rescan_seconds`` the whole folder is listed again: a file
that no event announced and no batch took becomes pending, and a file still waiting for
its close event but unchanged over a whole interval counts as closed. Files a batch took
are remembered with their size and mtime, so that a rescan takes a kept file again only
once it changed.

``FolderTracker`` holds the rules as plain state driven by ``now`` and ``stat`` values, so
they are tested without sleeping; ``DropFolderSource`` only feeds it from watchdog and wakes
up when the next deadline is due (and for the periodic rescan).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import structlog
from watchdog.events import (
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    DirCreatedEvent,
    DirMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from imalinkd.daemon.events import DropBatchSettled

log = structlog.get_logger()

TEMP_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".download", "~")


def is_ignored_name(path: Path, folder: Path) -> bool:
    """Hidden (any component below the folder starting with '.') or a temporary name."""
    try:
        parts = path.relative_to(folder).parts
    except ValueError:
        return True
    if not parts or any(p.startswith(".") for p in parts):
        return True
    name = parts[-1].lower()
    return name.endswith(TEMP_SUFFIXES)


Signature = tuple[int, int]  # (size, mtime_ns)


@dataclass
class _FileState:
    closed: bool
    changed_at: float
    signature: Signature | None = None  # (size, mtime_ns) last seen
    rescanned: Signature | None = None  # as the last rescan saw it


@dataclass
class FolderTracker:
    """Pending files of one drop folder and the rules deciding when they form a batch."""

    folder: Path
    settle_seconds: float
    files: dict[Path, _FileState] = field(default_factory=dict)
    last_event_at: float = 0.0
    taken: dict[Path, Signature] = field(default_factory=dict)  # what batches took, as they took it

    def touched(self, path: Path, now: float, *, closed: bool) -> None:
        """The file was written (``closed=False``) or closed after writing / moved in."""
        if is_ignored_name(path, self.folder):
            return
        state = self.files.get(path)
        if state is None:
            state = self.files[path] = _FileState(closed=closed, changed_at=now)
        else:
            state.changed_at = now
            state.closed = closed
        self.last_event_at = now

    def found(self, path: Path, now: float, signature: Signature) -> None:
        """A file found by listing (a new subfolder, a rescan), not by an event: it was
        written before anyone watched, so it counts as closed (its size and mtime must
        still hold for the settle time). Pending files and files a batch took unchanged
        are left as they are."""
        if path in self.files or self.taken.get(path) == signature:
            return
        self.touched(path, now, closed=True)

    def rescan(self, now: float, listing: dict[Path, Signature]) -> None:
        """The whole folder listed again (``listing``: every file in it): take what events
        missed; a pending file still open by the last event but unchanged since the last
        rescan counts as closed (its close event was lost)."""
        for path, signature in listing.items():
            state = self.files.get(path)
            if state is None:
                self.found(path, now, signature)
            elif not state.closed:
                if state.rescanned == signature:
                    state.closed = True
                    state.changed_at = now
                    self.last_event_at = now
                state.rescanned = signature
        for path in [p for p in self.taken if p not in listing]:
            del self.taken[path]  # deleted after its import: forget it

    def removed(self, path: Path, now: float) -> None:
        if self.files.pop(path, None) is not None:
            self.last_event_at = now

    def next_deadline(self) -> float | None:
        """When to look again, or None while nothing is pending."""
        if not self.files or not all(s.closed for s in self.files.values()):
            # A file still open for writing becomes ready only with its close event,
            # which wakes the source anyway: no timed wake-ups meanwhile.
            return None
        latest = max([self.last_event_at, *(s.changed_at for s in self.files.values())])
        return latest + self.settle_seconds

    def take_batch(self, now: float, stat: Callable[[Path], os.stat_result | None]) -> tuple[Path, ...] | None:
        """The settled batch, or None if the folder is not ready yet. ``stat`` returns None
        for a file that is gone (it is dropped from the batch)."""
        if not self.files or now - self.last_event_at < self.settle_seconds:
            return None
        ready = True
        for path, state in list(self.files.items()):
            st = stat(path)
            if st is None:
                del self.files[path]
                continue
            signature = (st.st_size, st.st_mtime_ns)
            if signature != state.signature:
                # First look, or it changed behind our back: restart its clock unless this
                # is the first look at a file untouched for the settle time already.
                if state.signature is not None or now - state.changed_at < self.settle_seconds:
                    state.changed_at = now
                state.signature = signature
            if not state.closed or now - state.changed_at < self.settle_seconds:
                ready = False
        if not ready or not self.files:
            return None
        batch = tuple(sorted(self.files))
        self.taken.update((path, state.signature) for path, state in self.files.items() if state.signature is not None)
        self.files.clear()
        return batch


def list_files(directory: Path, folder: Path) -> dict[Path, Signature]:
    """Every regular file below ``directory`` that a drop folder could take, with its
    signature (hidden directories not entered, symlinks not followed)."""
    out: dict[Path, Signature] = {}
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            path = Path(dirpath) / name
            if is_ignored_name(path, folder):
                continue
            st = _stat(path)
            if st is not None:
                out[path] = (st.st_size, st.st_mtime_ns)
    return out


def _stat(path: Path) -> os.stat_result | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    import stat as stat_

    return st if stat_.S_ISREG(st.st_mode) else None


class _Handler(FileSystemEventHandler):
    def __init__(self, source: "DropFolderSource", tracker: FolderTracker) -> None:
        self.source = source
        self.tracker = tracker

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            if isinstance(event, (DirCreatedEvent, DirMovedEvent)):
                self._new_directory(Path(os.fsdecode(event.dest_path if isinstance(event, DirMovedEvent) else event.src_path)))
            return
        now = time.monotonic()
        with self.source._cond:
            t = self.tracker
            if isinstance(event, FileCreatedEvent) and event.is_synthetic:
                # a file inside a directory that was moved in: no event ever said it was written
                st = _stat(Path(os.fsdecode(event.src_path)))
                if st is not None:
                    t.found(Path(os.fsdecode(event.src_path)), now, (st.st_size, st.st_mtime_ns))
            elif isinstance(event, FileMovedEvent):
                t.removed(Path(os.fsdecode(event.src_path)), now)
                t.touched(Path(os.fsdecode(event.dest_path)), now, closed=True)
            elif isinstance(event, FileDeletedEvent):
                t.removed(Path(os.fsdecode(event.src_path)), now)
            elif isinstance(event, FileClosedNoWriteEvent):
                return  # someone (the importer, too) only read it
            elif isinstance(event, FileClosedEvent):
                t.touched(Path(os.fsdecode(event.src_path)), now, closed=True)
            elif isinstance(event, FileCreatedEvent) and Path(os.fsdecode(event.src_path)) in t.files:
                # A file already pending cannot be created again without a deletion in
                # between: this is watchdog announcing what it found in a new directory
                # (found, and counted as closed, by our own listing of it already).
                t.touched(Path(os.fsdecode(event.src_path)), now, closed=t.files[Path(os.fsdecode(event.src_path))].closed)
            elif isinstance(event, (FileCreatedEvent, FileModifiedEvent)):
                # Without close events (not inotify) stability alone has to do.
                t.touched(Path(os.fsdecode(event.src_path)), now, closed=not self.source.has_close_events)
            else:
                return
            self.source._cond.notify()

    def _new_directory(self, directory: Path) -> None:
        """A directory appeared; watchdog watches it by the time this runs. What was written
        into it before that made no event: list it now."""
        if is_ignored_name(directory / "x", self.tracker.folder):
            return
        listing = list_files(directory, self.tracker.folder)
        now = time.monotonic()
        with self.source._cond:
            for path, signature in listing.items():
                self.tracker.found(path, now, signature)
            if listing:
                log.info("drop_folder_new_directory_listed", folder=str(self.tracker.folder), directory=str(directory), files=len(listing))
                self.source._cond.notify()


class DropFolderSource:
    """Watches drop folders (recursively) and puts DropBatchSettled on ``events``.

    ``folders`` is a list of ``(path, settle_seconds)``. Files already present at
    ``start()`` are treated as closed and become the first batch once they are stable.
    A folder that does not exist is logged and skipped. Every ``rescan_seconds`` (0: never)
    each folder is listed again for what events missed.
    """

    def __init__(self, events: "queue.Queue[object]", folders: Iterable[tuple[Path, float]], rescan_seconds: float = 300.0) -> None:
        self.events = events
        self.folders = [(Path(p), float(s)) for p, s in folders]
        self.rescan_seconds = float(rescan_seconds)
        self._next_rescan: float | None = None
        self._cond = threading.Condition()
        self._trackers: list[FolderTracker] = []
        self._observer = Observer()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.has_close_events = type(self._observer).__name__.startswith("Inotify")

    def start(self) -> None:
        for folder, settle in self.folders:
            if not folder.is_dir():
                log.warning("drop_folder_missing", folder=str(folder))
                continue
            tracker = FolderTracker(folder, settle)
            self._trackers.append(tracker)
            self._observer.schedule(_Handler(self, tracker), str(folder), recursive=True)
        if not self._trackers:
            return
        self._observer.start()
        now = time.monotonic()
        with self._cond:
            for tracker in self._trackers:
                for path, signature in list_files(tracker.folder, tracker.folder).items():
                    tracker.found(path, now, signature)
            self._next_rescan = now + self.rescan_seconds if self.rescan_seconds > 0 else None
        self._thread = threading.Thread(target=self._run, name="drop-folders", daemon=True)
        self._thread.start()
        log.info("drop_folders_watching", folders=[str(t.folder) for t in self._trackers])

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._observer.is_alive():
            self._observer.stop()
            self._observer.join(timeout=5)

    def rescan(self) -> None:
        """List every folder again now (also what the periodic rescan does)."""
        listings = [(tracker, list_files(tracker.folder, tracker.folder)) for tracker in self._trackers]
        now = time.monotonic()
        with self._cond:
            for tracker, listing in listings:
                before = len(tracker.files)
                tracker.rescan(now, listing)
                if len(tracker.files) > before:
                    log.warning("drop_folder_rescan_found", folder=str(tracker.folder), files=len(tracker.files) - before)
            self._cond.notify()

    def _run(self) -> None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                if self._next_rescan is not None and now >= self._next_rescan:
                    self._cond.release()  # listing a large folder must not hold up the events
                    try:
                        self.rescan()
                    finally:
                        self._cond.acquire()
                    self._next_rescan = now + self.rescan_seconds
                deadlines = [] if self._next_rescan is None else [self._next_rescan]
                for tracker in self._trackers:
                    batch = tracker.take_batch(now, _stat)
                    if batch:
                        log.info("drop_batch_settled", folder=str(tracker.folder), files=len(batch))
                        self.events.put(DropBatchSettled(folder=tracker.folder, paths=batch))
                    deadline = tracker.next_deadline()
                    if deadline is not None:
                        deadlines.append(deadline)
                timeout = max(0.05, min(deadlines) - time.monotonic()) if deadlines else None
                self._cond.wait(timeout)
