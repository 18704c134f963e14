"""Which archived copy a new file may count as a duplicate of (DESIGN §7).

A file is a duplicate only when an archived copy with its sha256 is reachable now, still has
the recorded size and is not flagged: a reindex found its size changed, or the last check of
it on that drive (a scrub, or ``verify``) found it damaged, missing or unreadable. Anything else is copied again: a copy
deleted, truncated or flagged protects nothing.

A copy on a drive that is not plugged in cannot be checked. By default
(``[import] unplugged_duplicates = "copy"``) the file is copied again; with ``"skip"`` it
counts as a duplicate *unchecked*: it is recorded with a reason that says so, and the
source is never said to be no longer needed because of it.
"""

from __future__ import annotations

import os

from sqlalchemy import select

from imalinkd import locate, paths, readback, storage
from imalinkd.catalog import Catalog, FileCheck, Image, ImportSession
from imalinkd.manifest import SkippedEntry

DUPLICATE = "duplicate of an archived file"
UNCHECKED_DUPLICATE = "duplicate of a file archived on a drive that is not plugged in (not checked now)"

# Files of completed sessions whose copies are in an archive: not legacy (in-place)
# sessions, not sessions whose directory is gone from its drive, not files a reindex flagged.
_ARCHIVED = (ImportSession.copy_status == "completed", ImportSession.copy_files.is_(True), ImportSession.missing.is_(False),
             Image.size_mismatch.is_(False))


class ArchivedCopies:
    """The catalog's archived files, each checked on its drive when asked about (one
    import's look-ups share one search of the mounted file systems)."""

    def __init__(self, config, catalog: Catalog) -> None:
        self.config = config
        self.catalog = catalog
        self.unchecked: set[str] = set()  # duplicate_of of the duplicates counted unchecked
        self._scan = locate._Scan(config.storage.search_depth)
        self._roots: dict[str, str | None] = {}
        self._copies: dict[int, list[locate.KnownCopy]] = {}  # session row id -> where it has been seen

    def sizes(self, sizes: set[int]) -> set[int]:
        """The sizes among ``sizes`` that some archived file has (only those are hashed)."""
        found: set[int] = set()
        ordered = sorted(sizes)
        with self.catalog.session() as s:
            for i in range(0, len(ordered), 500):
                q = (select(Image.file_size).distinct().join(ImportSession, Image.session_id == ImportSession.id)
                     .where(*_ARCHIVED, Image.file_size.in_(ordered[i : i + 500])))
                found.update(s.scalars(q))
        return found

    def find(self, sha: str, size: int) -> str | None:
        """``"<session uuid>:files/<path>"`` of an archived copy a file with this sha256 and
        size is a duplicate of, or None: copy it."""
        unplugged = None
        for image_id, row_id, sid, rel in self._candidates(sha, size):
            path, away = self._locate(image_id, row_id, rel, size)
            ref = f"{sid}:files/{paths.display(rel)}"
            if path is not None:
                return ref
            if away and unplugged is None:
                unplugged = ref
        if unplugged is not None and self.config.import_.unplugged_duplicates == "skip":
            self.unchecked.add(unplugged)
            return unplugged
        return None

    def reason(self, duplicate_of: str) -> str:
        return UNCHECKED_DUPLICATE if duplicate_of in self.unchecked else DUPLICATE

    def verified_path(self, sha: str, size: int) -> str | None:
        """A reachable archived copy whose bytes, read from the disk now, have this sha256
        and size; None when there is none."""
        for image_id, row_id, _sid, rel in self._candidates(sha, size):
            path, _away = self._locate(image_id, row_id, rel, size)
            if path is None:
                continue
            try:
                if readback.reread_hash(path)[:2] == (sha, size):
                    return path
            except OSError:
                continue
        return None

    def _candidates(self, sha: str, size: int) -> list[tuple[int, int, str, str]]:
        with self.catalog.session() as s:
            return [tuple(r) for r in s.execute(candidates_query(sha, size))]

    def _locate(self, image_id: int, row_id: int, rel: str, size: int) -> tuple[str | None, bool]:
        """The path of the session's copy of ``rel`` when it is there with ``size`` and its
        drive's last scrub did not find it bad, and whether some drive holding the session
        is not plugged in."""
        with self.catalog.session() as s:
            flagged = set(s.scalars(select(FileCheck.storage_id).where(FileCheck.image_id == image_id, FileCheck.result != "ok")))
            row = s.get(ImportSession, row_id) if row_id not in self._copies else None
        if row is not None:
            self._copies[row_id] = locate.known_copies(self.catalog, row)
        away = False
        for copy in self._copies[row_id]:
            if copy.storage_id in flagged:
                continue
            root = self._root(copy.storage_id)
            if root is None:
                away = True
                continue
            if not storage.is_session_dir_name(copy.directory_name):
                continue
            tree = locate.SafeTree(os.path.join(root, copy.directory_name, "files"))
            if tree.size(rel) == size:
                return tree.path(rel), away
        return None, away

    def _root(self, storage_id: str) -> str | None:
        if storage_id not in self._roots:
            self._roots[storage_id] = locate.resolve_root(self.config, self.catalog, storage_id, self._scan)
        return self._roots[storage_id]


def verified_duplicates(config, catalog: Catalog, skipped: list[SkippedEntry]) -> set[str]:
    """The source paths among ``skipped`` duplicates whose archived copy is on a drive now
    and reads back with the recorded sha256: the only duplicates a source may be deleted
    for (a drop folder's ``after_import = "delete"``)."""
    copies = ArchivedCopies(config, catalog)
    return {e.original_path for e in skipped
            if e.duplicate_of and e.sha256 and e.file_size is not None and copies.verified_path(e.sha256, e.file_size)}


def candidates_query(sha: str, size: int):
    """The archived files with this sha256 and size, oldest session first. The size is
    compared as ``file_size + 0``, which no index serves: the planner looks the file up by its
    sha256 (one or a few rows) and never walks the size index, where a camera's uncompressed
    RAW files all share one entry, whatever statistics the catalog has or lacks."""
    return (select(Image.id, ImportSession.id, ImportSession.storage_uuid, Image.storage_relative_path)
            .join(ImportSession, Image.session_id == ImportSession.id)
            .where(*_ARCHIVED, Image.sha256 == sha, Image.file_size + 0 == size).order_by(ImportSession.id))
