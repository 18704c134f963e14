"""Build small real image files with chosen EXIF tags, for media and thumbnail tests."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

from PIL import Image, TiffImagePlugin

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
MAKE, MODEL, ORIENTATION, DATETIME = 0x010F, 0x0110, 0x0112, 0x0132
DATETIME_ORIGINAL, SUBSEC_ORIGINAL, OFFSET_ORIGINAL = 0x9003, 0x9291, 0x9011
BODY_SERIAL, LENS_MODEL = 0xA431, 0xA434


def _rational(value: float | Fraction) -> TiffImagePlugin.IFDRational:
    f = Fraction(value).limit_denominator(1_000_000)
    return TiffImagePlugin.IFDRational(f.numerator, f.denominator)


def _dms(degrees: float) -> tuple:
    degrees = abs(degrees)
    d = int(degrees)
    m = int((degrees - d) * 60)
    s = (degrees - d - m / 60) * 3600
    return (_rational(d), _rational(m), _rational(Fraction(s).limit_denominator(10000)))


def make_exif(
    *,
    taken: str | None = None,
    subsec: str | None = None,
    offset: str | None = None,
    make: str | None = None,
    model: str | None = None,
    serial: str | None = None,
    lens: str | None = None,
    orientation: int | None = None,
    gps: tuple[float, float] | tuple[float, float, float] | None = None,
    modified: str | None = None,
) -> Image.Exif:
    """An EXIF block with exactly the given tags (``taken`` as ``YYYY:MM:DD HH:MM:SS``;
    ``gps`` as signed degrees, optional altitude in metres)."""
    exif = Image.Exif()
    for tag, value in ((MAKE, make), (MODEL, model), (ORIENTATION, orientation),
                       (DATETIME, modified)):
        if value is not None:
            exif[tag] = value
    sub = {DATETIME_ORIGINAL: taken, SUBSEC_ORIGINAL: subsec, OFFSET_ORIGINAL: offset,
           BODY_SERIAL: serial, LENS_MODEL: lens}
    if any(v is not None for v in sub.values()):
        ifd = exif.get_ifd(EXIF_IFD)
        for tag, value in sub.items():
            if value is not None:
                ifd[tag] = value
    if gps is not None:
        ifd = exif.get_ifd(GPS_IFD)
        ifd[0] = b"\x02\x03\x00\x00"
        ifd[1], ifd[2] = ("S" if gps[0] < 0 else "N"), _dms(gps[0])
        ifd[3], ifd[4] = ("W" if gps[1] < 0 else "E"), _dms(gps[1])
        if len(gps) == 3:
            ifd[5] = b"\x01" if gps[2] < 0 else b"\x00"
            ifd[6] = _rational(abs(gps[2]))
    return exif


def marked_image(width: int, height: int) -> Image.Image:
    """An RGB image whose top-left quadrant is red and the rest blue, so a test can tell
    which way it was turned."""
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height // 2))
    return image


def write_jpeg(path: Path, width: int = 64, height: int = 48, exif: Image.Exif | None = None,
               image: Image.Image | None = None) -> Path:
    image = image or marked_image(width, height)
    image.save(path, "JPEG", quality=90, exif=exif if exif is not None else Image.Exif())
    return path


def write_tiff(path: Path, width: int = 64, height: int = 48, exif: Image.Exif | None = None,
               pages: int = 1) -> Path:
    """An uncompressed RGB TIFF. Pillow's TIFF writer drops the Exif and GPS sub-IFDs, so
    with ``exif`` the file is assembled here: the EXIF block, which is itself TIFF-shaped,
    becomes the file's header and IFD0, and the pixel strip follows it. With ``pages`` > 1
    (and no ``exif``) Pillow writes a multi-page TIFF whose later pages are green."""
    first = marked_image(width, height)
    if exif is None:
        extra = [Image.new("RGB", (width * 2, height * 2), "green") for _ in range(pages - 1)]
        first.save(path, "TIFF", save_all=pages > 1, append_images=extra)
        return path
    pixels = first.tobytes()
    layout = {0x0100: width, 0x0101: height, 0x0102: (8, 8, 8), 0x0103: 1, 0x0106: 2,
              0x0111: 0, 0x0115: 3, 0x0116: height, 0x0117: len(pixels), 0x011C: 1}
    for tag, value in layout.items():
        exif[tag] = value
    # Pillow points StripOffsets just past the IFD data it writes: where the pixels go.
    path.write_bytes(exif.tobytes()[len(b"Exif\0\0"):] + pixels)
    return path


def jpeg_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    marked_image(width, height).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


def write_fake_raw(path: Path, preview: tuple[int, int] = (160, 120),
                   exif: Image.Exif | None = None) -> Path:
    """A TIFF-structured file (as most RAW formats are) carrying EXIF and, after its
    small main image, an embedded JPEG preview: stands in for a camera RAW file."""
    write_tiff(path, 8, 6, exif=exif if exif is not None else Image.Exif())
    with path.open("ab") as f:
        f.write(b"\x00" * 16 + jpeg_bytes(*preview) + b"\x00" * 16)
    return path
