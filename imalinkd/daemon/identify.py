"""Looking at a mounted filesystem: who it is (blkid) and what it holds (a camera layout,
a marker).

These functions read the OS and decide nothing; ``policy`` turns their answers into
decisions. ``blkid`` is used rather than udev's database because it works without udev and
for FUSE mounts, whose mountinfo source is the block device itself (``/dev/loop3``, fstype
``fuseblk``).
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import structlog

from imalinkd import cardlayout, storage, trust

log = structlog.get_logger()


@dataclass(frozen=True)
class CardIdentity:
    """What identifies a card across insertions: its filesystem UUID and volume label.
    Cards get reformatted (new UUID, same label), so "already imported" is decided by
    content, not by this; it names the card in logs, sessions and resume lookups."""

    fs_uuid: str | None
    label: str | None

    @property
    def name(self) -> str:
        return self.label or self.fs_uuid or "unnamed card"


def parse_blkid_export(text: str) -> dict[str, str]:
    """``KEY=value`` lines of ``blkid -o export`` as a dict (values may hold '=')."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


class ExaminationFailed(Exception):
    """Looking at a mount failed for a reason that may pass (no file descriptor left,
    ``blkid`` hung or could not start): the answer is unknown, not "no", and the mount is
    to be examined again (see ``imalinkd.daemon.examine``)."""


# errnos saying "not now" rather than "not so": the process or the system is short of
# descriptors or memory, or a call was interrupted
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EAGAIN, errno.ENOBUFS, errno.EINTR})


def probe_filesystem(device: str, *, timeout: float = 10.0) -> tuple[str | None, str | None, str | None]:
    """``(fs_uuid, label, fstype)`` of the filesystem on ``device``, each None when unknown.

    Anything that is not a block device (``tmpfs``, a network share, a missing node)
    yields ``(None, None, None)`` without running blkid. Reading a device's superblock
    needs root (or the disk group); without it blkid says nothing and neither do we.
    Raises ExaminationFailed when blkid cannot be run (EMFILE, …) or does not answer
    within ``timeout`` seconds: the identity is then unknown, not absent.
    """
    try:
        if not stat.S_ISBLK(os.stat(device).st_mode):
            return None, None, None
    except (OSError, ValueError):
        return None, None, None
    # -p probes the superblock itself. blkid's cache (/run/blkid) would answer for the
    # device name, and a loop or USB device name is reused for another filesystem all the
    # time: a stale entry would give a card another card's identity. Without the right to
    # read the device, -p says nothing and the cache is the best there is.
    for args in (["-p", "-o", "export"], ["-o", "export"]):
        try:
            proc = subprocess.run(
                ["blkid", *args, device], capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ExaminationFailed(f"blkid {device}: {e}") from None
        info = parse_blkid_export(proc.stdout)
        if info.get("TYPE") or info.get("UUID"):
            return info.get("UUID") or None, info.get("LABEL") or None, info.get("TYPE") or None
    return None, None, None


def has_dcim(mount_point: Path) -> bool:
    """Whether the mount's top level holds a ``DCIM`` directory (any case), not counting a
    symlink named DCIM, which could lead anywhere. Raises ExaminationFailed when the
    directory could not be read for a passing reason (``TRANSIENT_ERRNOS``)."""
    try:
        with os.scandir(mount_point) as it:
            for entry in it:
                if entry.name.lower() == "dcim" and entry.is_dir(follow_symlinks=False):
                    return True
    except OSError as e:
        if e.errno in TRANSIENT_ERRNOS:
            raise ExaminationFailed(f"reading {mount_point}: {e.strerror}") from None
        return False
    return False


def is_camera_card(mount_point: Path) -> bool:
    """A camera card is a filesystem with a camera's layout: DCIM/ at its root (the DCF
    standard), a video camera's tree (Sony, AVCHD, Panasonic, Canon XF, XDCAM), or camera
    media files at its top (:mod:`imalinkd.cardlayout`, docs/media.md). Raises
    ExaminationFailed as ``has_dcim`` does when the top directory cannot be read for a
    passing reason."""
    return has_dcim(mount_point) or cardlayout.camera_layout(mount_point) is not None


def find_storage_roots(mount_point: Path, depth: int, allow_fuse: bool = False) -> tuple[Path, ...]:
    """Storage roots at ``mount_point`` or up to ``depth`` directory levels below it,
    including ones whose marker is damaged (reindex then reports them by name). The walk
    stays on the mount's own filesystem and never follows symlinks. Only markers that are
    believed count (:mod:`imalinkd.trust`: a real drive's, owned by root or this service);
    the others are logged once and ignored."""
    claimed: list[str] = []
    found = [f.path for f in storage.find_storage_roots(str(mount_point), depth, claimed=claimed)]
    believed = trust.believed(found + claimed, allow_fuse)
    return tuple(sorted((Path(p) for p in believed), key=lambda p: p.parts))
