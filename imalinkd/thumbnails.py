"""Small JPEG previews of archived photos, and which file of a Photo to take them from.

``make_thumbnail`` decodes as little as it can: a JPEG is decoded at 1/2, 1/4 or 1/8 scale
(``Image.draft``), a RAW file is never demosaiced (its embedded JPEG preview is used), a
big TIFF or PNG is shrunk by integer ``reduce`` before resampling. Pillow's
decompression-bomb limit stays on (``Image.MAX_IMAGE_PIXELS``): an image declaring more
pixels is refused before any pixel is decoded, so memory stays bounded by that limit.

Guarantee: for anything a source file can contain, ``make_thumbnail`` returns a
``ThumbnailResult`` and does not raise; when it returns ``ok`` the thumbnail is complete
under ``dest`` and survives power loss (written through ``durable``), and when it does
not, ``dest`` is untouched.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from imalinkd import durable, media

JPEG_QUALITY = 85
_PREVIEW_SCAN_LIMIT = 256 << 20  # a RAW file's embedded JPEGs sit well inside this
_PREVIEW_MAX_BYTES = 64 << 20

# ImageOps.exif_transpose's table: EXIF orientation → the transpose that displays upright.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_UNDO = {**_TRANSPOSE, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


@dataclass(frozen=True)
class ThumbnailResult:
    """What ``make_thumbnail`` did. ``source`` names what was decoded (``image``,
    ``raw-preview``); ``reason`` says why ``ok`` is false."""

    ok: bool
    dest: Path | None = None
    width: int | None = None
    height: int | None = None
    source: str | None = None
    reason: str | None = None


class _Refused(Exception):
    """A source that cannot or must not be decoded; the message is the result's reason."""


def make_thumbnail(
    src: str | os.PathLike,
    dest: str | os.PathLike,
    size: int = 512,
    orientation: int | None = None,
) -> ThumbnailResult:
    """Write a JPEG of ``src`` at ``dest`` whose longest side is ``size`` (smaller images
    keep their size: never upscaled), displayed upright.

    ``orientation`` (EXIF 1–8) overrides what the file says; pass the value from
    ``extract_media`` of the Photo's best member when the thumbnail comes from another
    member (a RAW's preview carries no orientation of its own; the RAW's is read when none
    is given). Missing parent directories of ``dest`` are created.
    """
    src, dest = Path(src), Path(dest)
    if size < 1:
        return ThumbnailResult(False, reason=f"invalid thumbnail size {size}")
    try:
        with _open_source(src) as (image, source, recorded):
            thumb, applied = _shrink(image, size)
        wanted = orientation if orientation in range(1, 9) else recorded
        thumb = _reorient(thumb, applied, wanted)
        _write_jpeg_atomically(thumb, dest)
        return ThumbnailResult(True, dest, thumb.width, thumb.height, source)
    except _Refused as exc:
        return ThumbnailResult(False, reason=str(exc))
    except Image.DecompressionBombError:
        return ThumbnailResult(False, reason="refused: decompression bomb")
    except Exception as exc:  # the guarantee: a bad file is a result, never an exception
        return ThumbnailResult(False, reason=f"cannot decode {src.name}: {_describe(exc)}")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


@contextlib.contextmanager
def _open_source(src: Path) -> Iterator[tuple[Image.Image, str, int | None]]:
    """Yield the image to shrink, what it is, and the orientation its file records."""
    kind = media.kind_of(src)
    if kind in ("video", "sidecar"):
        raise _Refused(f"unsupported: no thumbnails of {kind} files")
    if src.stat().st_size == 0:
        raise _Refused("zero-byte file")
    if kind == "raw":
        preview = _raw_preview(src)
        if preview is None:
            raise _Refused("no embedded preview in RAW file")
        with _open_image(io.BytesIO(preview), src) as image:
            yield image, "raw-preview", _raw_orientation(src)
        return
    try:
        opened = _open_image(src, src)
    except Image.UnidentifiedImageError:
        if kind == "heic":
            raise _Refused("unsupported: HEIC needs a Pillow HEIF plugin") from None
        raise _Refused(f"unsupported: not an image Pillow can read ({src.suffix})") from None
    with opened as image:
        yield image, "image", image.getexif().get(0x0112)


