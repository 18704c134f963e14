"""Reindexing: reconcile the catalog with what the archive drives say.

The drive is the truth and the catalog a cache (DESIGN §1). Reindexing is three steps:

1. *read the drive* (:mod:`imalinkd.reading`): every session directory's manifest,
   and the size of every regular file below each ``files/``: one ``lstat`` per file, no
   hashing, no symlink followed. Whatever is hostile or damaged is rejected by name and
   the rest is read. A manifest whose size, mtime and ctime are those the catalog recorded
   when it last read it is not read again (the common case: a drive plugged in again);
   the file sizes always are, since a file can change size in place, but a session's
   images are compared with them only when the digest of its files differs from the one
   recorded (:func:`files_unchanged`). On a large known drive a helper process lists about
   half of the sessions (``reading.HELPER_FILES``, :mod:`imalinkd.walk`);
2. *plan* (:func:`plan_reindex`): a pure diff between those values and the catalog's state
   for this root, giving a :class:`ReindexPlan`;
3. *apply* (:func:`apply_plan`): one transaction with bulk inserts.

A large root goes through the three a slice of session directories at a time
(``reading.read_drive_slices``, ``reading.SLICE_BYTES``), so that memory holds one slice,
not the drive.
Reindexing never writes to the drive. A catalog deleted outright is rebuilt from the
drives: the same sessions, images, photos, skipped files and counts.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any, Iterable, Mapping

import structlog
from sqlalchemy import LargeBinary, delete, insert, select, type_coerce, update
from sqlalchemy.exc import IntegrityError

from imalinkd import devices, manifest as mf, readback, reading, storage, trust
from imalinkd.catalog import Catalog, Image, ImportSession, Photo, SessionCopy, SkippedFile, StorageRoot, media_json, upsert_storage_root
from imalinkd.catalog.bulk import RowWriter, fetch_tuples, fsdecoder, indexes_rebuilt_after, is_pysqlite, iso_column
from imalinkd.errors import StorageError
from imalinkd.locate import discover_roots, root_health
from imalinkd import shots
from imalinkd.plan import photo_key
from imalinkd.reading import (DriveSession, DriveState, KnownManifest, ManifestSignature, Progress, ReindexProgress, gc_paused,
                              read_drive_slices, read_session_dir)
from imalinkd.sessions import importer_alive
from imalinkd.walk import files_digest

try:  # the media module's choice of a shot's best file, where it has one
    from imalinkd.media import best_member
except ImportError:  # pragma: no cover
    best_member = None

log = structlog.get_logger(__name__)

# A new session's image rows are tuples: the index of the file's Photo in ``NewSession.photos``
# (or None), then these columns' values. ``copied_at`` is the manifest's text, turned into
# a datetime on the way in (:func:`_ts`).
IMAGE_COLUMNS = ("storage_relative_path", "original_import_path", "file_size", "sha256", "mtime", "copied_at",
                 "media_json", "media_error", "size_mismatch")


# What a copy records of its session directory as a reindex read it: its manifest's
# signature and the digest of its files (files_digest), either None when not to be trusted.
CopySignature = tuple[ManifestSignature | None, str | None]


# --- values read from the catalog ------------------------------------------------------------


@dataclass(frozen=True)
class CatalogCopy:
    id: int
    storage_id: str
    dir_name: str
    missing: bool
    signature: ManifestSignature | None = None
    files_digest: str | None = None


def copy_on(copies: Iterable[CatalogCopy], storage_id: str) -> CatalogCopy | None:
    """The copy among ``copies`` on the root ``storage_id``, if any (a session has one a root)."""
    return next((c for c in copies if c.storage_id == storage_id), None)


def files_unchanged(ds: DriveSession, copy: CatalogCopy | None) -> bool:
    """Whether ``ds`` is, manifest and files, what the last reindex of ``copy`` checked:
    its manifest not read again (its signature the recorded one) and the digest of its
    files the recorded one. The catalog's images then still agree with the drive as that
    reindex left them, since they change only with the manifest (an import writes both)."""
    return (ds.manifest is None and ds.files_digest is not None and copy is not None
            and copy.files_digest == ds.files_digest)


@dataclass(frozen=True)
class CatalogSession:
    id: int
    uuid: str
    storage_id: str | None
    dir_name: str | None
    missing: bool
    copy_files: bool = True
    copies: tuple[CatalogCopy, ...] = ()
    images: Mapping[str, tuple[int, int, bool]] = field(default_factory=dict)  # rel → (id, size, flagged)
    copy_status: str | None = None
    total_files: int | None = None
    active: bool = False  # an importer is writing it right now: its manifest lags the catalog


@dataclass(frozen=True)
class CatalogState:
    sessions: Mapping[str, CatalogSession]  # by session UUID


# --- the plan ---------------------------------------------------------------------------------


@dataclass
class NewSession:
    """A session to add, as rows ready for bulk insert (foreign keys by position)."""

    session: dict[str, Any]
    photos: list[dict[str, Any]]
    images: list[tuple]  # (index into photos, *IMAGE_COLUMNS): see IMAGE_COLUMNS
    skipped: list[dict[str, Any]]
    copy: dict[str, Any]  # the SessionCopy where it was seen
    note: str | None = None
    # a session taken again from the drive (its manifest moved on) keeps its catalog id,
    # and its images whose paths it still lists keep theirs: what API clients hold stays valid
    session_id: int | None = None
    image_ids: Mapping[str, int] = field(default_factory=dict)

    def image_rows(self) -> list[tuple[int | None, dict[str, Any]]]:
        """The images as (index into photos, row by column name), with datetimes."""
        rows = []
        for photo, *values in self.images:
            row = dict(zip(IMAGE_COLUMNS, values))
            row["copied_at"] = _ts(row["copied_at"])
            rows.append((photo, row))
        return rows


@dataclass
class ReindexPlan:
    storage_id: str
    new_sessions: list[NewSession] = field(default_factory=list)
    new_copies: list[dict[str, Any]] = field(default_factory=list)  # session_id, storage_id, storage_directory_name
    copies_seen: list[int] = field(default_factory=list)
    copies_missing: list[int] = field(default_factory=list)
    copies_renamed: list[tuple[int, str]] = field(default_factory=list)
    sessions_missing: list[int] = field(default_factory=list)
    sessions_back: list[int] = field(default_factory=list)
    sessions_renamed: list[tuple[int, str]] = field(default_factory=list)
    # catalogued sessions whose manifest moved on (resumed or completed elsewhere): their rows
    # are deleted and the session is added again from the manifest (in new_sessions)
    sessions_replaced: list[int] = field(default_factory=list)
    size_flags: list[tuple[int, bool]] = field(default_factory=list)  # image id → mismatch now
    replicas: list[str] = field(default_factory=list)  # session UUIDs seen here as a replica
    notes: list[tuple[str, str]] = field(default_factory=list)  # (dir name, note)
    # (manifest signature, files digest) to record: by directory name for the copies
    # inserted, by copy id for the existing copies whose recorded pair is not the one read
    signatures: dict[str, CopySignature] = field(default_factory=dict)
    signatures_changed: list[tuple[int, CopySignature]] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.new_sessions or self.sessions_replaced or self.new_copies or self.copies_missing or self.copies_renamed
                    or self.sessions_missing or self.sessions_back or self.sessions_renamed or self.size_flags
                    or self.signatures_changed)


def shot_key(files_relative: str) -> str:
    """The Photo a file belongs to: its directory and stem, the stem compared without case
    (``DCIM/100CANON/IMG_1.CR3``, ``…/img_1.jpg`` and ``…/IMG_1.CR3.xmp`` are one shot).
    The importer's own rule, so that a rebuilt catalog has the same Photos."""
    return photo_key(files_relative)


