"""Session-level facts every command needs: where the archive is now, whether a session's
importer is still alive, its JSON shape, and the per-session lock."""

from __future__ import annotations

import os
import socket
import threading

import psutil
import structlog

from imalinkd import devices, locate, paths, sourcelock, storage
from imalinkd.catalog import Catalog, ImportSession, roots_ever_at, upsert_storage_root
from imalinkd.config import Config
from imalinkd.errors import SessionBusyError, StorageError, StorageNotFoundError, StorageNotInitialisedError, StorageNotMountedError

log = structlog.get_logger()

LOCK_NAME = ".imalinkd.lock"

# sessions being imported by this process (a daemon runs several in threads)
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


# --- storage resolution ----------------------------------------------------------------------


def open_storage(config: Config, catalog: Catalog, root_override: str | os.PathLike[str] | None = None) -> tuple[str, storage.Marker]:
    """The live storage root to import into.

    Only ``init-storage`` makes a directory a storage root, and the embedded default root
    (no ``[storage]`` configured: a directory under the state directory) on its first use.
    A configured root without a marker is refused (StorageNotInitialisedError, naming the
    command to run): it is most often the mount point of an archive drive that is not
    plugged in. Mount guard: not even the default root gets a new marker where this station
    ever saw a storage root (the catalog keeps every path, :class:`RootPath`), since its
    marker being gone means the archive is missing, not that it is a new one."""
    root = os.fspath(root_override) if root_override else (str(config.storage_root) if config.storage_root else None)
    wanted = config.storage.storage_id if not root_override else None
    if root is None:
        found = find_root_by_id(config, catalog, wanted or "")
        if found is None:
            raise StorageNotFoundError(path=wanted, storage_id=wanted, where=" (searched every mounted file system)")
        root = found
    root = os.path.abspath(root)
    marker = storage.read_marker(root) if os.path.isdir(root) else None
    if marker is None:
        # One process at a time decides what a root without a marker is: another one may
        # be making it a root right now (and recording it, which would make it look like
        # an unplugged drive's mount point to a check made without this lock).
        with sourcelock.exclusive(sourcelock.first_use_lock_path(config)):
            marker = _first_use(config, catalog, root, embedded_default=root_override is None and is_embedded_default(config))
    if wanted and marker.storage_id != wanted:
        raise StorageError(path=root, message=f"holds storage {marker.storage_id}, but the config asks for {wanted}")
    record_root(catalog, root, marker)
    return root, marker


def is_embedded_default(config: Config) -> bool:
    """Is the archive the default one under the state directory (no [storage] root or
    storage_id configured)?"""
    return config.storage.root is None and config.storage.storage_id is None


def _first_use(config: Config, catalog: Catalog, root: str, embedded_default: bool) -> storage.Marker:
    """``root`` has no marker: read it again under the first-use lock (another process
    may have made it a root meanwhile); else make it the embedded default root, or refuse."""
    marker = storage.read_marker(root) if os.path.isdir(root) else None
    if marker is not None:  # made a root by another process meanwhile
        return marker
    with catalog.session() as s:
        known = roots_ever_at(s, root)
    if known:
        raise StorageNotMountedError(path=root, storage_id=known[-1])
    if os.path.lexists(root) and not os.path.isdir(root):
        raise StorageError(path=root, message="it exists and is not a directory")
    if not embedded_default:
        raise StorageNotInitialisedError(path=root)
    marker = storage.init_storage(root)
    log.info("storage_initialised", storage_path=root, storage_id=marker.storage_id)
    return marker


def find_root_by_id(config: Config, catalog: Catalog, storage_id: str) -> str | None:
    """Where the storage with this identity is mounted now (None: not reachable)."""
    return locate.resolve_root(config, catalog, storage_id)


def record_root(catalog: Catalog, root: str, marker: storage.Marker) -> None:
    try:
        free, total = storage.disk_free(root)
    except OSError:
        free = total = None
    with catalog.session() as s:
        upsert_storage_root(s, marker.storage_id, marker.label, root, storage.utcnow(), free, total,
                            device_key=devices.device_key(root))


def session_dir_of(config: Config, catalog: Catalog, row: ImportSession) -> str | None:
    """The session's directory at its live path now, or None when its drive is away."""
    return locate.session_path(config, catalog, row)


# --- liveness --------------------------------------------------------------------------------


def importer_alive(row: ImportSession) -> bool:
    """Is some process still importing this session? (A crashed one is not.)"""
    if row.importer_pid is None or row.importer_host != socket.gethostname():
        return False
    if row.importer_pid == os.getpid():
        with _ACTIVE_LOCK:
            return row.storage_uuid in _ACTIVE
    try:
        proc = psutil.Process(row.importer_pid)
        return proc.status() != psutil.STATUS_ZOMBIE and any("imalinkd" in part for part in proc.cmdline())
    except (psutil.Error, OSError):
        return False


def effective_status(row: ImportSession) -> str:
    """DESIGN §2: a session left ``in_progress`` with no importer alive counts as failed."""
    if row.copy_status == "in_progress" and not importer_alive(row):
        return "failed"
    return row.copy_status


def session_json(row: ImportSession, storage_path: str | None, verdict: dict | None = None) -> dict:
    """The JSON shape of a session in ``sessions``/``import`` output (DESIGN §6), with its
    verdict (:func:`imalinkd.verdict.session_fields`) when given."""
    return {**_session_fields(row, storage_path), **(verdict or {})}


def _session_fields(row: ImportSession, storage_path: str | None) -> dict:
    return {
        "id": row.id,
        "import_session_id": row.storage_uuid,
        "storage_directory_name": row.storage_directory_name,
        "storage_path": storage_path,
        "storage_id": row.storage_id,
        "copy_status": effective_status(row),
        "description": row.description,
        "created_at": storage.iso(row.created_at),
        "copy_started_at": storage.iso(row.copy_started_at),
        "copy_completed_at": storage.iso(row.copy_completed_at),
        "total_files": row.total_files,
        "total_size_bytes": row.total_size_bytes,
        "storage_size_mb": row.storage_size_mb,
        "photos_created": row.photos_created,
        "duplicates_skipped": row.duplicates_skipped,
        "skipped_count": row.skipped_count,
        "verification": row.verification,
        "readback": row.readback,
        "original_source_path": paths.display(row.original_source_path) if row.original_source_path else None,
        "source": {k: v for k, v in (("kind", row.source_kind), ("label", row.source_label), ("fs_uuid", row.source_fs_uuid)) if v},
        "copy_files": row.copy_files,
        "missing": row.missing,
        "error": row.error,
    }


# --- the session lock --------------------------------------------------------------------------


class SessionLock:
    """An exclusive ``flock`` on ``<session>/.imalinkd.lock``: one importer per session."""

    def __init__(self, session_dir: str, session_uuid: str) -> None:
        self.path = os.path.join(session_dir, LOCK_NAME)
        self.session_uuid = session_uuid
        self.fd = -1

    def acquire(self) -> None:
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self.fd)
            self.fd = -1
            raise SessionBusyError(session=self.session_uuid) from None
        with _ACTIVE_LOCK:
            _ACTIVE.add(self.session_uuid)

    def release(self, remove: bool) -> None:
        with _ACTIVE_LOCK:
            _ACTIVE.discard(self.session_uuid)
        if self.fd < 0:
            return
        if remove:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = -1
