"""Behaviour of imalinkd.thumbnails: size, orientation, sources, refusals, atomicity."""

from __future__ import annotations

import os
import random
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from imalinkd import media
from imalinkd.media import MediaInfo
from imalinkd.thumbnails import best_member, make_thumbnail, pick_thumbnail_source
from media_factory import make_exif, marked_image, write_fake_raw, write_jpeg, write_tiff



@pytest.fixture(autouse=True)
def without_exiftool(monkeypatch):
    """exiftool is optional and slow to start: tests run without it unless they ask."""
    monkeypatch.setattr(media, "find_exiftool", lambda: None)


def red_corner(path: Path) -> str:
    """Which corner of a thumbnail of ``marked_image`` is red (the upright top-left)."""
    with Image.open(path) as image:
        w, h = image.size
        corners = {"top-left": (1, 1), "top-right": (w - 2, 1),
                   "bottom-left": (1, h - 2), "bottom-right": (w - 2, h - 2)}
        return next(name for name, xy in corners.items() if image.getpixel(xy)[0] > 200)


# --- size --------------------------------------------------------------------------------

def test_longest_side_is_size(tmp_path):
    src = write_jpeg(tmp_path / "a.jpg", 1600, 1200)
    result = make_thumbnail(src, tmp_path / "t.jpg", size=256)
    assert result.ok and result.source == "image"
    with Image.open(tmp_path / "t.jpg") as thumb:
        assert thumb.format == "JPEG"
        assert thumb.size == (256, 192) == (result.width, result.height)


def test_small_images_are_not_upscaled(tmp_path):
    make_thumbnail(write_jpeg(tmp_path / "a.jpg", 64, 48), tmp_path / "t.jpg", size=512)
    with Image.open(tmp_path / "t.jpg") as thumb:
        assert thumb.size == (64, 48)


def test_big_tiff_is_reduced(tmp_path):
    write_tiff(tmp_path / "big.tif", 3000, 1000)
    result = make_thumbnail(tmp_path / "big.tif", tmp_path / "t.jpg", size=300)
    assert (result.width, result.height) == (300, 100)
    assert red_corner(tmp_path / "t.jpg") == "top-left"


def test_first_page_of_multipage_tiff(tmp_path):
    write_tiff(tmp_path / "pages.tif", 80, 60, pages=3)  # later pages: larger, green
    result = make_thumbnail(tmp_path / "pages.tif", tmp_path / "t.jpg", size=512)
    assert (result.width, result.height) == (80, 60)
    assert red_corner(tmp_path / "t.jpg") == "top-left"


def test_transparent_png_gets_white_background(tmp_path):
    Image.new("RGBA", (20, 10), (0, 0, 0, 0)).save(tmp_path / "a.png")
    assert make_thumbnail(tmp_path / "a.png", tmp_path / "t.jpg").ok
    with Image.open(tmp_path / "t.jpg") as thumb:
        assert thumb.getpixel((5, 5))[0] > 240


def test_sixteen_bit_tiff(tmp_path):
    Image.new("I;16", (30, 20), 40000).save(tmp_path / "a.tif")
    assert make_thumbnail(tmp_path / "a.tif", tmp_path / "t.jpg").ok


# --- orientation -------------------------------------------------------------------------

# How a camera held at each EXIF orientation stores an upright scene: the inverse of the
# transpose that shows orientation N upright.
STORED_AS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(tmp_path, orientation):
    upright = marked_image(120, 80)
    stored = upright.transpose(STORED_AS[orientation]) if orientation > 1 else upright
    for name, writer in (("a.jpg", write_jpeg), ("a.tif", write_tiff)):
        src = tmp_path / name
        if writer is write_jpeg:
            write_jpeg(src, exif=make_exif(orientation=orientation), image=stored)
        else:
            stored.save(src, "TIFF", exif=make_exif(orientation=orientation))
        result = make_thumbnail(src, tmp_path / f"t-{name}.jpg", size=60)
        assert (result.width, result.height) == (60, 40), name
        assert red_corner(tmp_path / f"t-{name}.jpg") == "top-left", name


def test_given_orientation_overrides_the_file(tmp_path):
    src = write_jpeg(tmp_path / "a.jpg", 120, 80, exif=make_exif(orientation=1))
    result = make_thumbnail(src, tmp_path / "t.jpg", size=60, orientation=6)
    assert (result.width, result.height) == (40, 60)
    assert red_corner(tmp_path / "t.jpg") == "top-right"


