"""``imalinkd run``: event sources, one consumer, one thread per import job.

Shape (DESIGN §4, STYLE 3): the sources (mount table, udev, drop folders, cameras, signals) put
immutable events on one queue; the main thread is the only consumer and the only owner of
the daemon's state (known mounts, running and waiting jobs). It gathers facts about a new
mount (blkid, its camera layout, storage markers), hands them to the pure functions in ``policy``, and
starts jobs. A job is a thread running one import inside an error boundary; when it ends it
reports a JobFinished event, so all bookkeeping still happens on the main thread.

Guarantees and limits:

- one import at a time per card (keyed by filesystem UUID + label) or drop folder; cards
  in different readers import in parallel;
- a card pulled mid-copy cancels its job: the engine leaves a failed, resumable session,
  and the same card (at any mount point) resumes it when it returns;
- a card that arrives while no archive is reachable waits; it starts when a mount with a
  storage marker appears, or on SIGHUP;
- SIGTERM cancels every job (the engine parks the file in flight) and the process exits
  within a few seconds; jobs still busy after the grace period are abandoned, which leaves
  their sessions ``in_progress`` with no importer alive, i.e. failed and resumable;
- SIGHUP reloads the config; a bad new config is refused with one clear log line and the
  running one is kept. Jobs already running finish with the config they started with;
- idle, the main thread sleeps in ``queue.get`` (waking only for systemd's watchdog when
  it asked for pings), the sources sleep in ``poll()``.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import structlog

from imalinkd.config import Config, load_config
from imalinkd.daemon import alerts, drivejobs, identify, policy, udev
from imalinkd.daemon.dropfolder import DropFolderSource
from imalinkd.daemon.examine import examine_until_done
from imalinkd.daemon.events import (
    BlockDeviceAdded,
    CameraAppeared,
    CameraGone,
    BlockDeviceRemoved,
    DropBatchSettled,
    DropFileSettled,
    JobFinished,
    MountAppeared,
    MountExamined,
    MountGone,
    ReloadRequested,
    StopRequested,
)
from imalinkd.daemon.mountinfo import MountTableSource
from imalinkd.daemon.notify import SystemdNotifier
from imalinkd.daemon.policy import CardJob
from imalinkd.errors import ArchiveAbsentError, ConfigError, ImalinkError

log = structlog.get_logger()

STOP_GRACE_SECONDS = 6.0  # how long SIGTERM waits for jobs to park their files


# --- pure helpers ----------------------------------------------------------------------------


def status_text(running: dict[str, str], waiting: dict[str, str], progress: dict[str, str]) -> str:
    """The one-line STATUS= for systemd: what is being imported, what waits, or idle.
    ``running``/``waiting`` map job keys to names; ``progress`` job keys to a short note."""
    parts: list[str] = []
    for key, name in sorted(running.items()):
        note = progress.get(key)
        parts.append(f"importing {name}" + (f" ({note})" if note else ""))
    if waiting:
        parts.append("waiting for the archive: " + ", ".join(sorted(waiting.values())))
    return "; ".join(parts) if parts else "idle, watching for cards"


def import_summary(name: str, duplicates_of: list[str], new_files: int) -> str:
    """"card EOS_DIGITAL: already imported in session 1a2b3c4d; 12 new files". Cards get
    reformatted, so "already imported" is about content: ``duplicates_of`` holds the
    engine's ``duplicate_of`` references (``<session uuid>:<path>``) of the skipped files."""
    sessions = sorted({ref.split(":", 1)[0][:8] for ref in duplicates_of if ref})
    if not sessions:
        return f"card {name}: {new_files} new files"
    where = "session " + sessions[0] if len(sessions) == 1 else "sessions " + ", ".join(sessions)
    return f"card {name}: already imported in {where}; {new_files} new files"


def outcome_of(result: Any) -> str:
    """``completed`` | ``nothing_new`` | ``failed`` | ``cancelled`` from an ImportResult."""
    status = getattr(result, "copy_status", None)
    if getattr(result, "session_uuid", None) is None and status in (None, "completed", "not_started"):
        return "nothing_new"
    if status == "completed":
        return "completed"
    return "failed"


def after_import_action(policy_after: str, outcome: str, safe: bool | None = True, when: str = "safe") -> str | None:
    """What to do with a card once its job ended: only after success (or nothing new),
    never after a failure, which must leave the card where it is for the resume; and with
    ``when = "safe"`` (the default) only once the card is safe to format (DESIGN §8)."""
    if outcome not in ("completed", "nothing_new"):
        return None
    if when == "safe" and not safe:
        return None
    return policy_after if policy_after in ("unmount", "power-off") else None


# --- jobs ------------------------------------------------------------------------------------


class ImportGate:
    """Imports run side by side; a reindex runs alone. A reindex reconciles the catalog
    with what the drive says, and a session being written at that very moment (manifest on
    the drive, catalog rows not yet) is exactly what it must not see half-done.

    Imports come first: an import that finds a reindex running calls ``on_import_waiting``
    (the daemon stops the reindex: :mod:`imalinkd.daemon.drivejobs`), and no reindex is
    admitted while an import waits."""

    def __init__(self, on_import_waiting: Callable[[], None] = lambda: None) -> None:
        self._cond = threading.Condition()
        self._imports = 0
        self._waiting_imports = 0
        self._reindexing = False
        self._on_import_waiting = on_import_waiting

    @contextmanager
    def importing(self, cancel: threading.Event) -> Iterator[bool]:
        """Yields False if ``cancel`` was set while waiting (then nothing may run)."""
        with self._cond:
            if self._reindexing:
                self._on_import_waiting()
            self._waiting_imports += 1
            while self._reindexing and not cancel.is_set():
                self._cond.wait()
            self._waiting_imports -= 1
            admitted = not cancel.is_set()
            if admitted:
                self._imports += 1
        try:
            yield admitted
        finally:
            if admitted:
                with self._cond:
                    self._imports -= 1
                    self._cond.notify_all()

    @contextmanager
    def reindexing(self, cancel: threading.Event) -> Iterator[bool]:
        with self._cond:
            while (self._imports or self._waiting_imports or self._reindexing) and not cancel.is_set():
                self._cond.wait()
            admitted = not cancel.is_set()
            if admitted:
                self._reindexing = True
        try:
            yield admitted
        finally:
            if admitted:
                with self._cond:
                    self._reindexing = False
                    self._cond.notify_all()

    def busy(self) -> bool:
        """Whether an import runs now (a scrub pauses meanwhile)."""
        with self._cond:
            return self._imports > 0

    def wake(self) -> None:
        """Let waiters look at their cancel events again (not from a signal handler)."""
        with self._cond:
            self._cond.notify_all()