def _best_media(entries: list[mf.FileEntry]) -> dict[str, Any]:
    """The metadata of a shot: from its best member (as the importer chooses it), else from
    the first member that has any."""
    best = entries[0]
    if best_member is not None and len(entries) > 1:
        try:
            chosen = best_member([e.files_relative for e in entries])
            best = next((e for e in entries if e.files_relative == chosen), best)
        except Exception:
            pass
    return best.media or next((e.media for e in entries if e.media), None) or {}


def _int(v: Any) -> int | None:
    """An int a 32-bit INTEGER column holds (orientation, width, height), else None."""
    return v if type(v) is int and -(2**31) <= v < 2**31 else None


def _text(v: Any) -> str | None:
    return v if type(v) is str or v is None else str(v)


def _float(v: Any) -> float | None:
    return float(v) if type(v) in (int, float) else None


def _photo_row(entries: list[mf.FileEntry], key: str) -> dict[str, Any]:
    media = _best_media(entries)
    get = media.get
    taken_at = _text(get("taken_at"))
    gps = get("gps")
    gps_get = gps.get if isinstance(gps, dict) else {}.get
    return {
        "key": key, "taken_at": taken_at[:40] if taken_at else taken_at,
        "camera_make": _text(get("camera_make")), "camera_model": _text(get("camera_model")),
        "camera_serial": _text(get("camera_serial")), "lens_model": _text(get("lens_model")),
        "orientation": _int(get("orientation")), "width": _int(get("width")), "height": _int(get("height")),
        "gps_lat": _float(gps_get("lat")), "gps_lon": _float(gps_get("lon")), "gps_alt": _float(gps_get("alt")),
        # the thumbnail the manifest names for the shot (manifests before format 1.1 name none)
        "thumbnail_path": next((e.thumbnail for e in entries if e.thumbnail), None),
    }


def _ts(text: str | None) -> datetime | None:
    try:
        return storage.parse_iso(text)
    except (ValueError, TypeError):
        return None


def _valid_uuid(text: str | None) -> str | None:
    import uuid

    try:
        return str(uuid.UUID(str(text)))
    except ValueError:
        return None