def test_real_orientation_samples_all_look_like_orientation_1(samples, tmp_path):
    for shape in ("landscape", "portrait"):
        reference = make_thumbnail(samples / "jpg" / "orientation" / f"{shape}_1.jpg", tmp_path / "ref.jpg", size=96)
        with Image.open(tmp_path / "ref.jpg") as ref:
            ref = ref.convert("L")
        for n in range(2, 9):
            result = make_thumbnail(samples / "jpg" / "orientation" / f"{shape}_{n}.jpg", tmp_path / "t.jpg", size=96)
            assert (result.width, result.height) == (reference.width, reference.height)
            with Image.open(tmp_path / "t.jpg") as thumb:
                thumb = thumb.convert("L")

            def distance(image):
                return ImageStat.Stat(ImageChops.difference(ref, image)).mean[0]

            wrong = [thumb.transpose(t) for t in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_180, Image.Transpose.FLIP_TOP_BOTTOM)]
            assert all(distance(thumb) < distance(w) for w in wrong), (shape, n)


# --- RAW, HEIC and other sources -----------------------------------------------------------

def test_raw_uses_embedded_preview_and_raw_orientation(tmp_path):
    src = write_fake_raw(tmp_path / "IMG_0001.CR2", preview=(800, 600), exif=make_exif(orientation=8))
    result = make_thumbnail(src, tmp_path / "t.jpg", size=200)
    assert result.ok and result.source == "raw-preview"
    assert (result.width, result.height) == (150, 200)
    assert red_corner(tmp_path / "t.jpg") == "bottom-left"


def test_raw_without_preview_is_refused(tmp_path):
    write_tiff(tmp_path / "x.NEF", 8, 6, exif=make_exif(make="Nikon"))
    result = make_thumbnail(tmp_path / "x.NEF", tmp_path / "t.jpg")
    assert not result.ok and result.reason == "no embedded preview in RAW file"


def test_heic_without_plugin_is_reported_unsupported(samples, tmp_path):
    result = make_thumbnail(samples / "heic" / "IMG_5195.HEIC", tmp_path / "t.jpg")
    if result.ok:  # a Pillow HEIF plugin is installed here
        assert max(result.width, result.height) == 512
    else:
        assert result.reason.startswith("unsupported: HEIC")
        assert not (tmp_path / "t.jpg").exists()


def test_video_and_sidecar_are_unsupported(tmp_path):
    for name in ("MVI_1.MOV", "IMG_1.XMP"):
        (tmp_path / name).write_bytes(b"data")
        result = make_thumbnail(tmp_path / name, tmp_path / "t.jpg")
        assert not result.ok and result.reason.startswith("unsupported")


# --- broken media ------------------------------------------------------------------------

def tiny_png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width,height", [(100_000, 100_000), (15_000, 15_000)])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused(tmp_path, width, height):
    (tmp_path / "bomb.jpg").write_bytes(tiny_png_declaring(width, height))
    result = make_thumbnail(tmp_path / "bomb.jpg", tmp_path / "t.jpg")
    assert not result.ok and result.reason == "refused: decompression bomb"
    assert Image.MAX_IMAGE_PIXELS is not None


