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

``FolderTracker`` holds the rules as plain state driven by ``now`` and ``stat`` values, so
they are tested without sleeping; ``DropFolderSource`` only feeds it from watchdog and wakes
up when the next deadline is due (no polling while nothing is pending).
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


@dataclass
class _FileState:
    closed: bool
    changed_at: float
    signature: tuple[int, int] | None = None  # (size, mtime_ns) last seen


@dataclass
class FolderTracker:
    """Pending files of one drop folder and the rules deciding when they form a batch."""

    folder: Path
    settle_seconds: float
    files: dict[Path, _FileState] = field(default_factory=dict)
    last_event_at: float = 0.0

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
        self.files.clear()
        return batch


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
            return
        now = time.monotonic()
        with self.source._cond:
            t = self.tracker
            if isinstance(event, FileMovedEvent):
                t.removed(Path(os.fsdecode(event.src_path)), now)
                t.touched(Path(os.fsdecode(event.dest_path)), now, closed=True)
            elif isinstance(event, FileDeletedEvent):
                t.removed(Path(os.fsdecode(event.src_path)), now)
            elif isinstance(event, FileClosedNoWriteEvent):
                return  # someone (the importer, too) only read it
            elif isinstance(event, FileClosedEvent):
                t.touched(Path(os.fsdecode(event.src_path)), now, closed=True)
            elif isinstance(event, (FileCreatedEvent, FileModifiedEvent)):
                # Without close events (not inotify) stability alone has to do.
                t.touched(Path(os.fsdecode(event.src_path)), now, closed=not self.source.has_close_events)
            else:
                return
            self.source._cond.notify()


class DropFolderSource:
    """Watches drop folders (recursively) and puts DropBatchSettled on ``events``.

    ``folders`` is a list of ``(path, settle_seconds)``. Files already present at
    ``start()`` are treated as closed and become the first batch once they are stable.
    A folder that does not exist is logged and skipped.
    """

    def __init__(self, events: "queue.Queue[object]", folders: Iterable[tuple[Path, float]]) -> None:
        self.events = events
        self.folders = [(Path(p), float(s)) for p, s in folders]
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
                for dirpath, dirnames, filenames in os.walk(tracker.folder):
                    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                    for name in filenames:
                        tracker.touched(Path(dirpath) / name, now, closed=True)
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

    def _run(self) -> None:
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                deadlines = []
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