@dataclass
class Job:
    key: str
    name: str
    kind: str  # card | camera | drop_folder | reindex
    cancel: threading.Event
    thread: threading.Thread | None = None
    preempt: threading.Event = field(default_factory=threading.Event)  # a drive job: an import waits for it
    roots: tuple[Path, ...] = ()  # a drive job: the storage roots it reindexes
    task: str = "reindex"  # a drive job: reindex | replicate (the backups' catch-up)
    mount_point: Path | None = None
    card: CardJob | None = None
    batch: DropBatchSettled | None = None
    camera: CameraAppeared | None = None
    created: float = field(default_factory=time.monotonic)  # for the event-to-session latency


@dataclass
class MountRecord:
    event: MountAppeared
    kind: str
    key: str | None = None
    storage_roots: tuple[Path, ...] = ()


@dataclass
class DaemonState:
    mounts: dict[Path, MountRecord] = field(default_factory=dict)
    examining: dict[Path, MountAppeared] = field(default_factory=dict)  # looked at off-thread
    jobs: dict[str, Job] = field(default_factory=dict)
    waiting: dict[str, CardJob] = field(default_factory=dict)  # no archive reachable
    deferred: dict[str, CardJob] = field(default_factory=dict)  # same card already importing
    pending_drops: dict[str, DropBatchSettled] = field(default_factory=dict)  # behind a running job
    waiting_drops: dict[str, DropBatchSettled] = field(default_factory=dict)  # no archive yet
    automounted: dict[str, Path] = field(default_factory=dict)  # device -> mount point
    progress: dict[str, str] = field(default_factory=dict)
    last_note: str = ""  # shown in an idle STATUS=: what the last card turned out to be
    unsafe: dict[str, tuple[CardJob, str]] = field(default_factory=dict)  # card key -> (card, session): left mounted, not yet safe


def _importer():
    """The import engine, imported on first use so the daemon starts (and reports) even
    while a broken engine module would fail every job."""
    from imalinkd import importer

    return importer


