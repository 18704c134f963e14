"""Examining a new mount until it succeeds: a failed look is retried, never taken as "no".

A card plugged in while the daemon is short of file descriptors (EMFILE: HTTP clients,
a burst of work) or while ``blkid`` hangs on a slow device would otherwise be examined once,
found to be nothing, and never imported. Here an examination that failed for a reason that
may pass (:class:`~imalinkd.daemon.identify.ExaminationFailed`) is repeated after 1, 2, 5,
10, 30 and then every 60 seconds, for as long as the mount is there and the daemon runs;
each failure is one warning line naming the mount and what failed.

Some readers (the storage marker scan) treat an unreadable directory as empty rather than
raising; so an examination is also not trusted when the process had fewer than
``FD_MARGIN`` free descriptors before or after it: such a look is done again too.
"""

from __future__ import annotations

import os
import resource
import threading
from pathlib import Path
from typing import Callable

import structlog

from imalinkd.daemon import identify
from imalinkd.daemon.events import MountAppeared, MountExamined
from imalinkd.daemon.identify import ExaminationFailed

log = structlog.get_logger(__name__)

RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # the last one repeats
FD_MARGIN = 16
BLKID_TIMEOUT_SECONDS = 10.0


def fd_headroom() -> int | None:
    """How many more descriptors this process may open (None when the limit is infinite).
    Counting needs one descriptor itself: at zero left, EMFILE says 0."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        used = len(os.listdir("/proc/self/fd"))
    except OSError as e:
        if e.errno in identify.TRANSIENT_ERRNOS:
            return 0
        return None  # no /proc: no way to tell, trust the examination
    return soft - used


def _check_headroom(when: str) -> None:
    left = fd_headroom()
    if left is not None and left < FD_MARGIN:
        raise ExaminationFailed(f"only {left} file descriptors left {when} the examination")


def examine(event: MountAppeared, depth: int, *, blkid_timeout: float = BLKID_TIMEOUT_SECONDS,
            allow_fuse: bool = False) -> MountExamined:
    """One look at a new mount: identity, camera layout, storage roots. Raises ExaminationFailed."""
    mp = Path(event.mount_point)
    _check_headroom("before")
    fs_uuid, label, fstype = identify.probe_filesystem(event.mount_source, timeout=blkid_timeout)
    dcim = identify.is_camera_card(mp)
    roots = identify.find_storage_roots(mp, depth, allow_fuse)
    _check_headroom("after")
    return MountExamined(mount=event, fs_uuid=fs_uuid, label=label, fstype=fstype, has_dcim=dcim, storage_roots=roots)


def examine_until_done(
    event: MountAppeared,
    depth: int,
    *,
    wanted: Callable[[], bool],
    stopping: threading.Event,
    delays: tuple[float, ...] = RETRY_DELAYS,
    blkid_timeout: float = BLKID_TIMEOUT_SECONDS,
    allow_fuse: bool = False,
) -> MountExamined | None:
    """Examine ``event``'s mount, again after each passing failure, until it succeeds.
    Returns None when the mount stopped being ``wanted()`` (gone, replaced) or the daemon
    is ``stopping`` first."""
    attempt = 0
    while wanted() and not stopping.is_set():
        try:
            examined = examine(event, depth, blkid_timeout=blkid_timeout, allow_fuse=allow_fuse)
        except Exception as e:  # ExaminationFailed, or a reader's surprise: look again later either way
            delay = delays[min(attempt, len(delays) - 1)]
            attempt += 1
            log.warning("mount_examination_failed", mount_point=str(event.mount_point), device=event.mount_source,
                        error=str(e) if isinstance(e, ExaminationFailed) else f"{type(e).__name__}: {e}", attempt=attempt, retry_in_seconds=delay)
            stopping.wait(delay)
            continue
        if attempt:
            log.info("mount_examined_after_retry", mount_point=str(event.mount_point), attempts=attempt + 1)
        return examined
    return None
