"""Event values: what the event sources report and the daemon's consumer reads.

Every event is a frozen dataclass holding plain values (strings, paths, tuples), so the
decisions made on them are pure functions that tests drive with hand-written events. Sources
only translate OS notifications into these; they never decide what to do with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class MountAppeared:
    """A filesystem is mounted at ``mount_point`` (also reported for mounts present at
    start). ``device`` is the major:minor from mountinfo, ``mount_source`` the device path
    or source string (``/dev/loop3``, ``tmpfs``)."""

    mount_point: Path
    device: str
    fstype: str
    mount_source: str
    options: str = ""


@dataclass(frozen=True)
class MountGone:
    """The mount at ``mount_point`` has disappeared (unmounted, lazily or not)."""

    mount_point: Path
    device: str


@dataclass(frozen=True)
class MountExamined:
    """What a new mount holds, found off the main thread (a hung FUSE filesystem must not
    stall the daemon): the filesystem's identity, whether it has a camera
    layout (``has_dcim``: DCIM/ or another, imalinkd.cardlayout), storage roots."""

    mount: MountAppeared
    fs_uuid: str | None
    label: str | None
    fstype: str | None
    has_dcim: bool
    storage_roots: tuple[Path, ...]


@dataclass(frozen=True)
class BlockDeviceAdded:
    """udev reports a filesystem on a block device (not necessarily mounted)."""

    device: str  # /dev/sdb1
    fs_uuid: str | None
    label: str | None
    fstype: str | None
    removable: bool


@dataclass(frozen=True)
class BlockDeviceRemoved:
    """udev reports the block device is gone."""

    device: str
    fs_uuid: str | None = None
    label: str | None = None
    fstype: str | None = None
    removable: bool = False


@dataclass(frozen=True)
class DropFileSettled:
    """One file in a drop folder is complete: closed after writing and unchanged for the
    settle time."""

    folder: Path
    path: Path


@dataclass(frozen=True)
class DropBatchSettled:
    """A drop folder has been quiet for the settle time and these files are complete. A
    burst of files arrives as one batch, and becomes one import session."""

    folder: Path
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class ReloadRequested:
    """SIGHUP: read the config again; keep the old one if the new one is bad."""


@dataclass(frozen=True)
class StopRequested:
    """SIGTERM/SIGINT: cancel running jobs, leave sessions resumable, exit."""


@dataclass(frozen=True)
class JobFinished:
    """A job thread has ended; the consumer updates its bookkeeping."""

    key: str
    outcome: str  # completed | nothing_new | failed | waiting_for_storage | cancelled
    session_uuid: str | None = None
    safe: bool | None = None  # a card's verdict: safe to format (DESIGN §8)
    verdict: str | None = None  # the verdict in words ("not yet safe: 1 of 2 copies …")
    report: object = None  # a drive job's JSON report (a catch-up's copies)


Event = (
    MountAppeared
    | MountGone
    | MountExamined
    | BlockDeviceAdded
    | BlockDeviceRemoved
    | DropFileSettled
    | DropBatchSettled
    | ReloadRequested
    | StopRequested
    | JobFinished
)


@dataclass(frozen=True)
class CameraAppeared:
    """libgphoto2 sees a camera (PTP/MTP on USB, or a ``[cameras] ports`` entry)."""

    model: str
    port: str


@dataclass(frozen=True)
class CameraGone:
    """A camera seen before is no longer there (unplugged, switched off)."""

    model: str
    port: str
