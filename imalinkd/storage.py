"""Storage roots: the ``config.json`` marker, session directory names, and finding roots.

A directory is a storage root if and only if it holds a valid marker (DESIGN §2). The marker
carries the root's identity (``storage_id``), which never changes, so an archive drive is
recognised wherever it is mounted.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psutil

from imalinkd import drivefile, durable
from imalinkd.errors import MarkerError, StorageError, StorageNotWritableError

MARKER = "config.json"
FORMAT = "imalink-storage"
FORMAT_VERSION = 1
MAX_MARKER_BYTES = 1 << 20  # a marker is a few hundred bytes
SESSION_DIR_RE = re.compile(r"^(\d{8})_import_(.+)_([0-9a-f]{8})$")
PSEUDO_FS = {
    "proc", "sysfs", "cgroup", "cgroup2", "devpts", "devtmpfs", "mqueue", "securityfs",
    "debugfs", "tracefs", "pstore", "bpf", "autofs", "hugetlbfs", "configfs", "fusectl",
    "binfmt_misc", "efivarfs", "nsfs", "rpc_pipefs", "selinuxfs", "overlay", "squashfs",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(ts: datetime | None) -> str | None:
    """ISO 8601 UTC with ``Z``, as every timestamp imalinkd makes."""
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str | None) -> datetime | None:
    if not text:
        return None
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class Marker:
    storage_id: str
    label: str
    created_at: str
    format_version: int = FORMAT_VERSION

    def as_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "storage_id": self.storage_id,
            "label": self.label,
            "created_at": self.created_at,
        }


def read_marker(root: str | os.PathLike[str]) -> Marker | None:
    """The root's marker, None when there is no ``config.json`` at all.

    Raises MarkerError (naming the file) when one exists but is not a valid marker."""
    path = os.path.join(root, MARKER)
    try:
        raw = drivefile.read_regular(path, MAX_MARKER_BYTES)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise MarkerError(path=path, message=e.strerror or str(e)) from None
    try:
        data = drivefile.load_json(raw)
    except ValueError as e:
        raise MarkerError(path=path, message=f"not readable JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise MarkerError(path=path, message=f"'format' is not {FORMAT!r}")
    try:
        sid = str(uuid.UUID(str(data.get("storage_id"))))
    except ValueError:
        raise MarkerError(path=path, message=f"storage_id {data.get('storage_id')!r} is not a UUID") from None
    version = data.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise MarkerError(path=path, message=f"format_version {version!r} is newer than this imalinkd reads (up to "
                                                  f"{FORMAT_VERSION}); the archive was written by a later imalinkd: "
                                                  "upgrade imalinkd to use it (docs/format.md)")
    label = data.get("label") or ""
    return Marker(storage_id=sid, label=str(label), created_at=str(data.get("created_at") or ""), format_version=version)


def init_storage(root: str | os.PathLike[str], label: str | None = None) -> Marker:
    """Make ``root`` a storage root (idempotent: an existing valid marker is returned)."""
    root = os.fspath(root)
    existing = read_marker(root) if os.path.isdir(root) else None
    if existing is not None:
        return existing
    if os.path.lexists(root) and not os.path.isdir(root):
        raise StorageNotWritableError(path=root, message="it exists and is not a directory")
    try:
        durable.make_dirs(root)
    except OSError as e:
        raise StorageNotWritableError(path=root, message=e.strerror or str(e)) from None
    marker = Marker(
        storage_id=str(uuid.uuid4()),
        label=label if label is not None else (os.path.basename(root.rstrip("/")) or "archive"),
        created_at=iso(utcnow()) or "",
    )
    try:
        if not durable.create_json_exclusive(os.path.join(root, MARKER), marker.as_json()):
            # another importer made this a root a moment ago: its identity wins
            existing = read_marker(root)
            if existing is None:
                raise MarkerError(path=os.path.join(root, MARKER), message="vanished while being created")
            return existing
    except OSError as e:
        raise StorageNotWritableError(path=root, message=e.strerror or str(e)) from None
    return marker


def clean_description(text: str | None) -> str:
    """DESIGN §2: ``[^\\w\\-]`` → ``_``, at most 50 characters, ``session`` when empty."""
    cleaned = re.sub(r"[^\w\-]", "_", text or "")[:50]
    return cleaned if cleaned.strip("_") else "session"


def session_dir_name(started_at: datetime, description: str | None, session_uuid: str) -> str:
    return f"{started_at.astimezone(timezone.utc):%Y%m%d}_import_{clean_description(description)}_{session_uuid.replace('-', '')[:8]}"


def is_session_dir_name(name: str) -> bool:
    return SESSION_DIR_RE.match(name) is not None


def mount_points() -> list[str]:
    """Real mounted file systems (pseudo file systems left out), from the kernel's table."""
    out = []
    for part in psutil.disk_partitions(all=True):
        if part.fstype in PSEUDO_FS or part.fstype.startswith("cgroup"):
            continue
        out.append(part.mountpoint)
    return out