class Daemon:
    def __init__(self, config: Config, config_path: str | None, *, environ: dict[str, str] | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.events: "queue.SimpleQueue[object]" = queue.SimpleQueue()  # put() is signal-safe
        self.notifier = SystemdNotifier(environ)
        self.state = DaemonState()
        self.stopping = threading.Event()
        self.catalog: Any = None
        self.mount_source: MountTableSource | None = None
        self.drop_source: DropFolderSource | None = None
        self.udev_source: Any = None
        self.camera_source: Any = None
        self.cameras: Any = None  # daemon.camera.CameraJobs, once the camera source runs
        self._last_status = ""
        self._status_lock = threading.Lock()
        self._storage_lock = threading.Lock()
        self.gate = ImportGate(on_import_waiting=self._preempt_drive_jobs)
        self.hub: Any = None  # live progress for the HTTP API (imalinkd.api)
        self.api: Any = None
        self.scrubs: Any = None  # imalinkd.scrub.scheduler.ScrubScheduler
        self.alerts = alerts.Alerts.from_config(config)
        self.automount, self.automount_reason = self._automount_choice(config)

    def _automount_choice(self, config: Config) -> tuple[bool, str]:
        setting = config.daemon.automount
        if setting in (True, False, "on", "off"):
            return udev.automount_choice(setting, False, False)
        return udev.automount_choice(setting, udev.udev_available(), udev.udisks2_running())

    def _automount_root(self) -> Path:
        return self.config.daemon.state_dir / "media"

    def _watched(self, mount_point: Path) -> bool:
        """[daemon] mount_paths, plus the cards it mounted itself: those are always looked at."""
        return (mount_point.is_relative_to(self._automount_root())
                or policy.is_watched_mount(mount_point, self.config.daemon.mount_paths))

    # -- lifecycle --

    def run(self) -> int:
        self._install_signals()
        try:
            from imalinkd.catalog import Catalog

            self.catalog = Catalog.open(self.config)
        except ImalinkError as e:
            log.error("catalog_unavailable", error=str(e))
            return e.exit_code
        try:
            self._start_sources()
        except OSError as e:
            log.error("event_sources_failed", error=str(e))
            return 1
        if not self._start_api():
            self._shutdown()
            return 1
        self._start_scrubs()
        self.alerts.start()
        log.info("daemon_ready", config=self.config.source, pid=os.getpid())
        self.notifier.ready(status=self._status())
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _start_api(self) -> bool:
        """Serve the HTTP API (and the web UI) on [api] listen. When it cannot (the port is
        taken, the address is not this machine's) the daemon stops with a clear message,
        False, unless ``[api] optional`` is true: then it says so and goes on without it."""
        try:
            from imalinkd.api import ProgressHub, start_api_server

            self.hub = ProgressHub()
            self.hub.set_waiting_source(self._waiting_for_archive)
            self.api = start_api_server(self.config, self.catalog, self.hub)
        except Exception as e:
            if self.config.api.optional:
                log.error("api_unavailable", listen=self.config.api.listen, error=str(e),
                          message="running without the HTTP API and the web UI ([api] optional = true)")
                return True
            log.error("api_unavailable", listen=self.config.api.listen, error=str(e))
            print(f"imalinkd: {e}", file=sys.stderr, flush=True)
            return False
        return True

    def _start_scrubs(self) -> None:
        """Scrubs of archive drives (imalinkd.scrub.scheduler), in a thread of their own."""
        from imalinkd.scrub.scheduler import ScrubScheduler

        metrics = self.hub.metrics if self.hub is not None else None
        self.scrubs = ScrubScheduler(self.config, self.catalog, importing=self.gate.busy, on_damage=self._scrub_damage,
                                     on_checked=metrics.scrub_checked_file if metrics is not None else None)
        self.scrubs.start()

    def _scrub_damage(self, finding: Any) -> None:
        """A scrub found an archived file not intact (it is logged by name already): the
        one place the user is told. Today: systemd's STATUS line; a user-notification
        channel, when there is one, is called from here."""
        self.state.last_note = f"scrub found {finding.result} {finding.directory_name}/{finding.path} on {finding.label!r}"
        self._update_status()
        self.alerts.send(alerts.damage_found(finding.label, finding.directory_name, finding.path, finding.result))

    def _waiting_for_archive(self) -> list[dict]:
        """Cards and drop folders waiting for an archive, for the web dashboard (any thread)."""
        out = [{"kind": "card", "name": j.identity.name, "mount_point": str(j.mount_point)} for j in dict(self.state.waiting).values()]
        out += [{"kind": "drop folder", "name": str(b.folder), "mount_point": str(b.folder)} for b in dict(self.state.waiting_drops).values()]
        return out

    def _install_signals(self) -> None:
        def on_term(signum: int, _frame: Any) -> None:
            self.stopping.set()
            for job in list(self.state.jobs.values()):
                job.cancel.set()
            self.events.put(StopRequested())

        def on_hup(_signum: int, _frame: Any) -> None:
            self.events.put(ReloadRequested())

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    def _start_sources(self) -> None:
        log.info("automount", on=self.automount, reason=self.automount_reason,
                 mount_root=str(self._automount_root()) if self.automount else None)
        # The mount table first: a card already in the reader is reported as it starts.
        self.mount_source = MountTableSource(self.events)
        self.mount_source.start()
        if udev.udev_available():
            try:
                self.udev_source = udev.BlockDeviceSource(self.events)
                self.udev_source.start()
            except Exception as e:  # pyudev missing or netlink refused: the mount table still works
                log.warning("udev_source_failed", error=str(e))
                self.udev_source = None
        else:
            log.info("udev_unavailable", message="udev not available; watching the mount table only")
        self._start_drop_source()
        self._start_camera_source()

    def _start_camera_source(self) -> None:
        from imalinkd.daemon import camera

        if self.cameras is None:
            self.cameras = camera.CameraJobs(self)
        if not self.config.cameras.enabled:
            return
        if shutil.which(self.config.cameras.gphoto2) is None:
            log.info("cameras_unavailable", message=f"no '{self.config.cameras.gphoto2}' command: cameras on USB are not watched")
            return
        from imalinkd.camera_import import detect_cameras

        self.camera_source = camera.CameraSource(self.events, self.config, lambda: detect_cameras(self.config))
        self.camera_source.start()

    def _start_drop_source(self) -> None:
        folders = [(p.path, policy.settle_seconds(self.config, p)) for p in self.config.drop_folders]
        if folders:
            self.drop_source = DropFolderSource(self.events, folders, self.config.daemon.drop_rescan_seconds)
            self.drop_source.start()

    def _loop(self) -> None:
        interval = self.notifier.watchdog_interval() if self.config.daemon.watchdog else None
        next_ping = time.monotonic()
        while True:
            if interval is not None and time.monotonic() >= next_ping:
                self.notifier.watchdog()
                next_ping = time.monotonic() + interval
            timeout = max(0.0, next_ping - time.monotonic()) if interval is not None else None
            try:
                event = self.events.get(timeout=timeout)
            except queue.Empty:
                continue
            if isinstance(event, StopRequested):
                return
            try:
                self.handle(event)
            except Exception:  # a bug in handling one event must not stop the daemon
                log.exception("event_handling_failed", event_type=type(event).__name__)
            self._update_status()

    def _shutdown(self) -> None:
        log.info("daemon_stopping", running_jobs=len(self.state.jobs))
        self.notifier.stopping(status="stopping: parking imports")
        self.stopping.set()
        for job in self.state.jobs.values():
            job.cancel.set()
        self.gate.wake()
        for source in (self.mount_source, self.udev_source, self.drop_source, self.camera_source):
            if source is not None:
                try:
                    source.stop()
                except Exception as e:
                    log.warning("event_source_stop_failed", error=str(e))
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for job in list(self.state.jobs.values()):
            if job.thread is not None:
                job.thread.join(timeout=max(0.0, deadline - time.monotonic()))
                if job.thread.is_alive():
                    log.warning("job_abandoned_at_stop", job=job.key, name=job.name)
        for device, mount_point in list(self.state.automounted.items()):
            if not any(j.mount_point == mount_point and j.thread and j.thread.is_alive() for j in self.state.jobs.values()):
                self._unmount_automounted(device)
        if self.api is not None:
            self.api.stop()
        if self.scrubs is not None:
            self.scrubs.stop()
        self.alerts.stop()
        if self.catalog is not None:
            try:
                self.catalog.close()
            except Exception:
                pass
        self.notifier.close()
        log.info("daemon_stopped")

    # -- status --

    def _status(self) -> str:
        # Also called from job threads (progress): copy the dicts first, dict() is atomic.
        running = {k: j.name for k, j in dict(self.state.jobs).items() if j.kind != "reindex"}
        waiting = {k: j.identity.name for k, j in dict(self.state.waiting).items()}
        waiting.update({k: str(b.folder) for k, b in dict(self.state.waiting_drops).items()})
        text = status_text(running, waiting, dict(self.state.progress))
        if not running and not waiting and self.state.last_note:
            text += f"; last: {self.state.last_note}"
        return text

    def _update_status(self) -> None:
        text = self._status()
        with self._status_lock:
            if text == self._last_status:
                return
            self._last_status = text
        self.notifier.status(text)

    # -- event handling (main thread only) --

    def handle(self, event: object) -> None:
        if isinstance(event, MountAppeared):
            self.on_mount_appeared(event)
        elif isinstance(event, MountExamined):
            self.on_mount_examined(event)
        elif isinstance(event, MountGone):
            self.on_mount_gone(event)
        elif isinstance(event, BlockDeviceAdded):
            self.on_block_device_added(event)
        elif isinstance(event, BlockDeviceRemoved):
            self.on_block_device_removed(event)
        elif isinstance(event, DropBatchSettled):
            self.on_drop_batch(event)
        elif isinstance(event, DropFileSettled):
            self.on_drop_batch(DropBatchSettled(event.folder, (event.path,)))
        elif isinstance(event, JobFinished):
            self.on_job_finished(event)
        elif isinstance(event, CameraAppeared):
            self.cameras.on_appeared(event)
        elif isinstance(event, CameraGone):
            self.cameras.on_gone(event)
        elif isinstance(event, ReloadRequested):
            self.on_reload()

    def on_mount_appeared(self, event: MountAppeared) -> None:
        mp = event.mount_point
        if not self._watched(mp):
            log.debug("mount_not_watched", mount_point=str(mp))
            return
        self.state.examining[mp] = event
        depth, allow_fuse = self.config.storage.search_depth, self.config.storage.allow_fuse

        def examine() -> None:
            # A failed look (EMFILE, blkid hung) is retried while the mount is there.
            examined = examine_until_done(event, depth, wanted=lambda: self.state.examining.get(mp) is event,
                                          stopping=self.stopping, allow_fuse=allow_fuse)
            if examined is not None:
                self.events.put(examined)

        threading.Thread(target=examine, name=f"examine {mp}", daemon=True).start()

    def on_mount_examined(self, examined: MountExamined) -> None:
        event = examined.mount
        mp = event.mount_point
        if self.state.examining.get(mp) is not event:
            return  # gone (or replaced by a newer mount) while it was being looked at
        del self.state.examining[mp]
        fs_uuid, label, fstype = examined.fs_uuid, examined.label, examined.fstype
        ident = identify.CardIdentity(fs_uuid=fs_uuid, label=label)
        dcim, roots = examined.has_dcim, examined.storage_roots
        kind, job, reason = policy.plan_card_job(
            config=self.config,
            mount_point=mp,
            mount_source=event.mount_source,
            device_number=event.device,
            identity=ident,
            has_dcim=dcim,
            storage_roots=roots,
            busy_keys=set(self.state.jobs),
        )
        record = MountRecord(event=event, kind=kind, key=job.key if job else None, storage_roots=roots)
        self.state.mounts[mp] = record
        if kind == "ignore":
            if dcim:
                log.info("card_ignored", mount_point=str(mp), label=label, card_uuid=fs_uuid, reason=reason)
            else:
                log.debug("mount_ignored", mount_point=str(mp), fstype=event.fstype)
            return
        if kind == "archive":
            log.info("archive_mounted", mount_point=str(mp), storage_roots=[str(r) for r in roots])
            self._start_reindex(mp, roots)
            self._retry_waiting("archive_mounted")
            return
        log.info(
            "card_mounted", mount_point=str(mp), label=label, card_uuid=fs_uuid,
            device=event.mount_source, fstype=fstype or event.fstype, has_dcim=dcim,
        )
        assert job is not None
        if reason == policy.BUSY:
            # Started when the running import of this card ends (see on_job_finished).
            self.state.deferred[job.key] = job
            log.info("card_deferred", mount_point=str(mp), label=label, reason="an import of this card is running")
            return
        self._start_card_job(job)

    def on_mount_gone(self, event: MountGone) -> None:
        self.state.examining.pop(event.mount_point, None)
        record = self.state.mounts.pop(event.mount_point, None)
        if record is None:
            return
        if record.kind == "card":
            log.info("card_unmounted", mount_point=str(event.mount_point))
            for key, deferred in list(self.state.deferred.items()):
                if deferred.mount_point == event.mount_point:
                    del self.state.deferred[key]
            for key, waiting in list(self.state.waiting.items()):
                if waiting.mount_point == event.mount_point:
                    del self.state.waiting[key]
                    log.info("card_wait_abandoned", label=waiting.identity.label, reason="card removed")
            for job in self.state.jobs.values():
                if job.kind == "card" and job.mount_point == event.mount_point:
                    # The card is gone: stop now rather than waiting for read errors; the
                    # session stays failed and resumable until the card returns.
                    log.warning("card_removed_during_import", job=job.key, name=job.name)
                    job.cancel.set()
                    self.gate.wake()
        elif record.kind == "archive":
            log.info("archive_unmounted", mount_point=str(event.mount_point))
            if self.scrubs is not None:
                self.scrubs.drive_gone(event.mount_point)

    def on_block_device_added(self, event: BlockDeviceAdded) -> None:
        log.info(
            "block_device_added", device=event.device, label=event.label, card_uuid=event.fs_uuid,
            fstype=event.fstype, removable=event.removable,
        )
        if not (self.automount and event.removable) or event.device in self.state.automounted:
            return
        if udev.mounted_anywhere(event.device):
            return  # mounted already (by the desktop, or by hand)
        target = udev.automount_dir(self._automount_root(), event.label, event.fs_uuid, event.device)
        try:
            udev.mount_readonly(event.device, target, event.fstype)
        except (OSError, subprocess.SubprocessError) as e:
            log.error("automount_failed", device=event.device, target=str(target), error=str(e))
            return
        self.state.automounted[event.device] = target
        log.info("card_automounted", device=event.device, mount_point=str(target))
        # The mount table source reports the new mount; the card is examined from there.

    def on_block_device_removed(self, event: BlockDeviceRemoved) -> None:
        log.info("block_device_removed", device=event.device)
        if event.device in self.state.automounted:
            self._unmount_automounted(event.device)

    def on_drop_batch(self, event: DropBatchSettled) -> None:
        drop = policy.drop_policy_for(self.config, event.folder)
        if drop is None:
            log.info("drop_batch_ignored", folder=str(event.folder), reason="folder no longer configured")
            return
        key = policy.drop_job_key(event.folder)
        log.info("drop_batch_settled", folder=str(event.folder), files=len(event.paths))
        if key in self.state.jobs:
            old = self.state.pending_drops.get(key)
            paths = tuple(sorted(set(event.paths) | set(old.paths if old else ())))
            self.state.pending_drops[key] = DropBatchSettled(event.folder, paths)
            log.info("drop_batch_queued", folder=str(event.folder), files=len(paths))
            return
        waited = self.state.waiting_drops.pop(key, None)
        if waited is not None:
            event = DropBatchSettled(event.folder, tuple(sorted(set(event.paths) | set(waited.paths))))
        self._start_job(
            Job(key=key, name=f"drop folder {event.folder}", kind="drop_folder", cancel=threading.Event(), batch=event),
            lambda job: self._run_drop_job(job, drop, event),
        )

    def on_job_finished(self, event: JobFinished) -> None:
        job = self.state.jobs.pop(event.key, None)
        self.state.progress.pop(event.key, None)
        log.info("job_finished", job=event.key, outcome=event.outcome, session_id=event.session_uuid)
        if job is None:
            return
        if job.kind == "reindex":
            self._drive_job_finished(job, event)
        if job.kind == "reindex" and event.outcome == "completed" and self.scrubs is not None:
            record = self.state.mounts.get(job.mount_point)
            if record is not None:  # still plugged in: scrub a slice of it now that the catalog knows it
                self.scrubs.drive_indexed(record.storage_roots)
        if job.kind == "camera":
            self.cameras.on_finished(job, event.outcome)
        if job.kind == "card" and job.card is not None:
            card = job.card
            if event.outcome == "waiting_for_storage" and not self.stopping.is_set():
                if card.mount_point in self.state.mounts:
                    self.state.waiting[card.key] = card
                    log.warning("card_waiting_for_archive", label=card.identity.label, card_uuid=card.identity.fs_uuid)
            self._card_verdict(card, event)
            later = self.state.deferred.pop(card.key, None)
            if later is not None and later.mount_point in self.state.mounts and not self.stopping.is_set():
                self._start_card_job(later)
        if job.kind == "drop_folder":
            if event.outcome == "waiting_for_storage" and job.batch is not None:
                self.state.waiting_drops[job.key] = job.batch
            pending = self.state.pending_drops.pop(event.key, None)
            if pending is not None and not self.stopping.is_set():
                self.on_drop_batch(pending)

    def on_reload(self) -> None:
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as e:
            log.error("config_reload_refused", error=str(e), kept=self.config.source)
            self.notifier.notify("READY=1", f"STATUS=config reload refused: {e}")
            return
        old = self.config
        self.config = new
        if self.scrubs is not None:
            self.scrubs.config = new  # the next scrub takes the new [scrub] keys
        self.automount, self.automount_reason = self._automount_choice(new)
        if new.notify != old.notify:
            self.alerts.stop()
            self.alerts = alerts.Alerts.from_config(new)
            self.alerts.start()
        log.info("config_reloaded", config=new.source)
        if (new.drop_folders, new.daemon.settle_seconds, new.daemon.drop_rescan_seconds) != (
                old.drop_folders, old.daemon.settle_seconds, old.daemon.drop_rescan_seconds):
            if self.drop_source is not None:
                self.drop_source.stop()
                self.drop_source = None
            self._start_drop_source()
        if new.cameras != old.cameras:
            if self.camera_source is not None:
                self.camera_source.stop()
                self.camera_source = None
            self._start_camera_source()
        self.notifier.notify("READY=1")
        self._retry_waiting("config_reloaded")

    # -- jobs --

    def _start_job(self, job: Job, body: Callable[[Job], JobFinished]) -> None:
        def run() -> None:
            structlog.contextvars.clear_contextvars()
            enter = self.gate.reindexing if job.kind == "reindex" else self.gate.importing
            try:
                with enter(job.cancel) as admitted:
                    finished = body(job) if admitted else JobFinished(job.key, "cancelled")
            except BaseException as e:  # the error boundary: one line, traceback at debug
                log.error("job_failed", job=job.key, name=job.name, error=f"{type(e).__name__}: {e}")
                log.debug("job_failed_traceback", job=job.key, exc_info=True)
                finished = JobFinished(job.key, "failed")
            self.events.put(finished)

        job.thread = threading.Thread(target=run, name=f"job {job.name}", daemon=True)
        self.state.jobs[job.key] = job
        log.info("job_started", job=job.key, name=job.name, kind=job.kind)
        job.thread.start()

    def _start_card_job(self, card: CardJob) -> None:
        job = Job(
            key=card.key, name=f"card {card.identity.name}", kind="card", cancel=threading.Event(),
            mount_point=card.mount_point, card=card,
        )
        self.state.waiting.pop(card.key, None)
        self._start_job(job, lambda j: self._run_card_job(j, card, self.config))

    def _retry_waiting(self, why: str) -> None:
        if self.cameras is not None:
            self.cameras.retry()
        for key, batch in list(self.state.waiting_drops.items()):
            if key not in self.state.jobs:
                del self.state.waiting_drops[key]
                log.info("drop_retry", folder=str(batch.folder), reason=why)
                self.on_drop_batch(batch)
        for key, card in list(self.state.waiting.items()):
            if key in self.state.jobs:
                continue
            if card.mount_point not in self.state.mounts:
                del self.state.waiting[key]
                continue
            log.info("card_retry", label=card.identity.label, reason=why)
            self._start_card_job(card)

    def _progress(self, job: Job) -> Callable[..., None]:
        last = [0.0]

        started = [False]

        def progress(*args: Any, **kwargs: Any) -> None:
            if self.hub is not None and args:
                self.hub.publish(args[0])
                if not started[0] and getattr(args[0], "session_uuid", None):
                    started[0] = True
                    self.hub.observe_latency(time.monotonic() - job.created)
            now = time.monotonic()
            if now - last[0] < 1.0:
                return
            last[0] = now
            info = args[0] if args else kwargs
            note = _progress_note(info)
            if note:
                self.state.progress[job.key] = note  # a plain dict assignment: atomic
                self._update_status()

        return progress

    def _open_storage(self, engine: Any, config: Config) -> None:
        """Open (on first use of the embedded default: initialise) the archive once at a
        time, so that two cards arriving together do not both try to create the storage
        marker; then take from the drive the sessions the catalog lacks, so that a card
        whose session the catalog forgot (a power cut) is resumed, not imported twice."""
        with self._storage_lock:
            root, marker = engine.open_storage(config, self.catalog)
            engine.take_unknown_sessions(self.catalog, root, marker)

    def _run_card_job(self, job: Job, card: CardJob, config: Config) -> JobFinished:
        blog = log.bind(card_label=card.identity.label, card_uuid=card.identity.fs_uuid, mount_point=str(card.mount_point))
        engine = _importer()
        try:
            self._open_storage(engine, config)
            # the card held (waiting while the command line imports it, say) from choosing
            # between a resume and a new session to the end of either
            with engine.holding_source(config, str(card.mount_point), card.identity.fs_uuid, job.cancel):
                result = self._import_card(engine, job, card, config, blog)
        except ArchiveAbsentError as e:  # not plugged in, not found, or not made an archive yet
            blog.warning("card_waiting_for_archive", reason=str(e))
            if not self.stopping.is_set():
                self.alerts.send(alerts.card_waiting(f"card {card.identity.name}", str(e)))
            return JobFinished(job.key, "waiting_for_storage")
        except ImalinkError as e:
            blog.error("card_import_failed", error=str(e))
            if self.hub is not None:
                self.hub.publish_error(str(card.mount_point), str(e))
            outcome = "cancelled" if job.cancel.is_set() else "failed"
            self._tell(card, SimpleNamespace(error=str(e)), outcome)
            return JobFinished(job.key, outcome)
        if self.hub is not None:
            self.hub.publish_result(result)
        outcome = outcome_of(result)
        if outcome == "failed" and job.cancel.is_set():
            outcome = "cancelled"
        session = getattr(result, "session_uuid", None)
        if outcome == "failed" and getattr(result, "archive_gone", False):
            # the archive drive went away mid-copy: the card waits (never ejected) and its
            # session resumes when the drive is back
            blog.warning("card_waiting_for_archive", session_id=session, reason=getattr(result, "error", None))
            return JobFinished(job.key, "waiting_for_storage", session)
        # files identical to another of the same card point into this very session: not "imported before"
        duplicates = [s.duplicate_of for s in getattr(result, "skipped", [])
                      if getattr(s, "duplicate_of", None) and not (session and s.duplicate_of.startswith(session))]
        summary = import_summary(card.identity.name, duplicates, getattr(result, "new_files", 0) or 0)
        if duplicates:
            self.state.last_note = summary
        if outcome == "nothing_new":
            blog.info("card_already_imported", message=summary, duplicates_skipped=len(duplicates))
        else:
            if duplicates:
                blog.info("card_partly_imported_before", message=summary, duplicates_skipped=len(duplicates))
            blog.info(
                "card_import_finished", session_id=session, outcome=outcome,
                copy_status=getattr(result, "copy_status", None), total_files=getattr(result, "total_files", None),
                duplicates_skipped=getattr(result, "duplicates_skipped", None),
                storage_path=str(getattr(result, "storage_path", "") or ""),
            )
        self._tell(card, result, outcome)
        verdict = getattr(result, "verdict", None) or {}
        return JobFinished(job.key, outcome, session, safe=bool(verdict.get("safe_to_format")), verdict=verdict.get("verdict"))

    def _import_card(self, engine: Any, job: Job, card: CardJob, config: Config, blog: Any) -> Any:
        resumable = engine.find_resumable_session(self.catalog, card.identity.fs_uuid, card.identity.label)
        if resumable:
            blog.info("card_resume_started", session_id=resumable)
            return engine.resume_session(
                config, resumable, source=card.mount_point,
                cancel=job.cancel, progress=self._progress(job), catalog=self.catalog, lock_source=False,
            )
        blog.info("card_import_started", description=card.description)
        info = engine.SourceInfo(kind="card", label=card.identity.label, fs_uuid=card.identity.fs_uuid, device=card.device)
        # the engine fills {camera_model} and {date} from the photos themselves
        return engine.import_source(
            config, card.mount_point, description=card.policy.description,
            template_values=policy.description_values(label=card.identity.label, folder=card.mount_point),
            source_info=info, verify=card.policy.verify, include=card.policy.include,
            thumbnails=card.policy.thumbnails, cancel=job.cancel,
            progress=self._progress(job), catalog=self.catalog, lock_source=False,
        )

    def _tell(self, card: CardJob, result: Any, outcome: str) -> None:
        """The user's notification of how a card's job ended (queued; never blocks)."""
        alert = alerts.for_card_outcome(f"card {card.identity.name}", card.mount_point, result, outcome,
                                        stopping=self.stopping.is_set())
        if alert is not None:
            self.alerts.send(alert)

    def _run_drop_job(self, job: Job, drop: Any, batch: DropBatchSettled) -> JobFinished:
        blog = log.bind(folder=str(batch.folder))
        engine = _importer()
        info = engine.SourceInfo(kind="drop_folder", label=batch.folder.name, fs_uuid=None, device=None)
        rels = [p.relative_to(batch.folder).as_posix() for p in batch.paths]
        try:
            self._open_storage(engine, self.config)
            result = engine.import_source(
                self.config, batch.folder, description=drop.description,
                template_values=policy.description_values(label=None, folder=drop.path),
                source_info=info, verify=drop.verify, include=drop.include, files=rels,
                cancel=job.cancel, progress=self._progress(job), catalog=self.catalog,
            )
        except ArchiveAbsentError as e:  # not plugged in, not found, or not made an archive yet
            blog.warning("drop_waiting_for_archive", reason=str(e))
            return JobFinished(job.key, "waiting_for_storage")
        if self.hub is not None:
            self.hub.publish_result(result)
        outcome = outcome_of(result)
        session = getattr(result, "session_uuid", None)
        if outcome == "failed" and getattr(result, "archive_gone", False):
            blog.warning("drop_waiting_for_archive", session_id=session, reason=getattr(result, "error", None))
            return JobFinished(job.key, "waiting_for_storage", session)
        blog.info(
            "drop_import_finished", session_id=session, outcome=outcome,
            total_files=getattr(result, "total_files", None),
            duplicates_skipped=getattr(result, "duplicates_skipped", None),
        )
        if drop.after_import == "delete" and outcome in ("completed", "nothing_new"):
            self._delete_dropped(batch, result, blog)
        return JobFinished(job.key, outcome, session)

    def _delete_dropped(self, batch: DropBatchSettled, result: Any, blog: Any) -> None:
        """after_import = "delete": remove what the (completed, verified) session holds."""
        archived: dict[str, int] = {}
        if getattr(result, "storage_path", None):
            from imalinkd.manifest import read_manifest

            try:
                manifest = read_manifest(result.storage_path)
            except ImalinkError as e:
                blog.error("drop_delete_skipped", reason=str(e))
                return
            if manifest.copy_status != "completed":
                return
            archived = {e.original_path: e.file_size for e in manifest.file_manifest}
        from imalinkd.duplicates import verified_duplicates

        # a duplicate only when its archived copy reads back right now: never the last copy
        duplicates = verified_duplicates(self.config, self.catalog, list(getattr(result, "skipped", [])))
        sizes: dict[str, int | None] = {}
        for p in batch.paths:
            try:
                sizes[p.relative_to(batch.folder).as_posix()] = os.stat(p, follow_symlinks=False).st_size
            except OSError:
                pass
        for path in policy.drop_files_to_delete(batch.paths, batch.folder, archived, duplicates, sizes):
            try:
                path.unlink()
                blog.info("drop_file_deleted", path=str(path))
            except OSError as e:
                blog.warning("drop_file_delete_failed", path=str(path), error=e.strerror or str(e))

    def _start_reindex(self, mount_point: Path, roots: tuple[Path, ...]) -> None:
        """Reindex the storage roots of a mount, each in a child process with a bounded
        time (:mod:`imalinkd.daemon.drivejobs`); an import waiting for it stops it."""
        key = f"reindex:{mount_point}"
        if key in self.state.jobs:
            return
        limit = self.config.daemon.drive_job_seconds

        def body(job: Job) -> JobFinished:
            for root in roots:
                if job.cancel.is_set():
                    return JobFinished(job.key, "cancelled")
                done = drivejobs.run_reindex(self.config_path, str(root), cancel=job.cancel, preempt=job.preempt,
                                             limit_seconds=limit)
                if done.outcome != "completed":
                    return JobFinished(job.key, done.outcome)
                log.info("archive_reindexed", storage_root=str(root), result=done.report)
            return JobFinished(job.key, "completed")

        self._start_job(Job(key=key, name=f"reindex {mount_point}", kind="reindex", cancel=threading.Event(),
                            mount_point=mount_point, roots=roots), body)

    def _preempt_drive_jobs(self) -> None:
        """An import waits for a drive job: stop it (called from the import's thread)."""
        for job in list(self.state.jobs.values()):
            if job.kind == "reindex" and not job.preempt.is_set():
                log.info("drive_job_preempted", job=job.key, reason="an import is waiting; the reindex runs again after it")
                job.preempt.set()

    def _drive_job_finished(self, job: Job, event: JobFinished) -> None:
        """After a drive job: run a preempted one again (it waits at the gate for the
        imports); a drive over its time or stuck is left until it is plugged in again. A
        drive reindexed, with backups configured: the catch-up runs next (same lane)."""
        mp, outcome = job.mount_point, event.outcome
        if job.task == "replicate":
            self._replicate_finished(job, event)
        elif outcome == "completed" and self.config.storage.backups and not self.stopping.is_set():
            self._start_replicate(mp)
        if outcome == "preempted" and mp is not None and mp in self.state.mounts and not self.stopping.is_set():
            if job.task == "replicate":
                self._start_replicate(mp)
            else:
                self._start_reindex(mp, job.roots)
        elif outcome == "timed_out":
            log.error("drive_job_timed_out", mount_point=str(mp), limit_seconds=self.config.daemon.drive_job_seconds,
                      message="the drive was not reindexed within [daemon] drive_job_seconds; imports go on. "
                              "Run 'imalinkd reindex' on it by hand, or raise the limit and plug it in again")

    # -- the verdict and the backups' catch-up (DESIGN §8) --

    def _card_verdict(self, card: CardJob, event: JobFinished) -> None:
        """After a card's job: its after_import action when the verdict allows it; else the
        card stays mounted and the status says why, until a catch-up makes it safe."""
        policy_ = card.policy
        action = after_import_action(policy_.after_import, event.outcome, event.safe, policy_.after_import_when)
        if action:
            self.state.unsafe.pop(card.key, None)
            self._after_import(card, action)
        elif event.outcome in ("completed", "nothing_new") and not event.safe:
            note = f"card {card.identity.name} left mounted: {event.verdict or 'not yet safe'}"
            self.state.last_note = note
            log.warning("card_not_yet_safe", label=card.identity.label, card_uuid=card.identity.fs_uuid, verdict=event.verdict,
                        message=f"{note}; it becomes safe when the backup drive is plugged in and caught up")
            if event.session_uuid:
                self.state.unsafe[card.key] = (card, event.session_uuid)

    def _start_replicate(self, mount_point: Path | None) -> None:
        """The backups' catch-up in the drive-job lane: a child process, bounded in time,
        stopped whenever a card import waits (:mod:`imalinkd.daemon.drivejobs`)."""
        key = "replicate:backups"
        if key in self.state.jobs:
            return
        limit = self.config.daemon.drive_job_seconds

        def body(job: Job) -> JobFinished:
            done = drivejobs.run_replicate(self.config_path, cancel=job.cancel, preempt=job.preempt, limit_seconds=limit)
            return JobFinished(job.key, done.outcome, report=done.report)

        self._start_job(Job(key=key, name="backup catch-up", kind="reindex", task="replicate", cancel=threading.Event(),
                            mount_point=mount_point), body)

    def _replicate_finished(self, job: Job, event: JobFinished) -> None:
        report = event.report if isinstance(event.report, dict) else {}
        copied = int(report.get("copied") or 0)
        if event.outcome == "completed":
            log.info("backup_catch_up_done", files=copied, sessions=len(report.get("sessions") or []),
                     problems=report.get("problems") or [])
        if copied:
            self.state.last_note = f"backup catch-up done: {copied} file(s) copied"
            self._on_caught_up(report)
        self._recheck_unsafe()

    def _on_caught_up(self, report: dict) -> None:
        """Where the user is told that a backup caught up."""
        self.alerts.send(alerts.backup_caught_up(None, len(report.get("sessions") or []), int(report.get("copied") or 0)))

    def _recheck_unsafe(self) -> None:
        """Cards left mounted because they were not yet safe: their verdict again, and the
        after_import action for those that are safe now."""
        from imalinkd.verdict import session_verdict
        from imalinkd.catalog import find_session

        for key, (card, sid) in list(self.state.unsafe.items()):
            if card.mount_point not in self.state.mounts or self.catalog is None:
                self.state.unsafe.pop(key, None)
                continue
            try:
                with self.catalog.session() as s:
                    row = find_session(s, sid)
                v = session_verdict(self.config, self.catalog, row)
            except ImalinkError as e:
                log.warning("verdict_failed", session_id=sid, error=str(e))
                continue
            if not v["safe_to_format"]:
                continue
            self.state.unsafe.pop(key, None)
            self.state.last_note = f"card {card.identity.name} is safe to format now"
            log.info("card_safe_to_format", label=card.identity.label, card_uuid=card.identity.fs_uuid, session_id=sid)
            action = after_import_action(card.policy.after_import, "completed", True, card.policy.after_import_when)
            if action:
                self._after_import(card, action)

    # -- after import --

    def _after_import(self, card: CardJob, action: str) -> None:
        mp = card.mount_point
        device = card.device
        log.info("card_after_import", action=action, mount_point=str(mp), device=device)
        if device in self.state.automounted:
            self._unmount_automounted(device)
        else:
            proc = subprocess.run(["umount", str(mp)], capture_output=True, text=True)
            if proc.returncode != 0:
                log.warning("card_unmount_failed", mount_point=str(mp), error=proc.stderr.strip())
                return
        if action == "power-off":
            tool = shutil.which("udisksctl")
            if tool is None:
                log.warning("card_power_off_unsupported", device=device, reason="udisksctl not found; card unmounted only")
                return
            proc = subprocess.run([tool, "power-off", "-b", device], capture_output=True, text=True)
            if proc.returncode != 0:
                log.warning("card_power_off_failed", device=device, error=proc.stderr.strip())

    def _unmount_automounted(self, device: str) -> None:
        target = self.state.automounted.pop(device, None)
        if target is not None:
            udev.unmount(target)
            log.info("card_auto_unmounted", device=device, mount_point=str(target))


def _progress_note(info: Any) -> str:
    """A short "12/340 files" note from whatever the engine's progress callback passes."""
    get = info.get if isinstance(info, dict) else lambda k, d=None: getattr(info, k, d)
    done = get("files_done", None) or get("done", None) or get("copied_files", None)
    total = get("files_total", None) or get("total", None) or get("total_files", None)
    if done is not None and total:
        return f"{done}/{total} files"
    return ""


def run_daemon(config_path: str | None, log_format: str = "auto") -> int:
    """Entry point of ``imalinkd run``. Returns the exit code: 0 after a clean stop, 2 for a
    bad config, 1 when the daemon could not start (catalog, event sources, the API's
    address). ``log_format``: see :func:`imalinkd.logsetup.wants_json`."""
    try:
        config = load_config(config_path)
    except ConfigError as e:
        print(f"imalinkd: {e}", file=sys.stderr)
        return e.exit_code
    try:
        from imalinkd.logsetup import configure_logging, wants_json

        configure_logging(config.daemon.log_level, json=wants_json(log_format))
    except ImportError:
        pass
    return Daemon(config, config_path).run()
