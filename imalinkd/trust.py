"""Which storage markers found by scanning the mounted file systems are believed.

A marker carries nothing secret: anyone who can write a ``config.json`` with an archive's
``storage_id`` could otherwise have photos imported onto their file system (a world-
writable ``/dev/shm``, their own ``/run/user/…``, a FUSE mount of their own). So a storage
root that a *scan* finds (by ``[storage] storage_id``, in the daemon's look at a new mount,
in a reindex of every mount) counts only when

- its file system is backed by a block device (not tmpfs, ramfs, proc-like, overlay or
  network file systems). FUSE file systems count only with ``[storage] allow_fuse = true``
  and only when mounted by root or the service's user: a FUSE driver reports any owner it
  likes, and ordinary users can mount one;
- on a file system that keeps owners, the marker and every directory from the root up to
  the mount point are owned by root or the service's user and writable by nobody else
  (a directory above the root may be writable by others when it is sticky, as ``/tmp``:
  they cannot move the root away then). File systems without owners (FAT, exFAT, NTFS)
  have the owner and mode their mount gave every file; only root mounts block devices.

Anything else is ignored, with one warning (``storage_marker_ignored``) naming the marker
and the reason. A root named explicitly (``[storage] root``, ``imalinkd reindex PATH``,
``update-storage-path``) is the administrator's choice and is not vetted here.
"""

from __future__ import annotations

import os
import stat
import threading
from typing import Callable, Iterable, TypeVar

import structlog

from imalinkd.daemon.mountinfo import MOUNTINFO, MountEntry, parse_mountinfo

log = structlog.get_logger(__name__)

MARKER = "config.json"
# File systems whose files have no owner of their own: the mount's uid/gid/umask apply.
OWNERLESS_FSTYPES = frozenset({"vfat", "msdos", "exfat", "ntfs", "ntfs3", "hfs", "iso9660", "udf"})

T = TypeVar("T")

_logged: set[tuple[str, str]] = set()
_logged_lock = threading.Lock()


def mount_table(path: str = MOUNTINFO) -> list[MountEntry]:
    """This process's mounts, in the kernel's order (a later mount at a path hides an earlier)."""
    try:
        with open(path, "rb") as f:
            return list(parse_mountinfo(f.read()).values())
    except OSError:
        return []


def mount_of(path: str, table: list[MountEntry]) -> MountEntry | None:
    """The mount holding ``path`` (resolved): the deepest mount point above it, the last
    one mounted where several share a path."""
    real = os.path.realpath(path)
    best: MountEntry | None = None
    for entry in table:
        mp = entry.mount_point
        if real == mp or real.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mount_point):
                best = entry
    return best


def is_fuse(fstype: str) -> bool:
    return fstype in ("fuse", "fuseblk") or fstype.startswith(("fuse.", "fuseblk."))


def _super_option(entry: MountEntry, key: str) -> str | None:
    for opt in entry.super_options.split(","):
        k, _, v = opt.partition("=")
        if k == key:
            return v
    return None


# Local disk file systems whose mount source is not one device node (a pool, a list).
POOLED_FSTYPES = frozenset({"zfs", "bcachefs"})


def _on_block_device(entry: MountEntry) -> bool:
    """Whether the mount is backed by a block device: its source is a block device node,
    or (``/dev/root`` has no node on some systems) its device number has a major number,
    which anonymous devices (tmpfs, overlay, FUSE, NFS) never have."""
    try:
        if stat.S_ISBLK(os.stat(entry.source).st_mode):
            return True
    except (OSError, ValueError):
        pass
    major = entry.device.partition(":")[0]
    return (major.isdigit() and int(major) != 0) or entry.fstype in POOLED_FSTYPES


def filesystem_problem(entry: MountEntry, allow_fuse: bool) -> str | None:
    """Why a marker on the mount ``entry`` is not believed, or None."""
    fstype = entry.fstype
    if is_fuse(fstype):
        if not allow_fuse:
            return (f"on a FUSE file system ({fstype}); an NTFS or exFAT archive drive mounted through "
                    "ntfs-3g or exfat-fuse counts with [storage] allow_fuse = true")
        owner = _super_option(entry, "user_id")
        if owner is None or not owner.isdigit() or int(owner) not in (0, os.geteuid()):
            return f"on a FUSE file system ({fstype}) mounted by user {owner}, not by root or this service's user"
        return None
    if not _on_block_device(entry):
        return f"on a {fstype} file system, not backed by a block device (tmpfs, ramfs, proc-like and network file systems never hold an archive)"
    return None


def _owner_problem(path: str, st: os.stat_result, what: str, sticky_ok: bool) -> str | None:
    if st.st_uid not in (0, os.geteuid()):
        return f"{what} {path} is owned by uid {st.st_uid}, not by root or this service's user"
    writable = st.st_mode & 0o002 or (st.st_mode & 0o020 and st.st_gid not in (0, os.getegid()))
    if writable and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        return f"{what} {path} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def ownership_problem(root: str, mount_point: str) -> str | None:
    """Why the marker of ``root`` (on a file system with owners) is not believed, or None:
    the marker and the directories from ``root`` up to ``mount_point`` must be owned by root
    or this service's user and not writable by others (above the root: unless sticky)."""
    marker = os.path.join(root, MARKER)
    try:
        problem = _owner_problem(marker, os.lstat(marker), "the marker", False)
        if problem:
            return problem
        path = os.path.realpath(root)
        stop = os.path.realpath(mount_point)
        first = True
        while True:
            problem = _owner_problem(path, os.lstat(path), "the directory", not first)
            if problem:
                return problem
            if path == stop or path == "/" or not path.startswith(stop.rstrip("/") + "/"):
                return None
            path, first = os.path.dirname(path), False
    except OSError as e:
        return f"cannot be checked: {e.strerror or e}"


def root_problem(root: str, allow_fuse: bool, table: list[MountEntry] | None = None) -> str | None:
    """Why the storage root ``root`` found by a scan is not believed, or None."""
    table = mount_table() if table is None else table
    entry = mount_of(root, table)
    if entry is None:
        return "not on any mounted file system"
    problem = filesystem_problem(entry, allow_fuse)
    if problem is None and entry.fstype not in OWNERLESS_FSTYPES and not is_fuse(entry.fstype):
        problem = ownership_problem(root, entry.mount_point)
    return problem


def _warn_once(marker: str, reason: str) -> None:
    with _logged_lock:
        if (marker, reason) in _logged:
            return
        if len(_logged) > 10_000:
            _logged.clear()
        _logged.add((marker, reason))
    log.warning("storage_marker_ignored", path=marker, reason=reason)


def believed(found: Iterable[T], allow_fuse: bool, path_of: Callable[[T], str] = os.fspath) -> list[T]:
    """The storage roots among ``found`` (by a scan) whose markers are believed; each one
    ignored is logged once, with its reason (see the module's docstring)."""
    items = list(found)
    if not items:
        return items
    table = mount_table()
    out = []
    for item in items:
        root = os.fspath(path_of(item))
        problem = root_problem(root, allow_fuse, table)
        if problem is None:
            out.append(item)
        else:
            _warn_once(os.path.join(root, MARKER), problem)
    return out