@dataclass(frozen=True)
class FoundRoot:
    path: str
    marker: Marker


def claims_to_be_marker(path: str) -> bool:
    """Does ``path`` say it is a storage marker (``format`` = ``imalink-storage``), valid or
    not? A symlink is not followed: a marker must live on the drive."""
    try:
        data = drivefile.load_json(drivefile.read_regular(path, MAX_MARKER_BYTES))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def find_storage_roots(base: str, depth: int = 2, errors: list[str] | None = None,
                       claimed: list[str] | None = None) -> list[FoundRoot]:
    """Storage roots at ``base`` or up to ``depth`` directory levels below it.

    Symlinks are not followed and no other file system is entered (a mount below ``base``
    is examined on its own). Invalid markers are reported in ``errors``, not raised; the
    directories whose invalid marker still claims the format go into ``claimed`` (a
    damaged archive is still an archive, to be reindexed and reported)."""
    found: list[FoundRoot] = []
    try:
        base_dev = os.lstat(base).st_dev
    except OSError:
        return found

    def visit(path: str, level: int) -> None:
        try:
            marker = read_marker(path)
        except MarkerError as e:
            if errors is not None:
                errors.append(str(e))
            if claimed is not None and claims_to_be_marker(os.path.join(path, MARKER)):
                claimed.append(path)
                return
            marker = None
        if marker is not None:
            found.append(FoundRoot(path, marker))
            return  # a root's session directories are never roots themselves
        if level >= depth:
            return
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            try:
                if entry.stat(follow_symlinks=False).st_dev != base_dev:
                    continue
            except OSError:
                continue
            visit(entry.path, level + 1)

    visit(base, 0)
    return found


def scan_all_mounts(depth: int = 2, extra: list[str] | None = None, errors: list[str] | None = None,
                    allow_fuse: bool = False) -> list[FoundRoot]:
    """Every reachable storage root: on any mounted file system (only those believed:
    :mod:`imalinkd.trust`), plus the ``extra`` paths named explicitly."""
    from imalinkd import trust

    seen: set[str] = set()
    out: list[FoundRoot] = []
    bases = [(base, False) for base in extra or []] + [(base, True) for base in mount_points()]
    for base, searched in bases:
        roots = find_storage_roots(base, depth, errors)
        for found in trust.believed(roots, allow_fuse, lambda f: f.path) if searched else roots:
            real = os.path.realpath(found.path)
            if real not in seen:
                seen.add(real)
                out.append(found)
    return out


def check_writable(root: str, shown: str | None = None) -> None:
    """Preflight: can we create, fsync and delete a file in ``root``? (``shown``: the path
    to name in the error, when ``root`` is a path through a handle.)"""
    probe = os.path.join(root, f".imalinkd-probe-{uuid.uuid4().hex}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"probe")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.unlink(probe)
    except OSError as e:
        try:
            os.unlink(probe)
        except OSError:
            pass
        raise StorageNotWritableError(path=shown or root, message=e.strerror or str(e)) from None


def disk_free(path: str) -> tuple[int, int]:
    """(free bytes for us, total bytes) of the file system holding ``path``."""
    usage = psutil.disk_usage(path)
    return usage.free, usage.total


def resolve_session_dir(root: str, name: str) -> Path:
    """The session directory inside ``root``, refusing names that could leave it."""
    if not is_session_dir_name(name) or "/" in name:
        raise StorageError(path=os.path.join(root, name), message="not a session directory name")
    return Path(root) / name
