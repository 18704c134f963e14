"""Backup archives (DESIGN §8): which are reachable now, and a session's copy on each.

``[storage] backups`` names each backup archive by path or by ``id:<storage_id>``. A
backup is only ever a storage root that ``init-storage`` made: a path without a marker
(most often the mount point of a drive that is not plugged in) is not reachable, and
nothing is written there. A backup found by its identity is looked for the way the primary
is (configured path, last-seen path, then the believed roots of the mounted file systems).
What is not reachable is simply left out: the import goes on to what is there, and the
verdict says the source is not yet safe.

A session's directory has the same name and UUID on every drive; each copy has its own
``metadata.json`` (listing what that drive holds) and ``manifest-sha256.txt``.
"""

from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass, field

import structlog
from sqlalchemy import select

from imalinkd import devices, durable, locate, storage
from imalinkd.catalog import Catalog, SessionCopy, upsert_storage_root
from imalinkd.errors import MarkerError
from imalinkd.manifest import FileEntry, SessionManifest, write_manifest

log = structlog.get_logger()


@dataclass
class Archive:
    """A storage root reachable now."""

    root: str
    storage_id: str
    label: str
    device_key: str | None
    dev: int = -1  # st_dev of the root when it was found: writes go only onto that file system

    def still_there(self, path: str | None = None) -> bool:
        """Is ``path`` (default: the root) still on the drive the root was found on? A drive
        pulled meanwhile leaves its bare mount point, on another file system: nothing is
        written there."""
        try:
            return os.stat(path or self.root).st_dev == self.dev
        except OSError:
            return False


@dataclass
class Absent:
    spec: str
    reason: str


@dataclass
class Destination:
    """A session's copy on one backup archive, fed by the same read as the primary."""

    archive: Archive
    session_dir: str
    manifest: SessionManifest
    failed: str | None = None  # why it stopped taking files (full, pulled, read-only)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def files_dir(self) -> str:
        return os.path.join(self.session_dir, "files")

    @property
    def temp_dir(self) -> str:
        return os.path.join(self.session_dir, durable.TEMP_DIR)

    def fail(self, reason: str) -> None:
        with self._lock:
            if self.failed is None:
                self.failed = reason
                log.warning("backup_dropped", storage_id=self.archive.storage_id, session_dir=self.session_dir, reason=reason)

    def record(self, entry: FileEntry) -> None:
        self.manifest.file_manifest.append(copy.copy(entry))

    def write_manifest(self) -> None:
        try:
            write_manifest(self.session_dir, self.manifest)
        except OSError as e:
            self.fail(f"metadata.json could not be written: {e.strerror or e}")


def archive_at(root: str) -> Archive | None:
    """The storage root at ``root`` (its marker read now), or None."""
    try:
        marker = storage.read_marker(root) if os.path.isdir(root) else None
    except (MarkerError, OSError):
        return None
    if marker is None:
        return None
    return Archive(root, marker.storage_id, marker.label, devices.device_key(root), os.stat(root).st_dev)


def _resolve(config, catalog: Catalog, spec: str) -> Archive | Absent:
    if spec.startswith("id:"):
        root = locate.resolve_root(config, catalog, spec[3:])
        if root is None:
            return Absent(spec, "not plugged in (no believed storage root with this identity is mounted)")
        found = archive_at(root)
        return found if found is not None else Absent(spec, f"its marker at {root} could not be read")
    root = os.path.abspath(spec)
    try:
        marker = storage.read_marker(root) if os.path.isdir(root) else None
    except MarkerError as e:
        return Absent(spec, str(e))
    if marker is None:
        return Absent(spec, f"no storage marker at {root}: the drive is not mounted there (or run "
                            f"'imalinkd init-storage {root}' once to make it a backup archive)")
    return Archive(root, marker.storage_id, marker.label, devices.device_key(root), os.stat(root).st_dev)


def reachable_backups(config, catalog: Catalog, primary_id: str | None) -> tuple[list[Archive], list[Absent]]:
    """The configured backups reachable now (never the primary itself, each once), and
    the others with the reason."""
    found: list[Archive] = []
    absent: list[Absent] = []
    for spec in config.storage.backups:
        got = _resolve(config, catalog, spec)
        if isinstance(got, Absent):
            absent.append(got)
        elif got.storage_id == primary_id or any(a.storage_id == got.storage_id for a in found):
            log.warning("backup_is_not_another_archive", backup=spec, storage_id=got.storage_id)
        else:
            found.append(got)
    for a in absent:
        log.info("backup_not_reachable", backup=a.spec, reason=a.reason)
    return found, absent


