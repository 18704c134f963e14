"""Cameras on a USB cable as an event source, and the camera import job.

``CameraSource`` asks ``gphoto2 --auto-detect`` (and tries the ``[cameras] ports``) at
start and whenever udev reports a USB device coming or going; where udev does not run, or
when ``[cameras] ports`` are set (a folder seen as a camera makes no USB event), it also asks
every ``[cameras] poll_seconds``. It reports each camera that appears or goes as an event. What a camera
job does is :func:`imalinkd.camera_import.import_camera`.
"""

from __future__ import annotations

import os
import select
import threading
from typing import Any, Callable

import structlog

from imalinkd.camera import Camera, CameraError
from imalinkd.config import Config
from imalinkd.daemon.events import CameraAppeared, CameraGone, JobFinished

log = structlog.get_logger()


def changes(before: set[tuple[str, str]], now: set[tuple[str, str]]) -> list[object]:
    """The events that turn the cameras ``before`` into those ``now`` ((model, port) pairs)."""
    gone = [CameraGone(m, p) for m, p in sorted(before - now)]
    return gone + [CameraAppeared(m, p) for m, p in sorted(now - before)]


class CameraSource:
    """Polls for cameras; puts CameraAppeared/CameraGone on ``events``."""

    def __init__(self, events: Any, config: Config, detect: Callable[[], list[Camera]]) -> None:
        self.events = events
        self.interval = config.cameras.poll_seconds
        self.poll_always = bool(config.cameras.ports)
        self.detect = detect
        self.known: set[tuple[str, str]] = set()
        self._stop_r, self._stop_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cameras", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        os.write(self._stop_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=10)
        for fd in (self._stop_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def poll_once(self) -> None:
        try:
            now = {(c.model, c.port) for c in self.detect()}
        except CameraError as e:
            if not self._failing:  # said once, not at every poll
                log.warning("camera_detection_failed", error=str(e))
            self._failing = True
            return
        self._failing = False
        for event in changes(self.known, now):
            self.events.put(event)
        self.known = now

    def _run(self) -> None:
        monitor = _usb_monitor()
        fds = [self._stop_r] + ([monitor.fileno()] if monitor is not None else [])
        timeout = self.interval if monitor is None or self.poll_always else None  # with udev alone: idle until an event
        while True:
            self.poll_once()
            ready, _, _ = select.select(fds, [], [], timeout)
            if self._stop_r in ready:
                return
            if monitor is not None and monitor.fileno() in ready:
                while monitor.poll(timeout=0) is not None:  # drain: one poll for a burst of events
                    pass


def _usb_monitor() -> Any:
    """A udev monitor of USB devices where udev runs, else None (polling alone)."""
    from imalinkd.daemon import udev

    if not udev.udev_available():
        return None
    try:
        import pyudev

        monitor = pyudev.Monitor.from_netlink(pyudev.Context())
        monitor.filter_by("usb", "usb_device")
        monitor.start()
        return monitor
    except Exception as e:  # pyudev missing or netlink refused: polling still works
        log.info("camera_udev_unavailable", error=str(e))
        return None


def run_camera_job(config: Config, catalog: Any, camera: Camera, key: str, cancel: threading.Event,
                   progress: Callable[..., None], open_storage: Callable[[], None]) -> JobFinished:
    """The body of a camera job: import what the camera holds; the outcome as an event."""
    from imalinkd.camera_import import import_camera
    from imalinkd.errors import ImalinkError, StorageNotFoundError, StorageNotMountedError

    blog = log.bind(camera=camera.model, port=camera.port)
    try:
        open_storage()
        blog.info("camera_import_started")
        result = import_camera(config, camera, catalog=catalog, cancel=cancel, progress=progress)
    except (StorageNotFoundError, StorageNotMountedError) as e:
        blog.warning("camera_waiting_for_archive", reason=str(e))
        return JobFinished(key, "waiting_for_storage")
    except ImalinkError as e:
        blog.error("camera_import_failed", error=str(e))
        return JobFinished(key, "cancelled" if cancel.is_set() else "failed")
    outcome = "nothing_new" if result.session_uuid is None and result.ok else ("completed" if result.ok else "failed")
    if outcome == "failed" and cancel.is_set():
        outcome = "cancelled"
    blog.info("camera_import_finished", outcome=outcome, session_id=result.session_uuid, total_files=result.total_files,
              photos=result.photos_created, message=result.message)
    return JobFinished(key, outcome, result.session_uuid)


class CameraJobs:
    """The daemon's camera bookkeeping (called on its main thread only): one job per
    camera and port; a camera that goes cancels its job (the files read so far stay
    staged, and the session, if any, resumable); one that waits for an archive is tried
    again when an archive appears."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.waiting: dict[str, CameraAppeared] = {}

    @staticmethod
    def key(model: str, port: str) -> str:
        return f"camera:{model}:{port}"

    def on_appeared(self, event: CameraAppeared) -> None:
        from imalinkd.daemon.service import Job, _importer

        d = self.daemon
        key = self.key(event.model, event.port)
        log.info("camera_connected", camera=event.model, port=event.port)
        if key in d.state.jobs:
            return
        self.waiting.pop(key, None)
        job = Job(key=key, name=f"camera {event.model}", kind="camera", cancel=threading.Event(), camera=event)
        camera = Camera(event.model, event.port)
        d._start_job(job, lambda j: run_camera_job(d.config, d.catalog, camera, j.key, j.cancel, d._progress(j),
                                                   lambda: d._open_storage(_importer(), d.config)))

    def on_gone(self, event: CameraGone) -> None:
        key = self.key(event.model, event.port)
        self.waiting.pop(key, None)
        job = self.daemon.state.jobs.get(key)
        log.info("camera_disconnected", camera=event.model, port=event.port, running=job is not None)
        if job is not None:
            job.cancel.set()

    def on_finished(self, job: Any, outcome: str) -> None:
        event = getattr(job, "camera", None)
        if event is not None and outcome == "waiting_for_storage" and not self.daemon.stopping.is_set():
            self.waiting[job.key] = event

    def retry(self) -> None:
        for key, event in list(self.waiting.items()):
            if key not in self.daemon.state.jobs:
                self.on_appeared(event)
