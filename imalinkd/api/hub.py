"""Live progress of imports, fanned out to server-sent-event subscribers and to metrics.

The import engine runs in worker threads and reports through a plain callback; the HTTP
server runs an asyncio loop in its own thread. ``ProgressHub`` sits between them:

- :meth:`ProgressHub.publish` is the engine's ``progress=`` callback. It is thread-safe,
  never blocks and never raises: it snapshots the (mutable) ``Progress`` into a JSON
  message at once, updates the metrics and hands the message to every subscriber's queue.
- :meth:`ProgressHub.publish_result` announces how an import ended.
- :meth:`ProgressHub.subscribe` gives an asyncio consumer (the ``/events`` stream) its own
  bounded queue. A slow consumer loses its oldest messages, never slows an import down.

Messages use the seed's two phases: the engine's ``scanning`` and ``database_import`` are
"Database Import", ``file_copying`` and ``post_processing`` are "File Copying".
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from typing import Any

import structlog

from imalinkd.api.metrics import ImportMetrics

log = structlog.get_logger(__name__)

SEED_PHASES = {
    "scanning": "Database Import",
    "database_import": "Database Import",
    "file_copying": "File Copying",
    "post_processing": "File Copying",
}
SOURCE_NO_LONGER_NEEDED = "files have been copied to storage; the source is no longer needed"
KEEP_THE_SOURCE = ("files have been copied to storage; keep the source: some of its files are archived only on a drive "
                   "that is not plugged in (not checked now)")
QUEUE_SIZE = 256
KEEP_FINISHED = 64  # finished imports remembered for /import-sessions/{id} and new subscribers


def seed_phase(engine_phase: str) -> str:
    """The seed's phase name for an engine phase ("Completed"/"Failed" once it has ended)."""
    if engine_phase in SEED_PHASES:
        return SEED_PHASES[engine_phase]
    return {"done": "Completed", "failed": "Failed"}.get(engine_phase, engine_phase.replace("_", " ").title())


def progress_message(progress: Any) -> dict:
    """The ``progress`` event of one ``importer.Progress`` (or anything with ``as_json``)."""
    raw = progress.as_json() if hasattr(progress, "as_json") else dict(progress)
    engine_phase = str(raw.get("phase") or "")
    files_total, bytes_total = raw.get("files_total") or 0, raw.get("bytes_total") or 0
    bytes_done = raw.get("bytes_done") or 0
    percent = round(100.0 * bytes_done / bytes_total, 1) if bytes_total else (100.0 if engine_phase == "done" else 0.0)
    return {
        "type": "progress",
        "session_uuid": raw.get("session_uuid"),
        "phase": seed_phase(engine_phase),
        "engine_phase": engine_phase,
        "current_file": raw.get("current_file"),
        "copied_files": raw.get("files_done") or 0,
        "total_files": files_total,
        "copied_bytes": bytes_done,
        "total_bytes": bytes_total,
        "percent": min(percent, 100.0),
        "mb_per_s": raw.get("mb_per_s") or 0.0,
        "eta_seconds": raw.get("eta_seconds"),
        "source": raw.get("source"),
        "storage_path": raw.get("storage_path"),
        "source_no_longer_needed": raw.get("source_no_longer_needed"),
        "time": time.time(),
    }


