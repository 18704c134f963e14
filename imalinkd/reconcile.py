"""Resume's first step: the catalog and the manifest made to agree with what the session's
``files/`` holds, and the source files still to copy found by content, not by name."""

from __future__ import annotations

import os

import structlog
from sqlalchemy import select

from imalinkd import durable, paths, readback, storage
from imalinkd.catalog import Catalog, Image, ImportSession
from imalinkd.manifest import FileEntry, SessionManifest, SkippedEntry
from imalinkd.scan import ScanResult, SourceFile

log = structlog.get_logger()


def reconcile(catalog: Catalog, row_id: int, session_dir: str, manifest: SessionManifest, source: str, scan: ScanResult) -> tuple[list[SourceFile], dict[str, str]]:
    """Make catalog and manifest agree with the disk; return the source files still to copy.

    - a catalog row or manifest entry whose file is gone or has the wrong size (a power cut
      after the row was written) is dropped, and the file copied again;
    - a file under its final name that neither knows (committed just before a crash) is
      checked against the source and kept, not copied again;
    - a source file counts as archived only when a recorded copy of its path has its size,
      its modification time and, read again now, its sha256: the same names on a card
      formatted in the camera since are other photos, and are copied.

    The duplicates are left out of the manifest here: the caller decides them again."""
    files_dir = os.path.join(session_dir, "files")
    on_disk: dict[str, int] = {}
    for dirpath, _dirs, names in os.walk(files_dir):
        for name in names:
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            on_disk[os.path.relpath(full, files_dir)] = st.st_size
    by_rel: dict[str, FileEntry] = {e.files_relative: e for e in manifest.file_manifest}
    with catalog.session() as s:
        rows = {img.storage_relative_path: img for img in s.scalars(select(Image).where(Image.session_id == row_id))}
        for rel, img in list(rows.items()):
            if on_disk.get(rel) != img.file_size:
                log.warning("committed_file_lost", session_id=manifest.import_session_id, file=paths.display(rel))
                s.delete(img)
                del rows[rel]
        for rel, img in rows.items():  # rows the last checkpoint did not reach
            if rel not in by_rel:
                by_rel[rel] = FileEntry(img.original_import_path or rel, "files/" + rel, img.file_size, img.sha256, storage.iso(img.copied_at), img.mtime)
        for rel in list(by_rel):
            if on_disk.get(rel) != by_rel[rel].file_size:
                del by_rel[rel]
        for rel, entry in by_rel.items():
            if rel not in rows:
                s.add(Image(session_id=row_id, storage_relative_path=rel, original_import_path=entry.original_path, file_size=entry.file_size,
                            sha256=entry.sha256, mtime=entry.mtime, copied_at=storage.parse_iso(entry.copied_at)))
        # committed on disk, recorded nowhere: hash both sides once, keep when equal
        source_by_rel = {f.rel: f for f in scan.files}
        for rel, size in on_disk.items():
            if rel in by_rel:
                continue
            f = source_by_rel.get(rel)
            if f is None or f.size != size:
                continue
            try:
                disk_sha, _, how = readback.reread_hash(os.path.join(files_dir, rel))
                src_sha, _ = durable.hash_file(os.path.join(source, rel))
            except OSError:
                continue
            manifest.readback = readback.weakest(manifest.readback, how)
            if disk_sha == src_sha:
                entry = FileEntry(rel, "files/" + rel, size, disk_sha, storage.iso(storage.utcnow()), f.mtime_ns / 1e9)
                by_rel[rel] = entry
                s.add(Image(session_id=row_id, storage_relative_path=rel, original_import_path=rel, file_size=size, sha256=disk_sha,
                            mtime=entry.mtime, copied_at=storage.utcnow()))
        _remove_legacy_partials(files_dir, [rel for rel in on_disk if rel not in by_rel])
        manifest.file_manifest = sorted(by_rel.values(), key=lambda e: e.storage_path)
        row = s.get(ImportSession, row_id)
        row.total_files = len(manifest.file_manifest)
        row.total_size_bytes = sum(e.file_size for e in manifest.file_manifest)
        row.storage_size_mb = row.total_size_bytes // (1024 * 1024)
    recorded: dict[str, list[FileEntry]] = {}
    for e in manifest.file_manifest:
        recorded.setdefault(e.original_path, []).append(e)
    manifest.skipped = [SkippedEntry(s.rel, s.reason) for s in scan.skipped]  # found again by the scan
    to_copy: list[SourceFile] = []
    known: dict[str, str] = {}
    for f in scan.files:
        same, sha = _archived_already(source, f, recorded.get(f.rel, []))
        if not same:
            to_copy.append(f)
            if sha is not None:
                known[f.rel] = sha
    return to_copy, known


def _archived_already(source: str, f: SourceFile, entries: list[FileEntry]) -> tuple[bool, str | None]:
    """Is ``f`` the file one of ``entries`` (recorded for its path) is a copy of? Size and
    modification time first; where they agree, the sha256 of the file read again now.
    Returns the answer and the sha256 when it was read."""
    mtime = f.mtime_ns / 1e9
    alike = [e for e in entries if e.file_size == f.size and (e.mtime is None or abs(e.mtime - mtime) < 1e-6)]
    if not alike:
        return False, None
    try:
        sha, _ = durable.hash_file(os.path.join(source, f.rel))
    except OSError:
        return False, None
    return any(e.sha256 == sha for e in alike), sha


def _remove_legacy_partials(files_dir: str, unrecorded: list[str]) -> None:
    """Temporary copies earlier versions left beside their targets in ``files/``: unrecorded
    files with such a name that no source file matched."""
    for rel in unrecorded:
        if durable.is_legacy_partial_name(os.path.basename(rel)):
            try:
                os.unlink(os.path.join(files_dir, rel))
            except OSError:
                pass
