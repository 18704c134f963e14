"""``metadata.json``: the session manifest, the drive's own record of a session.

It holds every field of the seed's metadata format plus what DESIGN §2 adds. It is written
atomically; during a copy it is rewritten at checkpoints (with the catalog's rows), and
after a crash resume reconciles it with the files on disk. Reading validates everything a hostile
or damaged drive could get wrong and raises ManifestError naming the file.

Entry paths: ``original_path`` is relative to the source, ``storage_path`` relative to the
session directory and always below ``files/``, ``thumbnail`` (the JPEG preview of the
entry's shot) relative to it and below ``thumbnails/``. See :mod:`imalinkd.paths` for how
names that are not UTF-8 are stored. No path of the archive on this machine is written:
texts that would carry one (an error naming a file of the session) name it relative to
the session directory. ``source_path`` is the one absolute path, and it records where the
source was (provenance, and where a legacy session's bytes still are), never where the
archive is.

Versions (``docs/format.md``): ``format_version`` is the major version, raised only for a
change an older reader would misread; this reader refuses a newer one by name and reads
every older one. ``format_minor`` counts additions an older reader may ignore.

Every write also brings ``manifest-sha256.txt`` in step (:mod:`imalinkd.checksums`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from imalinkd import checksums, drivefile, durable, paths
from imalinkd.errors import ManifestError

FILENAME = "metadata.json"
FORMAT = "imalink-session"
FORMAT_VERSION = 1  # the major version this code writes and the newest it reads
FORMAT_MINOR = 3  # 1: thumbnail per entry, manifest-sha256.txt beside the manifest; 2: other_files, source kind camera; 3: readback
STATUSES = ("not_started", "in_progress", "completed", "failed")
# The largest manifest read (docs/archives.md). One of a session of 50,000 camera files
# with their metadata is about 35 MiB (some 735 bytes a file, indented): this is over three
# times that, some 180,000 files. A bigger one is rejected by name without being read.
MAX_MANIFEST_BYTES = 128 * 1024 * 1024
# How deep a file's ``media`` or the session's ``source`` object may nest (both are one or
# two levels; what is stored or written again must stay far from Python's recursion limit).
MAX_OBJECT_LEVELS = 8


@dataclass(slots=True)
class FileEntry:
    original_path: str  # relative to the source
    storage_path: str  # relative to the session directory: "files/…"
    file_size: int
    sha256: str
    copied_at: str | None
    mtime: float | None = None
    media: dict[str, Any] | None = None
    media_error: str | None = None
    thumbnail: str | None = None  # "thumbnails/…jpg", the preview of this file's shot

    @property
    def files_relative(self) -> str:
        """The path below ``files/`` (the catalog's ``storage_relative_path``)."""
        return self.storage_path[len("files/"):]

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        paths.put_path(d, "original_path", self.original_path)
        paths.put_path(d, "storage_path", self.storage_path)
        d.update(file_size=self.file_size, sha256=self.sha256, copied_at=self.copied_at)
        if self.mtime is not None:
            d["mtime"] = self.mtime
        if self.media:
            d["media"] = self.media
        if self.media_error:
            d["media_error"] = self.media_error
        if self.thumbnail:
            paths.put_path(d, "thumbnail", self.thumbnail)
        return d


@dataclass(slots=True)
class SkippedEntry:
    original_path: str
    reason: str
    file_size: int | None = None
    sha256: str | None = None
    duplicate_of: str | None = None  # "<session uuid>:<storage_path>"

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        paths.put_path(d, "original_path", self.original_path)
        d["reason"] = self.reason
        for k in ("file_size", "sha256", "duplicate_of"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        return d


@dataclass
class SessionManifest:
    import_session_id: str
    storage_id: str
    created_at: str
    source_path: str
    description: str | None = None
    source: dict[str, Any] = field(default_factory=dict)  # kind, label, fs_uuid, device
    copy_status: str = "not_started"
    copy_started_at: str | None = None
    copy_completed_at: str | None = None
    verification: str = "sha256"
    readback: str | None = None  # how verifications re-read the copies: from-disk | page-cache-possible
    copy_files: bool = True
    photos_created: int = 0
    other_files: int = 0  # files archived that belong to no shot (not photos or videos)
    file_manifest: list[FileEntry] = field(default_factory=list)
    skipped: list[SkippedEntry] = field(default_factory=list)
    error: str | None = None

    @property
    def total_files(self) -> int:
        return len(self.file_manifest)

    @property
    def total_size_bytes(self) -> int:
        return sum(e.file_size for e in self.file_manifest)

    @property
    def duplicates_skipped(self) -> int:
        return sum(1 for s in self.skipped if s.duplicate_of)

    def as_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "format_minor": FORMAT_MINOR,
            "import_session_id": self.import_session_id,
            "storage_id": self.storage_id,
            "description": self.description,
            "created_at": self.created_at,
        }
        paths.put_path(d, "source_path", self.source_path)
        d.update(
            source=self.source,
            copy_status=self.copy_status,
            copy_started_at=self.copy_started_at,
            copy_completed_at=self.copy_completed_at,
            verification=self.verification,
            readback=self.readback,
            copy_files=self.copy_files,
            total_files=self.total_files,
            total_size_bytes=self.total_size_bytes,
            photos_created=self.photos_created,
            other_files=self.other_files,
            duplicates_skipped=self.duplicates_skipped,
            skipped_count=len(self.skipped) - self.duplicates_skipped,
            error=self.error,
            file_manifest=[e.as_json() for e in self.file_manifest],
            skipped_files=[s.as_json() for s in self.skipped],
        )
        return d


def write_manifest(session_dir: str | os.PathLike[str], manifest: SessionManifest) -> None:
    """Write ``manifest-sha256.txt`` and then ``metadata.json``, from the same entries, each
    atomically. In this order a crash between the two leaves the checksum file a step
    ahead, never behind: it lists every file ``metadata.json`` lists, plus the files
    committed since its last write, all of them verified and under their final names; so
    ``sha256sum -c`` always checks at least what the manifest says is archived."""
    session_dir = os.fspath(session_dir)
    data = manifest.as_json()
    _relative_texts(data, session_dir)
    checksums.write(session_dir, manifest)
    durable.atomic_write_json(os.path.join(session_dir, FILENAME), data)


def _relative_texts(data: dict[str, Any], session_dir: str) -> None:
    """Error texts that name a file of this archive by its absolute path on this machine
    (a reader's ``OSError``, say) name it relative to the session directory instead, or to
    the root for another session's file: a manifest holds no path of the host."""
    prefixes = []
    for d in {session_dir, os.path.realpath(session_dir)}:
        d = d.rstrip("/")
        prefixes += [(d + "/", ""), (os.path.dirname(d).rstrip("/") + "/", "")]
    prefixes.sort(key=lambda p: -len(p[0]))

    def clean(text: Any) -> Any:
        if isinstance(text, str) and "/" in text:
            for old, new in prefixes:
                if old != "/":
                    text = text.replace(old, new)
        return text

    data["error"] = clean(data.get("error"))
    for e in data.get("file_manifest", ()):
        if "media_error" in e:
            e["media_error"] = clean(e["media_error"])


def _thumbnail(e: dict) -> str | None:
    """An entry's thumbnail path when it is a safe one below ``thumbnails/``; anything else
    (a damaged or hostile drive) is dropped: a thumbnail is derived, made again at will."""
    try:
        rel = paths.check_relative(paths.get_path(e, "thumbnail"))
    except (paths.UnsafePathError, KeyError, ValueError):
        return None
    return rel if rel.startswith("thumbnails/") else None


def _fail(path: str, message: str) -> ManifestError:
    return ManifestError(path=path, message=message)


def read_manifest(session_dir: str | os.PathLike[str]) -> SessionManifest:
    """Read and validate a session's manifest. Raises ManifestError naming the file."""
    path = os.path.join(session_dir, FILENAME)
    try:
        raw = drivefile.read_regular(path, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise _fail(path, "missing") from None
    except OSError as e:
        raise _fail(path, e.strerror or str(e)) from None
    return parse_manifest(decode_json(raw, path), path)


def decode_json(raw: bytes, path: str = FILENAME) -> Any:
    """``raw`` decoded as JSON within bounds (:func:`imalinkd.drivefile.load_json`: orjson,
    the standard library for what orjson refuses but Python's ``json`` writes, nesting
    bounded). Raises ManifestError naming ``path``. The numbers that go to the catalog are
    range-checked by :func:`parse_manifest`."""
    try:
        return drivefile.load_json(raw)
    except ValueError as e:
        damaged = "; truncated or damaged" if str(e).startswith("not valid JSON") else "; not written by imalinkd"
        raise _fail(path, f"{e}{damaged}") from None


def check_format(data: dict, path: str = FILENAME) -> None:
    """Refuse a manifest of another format, or of a newer major version, by name (what it
    is and what to do); an older version, or one without the fields (written before they
    existed), is read."""
    fmt = data.get("format", FORMAT)
    if fmt != FORMAT:
        raise _fail(path, f"'format' is {fmt!r}, not {FORMAT!r}: not an imalinkd session manifest")
    version = data.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(path, f"format_version {version!r} is not a version number")
    if version > FORMAT_VERSION:
        raise _fail(path, f"format_version {version} is newer than this imalinkd reads (up to {FORMAT_VERSION}); "
                          "the session was written by a later imalinkd: upgrade imalinkd to read it (docs/format.md)")


def parse_manifest(data: Any, path: str = FILENAME) -> SessionManifest:
    """Validate a decoded manifest. Every entry's paths are checked (relative, no ``.`` or
    ``..`` or empty component, no NUL, ``storage_path`` below ``files/`` and listed once),
    its size is a byte count and its sha256 64 lowercase hex digits; the first violation
    raises ManifestError naming the file and the entry.

    The loop over entries is the hot path of a reindex (100,000 entries in a large
    archive): plain-text paths, the usual case, are checked inline; an entry with a
    ``_b64`` path or anything irregular goes through the general helpers, which give the
    precise message."""
    import re

    if not isinstance(data, dict):
        raise _fail(path, "not a JSON object")
    check_format(data, path)

    def is_plain_safe(p: str) -> bool:
        # True when check_relative accepts p: not empty, no NUL, no empty, "." or ".."
        # component (a leading "/" is an empty first one). Wrapped in slashes, each
        # component c appears as "/c/", so three substring searches decide it.
        wrapped = f"/{p}/"
        return not ("//" in wrapped or "/./" in wrapped or "/../" in wrapped or "\x00" in p)

    def checked_paths(e: dict, where: str) -> tuple[str, str]:
        # the general rules: _b64 forms, and the precise message for what is wrong
        try:
            orig = paths.check_relative(paths.get_path(e, "original_path"))
            sp = paths.check_relative(paths.get_path(e, "storage_path"))
        except (paths.UnsafePathError, KeyError, ValueError) as err:
            raise _fail(path, f"{where}: unsafe or missing path ({err})") from None
        return orig, sp

    def req(key: str, types: type | tuple[type, ...]) -> Any:
        if key not in data:
            raise _fail(path, f"field {key!r} missing")
        v = data[key]
        if not isinstance(v, types):
            raise _fail(path, f"field {key!r} has the wrong type")
        return v

    sid = req("import_session_id", str)
    import uuid

    try:
        sid = str(uuid.UUID(sid))
    except ValueError:
        raise _fail(path, f"import_session_id {sid!r} is not a UUID") from None
    status = req("copy_status", str)
    if status not in STATUSES:
        raise _fail(path, f"copy_status {status!r} is not one of {', '.join(STATUSES)}")
    entries_raw = req("file_manifest", list)
    entries: list[FileEntry] = []
    append = entries.append
    seen: set[str] = set()
    is_hex64 = re.compile(r"[0-9a-f]{64}").fullmatch
    for i, e in enumerate(entries_raw):
        if not isinstance(e, dict):
            raise _fail(path, f"file_manifest[{i}] is not an object")
        get = e.get
        orig, sp = get("original_path"), get("storage_path")
        if not (get("original_path_b64") is None and get("storage_path_b64") is None
                and type(orig) is str and type(sp) is str and is_plain_safe(orig) and is_plain_safe(sp)):
            orig, sp = checked_paths(e, f"file_manifest[{i}]")
        if not sp.startswith("files/"):
            raise _fail(path, f"file_manifest[{i}]: storage_path {paths.display(sp)!r} is not below files/")
        if sp in seen:
            raise _fail(path, f"file_manifest[{i}]: storage_path {paths.display(sp)!r} listed twice")
        seen.add(sp)
        size, sha = get("file_size"), get("sha256")
        if type(size) is not int or not 0 <= size <= drivefile.INT_MAX:
            raise _fail(path, f"file_manifest[{i}]: file_size {size!r} is not a byte count")
        if not isinstance(sha, str) or is_hex64(sha) is None:
            raise _fail(path, f"file_manifest[{i}]: sha256 {sha!r} is not a hex sha256")
        copied_at, mtime, media, media_error = get("copied_at"), get("mtime"), get("media"), get("media_error")
        if type(mtime) is int and not drivefile.in_int_range(mtime):
            raise _fail(path, f"file_manifest[{i}]: mtime {mtime!r} is out of range")
        if media is not None and not drivefile.nesting_within(media, MAX_OBJECT_LEVELS):
            raise _fail(path, f"file_manifest[{i}]: media nested more than {MAX_OBJECT_LEVELS} levels deep")
        append(FileEntry(
            orig, sp, size, sha,
            copied_at if isinstance(copied_at, str) else None,
            mtime if isinstance(mtime, (int, float)) else None,
            media if isinstance(media, dict) else None,
            media_error if isinstance(media_error, str) else None,
            _thumbnail(e) if "thumbnail" in e or "thumbnail_b64" in e else None,
        ))
    if sum(e.file_size for e in entries) > drivefile.INT_MAX:
        raise _fail(path, "the file sizes add up beyond 64 bits")
    skipped: list[SkippedEntry] = []
    for i, s in enumerate(data.get("skipped_files") or []):
        if not isinstance(s, dict):
            continue
        try:
            orig = paths.get_path(s, "original_path")
        except (KeyError, ValueError, paths.UnsafePathError):
            continue
        skipped.append(
            SkippedEntry(
                original_path=orig,
                reason=str(s.get("reason") or ""),
                file_size=s.get("file_size") if drivefile.in_int_range(s.get("file_size")) else None,
                sha256=s.get("sha256") if isinstance(s.get("sha256"), str) else None,
                duplicate_of=s.get("duplicate_of") if isinstance(s.get("duplicate_of"), str) else None,
            )
        )
    try:
        source_path = paths.get_path(data, "source_path") if "source_path" in data else ""
    except (ValueError, paths.UnsafePathError):
        source_path = ""
    storage_id = data.get("storage_id")
    source = data.get("source")
    if source is not None and not drivefile.nesting_within(source, MAX_OBJECT_LEVELS):
        raise _fail(path, f"field 'source' nested more than {MAX_OBJECT_LEVELS} levels deep")
    return SessionManifest(
        import_session_id=sid,
        storage_id=storage_id if isinstance(storage_id, str) else "",
        created_at=str(data.get("created_at") or ""),
        source_path=source_path,
        description=data.get("description") if isinstance(data.get("description"), str) else None,
        source=data.get("source") if isinstance(data.get("source"), dict) else {},
        copy_status=status,
        copy_started_at=data.get("copy_started_at") if isinstance(data.get("copy_started_at"), str) else None,
        copy_completed_at=data.get("copy_completed_at") if isinstance(data.get("copy_completed_at"), str) else None,
        verification=str(data.get("verification") or "sha256"),
        readback=data.get("readback") if data.get("readback") in ("from-disk", "page-cache-possible") else None,
        copy_files=bool(data.get("copy_files", True)),
        photos_created=data.get("photos_created") if drivefile.in_int_range(data.get("photos_created")) else 0,
        other_files=data.get("other_files") if drivefile.in_int_range(data.get("other_files")) else 0,
        file_manifest=entries,
        skipped=skipped,
        error=data.get("error") if isinstance(data.get("error"), str) else None,
    )
