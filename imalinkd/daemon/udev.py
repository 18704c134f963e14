"""Block devices as an event source (pyudev), and mounting cards ourselves (automount).

Only where udev runs (``/run/udev`` exists): the kernel's uevents reach us through udev's
netlink monitor already enriched with ``ID_FS_UUID``/``ID_FS_LABEL``. Without udev (a
container, a minimal system) the service says so once and relies on the mount table, which
sees every mount however it was made.

``translate`` is the whole adapter: a pyudev Device in, an event value (or None) out. The
source thread only feeds it.
"""

from __future__ import annotations

import os
import queue
import re
import select
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any, Protocol

import structlog

from imalinkd.daemon.events import BlockDeviceAdded, BlockDeviceRemoved

log = structlog.get_logger()

UDEV_RUN_DIR = Path("/run/udev")
AUTOMOUNT_OPTIONS = "ro,nosuid,nodev,noexec"


def udev_available(run_dir: Path = UDEV_RUN_DIR) -> bool:
    """Whether a udev daemon runs here: it keeps its database under /run/udev. Without it
    pyudev's monitor receives nothing at all."""
    return (run_dir / "control").exists() or (run_dir / "data").is_dir()


class DeviceLike(Protocol):
    """The part of ``pyudev.Device`` the adapter reads."""

    action: str | None
    device_node: str | None
    properties: Any

    def find_parent(self, subsystem: str, device_type: str | None = None) -> Any: ...


def _prop(device: DeviceLike, key: str) -> str | None:
    value = device.properties.get(key)
    return str(value) if value not in (None, "") else None


def is_removable(device: DeviceLike) -> bool:
    """USB mass storage, SD/MMC readers, and disks the kernel marks removable."""
    props = device.properties
    if props.get("ID_BUS") == "usb" or props.get("ID_DRIVE_FLASH_SD") == "1":
        return True
    if any(k.startswith("ID_DRIVE_MEDIA_FLASH") and props.get(k) == "1" for k in list(props)):
        return True
    if (props.get("DEVNAME") or "").startswith("/dev/mmcblk"):
        return True
    try:
        disk = device.find_parent("block", "disk") if props.get("DEVTYPE") == "partition" else device
        if disk is not None:
            removable = disk.attributes.get("removable")
            if removable is not None and bytes(removable).strip() == b"1":
                return True
    except (AttributeError, KeyError, TypeError, ValueError):
        pass
    return False


def translate(device: DeviceLike) -> BlockDeviceAdded | BlockDeviceRemoved | None:
    """One udev block event as an event value. Only devices carrying a filesystem count;
    a ``change`` with a filesystem (media inserted into a card reader) is an addition."""
    node = device.device_node or _prop(device, "DEVNAME")
    if node is None:
        return None
    action = device.action or "add"
    if action == "remove":
        return BlockDeviceRemoved(
            device=node,
            fs_uuid=_prop(device, "ID_FS_UUID"),
            label=_prop(device, "ID_FS_LABEL"),
            fstype=_prop(device, "ID_FS_TYPE"),
        )
    if action not in ("add", "change"):
        return None
    if _prop(device, "ID_FS_USAGE") != "filesystem":
        return None
    return BlockDeviceAdded(
        device=node,
        fs_uuid=_prop(device, "ID_FS_UUID"),
        label=_prop(device, "ID_FS_LABEL"),
        fstype=_prop(device, "ID_FS_TYPE"),
        removable=is_removable(device),
    )


class BlockDeviceSource:
    """Feeds BlockDeviceAdded/Removed from udev's monitor into ``events``. ``start()``
    also reports the filesystems present at that moment, so a card already in the reader
    can be automounted."""

    def __init__(self, events: "queue.Queue[object]") -> None:
        self.events = events
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._monitor: Any = None

    def start(self) -> None:
        import pyudev

        context = pyudev.Context()
        self._monitor = pyudev.Monitor.from_netlink(context)
        self._monitor.filter_by("block")
        self._monitor.start()
        self._wake_r, self._wake_w = os.pipe()
        for device in context.list_devices(subsystem="block"):
            event = translate(device)
            if isinstance(event, BlockDeviceAdded):
                self.events.put(event)
        self._thread = threading.Thread(target=self._run, name="udev", daemon=True)
        self._thread.start()
        log.info("udev_watching")

    def stop(self) -> None:
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        self._thread = None
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._monitor.fileno(), select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = poller.poll()
            if any(fd == self._wake_r for fd, _ in ready):
                return
            device = self._monitor.poll(timeout=0)
            while device is not None:
                event = translate(device)
                if event is not None:
                    self.events.put(event)
                device = self._monitor.poll(timeout=0)


