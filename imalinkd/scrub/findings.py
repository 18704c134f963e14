"""What the catalog says about scrubs: the files found not intact (with the sessions they
belong to and where another copy is) and each drive's progress, for ``imalinkd status``,
the API (``GET /scrub``) and the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from imalinkd import paths, storage
from imalinkd.catalog import FileCheck, Image, ImportSession, SessionCopy, StorageRoot

RESULTS = ("ok", "damaged", "missing", "unreadable")


@dataclass
class Finding:
    """A file a scrub found not intact, named: its drive, session and path."""

    storage_id: str
    label: str
    session_id: str
    directory_name: str
    path: str  # "files/…", readable
    result: str  # damaged | missing | unreadable
    detail: str | None = None
    checked_at: str | None = None
    other_copies: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"storage_id": self.storage_id, "label": self.label, "session_id": self.session_id,
                "storage_directory_name": self.directory_name, "file": self.path, "result": self.result,
                "detail": self.detail, "checked_at": self.checked_at, "other_copies": self.other_copies}


def _labels(s) -> dict[str, str]:
    return {sid: label or "" for sid, label in s.execute(select(StorageRoot.storage_id, StorageRoot.label))}


def other_copies(s, sha256: str, size: int, image_id: int, storage_id: str) -> list[dict[str, Any]]:
    """Every other place these bytes are archived (this file on another drive, or the same
    content in another session), with what the last scrub there said (``unchecked`` when
    none has): where to restore the file from."""
    labels = _labels(s)
    # file_size + 0: looked up by sha256, never through the size index (see duplicates.candidates_query)
    out = []
    rows = s.execute(select(Image.id, Image.storage_relative_path, ImportSession.id, ImportSession.storage_uuid,
                            ImportSession.storage_id, ImportSession.storage_directory_name)
                     .join(ImportSession, Image.session_id == ImportSession.id)
                     .where(Image.sha256 == sha256, Image.file_size + 0 == size, ImportSession.copy_files.is_(True))).all()
    for img_id, rel, session_row, uuid_, home, home_dir in rows:
        places = {home: home_dir} if home and home_dir else {}
        for sid, name, missing in s.execute(select(SessionCopy.storage_id, SessionCopy.storage_directory_name, SessionCopy.missing)
                                            .where(SessionCopy.session_id == session_row)):
            if not missing:
                places.setdefault(sid, name)
        for sid, name in places.items():
            if img_id == image_id and sid == storage_id:
                continue
            check = s.execute(select(FileCheck.result, FileCheck.checked_at)
                              .where(FileCheck.image_id == img_id, FileCheck.storage_id == sid)).first()
            state = check[0] if check else "unchecked"
            if state not in ("ok", "unchecked"):
                continue
            out.append({"storage_id": sid, "label": labels.get(sid, ""), "session_id": uuid_,
                        "path": f"{name}/files/{paths.display(rel)}", "last_check": state,
                        "checked_at": storage.iso(check[1]) if check else None})
    out.sort(key=lambda c: c["last_check"] != "ok")
    return out


def damaged_files(s, storage_id: str | None = None) -> list[Finding]:
    """The files whose last scrub found them not intact (all drives, or one)."""
    labels = _labels(s)
    q = (select(FileCheck, Image.storage_relative_path, Image.sha256, Image.file_size, ImportSession.storage_uuid,
                ImportSession.storage_id, ImportSession.storage_directory_name, ImportSession.id)
         .join(Image, FileCheck.image_id == Image.id).join(ImportSession, Image.session_id == ImportSession.id)
         .where(FileCheck.result != "ok").order_by(FileCheck.checked_at))
    if storage_id:
        q = q.where(FileCheck.storage_id == storage_id)
    out = []
    for check, rel, sha, size, uuid_, home, home_dir, session_row in s.execute(q).all():
        name = home_dir if check.storage_id == home else s.scalar(
            select(SessionCopy.storage_directory_name).where(SessionCopy.session_id == session_row,
                                                             SessionCopy.storage_id == check.storage_id)) or home_dir
        out.append(Finding(storage_id=check.storage_id, label=labels.get(check.storage_id, ""), session_id=uuid_,
                           directory_name=name or "", path="files/" + paths.display(rel), result=check.result,
                           detail=check.detail, checked_at=storage.iso(check.checked_at),
                           other_copies=other_copies(s, sha, size, check.image_id, check.storage_id)))
    return out


def counts_by_result(s) -> dict[str, int]:
    """How many files' last scrub gave each result (every result present, 0 when none)."""
    counts = dict.fromkeys(RESULTS, 0)
    for result, n in s.execute(select(FileCheck.result, func.count()).group_by(FileCheck.result)):
        counts[result] = counts.get(result, 0) + n
    return counts


def drive_progress(s) -> list[dict[str, Any]]:
    """Per drive: files checked in its current pass, passes completed, the last scrub."""
    out = []
    for root in s.scalars(select(StorageRoot).order_by(StorageRoot.id)):
        pass_seq = root.scrub_pass_seq or 0
        checked = s.scalar(select(func.count()).select_from(FileCheck)
                           .where(FileCheck.storage_id == root.storage_id, FileCheck.seq > pass_seq)) or 0
        bad = s.scalar(select(func.count()).select_from(FileCheck)
                       .where(FileCheck.storage_id == root.storage_id, FileCheck.result != "ok")) or 0
        out.append({"storage_id": root.storage_id, "label": root.label, "last_scrub_at": storage.iso(root.last_scrub_at),
                    "passes_completed": root.scrub_passes or 0, "checked_in_current_pass": checked,
                    "files_not_intact": bad})
    return out


def scrub_status(catalog) -> dict[str, Any]:
    """The scrub part of ``imalinkd status`` and ``GET /scrub``."""
    with catalog.session() as s:
        return {"drives": drive_progress(s), "results": counts_by_result(s),
                "damaged": [f.as_json() for f in damaged_files(s)]}
