"""What a photo or video file says about itself: capture time, camera, lens, size, place.

``extract_media(path)`` reads a file with the best reader for its format and returns a
``MediaInfo``; ``MediaInfo.as_manifest()`` is the ``media`` object of a manifest entry
(DESIGN §6). The readers, in the order they are asked (docs/media.md has the measured
coverage that chose this order):

1. libexiv2 through its Python binding: JPEG, TIFF, HEIC/HEIF, and every RAW format
   except X3F and IIQ;
2. exifread: fills fields exiv2 left empty, and reads X3F;
3. Pillow: fills pixel dimensions and the EXIF Pillow understands;
4. for MP4/MOV, a small parser of the ``mvhd`` and ``tkhd`` atoms (capture time in UTC,
   frame size); for AVCHD ``.MTS``, the ``MDPM`` block of the H.264 stream (local capture
   time with its offset);
5. exiftool, only if it is on PATH and everything above left the capture time unknown
   (it knows maker-note dates, X3F, IIQ and more; it is never required).

Guarantee: ``extract_media`` never raises for anything a file can contain. A reader that
fails, a truncated or empty file, nonsense tag values: all end as fields left ``None`` and
an explanation in ``MediaInfo.error``. It only reads the file, holds no shared mutable state
and can be called from several worker threads at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import logging
import mmap
import os
import re
import shutil
import struct
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import exifread
import exiv2
from PIL import Image

# exiv2 writes warnings about odd files straight to stderr; the daemon reports problems
# through MediaInfo.error instead.
exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.mute)
exiv2.XmpParser.initialize()
# libexiv2's XMP toolkit is not thread-safe without a lock callback the Python binding
# cannot pass: parsed concurrently, XMP silently comes back empty (seen in
# test_concurrent_extraction_matches_sequential). Every use of exiv2 holds this lock; a
# read takes milliseconds, so worker threads lose little by it.
EXIV2_LOCK = threading.Lock()
logging.getLogger("exifread").setLevel(logging.ERROR)  # "Possibly corrupted field …" noise

RAW_EXTENSIONS = frozenset(
    ".dng .cr2 .cr3 .crw .nef .nrw .arw .srf .sr2 .orf .rw2 .pef .raf .srw .x3f .mrw .iiq .gpr"
    .split()
)
_KIND_BY_EXTENSION: dict[str, str] = {
    **{ext: "raw" for ext in RAW_EXTENSIONS},
    ".jpg": "jpeg", ".jpeg": "jpeg", ".jpe": "jpeg",
    ".heic": "heic", ".heif": "heic", ".hif": "heic",
    ".tif": "tiff", ".tiff": "tiff",
    ".mp4": "video", ".mov": "video", ".m4v": "video", ".mts": "video", ".m2ts": "video",
    ".avi": "video", ".3gp": "video", ".mxf": "video", ".braw": "video", ".r3d": "video", ".crm": "video",
    ".insv": "video", ".360": "video", ".mod": "video", ".tod": "video",
    ".png": "image", ".webp": "image", ".gif": "image",
    ".xmp": "sidecar", ".thm": "sidecar", ".lrv": "sidecar", ".lrf": "sidecar", ".srt": "sidecar",
}

# The keys of a manifest entry's ``media`` object, in manifest order (DESIGN §6).
MANIFEST_KEYS = (
    "taken_at", "camera_make", "camera_model", "camera_serial", "lens_model",
    "orientation", "width", "height", "gps",
)


def kind_of(path: str | os.PathLike) -> str:
    """Classify a file by its extension, ignoring case (card file systems are FAT).

    One of ``raw``, ``jpeg``, ``heic``, ``tiff``, ``video``, ``image`` (PNG, WebP, GIF),
    ``sidecar`` (``.xmp``, ``.thm``, GoPro ``.lrv``, DJI ``.lrf`` and ``.srt``) or
    ``other``. The content is not looked at.
    """
    return _KIND_BY_EXTENSION.get(Path(path).suffix.lower(), "other")


@dataclass(frozen=True)
class MediaInfo:
    """Metadata of one file. Every field is optional: ``None`` means the file did not say.

    ``taken_at`` is the camera's local time as recorded, ISO 8601, with sub-seconds and
    UTC offset only when the file records them. ``width``/``height`` are the stored pixel
    dimensions, before ``orientation`` (EXIF 1–8) is applied. ``gps`` holds ``lat`` and
    ``lon`` in signed decimal degrees and ``alt`` in metres when recorded. ``error`` says
    why metadata is missing or suspect; it is for logs and is not part of the manifest.
    """

    taken_at: str | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    camera_serial: str | None = None
    lens_model: str | None = None
    orientation: int | None = None
    width: int | None = None
    height: int | None = None
    gps: dict[str, float] | None = None
    error: str | None = None

    def as_manifest(self) -> dict[str, Any]:
        """The manifest's ``media`` object: the DESIGN §6 keys, absent values left out."""
        out: dict[str, Any] = {}
        for key in MANIFEST_KEYS:
            value = getattr(self, key)
            if value is not None:
                out[key] = dict(value) if key == "gps" else value
        return out

    def has_capture_data(self) -> bool:
        """Whether the file told when or with what it was taken."""
        return any((self.taken_at, self.camera_make, self.camera_model))