def record_archive(catalog: Catalog, archive: Archive) -> None:
    """The catalog learns where the archive is now and which drive it is on."""
    try:
        free, total = storage.disk_free(archive.root)
    except OSError:
        free = total = None
    with catalog.session() as s:
        upsert_storage_root(s, archive.storage_id, archive.label, archive.root, storage.utcnow(), free, total,
                            device_key=archive.device_key)


def open_destination(catalog: Catalog, archive: Archive, session_row_id: int, dirname: str,
                     primary: SessionManifest) -> Destination | None:
    """The session's directory on ``archive`` with its first manifest, and the catalog's
    record of this copy; None (logged) when the drive refuses."""
    session_dir = os.path.join(archive.root, dirname)
    manifest = copy.copy(primary)
    manifest.file_manifest = []
    manifest.skipped = list(primary.skipped)
    if not archive.still_there():
        log.warning("backup_not_written", storage_id=archive.storage_id, root=archive.root, error="the drive went away")
        return None
    try:
        os.mkdir(session_dir)
        os.makedirs(os.path.join(session_dir, "files"), exist_ok=True)
        os.makedirs(os.path.join(session_dir, durable.TEMP_DIR), exist_ok=True)
        durable.fsync_dir(archive.root)
        write_manifest(session_dir, manifest)
    except OSError as e:
        log.warning("backup_not_written", storage_id=archive.storage_id, root=archive.root, error=e.strerror or str(e))
        return None
    record_archive(catalog, archive)
    with catalog.session() as s:
        exists = s.scalar(select(SessionCopy).where(SessionCopy.session_id == session_row_id,
                                                    SessionCopy.storage_id == archive.storage_id))
        if exists is None:
            s.add(SessionCopy(session_id=session_row_id, storage_id=archive.storage_id, storage_directory_name=dirname,
                              last_seen_at=storage.utcnow(), missing=False))
    return Destination(archive, session_dir, manifest)


def finish_destination(dest: Destination, primary: SessionManifest) -> None:
    """The backup's final manifest: completed only when it holds every file the primary
    holds, else failed with what is short (``imalinkd replicate`` completes it)."""
    have = {e.storage_path for e in dest.manifest.file_manifest}
    short = sum(1 for e in primary.file_manifest if e.storage_path not in have)
    dest.manifest.photos_created = primary.photos_created
    dest.manifest.copy_completed_at = primary.copy_completed_at
    if primary.copy_status == "completed" and not short:
        dest.manifest.copy_status, dest.manifest.error = "completed", None
    else:
        dest.manifest.copy_status = "failed"
        dest.manifest.error = primary.error or (f"{short} file(s) of the session are not on this backup yet"
                                                + (f" ({dest.failed})" if dest.failed else "")
                                                + ": 'imalinkd replicate' copies them")
    dest.write_manifest()
    try:
        os.rmdir(dest.temp_dir)
    except OSError:
        pass


def finish_copy(dest: Destination, sink: durable.BackupSink, level: str, written, storage_rel: str) -> bool:
    """fsync, verify by its own read-back and commit one backup copy under the name the
    primary committed (finisher thread). False when this copy is not there: the file is
    then short on this backup (a problem with the drive drops the backup for the session)."""
    if dest.failed or sink.error is not None:
        sink.discard()
        if sink.error is not None:
            dest.fail(f"write: {sink.error.strerror or sink.error}")
        return False
    if not dest.archive.still_there(dest.session_dir):
        sink.discard()
        dest.fail("the backup drive went away")
        return False
    try:
        sink.finish(written.times_ns)
        problem = sink.verify("sha256" if level == "paranoid" else level, written.outcome.sha256, written.outcome.size)
        if problem is not None:
            sink.discard()
            log.warning("backup_copy_not_verified", storage_id=dest.archive.storage_id, file=storage_rel, problem=problem)
            return False
        sink.target = os.path.join(dest.files_dir, storage_rel)
        sink.commit()
        return True
    except FileExistsError:
        sink.discard()
        log.warning("backup_name_taken", storage_id=dest.archive.storage_id, file=storage_rel)
        return False
    except OSError as e:
        sink.discard()
        dest.fail(f"{e.strerror or e}")
        return False
