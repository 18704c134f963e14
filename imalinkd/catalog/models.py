"""Catalog tables (SQLAlchemy 2.x). The catalog is a cache of what the drives say: it keeps
directory names and paths relative to a storage root, never an archive's absolute mount path
(``StorageRoot.last_seen_path`` is for information only, and ``RootPath`` only guards the
paths an archive was ever seen at against a new marker)."""

from __future__ import annotations

import json
import os
from datetime import datetime

import orjson
from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


class FsPath(TypeDecorator):
    """A file name or relative path stored as its exact bytes, so names that are not UTF-8
    survive the catalog unchanged. In Python it is a ``str`` (surrogateescape)."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else os.fsencode(value)

    def process_result_value(self, value, dialect):
        return None if value is None else os.fsdecode(bytes(value))


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        from datetime import timezone

        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value

    def process_result_value(self, value, dialect):
        from datetime import timezone

        return None if value is None else value.replace(tzinfo=timezone.utc)


def media_json(media: dict | None) -> str | None:
    """The text of ``Image.media_json`` for a file's ``media`` object (None when it has
    none): compact JSON with sorted keys, the same for the importer and a reindex. A float
    that JSON cannot hold (NaN, infinity) becomes null. What orjson refuses (an integer
    beyond 64 bits, a value of another type) is written by the standard library."""
    if not media:
        return None
    try:
        return orjson.dumps(media, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return json.dumps(media, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


class Base(DeclarativeBase):
    pass


class StorageRoot(Base):
    __tablename__ = "storage_roots"

    id: Mapped[int] = mapped_column(primary_key=True)
    storage_id: Mapped[str] = mapped_column(String(36), unique=True, index=True)
    label: Mapped[str | None] = mapped_column(Text)
    last_seen_path: Mapped[str | None] = mapped_column(Text)  # information only
    first_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    free_bytes: Mapped[int | None] = mapped_column(BigInteger)
    total_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # Scrubs (imalinkd.scrub): the sequence number of this drive's latest file check, the
    # one at which its current pass began (a file checked after it is done for this pass),
    # how many passes completed, and when the last scrub ran. NULL: never scrubbed.
    scrub_seq: Mapped[int | None] = mapped_column(BigInteger)
    scrub_pass_seq: Mapped[int | None] = mapped_column(BigInteger)
    scrub_passes: Mapped[int | None] = mapped_column(Integer)
    last_scrub_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The physical drive the root was last seen on (:func:`imalinkd.devices.device_key`):
    # roots with one key count as one copy. NULL: not known yet (the storage_id stands in).
    device_key: Mapped[str | None] = mapped_column(Text)


class RootPath(Base):
    """A path where a storage root has been seen, on one station (machine): every one, not
    only the last. The mount guard asks it whether a directory without a marker was ever an
    archive here, so no later sighting elsewhere (a reindex, a lookup, another station) makes
    the catalog forget a mount point; nothing keys the live path from it."""

    __tablename__ = "root_paths"
    __table_args__ = (UniqueConstraint("station", "path", "storage_id", name="uq_root_paths_station_path_storage"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    storage_id: Mapped[str] = mapped_column(String(36), index=True)
    station: Mapped[str] = mapped_column(Text)  # the host name of the machine that saw it
    path: Mapped[str] = mapped_column(FsPath)
    first_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ImportSession(Base):
    __tablename__ = "import_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The seed's name: the session's own UUID (its first 8 hex digits end the directory name).
    storage_uuid: Mapped[str] = mapped_column(String(36), unique=True, index=True)
    storage_id: Mapped[str | None] = mapped_column(String(36), index=True)  # the root it lives on
    storage_directory_name: Mapped[str | None] = mapped_column(String(255), index=True)
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    copy_status: Mapped[str] = mapped_column(String(20), default="not_started", index=True)
    copy_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    copy_completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    storage_size_mb: Mapped[int] = mapped_column(Integer, default=0)
    original_source_path: Mapped[str | None] = mapped_column(FsPath)
    source_kind: Mapped[str | None] = mapped_column(String(20))
    source_label: Mapped[str | None] = mapped_column(Text)
    source_fs_uuid: Mapped[str | None] = mapped_column(String(64), index=True)
    source_device: Mapped[str | None] = mapped_column(Text)
    verification: Mapped[str | None] = mapped_column(String(16))
    # how the verifications re-read the copies: from-disk, page-cache-possible (imalinkd.readback)
    readback: Mapped[str | None] = mapped_column(String(24))
    copy_files: Mapped[bool] = mapped_column(Boolean, default=True)  # False: legacy/reference
    total_files: Mapped[int] = mapped_column(Integer, default=0)
    total_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    photos_created: Mapped[int] = mapped_column(Integer, default=0)
    duplicates_skipped: Mapped[int] = mapped_column(Integer, default=0)
    skipped_count: Mapped[int] = mapped_column(Integer, default=0)
    planned_files: Mapped[int] = mapped_column(Integer, default=0)
    planned_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    missing: Mapped[bool] = mapped_column(Boolean, default=False)  # directory gone from its drive
    importer_host: Mapped[str | None] = mapped_column(Text)
    importer_pid: Mapped[int | None] = mapped_column(Integer)

    images: Mapped[list[Image]] = relationship(back_populates="session", cascade="all, delete-orphan", passive_deletes=True)
    photos: Mapped[list[Photo]] = relationship(back_populates="session", cascade="all, delete-orphan", passive_deletes=True)
    skipped: Mapped[list[SkippedFile]] = relationship(back_populates="session", cascade="all, delete-orphan", passive_deletes=True)
    copies: Mapped[list[SessionCopy]] = relationship(back_populates="session", cascade="all, delete-orphan", passive_deletes=True)

    @property
    def uuid(self) -> str:
        return self.storage_uuid


class Photo(Base):
    """One shot: the files of one directory and stem (``IMG_1.CR3`` + ``IMG_1.JPG`` + ``.XMP``)."""

    __tablename__ = "photos"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("import_sessions.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(FsPath)  # directory/stem, relative to files/
    taken_at: Mapped[str | None] = mapped_column(String(40))
    camera_make: Mapped[str | None] = mapped_column(Text)
    camera_model: Mapped[str | None] = mapped_column(Text)
    camera_serial: Mapped[str | None] = mapped_column(Text)
    lens_model: Mapped[str | None] = mapped_column(Text)
    orientation: Mapped[int | None] = mapped_column(Integer)
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    gps_lat: Mapped[float | None] = mapped_column(Float)
    gps_lon: Mapped[float | None] = mapped_column(Float)
    gps_alt: Mapped[float | None] = mapped_column(Float)
    thumbnail_path: Mapped[str | None] = mapped_column(FsPath)  # relative to the session dir

    session: Mapped[ImportSession] = relationship(back_populates="photos")
    images: Mapped[list[Image]] = relationship(back_populates="photo")


class Image(Base):
    """One archived file."""

    __tablename__ = "images"
    __table_args__ = (Index("ix_images_session_path", "session_id", "storage_relative_path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # looked up by session through ix_images_session_path, whose first column it is
    session_id: Mapped[int] = mapped_column(ForeignKey("import_sessions.id", ondelete="CASCADE"))
    photo_id: Mapped[int | None] = mapped_column(ForeignKey("photos.id", ondelete="SET NULL"), index=True)
    storage_relative_path: Mapped[str] = mapped_column(FsPath)  # relative to the session's files/
    original_import_path: Mapped[str | None] = mapped_column(FsPath)  # relative to the source
    file_size: Mapped[int] = mapped_column(BigInteger, index=True)
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    mtime: Mapped[float | None] = mapped_column(Float)
    copied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    media_json: Mapped[str | None] = mapped_column(Text)  # the manifest's `media` object
    media_error: Mapped[str | None] = mapped_column(Text)
    size_mismatch: Mapped[bool] = mapped_column(Boolean, default=False)  # flagged by reindex

    session: Mapped[ImportSession] = relationship(back_populates="images")
    photo: Mapped[Photo | None] = relationship(back_populates="images")


class SkippedFile(Base):
    """A source entry not archived in this session: a duplicate, a symlink, a FIFO, unreadable…"""

    __tablename__ = "skipped_files"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("import_sessions.id", ondelete="CASCADE"), index=True)
    original_path: Mapped[str] = mapped_column(FsPath)
    reason: Mapped[str] = mapped_column(Text)
    file_size: Mapped[int | None] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    duplicate_of: Mapped[str | None] = mapped_column(Text)

    session: Mapped[ImportSession] = relationship(back_populates="skipped")


class SessionCopy(Base):
    """Where a session's directory has been seen: its home root and any replicas."""

    __tablename__ = "session_copies"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[int] = mapped_column(ForeignKey("import_sessions.id", ondelete="CASCADE"), index=True)
    storage_id: Mapped[str] = mapped_column(String(36), index=True)
    storage_directory_name: Mapped[str] = mapped_column(String(255))
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    missing: Mapped[bool] = mapped_column(Boolean, default=False)
    # This copy's metadata.json as a reindex last read it (each copy has its own file):
    # while its size, mtime and ctime are the same, a reindex does not read it again.
    # NULL: read it next time.
    manifest_size: Mapped[int | None] = mapped_column(BigInteger)
    manifest_mtime_ns: Mapped[int | None] = mapped_column(BigInteger)
    manifest_ctime_ns: Mapped[int | None] = mapped_column(BigInteger)
    # A digest of the names and sizes of the files below the copy's files/ as that reindex
    # listed them, when it checked the catalog's images against them: while the manifest's
    # signature and this digest are unchanged, the images' flags still hold and a reindex
    # does not load them to compare. NULL: compare them next time.
    files_digest: Mapped[str | None] = mapped_column(String(32))

    session: Mapped[ImportSession] = relationship(back_populates="copies")


class FileCheck(Base):
    """The last scrub of one archived file on one drive (a replica has its own row)."""

    __tablename__ = "file_checks"
    __table_args__ = (UniqueConstraint("image_id", "storage_id", name="uq_file_checks_image_storage"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    storage_id: Mapped[str] = mapped_column(String(36), index=True)
    checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    seq: Mapped[int] = mapped_column(BigInteger)  # the drive's scrub_seq when it was checked
    result: Mapped[str] = mapped_column(String(16), index=True)  # ok | damaged | missing | unreadable
    detail: Mapped[str | None] = mapped_column(Text)


class ImageCopy(Base):
    """A verified copy of an archived file on a drive other than its session's home root
    (a backup archive): written, fsynced and read back there, or replicated later."""

    __tablename__ = "image_copies"
    __table_args__ = (UniqueConstraint("image_id", "storage_id", name="uq_image_copies_image_storage"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    storage_id: Mapped[str] = mapped_column(String(36), index=True)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