def media_from_manifest(data: Mapping[str, Any]) -> MediaInfo:
    """Rebuild a ``MediaInfo`` from a manifest's ``media`` object (inverse of
    ``as_manifest``). Unknown keys are ignored, so newer manifests still read."""
    fields = {key: data[key] for key in MANIFEST_KEYS if data.get(key) is not None}
    if "gps" in fields:
        fields["gps"] = {k: float(v) for k, v in dict(fields["gps"]).items()}
    return MediaInfo(**fields)


def extract_media(path: str | os.PathLike) -> MediaInfo:
    """Read the metadata of the file at ``path``. Never raises; see the module docstring."""
    path = Path(path)
    try:
        info = _extract(path)
    except Exception as exc:  # the guarantee: a bug in a reader is still only an error text
        info = MediaInfo(error=f"metadata reader failed: {_describe(exc)}")
    if info.error and "/" in info.error:
        info = dataclasses.replace(info, error=_without_directories(info.error, path))
    return info


def _without_directories(text: str, path: Path) -> str:
    """An error text naming the file by its name, not by where it is on this machine (an
    ``OSError`` and some readers quote the full path): the text goes into the catalog and
    the manifest, which hold no host paths."""
    for full in sorted({str(path), os.path.abspath(path), os.path.realpath(path)}, key=len, reverse=True):
        text = text.replace(full, path.name)
    return text


