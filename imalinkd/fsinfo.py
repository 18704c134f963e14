"""What file system a path is on: its mount (from ``/proc/self/mountinfo``), the path
inside that file system, and the block device behind it. Reads the OS, decides nothing."""

from __future__ import annotations

import os

from imalinkd.daemon.mountinfo import MOUNTINFO, MountEntry, parse_mountinfo

# File systems whose data the kernel itself reads from a block device: dropping a file's
# cached pages makes the next read reach the device.
KERNEL_BLOCK_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "msdos", "exfat", "ntfs3", "f2fs", "jfs",
                             "reiserfs", "hfsplus", "udf", "iso9660", "nilfs2", "bcachefs"})


def mount_of(path: str | os.PathLike[str]) -> MountEntry | None:
    """The mount that holds ``path`` (the deepest mount point above its real path; of two
    at one point, the later), or None when the table cannot be read."""
    real = os.path.realpath(path)
    try:
        with open(MOUNTINFO, "rb") as f:
            table = parse_mountinfo(f.read())
    except OSError:
        return None
    best: MountEntry | None = None
    for entry in table.values():
        mp = entry.mount_point
        if real != mp and not real.startswith(mp.rstrip("/") + "/"):
            continue
        if best is None or len(mp) > len(best.mount_point) or (len(mp) == len(best.mount_point) and entry.mount_id > best.mount_id):
            best = entry
    return best


def path_in_filesystem(path: str | os.PathLike[str], entry: MountEntry | None) -> str:
    """``path`` as seen from the root of its file system (through bind mounts: the same
    directory reached by two mount points gives one answer)."""
    real = os.path.realpath(path)
    if entry is None:
        return real
    rel = os.path.relpath(real, entry.mount_point)
    inner = entry.root if rel == "." else os.path.join(entry.root, rel)
    return os.path.normpath(inner)


def backing_block_device(entry: MountEntry | None) -> str | None:
    """The block device node a mount reads from (``/dev/loop3`` for ``fuseblk`` and kernel
    file systems alike), or None (tmpfs, network, FUSE without a device)."""
    if entry is None or not entry.source.startswith("/dev/"):
        return None
    import stat

    try:
        return entry.source if stat.S_ISBLK(os.stat(entry.source).st_mode) else None
    except OSError:
        return None


def is_fuse(entry: MountEntry | None) -> bool:
    return entry is not None and (entry.fstype == "fuse" or entry.fstype.startswith(("fuse.", "fuseblk")))