class Subscription:
    """One consumer's queue, filled from any thread, read in the consumer's event loop."""

    def __init__(self, hub: "ProgressHub", loop: asyncio.AbstractEventLoop) -> None:
        self._hub = hub
        self._loop = loop
        self._queue: asyncio.Queue[dict] = asyncio.Queue(QUEUE_SIZE)
        self.dropped = 0

    def _put(self, message: dict) -> None:  # runs in the consumer's loop
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(message)

    def offer(self, message: dict) -> None:
        try:
            self._loop.call_soon_threadsafe(self._put, message)
        except RuntimeError:  # the loop is closed: the consumer is gone
            self._hub.unsubscribe(self)

    async def get(self, timeout: float) -> dict | None:
        """The next message, or None after ``timeout`` seconds without one."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except asyncio.TimeoutError:
            return None

    def close(self) -> None:
        self._hub.unsubscribe(self)


class ProgressHub:
    """Thread-safe fan-out of import progress; see the module docstring."""

    def __init__(self, metrics: ImportMetrics | None = None) -> None:
        self.metrics = metrics or ImportMetrics()
        self._lock = threading.Lock()
        self._subscribers: list[Subscription] = []
        self._active: dict[str, dict] = {}  # session uuid (or source) -> latest progress message
        self._finished: OrderedDict[str, dict] = OrderedDict()
        self._last: dict[str, tuple[int, int]] = {}  # key -> (files_done, bytes_done) counted so far
        self._waiting_source: Any = None

    # -- producers (any thread) --

    def publish(self, progress: Any) -> None:
        """The engine's progress callback. Never raises, so a broken consumer cannot break
        an import."""
        try:
            message = progress_message(progress)
            self._record(message)
            self._fan_out(message)
            if message["engine_phase"] in ("done", "failed"):
                self._fan_out(self._ended_message(message))
        except Exception:
            log.warning("progress_publish_failed", exc_info=True)

    def publish_result(self, result: Any) -> None:
        """Announce how an import ended (``importer.ImportResult``). A completed import's
        message tells the user the source is no longer needed, and where the files are."""
        try:
            data = result.as_json() if hasattr(result, "as_json") else dict(result)
            sid = data.get("import_session_id")
            status = data.get("copy_status") or "failed"
            outcome = "nothing_new" if sid is None and status == "completed" else status
            with self._lock:
                already = sid is not None and sid in self._finished and self._finished[sid].get("counted")
            self.metrics.import_ended(outcome, data.get("error"), data.get("skipped") or [], count=not already)
            message = {
                "type": "result",
                "session_uuid": sid,
                "status": outcome,
                "storage_location": data.get("storage_path"),
                "storage_directory_name": data.get("storage_directory_name"),
                "message": SOURCE_NO_LONGER_NEEDED if outcome == "completed" and data.get("source_no_longer_needed", True)
                else (data.get("message") or data.get("error")),
                "result": data,
                "time": time.time(),
            }
            with self._lock:
                if sid:
                    self._active.pop(sid, None)
                    self._remember(sid, {**message, "counted": True})
            self._fan_out(message)
        except Exception:
            log.warning("result_publish_failed", exc_info=True)

    def publish_error(self, source: str, error: str) -> None:
        """An import that could not start (no archive, not enough room, bad source)."""
        try:
            self.metrics.import_ended("failed", error, [], count=True)
            self._fan_out({"type": "failed", "session_uuid": None, "source": source, "message": error, "time": time.time()})
        except Exception:
            log.warning("error_publish_failed", exc_info=True)

    def observe_latency(self, seconds: float) -> None:
        """Time from a card/drop event to its session starting (called by the daemon)."""
        self.metrics.observe_latency(seconds)

    def observe_verify(self, report: Any) -> None:
        """Count a verification run's results (``importer.VerifyReport``)."""
        self.metrics.verify_report(report)

    def set_waiting_source(self, source: Any) -> None:
        """``source()`` lists what waits for an archive (the daemon's cards and drop folders),
        each ``{"kind", "name", "mount_point"}``; shown on the web dashboard."""
        self._waiting_source = source

    # -- consumers --

    def waiting(self) -> list[dict]:
        """Cards and drop folders waiting for an archive to be plugged in (empty outside the daemon)."""
        source = self._waiting_source
        if source is None:
            return []
        try:
            return list(source())
        except Exception:
            log.warning("waiting_list_failed", exc_info=True)
            return []

    def subscribe(self, loop: asyncio.AbstractEventLoop | None = None) -> Subscription:
        sub = Subscription(self, loop or asyncio.get_running_loop())
        with self._lock:
            self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    @property
    def subscriber_count(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def active(self) -> list[dict]:
        """The latest progress message of every import running now."""
        with self._lock:
            return [dict(m) for m in self._active.values()]

    def latest(self, session_uuid: str) -> dict | None:
        """The latest message about a session: its progress if running, else how it ended
        (only for imports this process saw)."""
        with self._lock:
            m = self._active.get(session_uuid) or self._finished.get(session_uuid)
            return {k: v for k, v in m.items() if k != "counted"} if m else None

    # -- internals --

    def _key(self, message: dict) -> str:
        return message.get("session_uuid") or f"source:{message.get('source')}"

    def _record(self, message: dict) -> None:
        key = self._key(message)
        ended = message["engine_phase"] in ("done", "failed")
        with self._lock:
            files0, bytes0 = self._last.get(key, (0, 0))
            files, nbytes = message["copied_files"], message["copied_bytes"]
            self._last[key] = (max(files, files0), max(nbytes, bytes0))
            if ended:
                self._last.pop(key, None)
                self._active.pop(key, None)
                # a failed import is counted here; publish_result adds its cause
                self._remember(key, {**message, "counted": True})
            else:
                self._active[key] = message
            # a session key replaces the source key once the engine has named the session
            if message.get("session_uuid"):
                src_key = f"source:{message.get('source')}"
                self._active.pop(src_key, None)
                old = self._last.pop(src_key, None)
                if old and not ended:
                    self._last[key] = (max(old[0], self._last[key][0]), max(old[1], self._last[key][1]))
            throughput = sum(m["mb_per_s"] for m in self._active.values() if m["engine_phase"] == "file_copying")
            active = len(self._active)
        self.metrics.progress(max(0, files - files0), max(0, nbytes - bytes0), throughput, active)
        if ended:
            self.metrics.import_ended("completed" if message["engine_phase"] == "done" else "failed", None, [], count=True)

    def _remember(self, key: str, message: dict) -> None:  # with the lock held
        self._finished[key] = message
        self._finished.move_to_end(key)
        while len(self._finished) > KEEP_FINISHED:
            self._finished.popitem(last=False)

    def _ended_message(self, message: dict) -> dict:
        done = message["engine_phase"] == "done"
        if not done:
            said = "the import stopped; the session is resumable"
        elif message.get("source_no_longer_needed") is False:  # duplicates counted on a drive not plugged in
            said = KEEP_THE_SOURCE
        else:
            said = SOURCE_NO_LONGER_NEEDED
        return {
            "type": "completed" if done else "failed",
            "session_uuid": message.get("session_uuid"),
            "message": said,
            "storage_location": message.get("storage_path"),
            "copied_files": message["copied_files"],
            "copied_bytes": message["copied_bytes"],
            "time": time.time(),
        }

    def _fan_out(self, message: dict) -> None:
        with self._lock:
            subs = list(self._subscribers)
        for sub in subs:
            sub.offer(message)
