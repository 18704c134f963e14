"""The verdict (DESIGN §7–8): how many verified copies of each file exist on distinct drives,
and whether a source is safe to format.

A file's copies, from the catalog: its image's home root (the session's storage root; the
image row exists only once the file was committed and verified there) and every backup
archive that verified its own copy (:class:`ImageCopy`), for each image with the file's
sha256 and size (a duplicate's copies are those of the file it duplicates). Not counted: an
image flagged by a reindex (size on disk differs), a copy whose session directory is
missing from that drive, a copy the last scrub of that drive found damaged, missing or
unreadable. Copies on roots that share one physical drive (the same device key) count once.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from imalinkd import durable, paths, storage
from imalinkd.catalog import Catalog, FileCheck, Image, ImageCopy, ImportSession, SessionCopy, SkippedFile, StorageRoot

CHUNK = 500
SHORT_LISTED = 200  # short files named in a verdict (the count is always complete)

Key = tuple[str, int]  # (sha256, size)


def _chunks(items: list, n: int = CHUNK) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def record_copies(s: Session, session_row_id: int, copies: list[tuple[str, str]]) -> None:
    """Record verified backup copies: ``(path below files/, storage_id)`` of this session's
    images (inserted already, in this transaction or before)."""
    rels = sorted({rel for rel, _sid in copies})
    ids: dict[str, int] = {}
    for part in _chunks(rels):
        ids.update(s.execute(select(Image.storage_relative_path, Image.id).where(
            Image.session_id == session_row_id, Image.storage_relative_path.in_(part))).all())
    have = set()
    for part in _chunks(sorted(set(ids.values()))):
        have.update(s.execute(select(ImageCopy.image_id, ImageCopy.storage_id).where(ImageCopy.image_id.in_(part))).all())
    now = storage.utcnow()
    for rel, sid in copies:
        image_id = ids.get(rel)
        if image_id is not None and (image_id, sid) not in have:
            have.add((image_id, sid))
            s.add(ImageCopy(image_id=image_id, storage_id=sid, verified_at=now))


def device_of(s: Session) -> dict[str, str]:
    """storage_id → the key of the drive it was last seen on (its own id when unknown)."""
    return {sid: key or f"storage:{sid}" for sid, key in s.execute(select(StorageRoot.storage_id, StorageRoot.device_key))}


def copies_of(s: Session, keys: Iterable[Key]) -> dict[Key, set[str]]:
    """For each (sha256, size): the storage_ids holding a verified, unflagged copy now."""
    keys = set(keys)
    out: dict[Key, set[str]] = defaultdict(set)
    shas = sorted({sha for sha, _size in keys})
    homes: dict[int, tuple[Key, str, int]] = {}
    for part in _chunks(shas):
        rows = s.execute(select(Image.id, Image.sha256, Image.file_size, ImportSession.storage_id, ImportSession.id)
                         .join(ImportSession, Image.session_id == ImportSession.id)
                         .where(Image.sha256.in_(part), Image.size_mismatch.is_(False), ImportSession.copy_files.is_(True)))
        for image_id, sha, size, sid, session_id in rows:
            if (sha, size) in keys:
                homes[image_id] = ((sha, size), sid, session_id)
    if not homes:
        return out
    ids = sorted(homes)
    bad: set[tuple[int, str]] = set()
    found: list[tuple[int, str]] = []
    for part in _chunks(ids):
        bad.update(s.execute(select(FileCheck.image_id, FileCheck.storage_id).where(FileCheck.image_id.in_(part),
                                                                                      FileCheck.result != "ok")).all())
        found += s.execute(select(ImageCopy.image_id, ImageCopy.storage_id).where(ImageCopy.image_id.in_(part))).all()
    sessions = sorted({v[2] for v in homes.values()})
    gone: set[tuple[int, str]] = set()
    for part in _chunks(sessions):
        gone.update(s.execute(select(SessionCopy.session_id, SessionCopy.storage_id)
                              .where(SessionCopy.session_id.in_(part), SessionCopy.missing.is_(True))).all())
        gone.update((sid, st) for sid, st in s.execute(select(ImportSession.id, ImportSession.storage_id)
                                                       .where(ImportSession.id.in_(part), ImportSession.missing.is_(True))))
    for image_id, (key, sid, session_id) in homes.items():
        if sid and (image_id, sid) not in bad and (session_id, sid) not in gone:
            out[key].add(sid)
    for image_id, sid in found:
        key, _home, session_id = homes[image_id]
        if (image_id, sid) not in bad and (session_id, sid) not in gone:
            out[key].add(sid)
    return out


def _labels(s: Session) -> dict[str, str]:
    return {sid: label or sid for sid, label in s.execute(select(StorageRoot.storage_id, StorageRoot.label))}


def judge(s: Session, files: list[tuple[str, Key | None, str | None]], wanted: int) -> dict:
    """The verdict over ``files``: (path, key or None when it could not be read, why not).
    ``safe_to_format`` is left to the caller (a session must also be complete)."""
    found = copies_of(s, [k for _p, k, _w in files if k is not None])
    dev = device_of(s)
    labels = _labels(s)
    counts: list[int] = []
    short: list[dict] = []
    for path, key, why in files:
        held = sorted(found.get(key, set())) if key is not None else []
        n = len({dev.get(sid, f"storage:{sid}") for sid in held})
        counts.append(n)
        if n < wanted:
            item = {"path": paths.display(path), "copies": n,
                    "on": [{"storage_id": sid, "label": labels.get(sid, sid)} for sid in held]}
            if why:
                item["reason"] = why
            elif len(held) > n:
                item["reason"] = "archives on one drive count as one copy"
            short.append(item)
    return {
        "copies_verified": min(counts) if counts else 0,
        "copies_wanted": wanted,
        "files": len(files),
        "short_count": len(short),
        "short_files": short[:SHORT_LISTED],
    }


def verdict_text(v: dict) -> str:
    if v["safe_to_format"]:
        return f"safe to format: every file has {v['copies_wanted']} verified cop{'y' if v['copies_wanted'] == 1 else 'ies'} on distinct drives"
    return (f"not yet safe: {v['copies_verified']} of {v['copies_wanted']} copies"
            f" ({v['short_count']} file(s) short); keep the source")


def session_verdict(config, catalog: Catalog, row: ImportSession, status: str | None = None) -> dict:
    """The verdict of one session: every file it archived and every duplicate it counted
    (the failed files of an incomplete session make it not safe by its status)."""
    from imalinkd.sessions import effective_status

    wanted = config.storage.copies_wanted
    status = status or effective_status(row)
    with catalog.session() as s:
        files: list[tuple[str, Key | None, str | None]] = [
            (orig or rel, (sha, size), None) for rel, orig, sha, size in s.execute(
                select(Image.storage_relative_path, Image.original_import_path, Image.sha256, Image.file_size)
                .where(Image.session_id == row.id))]
        files += [(p, (sha, size), None) for p, sha, size in s.execute(
            select(SkippedFile.original_path, SkippedFile.sha256, SkippedFile.file_size)
            .where(SkippedFile.session_id == row.id, SkippedFile.duplicate_of.is_not(None), SkippedFile.sha256.is_not(None)))]
        v = judge(s, files, wanted)
    v["safe_to_format"] = bool(row.copy_files) and status == "completed" and v["short_count"] == 0 and v["files"] > 0
    v["verdict"] = verdict_text(v)
    if not row.copy_files:
        v["verdict"] = "catalogued in place: no copy was made, the source is the only one"
    elif status != "completed":
        v["verdict"] = f"not safe: the import is {status}" + (f" ({row.error})" if row.error else "")
    return v


def source_verdict(config, catalog: Catalog, source: str) -> dict:
    """``imalinkd safe SOURCE``: the verdict for any card or folder, from the catalog. The
    source is only read: a file is hashed only when the catalog has a file of its size."""
    from imalinkd.scan import scan_source

    source = os.path.abspath(source)
    scan = scan_source(source, config.import_.include, config.import_.exclude)
    wanted = config.storage.copies_wanted
    files: list[tuple[str, Key | None, str | None]] = [(sk.rel, None, sk.reason) for sk in scan.skipped if sk.error]
    with catalog.session() as s:
        sizes: set[int] = set()
        for part in _chunks(sorted({f.size for f in scan.files})):
            sizes.update(s.scalars(select(Image.file_size).where(Image.file_size.in_(part)).distinct()))
        for f in scan.files:
            if f.size not in sizes:
                files.append((f.rel, None, "not in the catalog"))
                continue
            try:
                sha, size = durable.hash_file(os.path.join(source, f.rel))
            except OSError as e:
                files.append((f.rel, None, f"unreadable: {e.strerror or e}"))
                continue
            files.append((f.rel, (sha, size), None))
        v = judge(s, files, wanted)
    v["source"] = paths.display(source)
    v["safe_to_format"] = v["short_count"] == 0 and v["files"] > 0
    v["verdict"] = verdict_text(v) if v["files"] else "nothing to judge: the source holds no file to import"
    return v


FIELDS = ("safe_to_format", "copies_verified", "copies_wanted", "short_count", "short_files", "verdict")


def session_fields(config, catalog: Catalog, row: ImportSession) -> dict:
    """The verdict's keys for a session object (``sessions --json``, ``status``, the API)."""
    v = session_verdict(config, catalog, row)
    return {k: v[k] for k in FIELDS}