# --- automount -------------------------------------------------------------------------------

UDISKS_RUN_DIR = Path("/run/udisks2")


def udisks2_running(run_dir: Path = UDISKS_RUN_DIR, proc: Path = Path("/proc")) -> bool:
    """Whether udisks2 (the desktop's automounter) manages removable drives here: its
    daemon keeps /run/udisks2 while it runs, and is a process named ``udisksd``."""
    if run_dir.is_dir():
        return True
    try:
        for comm in proc.glob("[0-9]*/comm"):
            try:
                if comm.read_text().strip() == "udisksd":
                    return True
            except OSError:
                continue
    except OSError:
        pass
    return False


def automount_choice(setting: str | bool, udev_running: bool, udisks_running: bool) -> tuple[bool, str]:
    """Whether the daemon mounts removable cards itself, and why. ``"auto"``: when udev
    reports block devices and no udisks2 would mount them already (a headless server)."""
    if setting in (True, "on"):
        return True, "automount = on"
    if setting in (False, "off"):
        return False, "automount = off"
    if not udev_running:
        return False, "no udev: cards must be mounted by someone else (see the README)"
    if udisks_running:
        return False, "udisks2 manages removable drives"
    return True, "udev runs and no udisks2 manages removable drives"


def mounted_anywhere(device: str, mountinfo: Path = Path("/proc/self/mountinfo")) -> bool:
    """Whether ``device`` is mounted already, at any path (by a desktop, by hand)."""
    from imalinkd.daemon.mountinfo import parse_mountinfo

    try:
        real = os.path.realpath(device)
        return any(os.path.realpath(e.source) == real for e in parse_mountinfo(mountinfo.read_bytes()).values()
                   if e.source.startswith("/dev/"))
    except OSError:
        return False



def automount_dir(media_root: Path, label: str | None, fs_uuid: str | None, device: str) -> Path:
    """``<state_dir>/media/<label-or-uuid>``; a name already in use gets a suffix."""
    name = re.sub(r"[^\w.\-]", "_", label or fs_uuid or Path(device).name).strip("._") or "card"
    path = media_root / name
    n = 1
    while path.exists() and os.path.ismount(path):
        n += 1
        path = media_root / f"{name}_{n}"
    return path


def mount_readonly(device: str, target: Path, fstype: str | None = None) -> None:
    """Mount ``device`` at ``target`` read-only with ``nosuid,nodev,noexec``. exFAT falls back
    to FUSE (``mount.exfat-fuse``) when the kernel has no driver for it. Raises OSError with
    mount's message when it fails."""
    target.mkdir(parents=True, exist_ok=True)
    cmd = ["mount", "-o", AUTOMOUNT_OPTIONS]
    if fstype:
        cmd += ["-t", fstype]
    proc = subprocess.run([*cmd, device, str(target)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and fstype == "exfat" and shutil.which("mount.exfat-fuse"):
        proc = subprocess.run(
            ["mount.exfat-fuse", "-o", AUTOMOUNT_OPTIONS, device, str(target)],
            capture_output=True, text=True, timeout=60,
        )
        if proc.returncode == 0:
            # exfat-fuse drops noexec; set the flags on the mount point itself.
            proc = subprocess.run(
                ["mount", "-o", f"remount,bind,{AUTOMOUNT_OPTIONS}", str(target)],
                capture_output=True, text=True, timeout=60,
            )
            if proc.returncode != 0:
                subprocess.run(["umount", str(target)], capture_output=True, timeout=60)
    if proc.returncode != 0:
        try:
            target.rmdir()
        except OSError:
            pass
        raise OSError(f"mount {device} at {target} failed: {proc.stderr.strip() or proc.returncode}")


def unmount(target: Path) -> None:
    """Unmount a directory we mounted and remove it; lazily if it is busy."""
    proc = subprocess.run(["umount", str(target)], capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, timeout=60)
    try:
        target.rmdir()
    except OSError:
        pass