def _new_session(drive: DriveState, ds: DriveSession, home: str) -> NewSession:
    m = ds.manifest
    entries = m.file_manifest
    # each file's Photo, by the index of its shot in ``photos``
    keys = [shot_key(e.storage_path[6:]) for e in entries]
    index: dict[str, int] = {}
    members: list[list[mf.FileEntry]] = []
    for e, key in zip(entries, keys):
        i = index.get(key)
        if i is None:
            index[key] = len(members)
            members.append([e])
        else:
            members[i].append(e)
    # a group with no photo or video in it is no Photo (imalinkd.shots): its files have none
    shot_index: dict[str, int | None] = {}
    photos = []
    for key, group in zip(index, members):
        if shots.is_shot(e.files_relative for e in group):
            shot_index[key] = len(photos)
            photos.append(_photo_row(group, key))
        else:
            shot_index[key] = None
    index = shot_index
    on_disk_get = ds.on_disk.get
    compare = bool(m.copy_files)  # a legacy session's files are not on the drive: nothing to compare
    images = [(index[key], e.storage_path[6:], e.original_path, e.file_size, e.sha256, e.mtime, e.copied_at,
               media_json(e.media), e.media_error, compare and on_disk_get(e.storage_path[6:]) != e.file_size)
              for e, key in zip(entries, keys)]
    skipped = [{
        "original_path": s.original_path, "reason": s.reason, "file_size": s.file_size,
        "sha256": s.sha256, "duplicate_of": s.duplicate_of,
    } for s in m.skipped]
    status, error, note = m.copy_status, m.error, None
    if status in ("in_progress", "not_started") and m.file_manifest or status == "in_progress":
        listed = {e.files_relative for e in m.file_manifest}
        extra = sum(1 for rel in ds.on_disk if rel not in listed)
        status = "failed"
        note = (f"left {m.copy_status} with no importer: {len(listed)} files in its manifest"
                + (f", {extra} more committed files on disk not yet in it" if extra else "")
                + "; marked failed, resumable")
        error = error or f"interrupted import found by reindex ({note}); run 'imalinkd resume' to finish it"
    total_size = m.total_size_bytes
    created = _ts(m.created_at) or _ts(m.copy_started_at) or storage.utcnow()
    session = {
        "storage_uuid": m.import_session_id,
        "storage_id": home,
        "storage_directory_name": ds.dir_name,
        "description": m.description,
        "created_at": created,
        "copy_status": status,
        "copy_started_at": _ts(m.copy_started_at),
        "copy_completed_at": _ts(m.copy_completed_at),
        "storage_size_mb": total_size // (1024 * 1024),
        "original_source_path": m.source_path or None,
        "source_kind": _str(m.source.get("kind"), 20),
        "source_label": _str(m.source.get("label")),
        "source_fs_uuid": _str(m.source.get("fs_uuid"), 64),
        "source_device": _str(m.source.get("device")),
        "verification": _str(m.verification, 16),
        "readback": _str(m.readback, 24),
        "copy_files": bool(m.copy_files),
        "total_files": m.total_files,
        "total_size_bytes": total_size,
        "photos_created": m.photos_created if m.copy_status == "completed" and m.photos_created else len(photos),
        "duplicates_skipped": m.duplicates_skipped,
        "skipped_count": len(m.skipped) - m.duplicates_skipped,
        "planned_files": m.total_files,
        "planned_bytes": total_size,
        "error": error,
        "missing": False,
    }
    copy = {"storage_id": drive.storage_id, "storage_directory_name": ds.dir_name, "missing": False}
    return NewSession(session, photos, images, skipped, copy, note)


def _recorded(ds: DriveSession, compared: bool) -> CopySignature:
    """What a copy records of ``ds``: the digest of its files only where the catalog's
    images were ``compared`` with them (a session at home here whose files are here), and
    only with a manifest signature."""
    return ds.signature, ds.files_digest if compared and ds.signature is not None else None


def _str(v: Any, limit: int | None = None) -> str | None:
    if v is None:
        return None
    s = str(v)
    return s[:limit] if limit else s


@gc_paused()
def plan_reindex(drive: DriveState, catalog: CatalogState) -> ReindexPlan:
    """The changes that make the catalog agree with ``drive``. Pure: plain values in, a
    plan out; nothing is read or written.

    - a session on the drive that the catalog lacks is added with its images, photos,
      skipped files and counts from its manifest (an ``in_progress`` one as ``failed``,
      since no importer is writing it: it is resumable);
    - a session the catalog has under another storage_id is a replica: a new SessionCopy;
    - a catalogued copy on this root whose directory is gone is marked missing (the session
      itself when it is its home), and un-marked when it is back;
    - an image of a session at home here whose file size on disk is not the recorded one
      (or whose file is gone) is flagged, and un-flagged when it matches again; this holds
      for the sessions whose manifest was not read again too (their sizes are read);
    - each copy here records the signature of the manifest as read (or None), and with it,
      where its images were compared with the drive's files, the digest of those files: the
      next reindex compares them again only when either has changed (:func:`files_unchanged`).

    A session whose manifest was not read (``manifest`` None) must be in ``catalog``, and
    one whose files were listed without their sizes (``on_disk`` None) must be as its copy
    here recorded them (:func:`files_unchanged`; :func:`_read_again` sees to both).
    """
    plan = ReindexPlan(drive.storage_id)
    on_drive: dict[str, DriveSession] = {ds.session_uuid: ds for ds in drive.sessions}
    for uuid_, ds in on_drive.items():
        cs = catalog.sessions.get(uuid_)
        if cs is None:
            if ds.manifest is None:
                raise ValueError(f"{ds.dir_name}: manifest not read and session {uuid_} not in the catalog")
            home = _valid_uuid(ds.manifest.storage_id) or drive.storage_id
            new = _new_session(drive, ds, home)
            plan.new_sessions.append(new)
            plan.signatures[ds.dir_name] = _recorded(ds, compared=home == drive.storage_id and new.session["copy_files"])
            if home != drive.storage_id:
                plan.replicas.append(uuid_)
            if new.note:
                plan.notes.append((ds.dir_name, new.note))
            continue
        is_home = cs.storage_id == drive.storage_id
        if is_home and ds.manifest is not None and cs.copy_files and cs.copy_status is not None and not cs.active:
            fresh = _new_session(drive, ds, drive.storage_id)
            if (fresh.session["copy_status"], fresh.session["total_files"]) != (cs.copy_status, cs.total_files):
                plan.sessions_replaced.append(cs.id)
                fresh.session_id, fresh.image_ids = cs.id, {rel: v[0] for rel, v in cs.images.items()}
                plan.new_sessions.append(fresh)
                plan.signatures[ds.dir_name] = _recorded(ds, compared=True)
                plan.notes.append((ds.dir_name, f"the manifest moved on ({cs.copy_status}, {cs.total_files} files → "
                                                 f"{fresh.session['copy_status']}, {fresh.session['total_files']} files): taken from the drive"))
                continue
        copy = copy_on(cs.copies, drive.storage_id)
        recorded = plan.signatures[ds.dir_name] = _recorded(ds, compared=is_home and cs.copy_files)
        if copy is None:
            plan.new_copies.append({"session_id": cs.id, "storage_id": drive.storage_id,
                                    "storage_directory_name": ds.dir_name, "missing": False})
            if not is_home:
                plan.replicas.append(uuid_)
        else:
            plan.copies_seen.append(copy.id)
            if copy.dir_name != ds.dir_name:
                plan.copies_renamed.append((copy.id, ds.dir_name))
            if (copy.signature, copy.files_digest) != recorded:
                plan.signatures_changed.append((copy.id, recorded))
        if is_home:
            if cs.missing:
                plan.sessions_back.append(cs.id)
            if cs.dir_name != ds.dir_name:
                plan.sessions_renamed.append((cs.id, ds.dir_name))
            if cs.copy_files and not files_unchanged(ds, copy):
                if ds.on_disk is None:
                    raise ValueError(f"{ds.dir_name}: files listed without their sizes, but not as the catalog recorded them")
                for rel, (image_id, size, flagged) in cs.images.items():
                    mismatch = ds.on_disk.get(rel) != size
                    if mismatch != flagged:
                        plan.size_flags.append((image_id, mismatch))

    def present(dir_name: str | None, uuid_: str) -> bool:
        # a directory whose manifest was rejected is still there: not missing
        return uuid_ in on_drive or (dir_name in drive.present_dirs) or uuid_.replace("-", "")[:8] in drive.present_uuid8

    for uuid_, cs in catalog.sessions.items():
        if uuid_ in on_drive:
            continue
        if cs.storage_id == drive.storage_id and not present(cs.dir_name, uuid_):
            if not cs.missing:
                plan.sessions_missing.append(cs.id)
        for c in cs.copies:
            if c.storage_id == drive.storage_id and not c.missing and not present(c.dir_name, uuid_):
                plan.copies_missing.append(c.id)
    return plan


