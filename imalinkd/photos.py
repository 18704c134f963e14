"""Stage 5, post-process: EXIF metadata, Photos (the files of one shot) and thumbnails.

Runs off the copy's critical path: one background thread reads the archived copies while
the copy stage goes on, and broken media never fails an import (its metadata is recorded
as missing, with the reason)."""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import structlog
from sqlalchemy import select

from imalinkd import durable, shots
from imalinkd.catalog import Catalog, Image, ImportSession, Photo, media_json
from imalinkd.media import extract_media, kind_of
from imalinkd.thumbnails import best_member, make_thumbnail, pick_thumbnail_source
from imalinkd.manifest import FileEntry
from imalinkd.plan import photo_key

log = structlog.get_logger()


class PostProcessor:
    """EXIF and thumbnails, off the copy's critical path: background threads (at a lower
    scheduling priority) read the archived copies while the copy stage goes on; the copy
    never waits for them. A shot's
    thumbnail is made as soon as its JPEG is archived, so that little is left for the end
    (shots with no JPEG get theirs from a RAW preview once all files are in)."""

    def __init__(self, catalog: Catalog, row_id: int, session_dir: str, thumbnail_size: int, thumbnails: bool = True) -> None:
        self.catalog = catalog
        self.row_id = row_id
        self.session_dir = session_dir
        self.thumbnail_size = thumbnail_size
        self.thumbnails = thumbnails
        # as many threads as cores: Pillow decodes without the GIL, and once the copy is done
        # the remaining thumbnails get the whole machine
        self.pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="imalinkd-media", initializer=_lower_priority)
        self.futures: list[tuple[FileEntry, Future]] = []
        self.early: list[tuple[str, Future]] = []  # photo key -> thumbnail being made

    def submit(self, entry: FileEntry) -> None:
        path = os.path.join(self.session_dir, entry.storage_path)
        self.futures.append((entry, self.pool.submit(_extract_media, path)))
        if self.thumbnails and kind_of(path) == "jpeg":
            key = photo_key(entry.files_relative)
            self.early.append((key, self.pool.submit(_thumbnail, path, self.session_dir, key, self.thumbnail_size)))

    def abandon(self) -> None:
        """The copy failed: drop what has not started, wait for what has."""
        self.pool.shutdown(wait=True, cancel_futures=True)

    def finish(self, thumbnails: bool) -> int:
        """Collect metadata into the manifest and catalog, build the Photos from it, then
        make the remaining thumbnails. Returns the number of Photos."""
        try:
            return self._finish(thumbnails)
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _finish(self, thumbnails: bool) -> int:
        by_path: dict[str, dict] = {}
        for entry, fut in self.futures:
            try:
                media, error = fut.result()
            except Exception as e:  # a reader bug must not fail the import
                media, error = None, f"metadata reader failed: {e.__class__.__name__}"
            entry.media = media or None
            entry.media_error = error
            by_path[entry.files_relative] = {"media": media, "error": error}
        if by_path:
            with self.catalog.session() as s:
                for img in s.scalars(select(Image).where(Image.session_id == self.row_id)):
                    got = by_path.get(img.storage_relative_path)
                    if got is not None:
                        img.media_json = media_json(got["media"])
                        img.media_error = got["error"]
        done: dict[str, str] = {}
        for key, fut in self.early:
            try:
                rel = fut.result()
            except Exception:
                log.debug("thumbnail_failed", key=key, exc_info=True)
                rel = None
            if rel:
                done[key] = rel
        photos = build_photos(self.catalog, self.row_id)
        if thumbnails:
            make_thumbnails(self.catalog, self.row_id, self.session_dir, self.thumbnail_size, self.pool, done=done)
        return photos


def thumbnails_by_shot(catalog: Catalog, row_id: int) -> dict[str, str]:
    """Photo key → its thumbnail's path relative to the session directory, for the
    session's Photos that have one."""
    with catalog.session() as s:
        return {key: rel for key, rel in s.execute(
            select(Photo.key, Photo.thumbnail_path).where(Photo.session_id == row_id, Photo.thumbnail_path.is_not(None)))}


def record_thumbnails(entries: list[FileEntry], by_shot: dict[str, str]) -> None:
    """Write into each manifest entry which thumbnail shows it: that of its shot (a RAW
    and its JPEG share the one made from the JPEG)."""
    for e in entries:
        e.thumbnail = by_shot.get(photo_key(e.files_relative))


