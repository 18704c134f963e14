"""Which physical drive a path is on: roots on one drive count as one copy (DESIGN §8).

A file system's device number is followed through ``/sys/dev/block`` to its whole disk (a
partition's parent), and the disk is named by what stays the same when it is plugged in
again: its WWID or serial when the kernel knows one, a loop device's backing file, else
the disk's name. A file system with no block device behind it (tmpfs, a FUSE mount whose
source is not a device) is named by its device number: two roots on it still agree.
"""

from __future__ import annotations

import os

from imalinkd import trust

SYS_BLOCK = "/sys/dev/block"


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _disk_dir(major: int, minor: int) -> str | None:
    """The sysfs directory of the whole disk holding block device ``major:minor``."""
    link = os.path.join(SYS_BLOCK, f"{major}:{minor}")
    try:
        real = os.path.realpath(link, strict=True)
    except OSError:
        return None
    if os.path.exists(os.path.join(real, "partition")):
        real = os.path.dirname(real)
    return real


def _disk_key(disk: str) -> str:
    name = os.path.basename(disk)
    backing = _read(os.path.join(disk, "loop", "backing_file"))
    if backing:
        return f"loop:{backing}"
    for ident in ("device/wwid", "wwid", "device/serial", "serial"):
        value = _read(os.path.join(disk, ident))
        if value:
            return f"disk:{value}"
    return f"block:{name}"


def _block_source(path: str) -> int | None:
    """The device number of the block device a FUSE (or other non-block) mount reads."""
    entry = trust.mount_of(path, trust.mount_table())
    source = getattr(entry, "source", None) if entry else None
    if not source or not source.startswith("/dev/"):
        return None
    try:
        st = os.stat(source)
    except OSError:
        return None
    import stat

    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def device_key(path: str) -> str | None:
    """A name of the physical drive ``path`` is on, or None when ``path`` cannot be stat'ed."""
    try:
        dev = os.stat(path).st_dev
    except OSError:
        return None
    if os.major(dev) == 0:  # no block device of its own (FUSE, tmpfs, overlay)
        rdev = _block_source(path)
        if rdev is None:
            return f"fs:{os.major(dev)}:{os.minor(dev)}"
        dev = rdev
    disk = _disk_dir(os.major(dev), os.minor(dev))
    return _disk_key(disk) if disk else f"fs:{os.major(dev)}:{os.minor(dev)}"
