"""The daemon's scrubs: when an archive drive is plugged in (once its reindex is done, so
that the catalog knows what is on it) and, for drives that stay, whenever a drive's last
scrub is older than ``[scrub] interval_hours``.

One scrub at a time, in one thread of its own, apart from card imports: a scrub never waits
for an import to finish and an import never waits for a scrub; the scrub pauses while an
import runs (``importing()``), so the card, the slowest device, gets the disks. A drive
pulled out stops the scrub of it (what it read before is recorded; the file it was in is
not). Each scrub reads at most ``[scrub] budget``.

The daemon calls ``drive_indexed``, ``drive_gone`` and ``stop`` from its main thread; the
rest happens in the scrub thread.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable, Iterable

import structlog
from sqlalchemy import select

from imalinkd import storage
from imalinkd.catalog import StorageRoot
from imalinkd.scrub.budget import parse_budget
from imalinkd.scrub.engine import lower_io_priority, scrub_root
from imalinkd.scrub.findings import Finding

log = structlog.get_logger(__name__)

TICK_SECONDS = 600.0  # how often drives that stay are looked at for a scheduled scrub


class ScrubScheduler:
    def __init__(self, config, catalog, *, importing: Callable[[], bool],
                 on_damage: Callable[[Finding], None], on_checked: Callable[[str, int], None] | None = None) -> None:
        self.config = config
        self.catalog = catalog
        self.importing = importing
        self.on_damage = on_damage
        self.on_checked = on_checked
        self.queue: "queue.SimpleQueue[str | None]" = queue.SimpleQueue()
        self.present: dict[str, str] = {}  # root path -> storage_id, drives plugged in now
        self.stopping = threading.Event()
        self.current: tuple[str, threading.Event] | None = None
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.completed = 0  # scrubs finished, for tests and status

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="imalinkd-scrub", daemon=True)
        self.thread.start()

    def drive_indexed(self, roots: Iterable[Path | str]) -> None:
        """An archive drive was plugged in and reindexed: scrub its roots (``on_plug``)."""
        for root in map(str, roots):
            try:
                marker = storage.read_marker(root)
            except Exception:
                marker = None
            if marker is None:
                continue
            with self.lock:
                self.present[root] = marker.storage_id
            if self.config.scrub.on_plug:
                self.queue.put(root)

    def drive_gone(self, mount_point: Path | str) -> None:
        """A drive was unplugged: forget its roots, and stop a scrub of one of them."""
        mp = str(mount_point).rstrip("/") + "/"
        with self.lock:
            for root in [r for r in self.present if (r.rstrip("/") + "/").startswith(mp)]:
                del self.present[root]
            if self.current is not None and (self.current[0].rstrip("/") + "/").startswith(mp):
                self.current[1].set()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        with self.lock:
            if self.current is not None:
                self.current[1].set()
        self.queue.put(None)
        if self.thread is not None:
            self.thread.join(timeout)

    # -- the scrub thread --

    def _run(self) -> None:
        lower_io_priority()
        while not self.stopping.is_set():
            try:
                root = self.queue.get(timeout=TICK_SECONDS)
            except queue.Empty:
                root = None
                for due in self._due():
                    self.queue.put(due)
            if root is None or self.stopping.is_set():
                continue
            try:
                self._scrub(root)
            except Exception:  # one drive's trouble must not end the scrubs of the others
                log.exception("scrub_failed", storage_root=root)

    def _due(self) -> list[str]:
        """Drives plugged in now (and the configured root) whose last scrub is older than
        the interval."""
        hours = self.config.scrub.interval_hours
        if hours <= 0:
            return []
        with self.lock:
            roots = dict(self.present)
        configured = self.config.storage_root
        if configured is not None and str(configured) not in roots:
            try:
                marker = storage.read_marker(configured)
            except Exception:
                marker = None
            if marker is not None:
                roots[str(configured)] = marker.storage_id
        limit = storage.utcnow() - timedelta(hours=hours)
        with self.catalog.session() as s:
            last = dict(s.execute(select(StorageRoot.storage_id, StorageRoot.last_scrub_at)
                                  .where(StorageRoot.storage_id.in_(list(roots.values())))).all())
        return [root for root, sid in roots.items() if sid in last and (last[sid] is None or last[sid] < limit)]

    def _scrub(self, root: str) -> None:
        marker = storage.read_marker(root) if os.path.isdir(root) else None
        if marker is None:
            return
        cancel = threading.Event()
        with self.lock:
            if self.stopping.is_set():
                return
            self.current = (root, cancel)
        t0 = time.monotonic()
        try:
            report = scrub_root(self.catalog, root, marker, parse_budget(self.config.scrub.budget), pause=self.importing,
                                cancel=cancel, on_damage=self.on_damage, on_checked=self.on_checked)
        finally:
            with self.lock:
                self.current = None
        self.completed += 1
        log.info("drive_scrubbed", storage_root=root, label=marker.label, checked=report.checked,
                 not_intact=len(report.findings), pass_completed=report.pass_completed, seconds=round(time.monotonic() - t0, 1))