def _extract(path: Path) -> MediaInfo:
    kind = kind_of(path)
    if kind in ("sidecar", "other"):
        return MediaInfo(error=f"unsupported format {path.suffix.lower() or '(no extension)'}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        return MediaInfo(error=f"cannot read: {_describe(exc)}")
    if size == 0:
        return MediaInfo(error="zero-byte file")

    if kind == "video":
        readers: list[Callable[[Path], dict[str, Any]]] = [_read_video, _read_exiv2]
    else:
        readers = [_read_exiv2, _read_exifread, _read_pillow]
    fields: dict[str, Any] = {}
    problems: list[str] = []
    for reader in readers:
        if _is_complete(fields):
            break
        try:
            found = reader(path)
        except Exception as exc:
            problems.append(f"{reader.__name__.removeprefix('_read_')}: {_describe(exc)}")
            continue
        for key, value in found.items():
            fields.setdefault(key, value)
    # exiftool knows maker-note dates and formats the libraries do not; it is a separate
    # process (about 0.2 s), so it is asked only about still undated files that are real
    # images to the libraries (a date in a maker note) or of the formats they cover least —
    # never about every unreadable file of an import.
    if "taken_at" not in fields and (fields or _has_format_signature(path)) and find_exiftool():
        try:
            for key, value in _read_exiftool(path).items():
                fields.setdefault(key, value)
        except Exception as exc:
            problems.append(f"exiftool: {_describe(exc)}")

    info = MediaInfo(**fields)
    error = None
    if kind == "jpeg" and _is_truncated_jpeg(path):
        error = "truncated JPEG"
    elif not info.has_capture_data():
        if problems and not fields:
            error = "unreadable: " + "; ".join(problems)
        elif kind == "video":
            error = "no capture time found"
        elif any(key in fields for key in ("orientation", "gps", "lens_model", "camera_serial")):
            error = "EXIF has no capture time or camera"
        else:
            error = "no EXIF"
    return dataclasses.replace(info, error=error)


def _is_complete(fields: Mapping[str, Any]) -> bool:
    return all(key in fields for key in ("taken_at", "camera_make", "camera_model", "width"))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_truncated_jpeg(path: Path) -> bool:
    """A JPEG whose last 4 KiB hold no end-of-image marker was cut off. (FF D9 cannot occur
    inside entropy-coded data; cameras that append data after EOI append little.)"""
    with path.open("rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        f.seek(max(0, path.stat().st_size - 4096))
        return b"\xff\xd9" not in f.read()


# --- turning tag values into fields ------------------------------------------------------
#
# Each reader returns the tags it found under their EXIF names (``Make``,
# ``DateTimeOriginal``, ``GPSLatitude`` …): text as ``str``, integers as ``int``, rationals
# as tuples of ``Fraction``. ``_fields_from_tags`` is the one place that interprets them.

_DATETIME = re.compile(
    r"(\d{4})[:\-](\d\d)[:\-](\d\d)[ T](\d\d):(\d\d):(\d\d)"
    r"(?:\.(\d+))?\s*(Z|[+-]\d\d:?\d\d)?"
)
_OFFSET = re.compile(r"([+-])(\d\d):?(\d\d)|Z")


def _iso_datetime(value: Any, subsec: Any = None, offset: Any = None) -> str | None:
    """``2024:06:01 14:03:07`` + ``25`` + ``+02:00`` → ``2024-06-01T14:03:07.25+02:00``.

    Also takes XMP/ISO dates that carry their own fraction and zone; separate ``subsec``
    and ``offset`` values (the EXIF 2.31 tags) win over those. Placeholder dates
    (``0000:00:00 …``, blanks) and impossible ones give ``None``.
    """
    if not isinstance(value, str):
        return None
    m = _DATETIME.match(value.strip())
    if not m:
        return None
    try:
        moment = dt.datetime(*(int(g) for g in m.groups()[:6]))
    except ValueError:
        return None
    text = moment.isoformat()
    if isinstance(subsec, int):
        subsec = str(subsec)
    subsec = subsec.strip() if isinstance(subsec, str) else ""
    subsec = subsec if subsec.isdigit() else m.group(7)
    if subsec:
        text += "." + subsec
    zone = _OFFSET.fullmatch(offset.strip()) if isinstance(offset, str) else None
    zone = zone or (_OFFSET.fullmatch(m.group(8)) if m.group(8) else None)
    if zone and zone.group(0) == "Z":
        text += "+00:00"
    elif zone and int(zone.group(2)) <= 14 and int(zone.group(3)) < 60:
        text += f"{zone.group(1)}{zone.group(2)}:{zone.group(3)}"
    return text


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = value.replace("\x00", " ").strip()
    return value or None


def _int(value: Any) -> int | None:
    if isinstance(value, (tuple, list)):
        value = value[0] if value else None
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError, ZeroDivisionError):
        return None


def _degrees(value: Any, ref: Any, negative_refs: str) -> float | None:
    """Degrees, minutes, seconds rationals and an N/S or E/W ref → signed degrees."""
    if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= 3:
        return None
    try:
        parts = [Fraction(v) for v in value]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    degrees = float(sum(p / 60**i for i, p in enumerate(parts)))
    ref = _text(ref)
    if ref and ref[0].upper() in negative_refs:
        degrees = -degrees
    return degrees


def _fields_from_tags(tags: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    taken_at = _iso_datetime(
        tags.get("DateTimeOriginal"), tags.get("SubSecTimeOriginal"),
        tags.get("OffsetTimeOriginal"),
    ) or _iso_datetime(
        tags.get("DateTimeDigitized"), tags.get("SubSecTimeDigitized"),
        tags.get("OffsetTimeDigitized"),
    )
    if taken_at:
        fields["taken_at"] = taken_at
    for field, tag in (("camera_make", "Make"), ("camera_model", "Model"),
                       ("camera_serial", "BodySerialNumber"), ("lens_model", "LensModel")):
        value = _text(tags.get(tag))
        if value is None and isinstance(tags.get(tag), int):
            value = str(tags[tag])  # maker-note serial numbers are often integers
        if value:
            fields[field] = value
    orientation = _int(tags.get("Orientation"))
    if orientation is not None and 1 <= orientation <= 8:
        fields["orientation"] = orientation
    for field, tag in (("width", "ImageWidth"), ("height", "ImageHeight")):
        value = _int(tags.get(tag))
        if value is not None and 0 < value < 1 << 31:
            fields[field] = value
    lat = _degrees(tags.get("GPSLatitude"), tags.get("GPSLatitudeRef"), "S")
    lon = _degrees(tags.get("GPSLongitude"), tags.get("GPSLongitudeRef"), "W")
    if lat is not None and lon is not None and abs(lat) <= 90 and abs(lon) <= 180:
        gps = {"lat": round(lat, 7), "lon": round(lon, 7)}
        alt = tags.get("GPSAltitude")
        try:
            alt = float(Fraction(alt[0] if isinstance(alt, (tuple, list)) else alt))
        except (TypeError, ValueError, ZeroDivisionError, IndexError):
            alt = None
        if alt is not None:
            gps["alt"] = round(-alt if _int(tags.get("GPSAltitudeRef")) == 1 else alt, 3)
        fields["gps"] = gps
    return fields


# --- readers -------------------------------------------------------------------------------

# exiv2 keys per EXIF name, first found wins. Maker-note keys catch cameras that keep the
# serial number or lens name only there.
_EXIV2_KEYS: dict[str, tuple[str, ...]] = {
    "DateTimeOriginal": ("Exif.Photo.DateTimeOriginal",),
    "SubSecTimeOriginal": ("Exif.Photo.SubSecTimeOriginal",),
    "OffsetTimeOriginal": ("Exif.Photo.OffsetTimeOriginal",),
    "DateTimeDigitized": ("Exif.Photo.DateTimeDigitized",),
    "SubSecTimeDigitized": ("Exif.Photo.SubSecTimeDigitized",),
    "OffsetTimeDigitized": ("Exif.Photo.OffsetTimeDigitized",),
    "Make": ("Exif.Image.Make",),
    "Model": ("Exif.Image.Model",),
    "BodySerialNumber": (
        "Exif.Photo.BodySerialNumber", "Exif.Image.CameraSerialNumber",
        "Exif.Canon.SerialNumber", "Exif.Nikon3.SerialNumber", "Exif.Fujifilm.SerialNumber",
        "Exif.OlympusEq.SerialNumber", "Exif.Pentax.SerialNumber",
        "Exif.PentaxDng.SerialNumber",
    ),
    "LensModel": (
        "Exif.Photo.LensModel", "Exif.Canon.LensModel", "Exif.OlympusEq.LensModel",
        "Exif.Panasonic.LensType",
    ),
    "Orientation": ("Exif.Image.Orientation",),
    "GPSLatitude": ("Exif.GPSInfo.GPSLatitude",),
    "GPSLatitudeRef": ("Exif.GPSInfo.GPSLatitudeRef",),
    "GPSLongitude": ("Exif.GPSInfo.GPSLongitude",),
    "GPSLongitudeRef": ("Exif.GPSInfo.GPSLongitudeRef",),
    "GPSAltitude": ("Exif.GPSInfo.GPSAltitude",),
    "GPSAltitudeRef": ("Exif.GPSInfo.GPSAltitudeRef",),
    "PixelXDimension": ("Exif.Photo.PixelXDimension",),
    "PixelYDimension": ("Exif.Photo.PixelYDimension",),
}
_EXIV2_TEXT_TYPES = frozenset({"Ascii", "Undefined", "Comment"})
_EXIV2_RATIONAL_TYPES = frozenset({"Rational", "SRational"})


def _exiv2_value(datum: Any) -> Any:
    type_name = datum.typeName()
    if type_name in _EXIV2_RATIONAL_TYPES:
        return tuple(Fraction(*datum.toRational(i)) for i in range(min(datum.count(), 3)))
    if type_name in _EXIV2_TEXT_TYPES or datum.count() != 1:
        return datum.toString()
    if type_name in ("Float", "Double"):
        return datum.toFloat(0)
    return int(datum.toInt64(0))


def _open_exiv2(path: Path) -> Any:
    """Open and parse with exiv2; the caller holds ``EXIV2_LOCK`` while using the result."""
    image = exiv2.ImageFactory.open(str(path))
    image.readMetadata()
    return image


def _read_exiv2(path: Path) -> dict[str, Any]:
    with EXIV2_LOCK:
        return _read_exiv2_locked(path)


def _read_exiv2_locked(path: Path) -> dict[str, Any]:
    image = _open_exiv2(path)
    exif = image.exifData()
    tags: dict[str, Any] = {}
    for name, keys in _EXIV2_KEYS.items():
        for key in keys:
            try:
                if key in exif:
                    tags[name] = _exiv2_value(exif[key])
                    break
            except Exception:  # an unknown maker-note key or a malformed value
                continue
    width, height = image.pixelWidth(), image.pixelHeight()
    tags["ImageWidth"] = width or tags.get("PixelXDimension")
    tags["ImageHeight"] = height or tags.get("PixelYDimension")
    fields = _fields_from_tags(tags)
    if "taken_at" not in fields:
        fields.update(_exiv2_xmp_fields(image))
    return fields


# Capture time in XMP, for files whose EXIF lacks it (edited JPEGs; exiv2's QuickTime and
# Matroska readers also report here). Never xmp:ModifyDate or EXIF DateTime: those change
# when a file is edited.
_XMP_DATE_KEYS = (
    "Xmp.exif.DateTimeOriginal", "Xmp.photoshop.DateCreated", "Xmp.xmp.CreateDate",
    "Xmp.video.DateTimeOriginal", "Xmp.video.DateUTC",
)


def _exiv2_xmp_fields(image: Any) -> dict[str, Any]:
    xmp = image.xmpData()
    fields: dict[str, Any] = {}
    for key in _XMP_DATE_KEYS:
        if key in xmp:
            taken_at = _iso_datetime(xmp[key].toString())
            if taken_at:
                fields["taken_at"] = taken_at
                break
    for field, keys in (("camera_make", ("Xmp.tiff.Make", "Xmp.video.Make")),
                        ("camera_model", ("Xmp.tiff.Model", "Xmp.video.Model"))):
        for key in keys:
            if key in xmp and _text(xmp[key].toString()):
                fields[field] = _text(xmp[key].toString())
                break
    return fields


_EXIFREAD_TAGS = {
    "EXIF DateTimeOriginal": "DateTimeOriginal",
    "EXIF SubSecTimeOriginal": "SubSecTimeOriginal",
    "EXIF OffsetTimeOriginal": "OffsetTimeOriginal",
    "EXIF DateTimeDigitized": "DateTimeDigitized",
    "EXIF SubSecTimeDigitized": "SubSecTimeDigitized",
    "EXIF OffsetTimeDigitized": "OffsetTimeDigitized",
    "Image Make": "Make",
    "Image Model": "Model",
    "EXIF BodySerialNumber": "BodySerialNumber",
    "EXIF LensModel": "LensModel",
    "Image Orientation": "Orientation",
    "GPS GPSLatitude": "GPSLatitude",
    "GPS GPSLatitudeRef": "GPSLatitudeRef",
    "GPS GPSLongitude": "GPSLongitude",
    "GPS GPSLongitudeRef": "GPSLongitudeRef",
    "GPS GPSAltitude": "GPSAltitude",
    "GPS GPSAltitudeRef": "GPSAltitudeRef",
    "EXIF ExifImageWidth": "ImageWidth",
    "EXIF ExifImageLength": "ImageHeight",
}


def _read_exifread(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        found = exifread.process_file(f, details=False, extract_thumbnail=False)
    tags: dict[str, Any] = {}
    for exifread_name, name in _EXIFREAD_TAGS.items():
        tag = found.get(exifread_name)
        if tag is None:
            continue
        values = tag.values
        if isinstance(values, (list, tuple)):
            if values and all(isinstance(v, Fraction) for v in values):
                values = tuple(values)
            elif len(values) == 1:
                values = values[0]
        tags[name] = values
    return _fields_from_tags(tags)


# Pillow tag numbers: IFD0, the Exif IFD (0x8769) and the GPS IFD (0x8825).
_PILLOW_IFD0 = {0x010F: "Make", 0x0110: "Model", 0x0112: "Orientation"}
_PILLOW_EXIF_IFD = {
    0x9003: "DateTimeOriginal", 0x9291: "SubSecTimeOriginal", 0x9011: "OffsetTimeOriginal",
    0x9004: "DateTimeDigitized", 0x9292: "SubSecTimeDigitized", 0x9012: "OffsetTimeDigitized",
    0xA431: "BodySerialNumber", 0xA434: "LensModel",
}
_PILLOW_GPS_IFD = {
    1: "GPSLatitudeRef", 2: "GPSLatitude", 3: "GPSLongitudeRef", 4: "GPSLongitude",
    5: "GPSAltitudeRef", 6: "GPSAltitude",
}


def _pillow_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return tuple(Fraction(v.numerator, v.denominator) for v in value)
    if hasattr(value, "denominator") and not isinstance(value, int):
        return (Fraction(value.numerator, value.denominator),)
    return value


def _read_pillow(path: Path) -> dict[str, Any]:
    """Header-only: Image.open parses headers, no pixels are decoded."""
    with Image.open(path) as image:
        exif = image.getexif()
        tags: dict[str, Any] = {"ImageWidth": image.width, "ImageHeight": image.height}
        sources = ((exif, _PILLOW_IFD0), (exif.get_ifd(0x8769), _PILLOW_EXIF_IFD),
                   (exif.get_ifd(0x8825), _PILLOW_GPS_IFD))
        for ifd, names in sources:
            for number, name in names.items():
                if number in ifd:
                    tags[name] = _pillow_value(ifd[number])
    return _fields_from_tags(tags)


# --- video ---------------------------------------------------------------------------------

_QUICKTIME_EPOCH = dt.datetime(1904, 1, 1, tzinfo=dt.timezone.utc)
_CONTAINER_ATOMS = {b"moov", b"trak", b"mdia", b"edts"}
_MDPM_MARKER = bytes.fromhex("17ee8c60f84d11d98cd60800200c9a66") + b"MDPM"


def _read_video(path: Path) -> dict[str, Any]:
    if path.suffix.lower() in (".mts", ".m2ts"):
        return _read_avchd(path)
    return _read_quicktime(path)


def _read_quicktime(path: Path) -> dict[str, Any]:
    """Capture time from ``moov/mvhd`` (seconds since 1904-01-01 UTC, so the result carries
    ``+00:00``) and the frame size from the first video ``tkhd``. Only atom headers are
    read; ``mdat`` is skipped by seeking."""
    fields: dict[str, Any] = {}
    with path.open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        for atom, start, length in _walk_atoms(f, 0, size):
            if atom == b"mvhd" and "taken_at" not in fields:
                f.seek(start)
                header = f.read(min(length, 32))
                if header[:1] == b"\x01":
                    seconds = struct.unpack(">Q", header[4:12])[0]
                else:
                    seconds = struct.unpack(">I", header[4:8])[0]
                if seconds:
                    moment = _QUICKTIME_EPOCH + dt.timedelta(seconds=seconds)
                    fields["taken_at"] = moment.replace(tzinfo=None).isoformat() + "+00:00"
            elif atom == b"tkhd" and "width" not in fields and length >= 84:
                f.seek(start + length - 8)
                width, height = struct.unpack(">II", f.read(8))
                if width >> 16 and height >> 16:  # 16.16 fixed point; audio tracks are 0
                    fields["width"], fields["height"] = width >> 16, height >> 16
    if not fields and size:
        raise ValueError("no moov/mvhd atom")
    return fields


def _walk_atoms(f: Any, start: int, end: int, depth: int = 0) -> Iterable[tuple[bytes, int, int]]:
    """Yield (type, payload offset, payload length) of the atoms between start and end,
    descending into containers. Stops quietly at a malformed size."""
    offset = start
    while offset + 8 <= end and depth < 6:
        f.seek(offset)
        header = f.read(8)
        if len(header) < 8:
            return
        length, atom = struct.unpack(">I4s", header)
        header_size = 8
        if length == 1:
            big = f.read(8)
            if len(big) < 8:
                return
            length, header_size = struct.unpack(">Q", big)[0], 16
        elif length == 0:
            length = end - offset
        if length < header_size or offset + length > end:
            return
        if atom in _CONTAINER_ATOMS:
            yield from _walk_atoms(f, offset + header_size, offset + length, depth + 1)
        else:
            yield atom, offset + header_size, length - header_size
        offset += length


def _bcd(byte: int) -> int:
    return (byte >> 4) * 10 + (byte & 0x0F)


def _read_avchd(path: Path, limit: int = 8 << 20) -> dict[str, Any]:
    """AVCHD cameras record the local capture time with its UTC offset in an ``MDPM``
    user-data block of the H.264 stream, repeated in every GOP; the first one is enough.
    Tag 0x18 holds the zone byte and year/month, tag 0x19 day and time, all BCD."""
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        at = data.find(_MDPM_MARKER, 0, limit)
        if at < 0:
            raise ValueError("no MDPM capture-time block")
        at += len(_MDPM_MARKER)
        count = data[at]
        entries = {data[at + 1 + 5 * i]: data[at + 2 + 5 * i: at + 6 + 5 * i]
                   for i in range(count) if at + 6 + 5 * i <= len(data)}
    if 0x18 not in entries or 0x19 not in entries:
        raise ValueError("MDPM block without capture time")
    zone, year_hi, year_lo, month = entries[0x18]
    day, hour, minute, second = entries[0x19]
    text = (f"{_bcd(year_hi):02d}{_bcd(year_lo):02d}:{_bcd(month):02d}:{_bcd(day):02d} "
            f"{_bcd(hour):02d}:{_bcd(minute):02d}:{_bcd(second):02d}")
    sign = "-" if zone & 0x20 else "+"
    offset = f"{sign}{(zone >> 1) & 0x0F:02d}:{'30' if zone & 0x01 else '00'}"
    taken_at = _iso_datetime(text, None, offset if zone != 0xFF else None)
    return {"taken_at": taken_at} if taken_at else {}


# --- optional exiftool ---------------------------------------------------------------------

_EXIFTOOL_ARGS = (
    "-json", "-n", "-api", "LargeFileSupport=1", "-DateTimeOriginal", "-SubSecTimeOriginal",
    "-OffsetTimeOriginal", "-CreateDate", "-Make", "-Model", "-SerialNumber", "-LensModel",
    "-Orientation", "-ImageWidth", "-ImageHeight", "-Composite:GPSLatitude",
    "-Composite:GPSLongitude", "-Composite:GPSAltitude",
)


# formats whose capture time the libraries above often miss (exifread cannot read them;
# exiv2 only partly), and video containers other than the MP4/MOV/MTS parsed here
# Each with the bytes its files start with (at the given offset): a file of random bytes
# that merely carries the extension costs no exiftool process.
EXIFTOOL_FORMATS: dict[str, tuple[tuple[int, bytes], ...]] = {
    ".x3f": ((0, b"FOVb"),),
    ".iiq": ((0, b"II*\x00"), (0, b"MM\x00*")),
    ".cr3": ((4, b"ftypcrx"),),
    ".crw": ((6, b"HEAPCCDR"),),
    ".raf": ((0, b"FUJIFILMCCD-RAW"),),
    ".mrw": ((0, b"\x00MRM"),),
    ".avi": ((0, b"RIFF"),),
    ".mkv": ((0, b"\x1a\x45\xdf\xa3"),),
    ".3gp": ((4, b"ftyp"),),
    ".m4v": ((4, b"ftyp"),),
    ".mpg": ((0, b"\x00\x00\x01\xba"), (0, b"\x00\x00\x01\xb3")),
}


def _has_format_signature(path: Path) -> bool:
    """Does the file start like a real file of one of the EXIFTOOL_FORMATS?"""
    signatures = EXIFTOOL_FORMATS.get(path.suffix.lower())
    if not signatures:
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return False
    return any(head[offset:offset + len(magic)] == magic for offset, magic in signatures)


@functools.lru_cache(maxsize=1)
def find_exiftool() -> str | None:
    """Path of the exiftool program, looked up once; None where it is not installed."""
    return shutil.which("exiftool")


def _read_exiftool(path: Path, timeout: float = 30.0) -> dict[str, Any]:
    """Last resort for formats the libraries do not read (X3F, IIQ, odd videos). Optional:
    only called when exiftool is on PATH."""
    done = subprocess.run(
        [find_exiftool() or "exiftool", *_EXIFTOOL_ARGS, "--", str(path)],
        capture_output=True, timeout=timeout, check=False,
    )
    record = json.loads(done.stdout or b"[{}]")[0]
    fields = _fields_from_tags({
        "DateTimeOriginal": _exiftool_str(record.get("DateTimeOriginal")),
        "SubSecTimeOriginal": _exiftool_str(record.get("SubSecTimeOriginal")),
        "OffsetTimeOriginal": _exiftool_str(record.get("OffsetTimeOriginal")),
        "DateTimeDigitized": _exiftool_str(record.get("CreateDate")),
        "Make": _exiftool_str(record.get("Make")),
        "Model": _exiftool_str(record.get("Model")),
        "BodySerialNumber": _exiftool_str(record.get("SerialNumber")),
        "LensModel": _exiftool_str(record.get("LensModel")),
        "Orientation": record.get("Orientation"),
        "ImageWidth": record.get("ImageWidth"),
        "ImageHeight": record.get("ImageHeight"),
    })
    lat, lon = record.get("GPSLatitude"), record.get("GPSLongitude")
    if isinstance(lat, (int, float)) and isinstance(lon, (int, float)):
        fields["gps"] = {"lat": float(lat), "lon": float(lon)}
        if isinstance(record.get("GPSAltitude"), (int, float)):
            fields["gps"]["alt"] = float(record["GPSAltitude"])
    return fields


def _exiftool_str(value: Any) -> str | None:
    return None if value is None else str(value)
