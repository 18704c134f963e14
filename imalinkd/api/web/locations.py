"""Storage locations for the pages, with a bound on the wait.

``scan-locations`` looks at every mounted file system, and a drive that does not answer (a
hung FUSE mount, a dying disk) can block a look at it for as long as the kernel lets it.
A page must still answer: :class:`BoundedLocations` runs one scan at a time in a
background thread and waits for it at most ``wait`` seconds; past that the page shows the
roots the catalog knows (each marked "not checked now") and says the list is incomplete.
At most one thread is ever stuck on a hung drive, however often the page is reloaded.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Callable

import structlog
from sqlalchemy import func, select

from imalinkd.catalog import ImportSession, StorageRoot
from imalinkd.storage import iso

log = structlog.get_logger(__name__)

WAIT_SECONDS = 5.0


class BoundedLocations:
    def __init__(self, scan: Callable[[], list[dict]], catalog: Any, wait: float = WAIT_SECONDS) -> None:
        self._scan, self._catalog, self._wait = scan, catalog, wait
        self._lock = threading.Lock()
        self._running: Future | None = None

    def now(self) -> tuple[list[dict], bool]:
        """The reachable roots and True, or the catalog's known roots and False when the
        scan did not finish in time."""
        with self._lock:
            if self._running is None or self._running.done():
                self._running = self._start()
            running = self._running
        try:
            return running.result(timeout=self._wait), True
        except FutureTimeout:
            log.warning("storage_scan_slow", wait_seconds=self._wait, reason="a mounted file system does not answer")
            return self.known(), False

    def _start(self) -> Future:
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(self._scan())
            except BaseException as e:  # handed to the page that waits
                future.set_exception(e)

        # a daemon thread: one stuck on a hung drive must not keep the process from exiting
        threading.Thread(target=run, name="web storage scan", daemon=True).start()
        return future

    def known(self) -> list[dict]:
        with self._catalog.session() as s:
            counts = dict(s.execute(select(ImportSession.storage_id, func.count()).group_by(ImportSession.storage_id)).all())
            rows = list(s.scalars(select(StorageRoot).order_by(StorageRoot.id)))
        return [{
            "path": r.last_seen_path, "label": r.label, "storage_id": r.storage_id, "session_count": counts.get(r.storage_id, 0),
            "sessions": [], "free_bytes": r.free_bytes, "total_bytes": r.total_bytes,
            "utilisation_percent": 100.0 * (r.total_bytes - r.free_bytes) / r.total_bytes if r.total_bytes and r.free_bytes is not None else None,
            "last_verified_at": iso(r.last_verified_at), "low_space": False, "unchecked": True,
        } for r in rows]