# --- the report -------------------------------------------------------------------------------


@dataclass
class RootReport:
    path: str
    storage_id: str
    label: str
    sessions_on_drive: int = 0
    manifests_read: int = 0  # the others were unchanged since the catalog last read them
    sessions_added: int = 0
    images_added: int = 0
    photos_added: int = 0
    replicas: int = 0
    sessions_missing: int = 0
    sessions_back: int = 0
    size_mismatches: int = 0
    notes: list[tuple[str, str]] = field(default_factory=list)
    verified_files: int = 0
    readback: str | None = None  # how the verify's re-reads were made (imalinkd.readback); None: none made
    health: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "notes"}
        d["notes"] = [{"session": n, "note": t} for n, t in self.notes]
        return d


@dataclass
class ReindexReport:
    """What a reindex did. ``rejected`` lists every item refused, as ``(path, reason)``;
    ``damaged`` (with ``verify``) the files whose bytes no longer match their sha256."""

    roots: list[RootReport] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    damaged: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.rejected and not self.damaged

    def merge(self, other: "ReindexReport") -> None:
        self.roots += other.roots
        self.rejected += other.rejected
        self.damaged += other.damaged

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "roots": [r.as_json() for r in self.roots],
            "rejected": [{"path": p, "reason": r} for p, r in self.rejected],
            "damaged": [{"path": p, "reason": r} for p, r in self.damaged],
            "seconds": round(self.seconds, 3),
        }


# --- reading and writing the catalog ----------------------------------------------------------


def _chunks(items: list, n: int = 500) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _signature(size: int | None, mtime_ns: int | None, ctime_ns: int | None) -> ManifestSignature | None:
    return None if size is None or mtime_ns is None or ctime_ns is None else (size, mtime_ns, ctime_ns)


def _signature_columns(recorded: CopySignature | None) -> dict[str, int | str | None]:
    signature, digest = recorded or (None, None)
    size, mtime_ns, ctime_ns = signature or (None, None, None)
    return {"manifest_size": size, "manifest_mtime_ns": mtime_ns, "manifest_ctime_ns": ctime_ns, "files_digest": digest}


def load_known_manifests(s, storage_id: str) -> dict[str, KnownManifest]:
    """What the catalog recorded of the manifests of its copies on the root ``storage_id``,
    by directory name: the manifests ``reading.read_drive`` need not read again."""
    rows = s.execute(select(SessionCopy.storage_directory_name, ImportSession.storage_uuid, SessionCopy.manifest_size,
                            SessionCopy.manifest_mtime_ns, SessionCopy.manifest_ctime_ns, SessionCopy.files_digest,
                            ImportSession.total_files)
                     .join(ImportSession, ImportSession.id == SessionCopy.session_id)
                     .where(SessionCopy.storage_id == storage_id, SessionCopy.manifest_size.is_not(None)))
    known = {}
    for name, uuid_, size, mtime_ns, ctime_ns, digest, files in rows:
        signature = _signature(size, mtime_ns, ctime_ns)
        if signature is not None:
            known[name] = KnownManifest(uuid_, signature, digest, files or 0)
    return known