def _open_image(fp: Path | io.BytesIO, src: Path) -> Image.Image:
    """``Image.open`` plus the bomb check at ``MAX_IMAGE_PIXELS`` itself: Pillow only
    raises above twice that, and warns (a process-global thing to filter) in between."""
    image = Image.open(fp)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        image.close()
        raise Image.DecompressionBombError(f"{src.name}: {image.width}x{image.height}")
    return image


def _shrink(image: Image.Image, size: int) -> tuple[Image.Image, int | None]:
    """Decode ``image`` at the smallest scale that still covers ``size``, then resample.
    The first frame of a multi-page TIFF is the one that is used.

    Also returns the EXIF orientation Pillow already applied while loading (recent Pillow
    does that for TIFF, and drops the tag), so that it is not applied twice.
    """
    before = image.getexif().get(0x0112)
    if image.format == "JPEG":
        # DCT scaling decodes 1/2, 1/4 or 1/8 of it. The box keeps the aspect ratio: asking
        # for (size, size) would make the short side decide and decode twice the pixels.
        w, h = image.size
        scale = size / max(w, h, 1)
        image.draft("RGB", (max(1, int(w * scale)), max(1, int(h * scale))))
    image.load()
    after = image.getexif().get(0x0112)
    applied = before if before in _TRANSPOSE and after != before else None
    factor = max(image.size) // (2 * size)  # leave LANCZOS at least 2x to work with
    if factor > 1:
        image = image.reduce(factor)
    image = _to_rgb(image)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image, applied


