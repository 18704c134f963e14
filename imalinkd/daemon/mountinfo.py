"""The mount table as an event source: ``/proc/self/mountinfo`` → MountAppeared / MountGone.

This works everywhere (with or without udev, for FUSE mounts, for mounts made by hand or by
a desktop's automounter). The kernel flags the open mountinfo file with ``POLLPRI|POLLERR``
whenever the mount table of this process's namespace changes, so the watching thread sleeps
in ``poll()`` and uses no CPU while nothing happens; each wake-up re-reads the table and
reports the difference to the previous snapshot.

Parsing and diffing are pure functions over text and dicts; only ``MountTableSource``
touches the OS.
"""

from __future__ import annotations

import os
import queue
import re
import select
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import structlog

from imalinkd.daemon.events import MountAppeared, MountGone

log = structlog.get_logger()

MOUNTINFO = "/proc/self/mountinfo"

# Kernel and virtual filesystems: never a card, never an archive.
PSEUDO_FSTYPES = frozenset(
    {
        "proc", "sysfs", "cgroup", "cgroup2", "devpts", "devtmpfs", "mqueue", "debugfs",
        "tracefs", "securityfs", "pstore", "bpf", "autofs", "hugetlbfs", "configfs",
        "fusectl", "binfmt_misc", "efivarfs", "nsfs", "rpc_pipefs", "selinuxfs", "ramfs",
        "fuse.gvfsd-fuse", "fuse.portal", "fuse.lxcfs", "squashfs", "nfsd",
    }
)
# Mount points under these hold kernel interfaces, not files anyone imports.
PSEUDO_PREFIXES = ("/proc", "/sys", "/dev")

_OCTAL = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo (see proc(5)), paths unescaped."""

    mount_id: int
    parent_id: int
    device: str  # major:minor
    root: str  # the path inside the filesystem that is mounted here (bind mounts)
    mount_point: str
    options: str
    fstype: str
    source: str
    super_options: str


def unescape(field: bytes) -> str:
    """Undo the kernel's octal escapes (``\\040`` for a space, ``\\134`` for a backslash);
    names that are not UTF-8 come back surrogate-escaped, like ``os.fsdecode``."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def parse_mountinfo(data: bytes) -> dict[int, MountEntry]:
    """Parse the whole table, keyed by mount id (unique per mount while it exists; a
    remount at the same path gets a new id). Malformed lines are skipped."""
    table: dict[int, MountEntry] = {}
    for line in data.split(b"\n"):
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)
            entry = MountEntry(
                mount_id=int(fields[0]),
                parent_id=int(fields[1]),
                device=fields[2].decode("ascii"),
                root=unescape(fields[3]),
                mount_point=unescape(fields[4]),
                options=fields[5].decode("ascii", "replace"),
                fstype=unescape(fields[sep + 1]),
                source=unescape(fields[sep + 2]),
                super_options=fields[sep + 3].decode("ascii", "replace") if len(fields) > sep + 3 else "",
            )
        except (ValueError, IndexError):
            continue
        table[entry.mount_id] = entry
    return table


def is_interesting(entry: MountEntry, ignore_under: Iterable[str] = ()) -> bool:
    """Whether a mount can be a card or an archive at all (pseudo filesystems cannot)."""
    if entry.fstype in PSEUDO_FSTYPES or entry.fstype.startswith("cgroup"):
        return False
    for prefix in (*PSEUDO_PREFIXES, *ignore_under):
        prefix = prefix.rstrip("/")
        if entry.mount_point == prefix or entry.mount_point.startswith(prefix + "/"):
            return False
    return True


def appeared(entry: MountEntry) -> MountAppeared:
    return MountAppeared(
        mount_point=Path(entry.mount_point),
        device=entry.device,
        fstype=entry.fstype,
        mount_source=entry.source,
        options=entry.options,
    )


def diff_mounts(
    old: Mapping[int, MountEntry], new: Mapping[int, MountEntry]
) -> list[MountAppeared | MountGone]:
    """Events that turn snapshot ``old`` into ``new``: gone mounts first (deepest path
    first), then new ones (parents before children, so a card is seen after the mount it
    sits on). A mount whose options merely changed (``mount -o remount``) is no event."""
    gone = [old[k] for k in old.keys() - new.keys()]
    new_ = [new[k] for k in new.keys() - old.keys()]
    gone.sort(key=lambda e: (-e.mount_point.count("/"), e.mount_id))
    new_.sort(key=lambda e: (e.mount_point.count("/"), e.mount_id))
    events: list[MountAppeared | MountGone] = [
        MountGone(mount_point=Path(e.mount_point), device=e.device) for e in gone
    ]
    events.extend(appeared(e) for e in new_)
    return events


class MountTableSource:
    """Watches the mount table and puts MountAppeared/MountGone on ``events``.

    ``start()`` reports every interesting mount present at that moment as MountAppeared
    (DESIGN §4: a card left in the reader is examined like a new one) and returns once the
    watching thread is registered with ``poll()``, so no change after ``start()`` is missed.
    """

    def __init__(
        self,
        events: "queue.Queue[object]",
        *,
        path: str = MOUNTINFO,
        ignore_under: Iterable[str] = (),
    ) -> None:
        self.events = events
        self.path = path
        self.ignore_under = tuple(str(p) for p in ignore_under)
        self._snapshot: dict[int, MountEntry] = {}
        self._file = None
        self._wake_r, self._wake_w = -1, -1
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # Open (and so arm the change flag) before the first read: a change between the
        # read and the first poll() is then still reported by that poll().
        self._file = open(self.path, "rb", buffering=0)
        self._wake_r, self._wake_w = os.pipe()
        self._snapshot = self._read()
        for event in diff_mounts({}, self._snapshot):
            self.events.put(event)
        self._thread = threading.Thread(target=self._run, name="mount-table", daemon=True)
        self._thread.start()
        log.info("mount_table_watching", path=self.path, mounts=len(self._snapshot))

    def stop(self) -> None:
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        self._thread.join(timeout=5)
        self._thread = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        if self._file is not None:
            self._file.close()
            self._file = None

    def mounts(self) -> dict[int, MountEntry]:
        """The interesting mounts as of the last read."""
        return dict(self._snapshot)

    def _read(self) -> dict[int, MountEntry]:
        assert self._file is not None
        self._file.seek(0)
        chunks = []
        while chunk := self._file.read(65536):
            chunks.append(chunk)
        table = parse_mountinfo(b"".join(chunks))
        return {k: e for k, e in table.items() if is_interesting(e, self.ignore_under)}

    def _run(self) -> None:
        assert self._file is not None
        poller = select.poll()
        poller.register(self._file.fileno(), select.POLLPRI | select.POLLERR)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = poller.poll()  # no timeout: idle means asleep
            if any(fd == self._wake_r for fd, _ in ready):
                return
            try:
                new = self._read()
            except OSError as e:  # should not happen for procfs; keep watching
                log.warning("mount_table_read_failed", error=str(e))
                continue
            for event in diff_mounts(self._snapshot, new):
                self.events.put(event)
            self._snapshot = new
