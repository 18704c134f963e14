"""Where archives and sessions are now: live paths resolved at run time, never stored.

The catalog remembers each storage root by its ``storage_id`` and, for information, the
path it was last seen at. Every question "where is this session's directory?" is answered
afresh: the configured root if its marker has the right identity, else the last-seen path
if the marker there still matches, else a scan of the mounted file systems. An archive that
is unplugged makes its sessions *inaccessible*: that is a state, not an error, and nothing
in the catalog is deleted because of it.

Nothing here follows a symbolic link inside an archive: a session directory, ``files/`` and
every directory below it must be real directories for a file to count as present. A hostile
drive therefore cannot make imalinkd stat, count or serve a file outside itself.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import Iterable

import structlog
from sqlalchemy import select

from imalinkd import storage, trust
from imalinkd.catalog import Catalog, Image, ImportSession, SessionCopy, StorageRoot, find_session, record_root_path
from imalinkd.errors import MarkerError, StorageError

log = structlog.get_logger(__name__)


# --- finding roots --------------------------------------------------------------------------


def discover_roots(base: str, depth: int = 2) -> tuple[list[storage.FoundRoot], list[tuple[str, str]]]:
    """Storage roots at ``base`` or up to ``depth`` directory levels below it, and the
    markers found invalid there as ``(path, reason)``.

    Same rules as :func:`imalinkd.storage.find_storage_roots` (no symlink is followed, no
    other file system entered, a root's own directories are not searched), but an invalid
    marker is returned with its file name so that callers can report it."""
    found: list[storage.FoundRoot] = []
    rejected: list[tuple[str, str]] = []
    try:
        base_dev = os.lstat(base).st_dev
    except OSError:
        return found, rejected

    def visit(path: str, level: int) -> None:
        try:
            marker = storage.read_marker(path)
        except MarkerError as e:
            rejected.append((str(e.fields.get("path") or os.path.join(path, storage.MARKER)), str(e)))
            return  # a directory with a broken marker is not searched further either
        if marker is not None:
            found.append(storage.FoundRoot(path, marker))
            return
        if level >= depth:
            return
        try:
            entries = sorted(os.scandir(path), key=lambda e: e.name)
        except OSError:
            return
        for entry in entries:
            if entry.name.startswith(".") or storage.is_session_dir_name(entry.name):
                continue
            try:
                if not entry.is_dir(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_dev != base_dev:
                    continue
            except OSError:
                continue
            visit(entry.path, level + 1)

    visit(os.path.abspath(base), 0)
    return found, rejected


def marker_id_at(path: str | None) -> str | None:
    """The storage_id of the marker at ``path``; None when there is none or it is invalid."""
    if not path:
        return None
    try:
        marker = storage.read_marker(path)
    except (MarkerError, OSError):
        return None
    return marker.storage_id if marker else None


@dataclass
class _Scan:
    """Results of one scan of the mounted file systems, shared by the lookups of one call."""

    depth: int
    allow_fuse: bool = False
    roots: list[storage.FoundRoot] | None = None

    @classmethod
    def of(cls, config) -> "_Scan":
        return cls(config.storage.search_depth, config.storage.allow_fuse)

    def all(self) -> list[storage.FoundRoot]:
        if self.roots is None:
            seen: set[tuple[int, int]] = set()
            self.roots = []
            for mount in storage.mount_points():
                for found in trust.believed(discover_roots(mount, self.depth)[0], self.allow_fuse, lambda f: f.path):
                    try:
                        st = os.stat(found.path)
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) not in seen:
                        seen.add((st.st_dev, st.st_ino))
                        self.roots.append(found)
        return self.roots


def _configured_root(config) -> str | None:
    root = config.storage_root
    return os.fspath(root) if root is not None else None


def resolve_root(config, catalog: Catalog, storage_id: str | None, _scan: _Scan | None = None) -> str | None:
    """The path where the storage root ``storage_id`` is reachable now, or None.

    Looks, in order, at the configured ``[storage] root``, the catalog's last-seen path and
    every mounted file system (up to ``[storage] search_depth`` below each mount point). A
    marker must carry ``storage_id`` to count: a different drive mounted at the old path is
    not mistaken for the archive. When the root is found somewhere new, the catalog's
    last-seen path is brought up to date (for information only)."""
    if not storage_id:
        return None
    configured = _configured_root(config)
    if configured and marker_id_at(configured) == storage_id:
        return configured
    with catalog.session() as s:
        row = s.scalar(select(StorageRoot).where(StorageRoot.storage_id == storage_id))
        last = row.last_seen_path if row is not None else None
    if last and marker_id_at(last) == storage_id:
        return last
    scan = _scan or _Scan.of(config)
    for found in scan.all():
        if found.marker.storage_id == storage_id:
            _remember_path(catalog, found.path, found.marker)
            return found.path
    return None


def _remember_path(catalog: Catalog, path: str, marker: storage.Marker) -> None:
    try:
        with catalog.session() as s:
            row = s.scalar(select(StorageRoot).where(StorageRoot.storage_id == marker.storage_id))
            now = storage.utcnow()
            if row is None:
                s.add(StorageRoot(storage_id=marker.storage_id, label=marker.label, last_seen_path=path,
                                  first_seen_at=now, last_seen_at=now))
            elif row.last_seen_path != path:
                row.last_seen_path = path
                row.last_seen_at = now
            record_root_path(s, marker.storage_id, path, now)
    except Exception as e:  # information only: a busy or read-only catalog must not fail a lookup
        log.debug("last_seen_path_not_recorded", storage_id=marker.storage_id, error=str(e))


# --- sessions -------------------------------------------------------------------------------


def _session_row(catalog: Catalog, session_row) -> ImportSession:
    if isinstance(session_row, ImportSession):
        return session_row
    with catalog.session() as s:
        return find_session(s, session_row)


@dataclass(frozen=True)
class KnownCopy:
    storage_id: str
    directory_name: str
    home: bool


def known_copies(catalog: Catalog, row: ImportSession) -> list[KnownCopy]:
    """Every place the session has been seen: its home root first, then replicas."""
    out: list[KnownCopy] = []
    if row.storage_id and row.storage_directory_name:
        out.append(KnownCopy(row.storage_id, row.storage_directory_name, True))
    with catalog.session() as s:
        copies = s.scalars(select(SessionCopy).where(SessionCopy.session_id == row.id).order_by(SessionCopy.id)).all()
    for c in copies:
        if not any(k.storage_id == c.storage_id for k in out):
            out.append(KnownCopy(c.storage_id, c.storage_directory_name, c.storage_id == row.storage_id))
    return out


def is_real_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _copy_dir(root: str | None, name: str) -> str | None:
    if root is None or not storage.is_session_dir_name(name):
        return None
    path = os.path.join(root, name)
    return path if is_real_dir(path) else None


def session_path(config, catalog: Catalog, session_row, _scan: _Scan | None = None) -> str | None:
    """Absolute path of the session's directory now (home root first, then replicas), or
    None when no copy is reachable. A session directory that is a symlink never counts."""
    row = _session_row(catalog, session_row)
    scan = _scan or _Scan.of(config)
    for copy in known_copies(catalog, row):
        found = _copy_dir(resolve_root(config, catalog, copy.storage_id, scan), copy.directory_name)
        if found:
            return found
    return None


class SafeTree:
    """Stat files below ``base`` without following any symlink on the way.

    ``size(rel)`` is the size of the regular file ``base/rel`` when every directory between
    ``base`` and it is a real directory, else None. Directory checks are cached, so a tree
    of many files costs about one ``lstat`` per file."""

    def __init__(self, base: str) -> None:
        self.base = base
        self._dirs: dict[str, bool] = {"": is_real_dir(base)}

    def _dir_ok(self, rel_dir: str) -> bool:
        ok = self._dirs.get(rel_dir)
        if ok is None:
            parent = rel_dir.rpartition("/")[0]
            ok = self._dir_ok(parent) and is_real_dir(os.path.join(self.base, rel_dir))
            self._dirs[rel_dir] = ok
        return ok

    def path(self, rel: str) -> str | None:
        if not rel or rel.startswith("/") or "\x00" in rel or any(p in ("", ".", "..") for p in rel.split("/")):
            return None
        if not self._dir_ok(rel.rpartition("/")[0]):
            return None
        return os.path.join(self.base, rel)

    def size(self, rel: str) -> int | None:
        full = self.path(rel)
        if full is None:
            return None
        try:
            st = os.lstat(full)
        except OSError:
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None


def _legacy_base(row: ImportSession) -> str | None:
    src = row.original_source_path
    return src if src and os.path.isabs(src) else None


def file_path(config, catalog: Catalog, session_row, image: Image, _scan: _Scan | None = None) -> str | None:
    """Absolute path of an image's bytes now, or None when they are not reachable (drive
    away, file gone, or reached only through a symlink). For a legacy session (files
    catalogued in place) that is the file at its original location."""
    row = _session_row(catalog, session_row)
    if not row.copy_files:
        base = _legacy_base(row)
        tree = SafeTree(base) if base else None
        rel = image.original_import_path
    else:
        sdir = session_path(config, catalog, row, _scan)
        tree = SafeTree(os.path.join(sdir, "files")) if sdir else None
        rel = image.storage_relative_path
    if tree is None or not rel or tree.size(rel) is None:
        return None
    return tree.path(rel)


def _count_present(tree: SafeTree, items: Iterable[tuple[str | None, int]]) -> int:
    return sum(1 for rel, size in items if rel and tree.size(rel) == size)


def storage_status(config, catalog: Catalog, session_row) -> dict:
    """The seed's storage-status object at the live path, plus every known copy.

    ``storage_accessible`` is false (not an error) when no copy is reachable. For a legacy
    session (``copy_files`` false) the files are counted where they were catalogued,
    ``storage_path`` is that source directory and ``manifest_path`` the session directory
    on the storage root."""
    row = _session_row(catalog, session_row)
    scan = _Scan.of(config)
    with catalog.session() as s:
        images = s.execute(
            select(Image.storage_relative_path, Image.original_import_path, Image.file_size).where(Image.session_id == row.id)
        ).all()
    copies = []
    first: str | None = None
    roots: dict[str, str | None] = {}
    for copy in known_copies(catalog, row):
        root = resolve_root(config, catalog, copy.storage_id, scan)
        roots[copy.storage_id] = root
        sdir = _copy_dir(root, copy.directory_name)
        entry = {
            "storage_id": copy.storage_id,
            "label": _label(catalog, copy.storage_id),
            "home": copy.home,
            "storage_directory_name": copy.directory_name,
            "root_path": root,
            "path": sdir,
            "accessible": sdir is not None,
        }
        if sdir is not None and row.copy_files:
            entry["files_accessible"] = _count_present(SafeTree(os.path.join(sdir, "files")),
                                                       ((i.storage_relative_path, i.file_size) for i in images))
            if first is None:
                first = sdir
        copies.append(entry)
    status = {
        "import_session_id": row.storage_uuid,
        "storage_directory_name": row.storage_directory_name,
        "storage_id": row.storage_id,
        "copy_status": row.copy_status,
        "copy_files": bool(row.copy_files),
        "legacy": not row.copy_files,
        "missing": bool(row.missing),
        "total_files": len(images),
        "verification": row.verification,
        "readback": row.readback,
        "copies": copies,
    }
    if row.copy_files:
        accessible = next((c.get("files_accessible", 0) for c in copies if first and c["path"] == first), 0)
        status.update(storage_accessible=first is not None, storage_path=first, files_accessible=accessible)
    else:
        base = _legacy_base(row)
        reachable = base is not None and is_real_dir(base)
        status.update(
            storage_accessible=reachable,
            storage_path=base if reachable else None,
            files_accessible=_count_present(SafeTree(base), ((i.original_import_path, i.file_size) for i in images)) if reachable else 0,
            manifest_path=next((c["path"] for c in copies if c["path"]), None),
        )
    home_root = roots.get(row.storage_id or "")
    if home_root:
        status["storage_health"] = root_health(config, home_root, catalog, row.storage_id)
    return status


def _label(catalog: Catalog, storage_id: str) -> str | None:
    with catalog.session() as s:
        return s.scalar(select(StorageRoot.label).where(StorageRoot.storage_id == storage_id))


# --- storage health and locations -----------------------------------------------------------


def root_health(config, path: str, catalog: Catalog | None = None, storage_id: str | None = None) -> dict:
    """Free space, utilisation and last verification of the root at ``path``.

    ``low_space`` is true when free space is under ``[storage] free_space_warning_percent``
    of the file system; a ``storage_low_space`` warning event is logged then."""
    try:
        free, total = storage.disk_free(path)
    except OSError:
        free, total = None, None
    used_pct = round(100.0 * (total - free) / total, 1) if free is not None and total else None
    low = bool(total) and free is not None and 100.0 * free / total < config.storage.free_space_warning_percent
    last_verified = None
    if catalog is not None and storage_id:
        with catalog.session() as s:
            last_verified = s.scalar(select(StorageRoot.last_verified_at).where(StorageRoot.storage_id == storage_id))
    if low:
        log.warning("storage_low_space", path=path, storage_id=storage_id, free_bytes=free, total_bytes=total,
                    threshold_percent=config.storage.free_space_warning_percent)
    return {
        "free_bytes": free,
        "total_bytes": total,
        "utilisation_percent": used_pct,
        "last_verified_at": storage.iso(last_verified),
        "low_space": low,
    }


def _mount_point_of(path: str) -> str | None:
    best = None
    for m in storage.mount_points():
        if path == m or path.startswith(m.rstrip("/") + "/"):
            if best is None or len(m) > len(best):
                best = m
    return best


def _session_dirs(root: str) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(root) if storage.is_session_dir_name(e.name) and e.is_dir(follow_symlinks=False))
    except OSError:
        return []


def scan_locations(config, catalog: Catalog) -> list[dict]:
    """Every reachable storage root (DESIGN §6): on any mounted file system, the configured
    root and the catalog's last-seen paths. ``sessions`` lists the session directory names
    found on the drive; the health fields describe its file system."""
    candidates: list[storage.FoundRoot] = []
    configured = _configured_root(config)
    extra = [configured] if configured else []
    with catalog.session() as s:
        extra += [p for p in s.scalars(select(StorageRoot.last_seen_path)) if p]
    for p in extra:
        try:
            marker = storage.read_marker(p)
        except (MarkerError, OSError):
            marker = None
        if marker is not None:
            candidates.append(storage.FoundRoot(p, marker))
    candidates += _Scan.of(config).all()
    seen: set[tuple[int, int]] = set()
    out = []
    for found in candidates:
        try:
            st = os.stat(found.path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        names = _session_dirs(found.path)
        with catalog.session() as s:
            catalogued = s.scalar(select(StorageRoot.id).where(StorageRoot.storage_id == found.marker.storage_id)) is not None
        out.append({
            "path": found.path,
            "session_count": len(names),
            "sessions": names,
            "storage_id": found.marker.storage_id,
            "label": found.marker.label,
            "mount_point": _mount_point_of(os.path.realpath(found.path)),
            "catalogued": catalogued,
            **root_health(config, found.path, catalog, found.marker.storage_id),
        })
    return out


def update_storage_path(catalog: Catalog, session_ref, new_path: str) -> dict:
    """Manual override: tell the catalog where a session's archive is now.

    ``new_path`` is the storage root (the directory holding ``config.json``) or the
    session directory itself. Its marker must hold the session's storage_id (or it must
    hold the session's directory: a replica), and the session directory must be there;
    then the path is recorded as the root's last-seen path, which :func:`resolve_root`
    tries before scanning mounts. Raises StorageError saying what does not match."""
    new_path = os.path.abspath(os.fspath(new_path))
    with catalog.session() as s:
        row = find_session(s, session_ref)
        root = new_path
        if os.path.basename(new_path.rstrip("/")) == row.storage_directory_name or storage.is_session_dir_name(os.path.basename(new_path)):
            root = os.path.dirname(new_path.rstrip("/"))
        try:
            marker = storage.read_marker(root)
        except MarkerError as e:
            raise StorageError(path=new_path, message=str(e)) from None
        if marker is None:
            raise StorageError(path=new_path, message=f"no storage marker {storage.MARKER} there (nor in its parent for a session directory)")
        names = [c.storage_directory_name for c in row.copies] + [row.storage_directory_name or ""]
        sdir = next((os.path.join(root, n) for n in names if n and _copy_dir(root, n)), None)
        if sdir is None:
            raise StorageError(path=root, message=f"session {row.storage_uuid} ({row.storage_directory_name}) is not in this storage root")
        if marker.storage_id != row.storage_id and not any(c.storage_id == marker.storage_id for c in row.copies):
            s.add(SessionCopy(session_id=row.id, storage_id=marker.storage_id,
                              storage_directory_name=os.path.basename(sdir), last_seen_at=storage.utcnow()))
        sr = s.scalar(select(StorageRoot).where(StorageRoot.storage_id == marker.storage_id))
        now = storage.utcnow()
        if sr is None:
            s.add(StorageRoot(storage_id=marker.storage_id, label=marker.label, last_seen_path=root,
                              first_seen_at=now, last_seen_at=now))
        else:
            sr.last_seen_path = root
            sr.last_seen_at = now
        if marker.storage_id == row.storage_id and row.missing:
            row.missing = False
        log.info("storage_path_updated", session_id=row.storage_uuid, storage_id=marker.storage_id, path=root)
        return {
            "success": True,
            "accessible": True,
            "import_session_id": row.storage_uuid,
            "storage_id": marker.storage_id,
            "root_path": root,
            "storage_path": sdir,
        }