@gc_paused()
def load_catalog_state(s, drive: DriveState) -> CatalogState:
    """The catalog's sessions that concern ``drive``: at home or copied there, or present
    on it by UUID; with their copies, and images for the sessions at home here (their
    paths, sizes and flags in one query for the whole root)."""
    ids: set[int] = set(s.scalars(select(ImportSession.id).where(ImportSession.storage_id == drive.storage_id)))
    ids |= set(s.scalars(select(SessionCopy.session_id).where(SessionCopy.storage_id == drive.storage_id)))
    uuids = [ds.session_uuid for ds in drive.sessions]
    for chunk in _chunks(uuids):
        ids |= set(s.scalars(select(ImportSession.id).where(ImportSession.storage_uuid.in_(chunk))))
    if not ids:
        return CatalogState({})
    id_list = sorted(ids)
    rows = []
    copies: dict[int, list[CatalogCopy]] = defaultdict(list)
    images: dict[int, dict[str, tuple[int, int, bool]]] = defaultdict(dict)
    on_drive = {ds.session_uuid: ds for ds in drive.sessions}
    for chunk in _chunks(id_list):
        rows += s.execute(select(ImportSession.id, ImportSession.storage_uuid, ImportSession.storage_id,
                                 ImportSession.storage_directory_name, ImportSession.missing,
                                 ImportSession.copy_files, ImportSession.copy_status, ImportSession.total_files,
                                 ImportSession.importer_pid, ImportSession.importer_host)
                          .where(ImportSession.id.in_(chunk))).all()
        for c in s.execute(select(SessionCopy.id, SessionCopy.session_id, SessionCopy.storage_id,
                                  SessionCopy.storage_directory_name, SessionCopy.missing, SessionCopy.manifest_size,
                                  SessionCopy.manifest_mtime_ns, SessionCopy.manifest_ctime_ns, SessionCopy.files_digest)
                           .where(SessionCopy.session_id.in_(chunk))):
            copies[c.session_id].append(CatalogCopy(c.id, c.storage_id, c.storage_directory_name, bool(c.missing),
                                                    _signature(c.manifest_size, c.manifest_mtime_ns, c.manifest_ctime_ns),
                                                    c.files_digest))

    def unchanged(r) -> bool:
        return files_unchanged(on_drive[r.storage_uuid], copy_on(copies[r.id], drive.storage_id))

    # the images of the sessions at home here, to compare with the sizes on the drive;
    # not those whose files are as the last reindex checked them (most of them, usually)
    home_here = {r.id for r in rows if r.storage_id == drive.storage_id and r.storage_uuid in on_drive and r.copy_files
                 and not unchanged(r)}
    # every reindex of a large archive loads these: plain tuples, the paths' bytes decoded
    # here as FsPath does; only for the sessions of this slice of the drive
    decode = fsdecoder()
    for chunk in _chunks(sorted(home_here)):
        for image_id, sid, rel, size, flagged in fetch_tuples(s.connection(), select(
                Image.id, Image.session_id, type_coerce(Image.storage_relative_path, LargeBinary),
                Image.file_size, Image.size_mismatch).where(Image.session_id.in_(chunk))):
            images[sid][decode(rel)] = (image_id, size, bool(flagged))
    return CatalogState({
        r.storage_uuid: CatalogSession(r.id, r.storage_uuid, r.storage_id, r.storage_directory_name, bool(r.missing),
                                       bool(r.copy_files), tuple(copies[r.id]), images.get(r.id, {}),
                                       r.copy_status, r.total_files,
                                       r.copy_status == "in_progress" and importer_alive(r))
        for r in rows
    })


_BULK_ROWS = 5000  # below this, keeping the indexes up to date row by row is cheap enough


def _insert_new_sessions_sqlite(conn, plan: ReindexPlan, now: datetime) -> None:
    """The new sessions' rows, through the DBAPI with explicit ids for the photos.

    The first session row takes SQLite's write lock for the rest of the transaction, so
    the photo ids counted from ``max(id)`` are exactly those SQLite would give, and no
    other writer can take one meanwhile."""
    new = plan.new_sessions
    keys = list(new[0].session)
    sessions = RowWriter(conn, ImportSession.__table__, ["id", *keys])
    get = itemgetter(*keys)
    # the sessions and images that keep their ids go in first: an id given by SQLite (one
    # past the largest) could otherwise be one that a deleted row is about to take back
    ids: list[int] = [0] * len(new)
    for i in sorted(range(len(new)), key=lambda i: new[i].session_id is None):
        ids[i] = sessions.insert_one((new[i].session_id, *get(new[i].session)))
    cursor = sessions.cursor
    n_photos = sum(len(n.photos) for n in new)
    n_images = sum(len(n.images) for n in new)
    first_photo: list[int] = []  # each session's photos take consecutive ids from here
    next_id = (cursor.execute(f"SELECT max(id) FROM {Photo.__tablename__}").fetchone()[0] or 0) + 1
    for n in new:
        first_photo.append(next_id)
        next_id += len(n.photos)
    with indexes_rebuilt_after(cursor, Photo.__tablename__, n_photos >= _BULK_ROWS):
        if n_photos:
            keys = list(next(n.photos[0] for n in new if n.photos))
            get = itemgetter(*keys)
            RowWriter(conn, Photo.__table__, ["id", "session_id", *keys]).insert_many(
                [(first + i, sid, *get(p)) for sid, first, n in zip(ids, first_photo, new) for i, p in enumerate(n.photos)])
    with indexes_rebuilt_after(cursor, Image.__tablename__, n_images >= _BULK_ROWS):
        if n_images:
            writer = RowWriter(conn, Image.__table__, ["id", "session_id", "photo_id", *IMAGE_COLUMNS],
                                convert={"copied_at": iso_column(conn.dialect, Image.__table__.c.copied_at, _ts)})
            rows = [(n.image_ids.get(row[1]), sid, None if row[0] is None else first + row[0], *row[1:])
                    for sid, first, n in zip(ids, first_photo, new) for row in n.images]
            rows.sort(key=lambda row: row[0] is None)  # kept ids first, as for the sessions
            writer.insert_many(rows)
    skipped = [(sid, r) for sid, n in zip(ids, new) for r in n.skipped]
    if skipped:
        keys = list(skipped[0][1])
        get = itemgetter(*keys)
        RowWriter(conn, SkippedFile.__table__, ["session_id", *keys]).insert_many([(sid, *get(r)) for sid, r in skipped])
    rows = [{**n.copy, **_signature_columns(plan.signatures.get(n.copy["storage_directory_name"]))} for n in new]
    keys = list(rows[0])
    get = itemgetter(*keys)
    RowWriter(conn, SessionCopy.__table__, ["session_id", "last_seen_at", *keys]).insert_many(
        [(sid, now, *get(row)) for sid, row in zip(ids, rows)])