def _reorient(image: Image.Image, applied: int | None, wanted: int | None) -> Image.Image:
    """Turn ``image``, already turned for orientation ``applied``, to show ``wanted``."""
    if applied == wanted or (applied is None and wanted not in _TRANSPOSE):
        return image
    if applied is not None:
        image = image.transpose(_UNDO[applied])
    return image.transpose(_TRANSPOSE[wanted]) if wanted in _TRANSPOSE else image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v / 256).convert("L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, "white")
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


def _write_jpeg_atomically(image: Image.Image, dest: Path) -> None:
    """Encode in memory (a thumbnail is tens of kilobytes) and hand the bytes to
    ``durable.atomic_write_bytes``: after it returns, the thumbnail and its name survive
    power loss; on failure ``dest`` is as before and no temp file is left."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    durable.atomic_write_bytes(dest, buffer.getvalue())


# --- RAW previews --------------------------------------------------------------------------

def _raw_preview(src: Path) -> bytes | None:
    """The largest JPEG preview embedded in a RAW file: exiv2's PreviewManager knows where
    each maker puts it; for files it cannot parse (CR3 on some builds, X3F, IIQ) the
    largest embedded JPEG found by scanning for JPEG headers."""
    with contextlib.suppress(Exception), media.EXIV2_LOCK:
        image = media._open_exiv2(src)
        manager = media.exiv2.PreviewManager(image)
        previews = [p for p in manager.getPreviewProperties() if p.mimeType_ == "image/jpeg"]
        if previews:
            best = max(previews, key=lambda p: p.width_ * p.height_)
            data = bytes(manager.getPreviewImage(best).pData())
            if _jpeg_size(data, 0) is not None:
                return data
    return _largest_embedded_jpeg(src)


def _raw_orientation(src: Path) -> int | None:
    return media.extract_media(src).orientation


def has_preview(src: str | os.PathLike) -> bool:
    """Whether a thumbnail can be made from ``src`` without decoding RAW sensor data."""
    src = Path(src)
    if media.kind_of(src) != "raw":
        return media.kind_of(src) in ("jpeg", "tiff")
    try:
        return _raw_preview(src) is not None
    except Exception:
        return False


def _largest_embedded_jpeg(src: Path) -> bytes | None:
    best: tuple[int, int] | None = None  # (pixels, offset)
    with src.open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            end = min(len(data), _PREVIEW_SCAN_LIMIT)
            at = data.find(b"\xff\xd8\xff", 0, end)
            while at >= 0:
                dims = _jpeg_size(data, at)
                if dims and (best is None or dims[0] * dims[1] > best[0]):
                    best = (dims[0] * dims[1], at)
                at = data.find(b"\xff\xd8\xff", at + 3, end)
            if best is None:
                return None
            # Pillow stops at the preview's own end-of-image marker; a preview is far
            # smaller than this bound, which keeps the copy small.
            return bytes(data[best[1]:min(end, best[1] + _PREVIEW_MAX_BYTES)])


def _jpeg_size(data: bytes | mmap.mmap, at: int) -> tuple[int, int] | None:
    """Width and height from the SOF marker of the JPEG starting at ``at``, or None if
    the bytes there are not a plausible baseline/progressive JPEG header."""
    if data[at:at + 2] != b"\xff\xd8":
        return None
    pos = at + 2
    for _ in range(64):  # markers before SOF: APPn, DQT, DHT … a handful
        if pos + 4 > len(data) or data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            if pos + 9 > len(data):
                return None
            height = int.from_bytes(data[pos + 5:pos + 7], "big")
            width = int.from_bytes(data[pos + 7:pos + 9], "big")
            return (width, height) if width and height else None
        if marker in (0xC3, 0xD9, 0xDA) or length < 2:
            return None  # lossless (RAW sensor data), end, or scan before any frame header
        pos += 2 + length
    return None


# --- choosing members of a Photo -----------------------------------------------------------

_THUMBNAIL_PREFERENCE = ("jpeg", "raw", "tiff", "heic", "image")
_METADATA_PREFERENCE = ("raw", "jpeg", "heic", "tiff", "video", "image", "other", "sidecar")


def pick_thumbnail_source(members: Iterable[str | os.PathLike]) -> Path | None:
    """Which file of a Photo to make its thumbnail from: the JPEG (the camera already
    rendered it, and it decodes at 1/8 scale), else a RAW with an embedded preview, else a
    TIFF, else a HEIC (only useful where Pillow can read HEIC). None if there is none."""
    by_kind: dict[str, list[Path]] = {}
    for member in sorted(Path(m) for m in members):
        by_kind.setdefault(media.kind_of(member), []).append(member)
    for kind in _THUMBNAIL_PREFERENCE:
        for member in by_kind.get(kind, ()):
            if kind != "raw" or has_preview(member):
                return member
    return None


def best_member(
    members: Iterable[str | os.PathLike],
    infos: Mapping[Path, media.MediaInfo] | None = None,
) -> Path:
    """Which file of a Photo its capture time and camera are taken from.

    The rule: a file that has capture data (when ``infos``, a mapping of member path to
    its ``extract_media`` result, is given) beats one that has none; then by kind, RAW
    first (the camera's complete, never re-saved EXIF), then JPEG, HEIC, TIFF, video,
    anything else, sidecars last; ties go to the first name in sort order, so the choice
    is the same on every run. Raises ``ValueError`` for an empty group.
    """
    paths = sorted(Path(m) for m in members)
    if not paths:
        raise ValueError("a Photo has at least one member")

    infos = {Path(k): v for k, v in (infos or {}).items()}

    def rank(path: Path) -> tuple[int, int]:
        info = infos.get(path)
        lacks_data = 0 if info is None or info.has_capture_data() else 1
        return lacks_data, _METADATA_PREFERENCE.index(media.kind_of(path))

    return min(paths, key=rank)
