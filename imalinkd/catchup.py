"""Before an import into a root: take from the drive the sessions the catalog lacks.

The catalog is a cache of the drives (DESIGN §1), and a cache can lose its last writes: a
power cut, a catalog restored from a backup, a catalog on a disk that failed. Its drive
still holds those sessions. An import that did not know them would copy their files again,
as a second session beside a directory the catalog forgot, and an unfinished one could not
be resumed. So before importing into a root its session directories are listed (one read
of one directory), and those the catalog knows under no name on this root are read and
recorded as a reindex records them (:func:`imalinkd.reindex.plan_reindex`): a completed
session makes its files duplicates, an unfinished one becomes a failed session to resume.

This is the quick part of a known drive's reindex: sessions the catalog knows are not read
at all. A directory whose importer holds its lock (an import writing it right now, in this
process or another) is left to that importer.
"""

from __future__ import annotations

import errno
import fcntl
import os

import structlog
from sqlalchemy import select

from imalinkd import storage
from imalinkd.catalog import Catalog, ImportSession, SessionCopy
from imalinkd.reading import DriveSession, DriveState, read_session_dir
from imalinkd.sessions import LOCK_NAME
from imalinkd.walk import files_digest

log = structlog.get_logger(__name__)


def unknown_session_dirs(catalog: Catalog, root: str, storage_id: str) -> tuple[list[str], list[str]]:
    """(every session directory name on ``root``, those the catalog has under no name on
    this root)."""
    try:
        names = sorted(e.name for e in os.scandir(root) if storage.is_session_dir_name(e.name) and e.is_dir(follow_symlinks=False))
    except OSError:  # an unreadable root is the import's to report, by its own error
        return [], []
    if not names:
        return [], []
    with catalog.session() as s:
        known = set(s.scalars(select(ImportSession.storage_directory_name).where(ImportSession.storage_id == storage_id)))
        known |= set(s.scalars(select(SessionCopy.storage_directory_name).where(SessionCopy.storage_id == storage_id)))
    return names, [n for n in names if n not in known]


def is_being_written(session_dir: str) -> bool:
    """Does an importer hold the session's lock right now (see sessions.SessionLock)?"""
    try:
        fd = os.open(os.path.join(session_dir, LOCK_NAME), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return e.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
    finally:
        os.close(fd)  # closing drops the probe's own lock
    return False


def take_unknown_sessions(catalog: Catalog, root: str, marker: storage.Marker) -> int:
    """Record the sessions on ``root`` that the catalog lacks, from their manifests; returns
    how many were taken. What cannot be read is left for a full reindex to report."""
    from imalinkd.reindex import _index_slice

    names, unknown = unknown_session_dirs(catalog, root, marker.storage_id)
    sessions: list[DriveSession] = []
    for name in unknown:
        path = os.path.join(root, name)
        if is_being_written(path):
            continue
        m, on_disk, problem, signature = read_session_dir(path)
        if problem is not None:
            log.warning("session_not_taken_from_drive", path=problem[0], reason=problem[1])
            continue
        digest = files_digest(on_disk) if signature is not None and on_disk is not None else None
        sessions.append(DriveSession(name, m, on_disk, signature, files_digest=digest))
    if not sessions:
        return 0
    drive = DriveState(marker.storage_id, marker.label, tuple(sessions), frozenset(names), frozenset(n[-8:] for n in names))
    try:
        free, total = storage.disk_free(root)
    except OSError:
        free = total = None
    _drive, plan = _index_slice(catalog, storage.FoundRoot(root, marker), drive, {"free_bytes": free, "total_bytes": total}, False)
    for new in plan.new_sessions:
        log.warning("session_taken_from_drive", storage_path=root, directory=new.session.get("storage_directory_name"),
                    session_id=new.session.get("storage_uuid"), copy_status=new.session.get("copy_status"))
    return len(plan.new_sessions)