@gc_paused()
def apply_plan(s, plan: ReindexPlan, now: datetime, *, dbapi_inserts: bool = True) -> None:
    """Apply ``plan`` in the caller's transaction, with bulk inserts and updates.

    On SQLite the new sessions' rows go through the DBAPI (``dbapi_inserts``): the same
    rows as Core inserts, several times faster at 100,000 images. Other databases, or
    ``dbapi_inserts=False``, use Core inserts with ``RETURNING``."""
    conn = s.connection()
    for chunk in _chunks(plan.sessions_replaced):  # their images, photos and copies go too (ON DELETE CASCADE)
        s.execute(delete(ImportSession).where(ImportSession.id.in_(chunk)))
    if plan.new_sessions and dbapi_inserts and is_pysqlite(conn):
        _insert_new_sessions_sqlite(conn, plan, now)
    elif plan.new_sessions:
        table = ImportSession.__table__
        ids = [s.execute(insert(table).returning(table.c.id), {**n.session, "id": n.session_id}).scalar_one()
               if n.session_id is not None else None for n in plan.new_sessions]
        fresh = iter(s.execute(insert(table).returning(table.c.id, sort_by_parameter_order=True),
                               [n.session for n in plan.new_sessions if n.session_id is None]).scalars().all()
                     if None in ids else ())
        ids = [sid if sid is not None else next(fresh) for sid in ids]
        photo_rows, owners = [], []
        for sid, n in zip(ids, plan.new_sessions):
            for p in n.photos:
                photo_rows.append({**p, "session_id": sid})
            owners.append(sid)
        photo_ids = s.execute(insert(Photo.__table__).returning(Photo.__table__.c.id, sort_by_parameter_order=True), photo_rows).scalars().all() if photo_rows else []
        image_rows, skipped_rows, copy_rows = [], [], []
        offset = 0
        for sid, n in zip(ids, plan.new_sessions):
            for idx, row in n.image_rows():
                reused = n.image_ids.get(row["storage_relative_path"])
                image_rows.append({**row, "session_id": sid, "photo_id": photo_ids[offset + idx] if idx is not None else None,
                                   **({"id": reused} if reused is not None else {})})
            offset += len(n.photos)
            skipped_rows += [{**r, "session_id": sid} for r in n.skipped]
            copy_rows.append({**n.copy, "session_id": sid, "last_seen_at": now,
                              **_signature_columns(plan.signatures.get(n.copy["storage_directory_name"]))})
        for rows in ([r for r in image_rows if "id" in r], [r for r in image_rows if "id" not in r]):
            for chunk in _chunks(rows, 20000):
                s.execute(insert(Image.__table__), chunk)
        if skipped_rows:
            s.execute(insert(SkippedFile.__table__), skipped_rows)
        s.execute(insert(SessionCopy.__table__), copy_rows)
    if plan.new_copies:
        s.execute(insert(SessionCopy.__table__), [{**c, "last_seen_at": now, **_signature_columns(
            plan.signatures.get(c["storage_directory_name"]))} for c in plan.new_copies])
    if plan.signatures_changed:
        s.execute(update(SessionCopy), [{"id": cid, **_signature_columns(sig)} for cid, sig in plan.signatures_changed])
    for chunk in _chunks(plan.copies_seen):
        s.execute(update(SessionCopy).where(SessionCopy.id.in_(chunk)).values(missing=False, last_seen_at=now))
    for chunk in _chunks(plan.copies_missing):
        s.execute(update(SessionCopy).where(SessionCopy.id.in_(chunk)).values(missing=True))
    for cid, name in plan.copies_renamed:
        s.execute(update(SessionCopy).where(SessionCopy.id == cid).values(storage_directory_name=name))
    for chunk in _chunks(plan.sessions_missing):
        s.execute(update(ImportSession).where(ImportSession.id.in_(chunk)).values(missing=True))
    for chunk in _chunks(plan.sessions_back):
        s.execute(update(ImportSession).where(ImportSession.id.in_(chunk)).values(missing=False))
    for sid, name in plan.sessions_renamed:
        s.execute(update(ImportSession).where(ImportSession.id == sid).values(storage_directory_name=name))
    for flag in (True, False):
        for chunk in _chunks([i for i, f in plan.size_flags if f is flag]):
            s.execute(update(Image).where(Image.id.in_(chunk)).values(size_mismatch=flag))


def _upsert_root(s, path: str, marker: storage.Marker, health: Mapping[str, Any], now: datetime, verified: bool) -> None:
    upsert_storage_root(s, marker.storage_id, marker.label, path, now, health.get("free_bytes"), health.get("total_bytes"), verified,
                        device_key=devices.device_key(path))


# --- entry points -----------------------------------------------------------------------------


