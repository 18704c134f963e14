"""Re-reading a file for verification, and saying honestly where the bytes came from.

A verification re-reads what was written and compares its sha256. That proves something
about the disk only if the re-read reaches the disk. Dropping the file's cached pages
(``posix_fadvise(DONTNEED)`` after ``fsync``) makes it do so on a file system the kernel
reads from a block device itself (ext4, XFS, vfat, the kernel's exfat and ntfs3, …). On a
FUSE file system it does not: the FUSE server (exfat-fuse, ntfs-3g — the usual way NTFS
drives shared with Windows are mounted) reads the block device through the device's own
page cache, which still holds what was just written; measured on exfat-fuse, an 8 MB
re-read after dropping the file's pages read nothing at all from the device.

So for a FUSE file system backed by a block device, the device's cache is dropped too
before the re-read: ``BLKFLSBUF`` (writes back and drops the device's buffers; needs
CAP_SYS_ADMIN), else ``fsync`` + ``posix_fadvise(DONTNEED)`` of the device (needs only the
right to open the device for reading). Measured again, the same re-read then reads the
whole file from the device. Where neither is possible (the device cannot be opened, a
FUSE file system without a block device, a network file system, tmpfs), the re-read may
come from a cache, and the result says so: every re-read returns how it was made,
:data:`FROM_DISK` or :data:`PAGE_CACHE_POSSIBLE`, and sessions record the weakest.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

from imalinkd import durable, fsinfo

FROM_DISK = "from-disk"
PAGE_CACHE_POSSIBLE = "page-cache-possible"
BLKFLSBUF = 0x1261  # <linux/fs.h>: _IO(0x12, 97)


def weakest(*kinds: str | None) -> str | None:
    """The weaker of re-read kinds (None: nothing was re-read)."""
    seen = [k for k in kinds if k]
    if not seen:
        return None
    return PAGE_CACHE_POSSIBLE if PAGE_CACHE_POSSIBLE in seen else FROM_DISK


@dataclass(frozen=True)
class Route:
    """How re-reads of files on one file system reach (or may not reach) the device."""

    kind: str  # FROM_DISK or PAGE_CACHE_POSSIBLE
    device: str | None = None  # a block device whose cache is dropped before each re-read
    why: str = ""


def route_for(path: str | os.PathLike[str]) -> Route:
    """The route for the file system holding ``path``, decided afresh each time from the
    mount table: a device number is reused by the next mount (loop and FUSE numbers are),
    so a remembered route could drop another device's cache and call the re-read one from
    the disk."""
    return _decide(fsinfo.mount_of(path))


def _decide(entry) -> Route:
    if entry is None:
        return Route(PAGE_CACHE_POSSIBLE, why="its mount is unknown")
    device = fsinfo.backing_block_device(entry)
    if fsinfo.is_fuse(entry):
        if device is None:
            return Route(PAGE_CACHE_POSSIBLE, why=f"{entry.fstype} has no block device to read from")
        return Route(FROM_DISK, device=device, why=f"{entry.fstype}: {device}'s cache dropped before each re-read")
    if device is not None and entry.fstype in fsinfo.KERNEL_BLOCK_FS:
        return Route(FROM_DISK)
    return Route(PAGE_CACHE_POSSIBLE, why=f"{entry.fstype} is not read from a local block device by the kernel")


def drop_device_cache(device: str) -> bool:
    """Write back and drop the cached pages of a block device; False when not possible."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            fcntl.ioctl(fd, BLKFLSBUF, 0)
            return True
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EACCES, errno.ENOTTY, errno.EINVAL):
                return False
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            return True
        except OSError:
            return False
    finally:
        os.close(fd)


def reread_hash(path: str | os.PathLike[str]) -> tuple[str, int, str]:
    """sha256 and size of the file as re-read for a verification, and how the re-read was
    made: :data:`FROM_DISK` only when it reached the device."""
    route = route_for(path)
    kind = route.kind
    if route.device is not None and not drop_device_cache(route.device):
        kind = PAGE_CACHE_POSSIBLE
    digest, size = durable.hash_dropping_cache(path)
    return digest, size, kind