def _lower_priority() -> None:
    """Linux schedules threads one by one: this one yields the CPU to the copy, whose
    hashing keeps both cores of a small machine busy."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (OSError, AttributeError):
        pass


def _thumbnail(src: str, session_dir: str, key: str, size: int) -> str | None:
    """Make ``thumbnails/<key>.jpg`` from ``src``; its path relative to the session, or None."""
    rel = f"thumbnails/{key}.jpg"  # mirrors files/, one JPEG per shot (stem in lower case)
    dest = os.path.join(session_dir, rel)
    durable.make_dirs(os.path.dirname(dest))
    return rel if make_thumbnail(src, dest, size=size).ok else None


def _extract_media(path: str) -> tuple[dict | None, str | None]:
    info = extract_media(path)
    return info.as_manifest(), info.error


def build_photos(catalog: Catalog, row_id: int) -> int:
    """(Re)build the session's Photo rows from its Images: one per shot (directory + stem,
    and the layout rules of :mod:`imalinkd.shots`). A group without a photo or video in it
    (camera database files, ``MISC/``, text) is no Photo: its Images stay without one and
    are counted apart. Returns the number of Photos. Capture time and camera come from
    the best member."""
    with catalog.session() as s:
        images = list(s.scalars(select(Image).where(Image.session_id == row_id)))
        existing = {p.key: p for p in s.scalars(select(Photo).where(Photo.session_id == row_id))}
        groups: dict[str, list[Image]] = {}
        for img in images:
            groups.setdefault(photo_key(img.storage_relative_path), []).append(img)
        shot_groups = {}
        for key, members in groups.items():
            if shots.is_shot(m.storage_relative_path for m in members):
                shot_groups[key] = members
                continue
            for m in members:
                m.photo = None
            stale = existing.pop(key, None)
            if stale is not None:
                s.delete(stale)
        for key, members in shot_groups.items():
            photo = existing.get(key)
            if photo is None:
                photo = Photo(session_id=row_id, key=key)
                s.add(photo)
            best = members[0]
            chosen = best_member([m.storage_relative_path for m in members])
            best = next((m for m in members if m.storage_relative_path == chosen), best)
            media = json.loads(best.media_json) if best.media_json else {}
            if not media:
                media = next((json.loads(m.media_json) for m in members if m.media_json), {})
            photo.taken_at = media.get("taken_at")
            photo.camera_make = media.get("camera_make")
            photo.camera_model = media.get("camera_model")
            photo.camera_serial = media.get("camera_serial")
            photo.lens_model = media.get("lens_model")
            photo.orientation = media.get("orientation")
            photo.width = media.get("width")
            photo.height = media.get("height")
            gps = media.get("gps") or {}
            photo.gps_lat, photo.gps_lon, photo.gps_alt = gps.get("lat"), gps.get("lon"), gps.get("alt")
            for m in members:
                m.photo = photo
        row = s.get(ImportSession, row_id)
        row.photos_created = len(shot_groups)
        return len(shot_groups)


def make_thumbnails(catalog: Catalog, row_id: int, session_dir: str, size: int, pool: ThreadPoolExecutor | None = None,
                    done: dict[str, str] | None = None) -> int:
    """A JPEG per Photo under ``thumbnails/`` (``done``: photo keys that have one already);
    returns how many Photos have a thumbnail. The Photos must be built (``build_photos``)."""
    done = done or {}
    with catalog.session() as s:
        photos = [(p.id, p.key, [m.storage_relative_path for m in p.images]) for p in s.scalars(select(Photo).where(Photo.session_id == row_id))]

    def one(item):
        pid, key, members = item
        if key in done:
            return pid, done[key]
        src = pick_thumbnail_source([os.path.join(session_dir, "files", m) for m in members])
        return pid, (_thumbnail(src, session_dir, key, size) if src is not None else None)

    results = list(pool.map(one, photos) if pool is not None else map(one, photos))
    made = {pid: rel for pid, rel in results if rel}
    with catalog.session() as s:
        for pid, rel in made.items():
            p = s.get(Photo, pid)
            if p is not None:
                p.thumbnail_path = rel
    return len(made)