def _verify_drive(root: str, drive: DriveState, progress: Progress = None) -> tuple[int, list[tuple[str, str]], str | None]:
    """Re-hash every file the manifests list, re-read past the caches where that can be
    done; also returns how the re-reads were made (the weakest, :mod:`imalinkd.readback`)."""
    checked, damaged, how = 0, [], None
    listed = [(ds, e) for ds in drive.sessions if ds.manifest.copy_files for e in ds.manifest.file_manifest]
    report = ReindexProgress("verifying", root, "files", len(listed), 0, sum(e.file_size for _, e in listed))
    for ds, e in listed:
        if progress is not None:
            report.current_file = os.path.join(ds.dir_name, e.storage_path)
            progress(report)
        hashed, problem, kind = _verify_file(os.path.join(root, ds.dir_name, e.storage_path), e,
                                             ds.on_disk.get(e.files_relative) is not None)
        checked += hashed
        how = readback.weakest(how, kind)
        if problem is not None:
            damaged.append(problem)
        report.files_done += 1
        report.bytes_done += e.file_size
    if progress is not None:
        report.current_file = None
        progress(report)
    return checked, damaged, how


def _verify_file(path: str, e: mf.FileEntry, present: bool) -> tuple[bool, tuple[str, str] | None, str | None]:
    """Re-hash one file: whether it was hashed, the damage found as ``(path, reason)`` or
    None, and how the re-read was made."""
    if not present:
        return False, (path, "missing"), None
    try:
        digest, size, kind = readback.reread_hash(path)
    except OSError as err:
        return False, (path, f"cannot be read: {err.strerror or err}"), None
    if size != e.file_size or digest != e.sha256:
        return True, (path, f"sha256 {digest[:12]}… size {size}, manifest says {e.sha256[:12]}… size {e.file_size}"), kind
    return True, None, kind