def test_jpeg_declaring_huge_dimensions_is_refused(tmp_path):
    data = bytearray(write_jpeg(tmp_path / "a.jpg", 16, 16).read_bytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    (tmp_path / "huge.jpg").write_bytes(bytes(data))
    result = make_thumbnail(tmp_path / "huge.jpg", tmp_path / "t.jpg")
    assert result.reason == "refused: decompression bomb"


def test_tall_png_named_jpg(tmp_path):
    Image.new("L", (1, 50_000), 128).save(tmp_path / "tall.jpg", "PNG")
    result = make_thumbnail(tmp_path / "tall.jpg", tmp_path / "t.jpg", size=512)
    assert result.ok and (result.width, result.height) == (1, 512)


@pytest.mark.parametrize("name,content", [
    ("IMG_0001.CR2", b""),
    ("DSC_0001.NEF", random.Random(3).randbytes(40_000)),
    ("x.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"),
    ("x.tif", b"II*\x00\x08\x00\x00\x00\xff\xff"),
    ("x.heic", b"\x00\x00\x00\x18ftypheic"),
])
def test_broken_files_give_a_reason(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    result = make_thumbnail(tmp_path / name, tmp_path / "t.jpg")
    assert not result.ok and result.reason
    assert not (tmp_path / "t.jpg").exists()
    assert os.listdir(tmp_path) == [name]  # no temp file left behind


def test_truncated_jpeg_is_refused_and_dest_is_untouched(tmp_path):
    whole = write_jpeg(tmp_path / "a.jpg", 800, 600).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "t.jpg").write_bytes(b"previous thumbnail")
    result = make_thumbnail(tmp_path / "cut.jpg", tmp_path / "t.jpg")
    assert not result.ok and "truncated" in result.reason
    assert (tmp_path / "t.jpg").read_bytes() == b"previous thumbnail"


def test_invalid_samples_never_raise(samples, tmp_path):
    for path in sorted((samples / "jpg" / "invalid").glob("*.jpg")) + [samples / "jpg" / "corrupted.jpg"]:
        result = make_thumbnail(path, tmp_path / "t.jpg", size=64)
        assert result.ok or result.reason, path


def test_missing_source_and_bad_size(tmp_path):
    assert not make_thumbnail(tmp_path / "gone.jpg", tmp_path / "t.jpg").ok
    assert not make_thumbnail(write_jpeg(tmp_path / "a.jpg"), tmp_path / "t.jpg", size=0).ok


def test_dest_directories_are_created_and_dest_replaced(tmp_path):
    dest = tmp_path / "thumbnails" / "DCIM" / "IMG_1.jpg"
    assert make_thumbnail(write_jpeg(tmp_path / "a.jpg", 100, 50), dest, size=20).ok
    assert make_thumbnail(write_jpeg(tmp_path / "b.jpg", 50, 100), dest, size=20).ok
    with Image.open(dest) as thumb:
        assert thumb.size == (10, 20)
    assert os.listdir(dest.parent) == ["IMG_1.jpg"]


# --- choosing members ----------------------------------------------------------------------

def test_thumbnail_source_prefers_jpeg_then_raw_with_preview(tmp_path):
    raw = write_fake_raw(tmp_path / "IMG_1.CR3")
    jpeg = write_jpeg(tmp_path / "IMG_1.JPG")
    xmp = tmp_path / "IMG_1.xmp"
    xmp.write_text("<x:xmpmeta/>")
    assert pick_thumbnail_source([raw, xmp, jpeg]) == jpeg
    assert pick_thumbnail_source([xmp, raw]) == raw
    assert pick_thumbnail_source([str(raw)]) == raw


def test_thumbnail_source_skips_raw_without_preview(tmp_path):
    raw = write_tiff(tmp_path / "IMG_1.NEF", 8, 6, exif=make_exif(make="Nikon"))
    tiff = write_tiff(tmp_path / "IMG_1.TIF")
    heic = tmp_path / "IMG_1.HEIC"
    heic.write_bytes(b"x")
    assert pick_thumbnail_source([raw, heic, tiff]) == tiff
    assert pick_thumbnail_source([raw, heic]) == heic
    assert pick_thumbnail_source([raw]) is None
    assert pick_thumbnail_source([]) is None


def test_best_member_prefers_raw_then_jpeg():
    group = [Path("D/IMG_1.JPG"), Path("D/IMG_1.xmp"), Path("D/IMG_1.CR3")]
    assert best_member(group) == Path("D/IMG_1.CR3")
    assert best_member([Path("D/IMG_1.THM"), Path("D/IMG_1.MOV")]) == Path("D/IMG_1.MOV")
    assert best_member([Path("a.tif"), Path("a.heic"), Path("a.jpg")]) == Path("a.jpg")
    assert best_member(["b.xmp"]) == Path("b.xmp")


def test_best_member_passes_over_raw_without_exif():
    raw, jpeg = Path("IMG_1.CR3"), Path("IMG_1.JPG")
    infos = {str(raw): MediaInfo(error="no EXIF"), jpeg: MediaInfo(taken_at="2024-06-01T14:03:07")}
    assert best_member([raw, jpeg], infos) == jpeg
    assert best_member([raw, jpeg], {raw: MediaInfo(camera_make="Canon"), jpeg: infos[jpeg]}) == raw


def test_best_member_of_nothing():
    with pytest.raises(ValueError):
        best_member([])


def test_thumbnails_from_worker_threads(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    sources = [write_fake_raw(tmp_path / f"IMG_{i}.CR2", preview=(400, 300)) for i in range(6)]
    sources += [write_jpeg(tmp_path / f"IMG_{i}.JPG", 400, 300) for i in range(6)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda s: make_thumbnail(s, tmp_path / "t" / f"{s.name}.jpg", 100), sources))
    assert [(r.ok, r.width, r.height) for r in results] == [(True, 100, 75)] * 12