def _same_dir(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _claimed_elsewhere(catalog: Catalog, config, found: storage.FoundRoot) -> str | None:
    """Another directory that holds a marker with the same storage_id right now: the
    catalog's last-seen path or the configured root. Two live copies of one identity
    cannot both be the archive."""
    with catalog.session() as s:
        last = s.scalar(select(StorageRoot.last_seen_path).where(StorageRoot.storage_id == found.marker.storage_id))
    candidates = [last, os.fspath(config.storage_root) if config.storage_root else None]
    for other in candidates:
        if not other or _same_dir(other, found.path):
            continue
        try:
            m = storage.read_marker(other)
        except Exception:
            continue
        if m is not None and m.storage_id == found.marker.storage_id:
            return other
    return None


def _read_again(root: str, drive: DriveState, state: CatalogState) -> DriveState:
    """``drive`` with the manifests read again of the sessions that were not read because
    the catalog knew them, but that the catalog no longer has (removed from it meanwhile),
    and the files of those listed without their sizes, if the catalog's record of them
    changed meanwhile (another reindex)."""

    def is_stale(ds: DriveSession) -> bool:
        cs = state.sessions.get(ds.session_uuid)
        if ds.manifest is None and cs is None:
            return True
        return ds.on_disk is None and not files_unchanged(ds, copy_on(cs.copies, drive.storage_id))

    stale = {ds.dir_name for ds in drive.sessions if is_stale(ds)}
    if not stale:
        return drive
    sessions = []
    for ds in drive.sessions:
        if ds.dir_name in stale:
            m, on_disk, problem, signature = read_session_dir(os.path.join(root, ds.dir_name))
            if problem is not None:  # damaged since: left out now, read (and rejected) next time
                continue
            ds = DriveSession(ds.dir_name, m, on_disk, signature, files_digest=files_digest(on_disk) if signature is not None else None)
        sessions.append(ds)
    return DriveState(drive.storage_id, drive.label, tuple(sessions), drive.present_dirs, drive.present_uuid8)


def index_root(config, catalog: Catalog, found: storage.FoundRoot, verify: bool = False,
               progress: Progress = None) -> ReindexReport:
    """Reconcile one storage root (already found and its marker valid) with the catalog.

    The manifests the catalog read before and that are unchanged since (same size, mtime
    and ctime) are not read again; every file's size is (see :func:`reading.read_session_dir`).
    ``verify`` reads every manifest, since it re-hashes every file they list. A large root
    is read and written a slice at a time, each slice in its own transaction (see
    SLICE_BYTES): a reindex stopped half-way has recorded whole sessions, and the next one
    does the rest."""
    report = ReindexReport()
    known: dict[str, KnownManifest] = {}
    if not verify:
        with catalog.session() as s:
            known = load_known_manifests(s, found.marker.storage_id)
    rr = RootReport(found.path, found.marker.storage_id, found.marker.label)
    rr.health = root_health(config, found.path)
    # the collector is held off for the whole root (see gc_paused), unless it is verified:
    # then each stage holds it off by itself, never the hours of re-hashing
    with gc_paused() if not verify else nullcontext():
        try:
            _index_slices(catalog, found, known, verify, progress, report, rr)
        except StorageError as e:  # the root cannot be listed: the catalog is left as it is
            report.rejected.append((found.path, e.fields["message"]))
    report.roots.append(rr)
    log.info("reindex_root", path=found.path, storage_id=found.marker.storage_id, sessions=rr.sessions_on_drive,
             manifests_read=rr.manifests_read, added=rr.sessions_added, images_added=rr.images_added, missing=rr.sessions_missing,
             back=rr.sessions_back, replicas=rr.replicas, rejected=len(report.rejected))
    for path, reason in report.rejected:
        log.warning("reindex_rejected", path=path, reason=reason)
    return report


def _index_slices(catalog: Catalog, found: storage.FoundRoot, known: Mapping[str, KnownManifest], verify: bool,
                  progress: Progress, report: ReindexReport, rr: RootReport) -> None:
    """Read, plan and write the root a slice at a time, adding up into ``report`` and ``rr``."""
    for drive, rejected in read_drive_slices(found.path, found.marker, known=known, progress=progress,
                                             slice_bytes=reading.SLICE_BYTES, helper_files=reading.HELPER_FILES):
        report.rejected += rejected
        if verify:
            checked, damaged, how = _verify_drive(found.path, drive, progress)
            rr.verified_files += checked
            rr.readback = readback.weakest(rr.readback, how)
            report.damaged += damaged
        if progress is not None:
            progress(ReindexProgress("writing_catalog", found.path, files_total=len(drive.sessions), files_done=len(drive.sessions)))
        drive, plan = _index_slice(catalog, found, drive, rr.health, verify)
        rr.sessions_added += len(plan.new_sessions)
        rr.images_added += sum(len(n.images) for n in plan.new_sessions)
        rr.photos_added += sum(len(n.photos) for n in plan.new_sessions)
        rr.replicas += len(plan.replicas)
        rr.sessions_missing += len(plan.sessions_missing)
        rr.sessions_back += len(plan.sessions_back)
        rr.size_mismatches += sum(1 for _, f in plan.size_flags if f) + sum(
            1 for n in plan.new_sessions for row in n.images if row[-1])
        rr.notes += plan.notes
        rr.sessions_on_drive += len(drive.sessions)
        rr.manifests_read += sum(1 for ds in drive.sessions if ds.manifest is not None)
        del drive, plan  # freed before the next slice is read


def _index_slice(catalog: Catalog, found: storage.FoundRoot, drive: DriveState, health: Mapping[str, Any],
                 verified: bool) -> tuple[DriveState, ReindexPlan]:
    """Plan and apply one slice of a root in one transaction; returns the slice as planned
    (with any manifest read again) and the plan."""
    attempts = 3
    while True:
        try:
            with catalog.session() as s:
                now = storage.utcnow()
                state = load_catalog_state(s, drive)
                drive = _read_again(found.path, drive, state)
                plan = plan_reindex(drive, state)
                apply_plan(s, plan, now)
                _upsert_root(s, found.path, found.marker, health, now, verified)
            return drive, plan
        except (IntegrityError, sqlite3.IntegrityError):
            # another process added the same session meanwhile: plan again against it
            attempts -= 1
            if attempts == 0:
                raise


def _index_found(config, catalog: Catalog, found: list[storage.FoundRoot], verify: bool, progress: Progress = None) -> ReindexReport:
    report = ReindexReport()
    by_id: dict[str, list[storage.FoundRoot]] = defaultdict(list)
    seen: set[tuple[int, int]] = set()
    for f in found:
        try:
            st = os.stat(f.path)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:  # the same directory reached twice (bind mounts)
            continue
        seen.add((st.st_dev, st.st_ino))
        by_id[f.marker.storage_id].append(f)
    for sid, claimants in by_id.items():
        if len(claimants) > 1:
            names = ", ".join(os.path.join(c.path, storage.MARKER) for c in claimants)
            for c in claimants:
                report.rejected.append((os.path.join(c.path, storage.MARKER),
                                        f"storage_id {sid} is claimed by more than one marker ({names}); none of them is indexed until only one remains"))
            continue
        f = claimants[0]
        other = _claimed_elsewhere(catalog, config, f)
        if other is not None:
            report.rejected.append((os.path.join(f.path, storage.MARKER),
                                    f"storage_id {sid} is already the archive at {other}, which is reachable too; not indexed"))
            continue
        report.merge(index_root(config, catalog, f, verify, progress))
    return report


def reindex_path(config, catalog: Catalog, path: str, verify: bool = False, progress: Progress = None) -> ReindexReport:
    """Find the storage roots at ``path`` or up to ``[storage] search_depth`` below it and
    reconcile each with the catalog. ``verify`` also re-hashes every file (slow).
    ``progress`` is called with a :class:`ReindexProgress` as each root is read.

    Hostile or damaged items are in ``report.rejected`` by name; the rest is indexed. A
    ``path`` holding no storage root is itself reported as rejected."""
    t0 = time.monotonic()
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        problem = "is not a directory" if os.path.lexists(path) else "does not exist"
        return ReindexReport(rejected=[(path, f"{problem}: give a mount point or a storage root")])
    found, bad_markers = discover_roots(path, config.storage.search_depth)
    report = ReindexReport(rejected=list(bad_markers))
    if not found and not bad_markers:
        report.rejected.append((path, f"no storage root here: no {storage.MARKER} marker at it or up to {config.storage.search_depth} levels below"))
    report.merge(_index_found(config, catalog, found, verify, progress))
    report.seconds = time.monotonic() - t0
    return report


def reindex_all(config, catalog: Catalog, verify: bool = False, progress: Progress = None) -> ReindexReport:
    """Reindex every reachable storage root: the configured root, the catalog's last-seen
    paths and every mounted file system."""
    t0 = time.monotonic()
    found: list[storage.FoundRoot] = []
    rejected: list[tuple[str, str]] = []
    bases: list[str] = []
    if config.storage_root is not None:
        bases.append(os.fspath(config.storage_root))
    with catalog.session() as s:
        bases += [p for p in s.scalars(select(StorageRoot.last_seen_path)) if p]
    for base in bases:
        try:
            marker = storage.read_marker(base)
        except Exception as e:
            rejected.append((os.path.join(base, storage.MARKER), str(e)))
            continue
        if marker is not None:
            found.append(storage.FoundRoot(base, marker))
    for mount in storage.mount_points():
        f, bad = discover_roots(mount, config.storage.search_depth)
        found += trust.believed(f, config.storage.allow_fuse, lambda r: r.path)
        rejected += bad
    report = ReindexReport(rejected=sorted(set(rejected)))
    report.merge(_index_found(config, catalog, found, verify, progress))
    report.seconds = time.monotonic() - t0
    return report
