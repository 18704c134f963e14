"""Behaviour of imalinkd.media: what is read from real files, and that bad files never raise."""

from __future__ import annotations

import os
import random
import struct
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imalinkd import media
from imalinkd.media import MediaInfo, extract_media, kind_of, media_from_manifest
from conftest import SAMPLES
from media_factory import make_exif, write_fake_raw, write_jpeg, write_tiff



@pytest.fixture(autouse=True)
def without_exiftool(monkeypatch):
    """exiftool is optional and slow to start: tests run without it unless they ask."""
    monkeypatch.setattr(media, "find_exiftool", lambda: None)


def full_exif():
    return make_exif(
        taken="2024:06:01 14:03:07", subsec="25", offset="+02:00", make="Canon",
        model="Canon EOS R5", serial="012345678901", lens="RF24-105mm F4 L IS USM",
        orientation=6, gps=(-33.8568, 151.2153, -12.5),
    )


EXPECTED_FULL = {
    "taken_at": "2024-06-01T14:03:07.25+02:00",
    "camera_make": "Canon",
    "camera_model": "Canon EOS R5",
    "camera_serial": "012345678901",
    "lens_model": "RF24-105mm F4 L IS USM",
    "orientation": 6,
    "width": 64,
    "height": 48,
    "gps": {"lat": -33.8568, "lon": 151.2153, "alt": -12.5},
}


# --- fields written with Pillow come back ------------------------------------------------

def test_jpeg_exif_written_by_pillow_is_read_back(tmp_path):
    info = extract_media(write_jpeg(tmp_path / "IMG_0001.JPG", exif=full_exif()))
    assert info.as_manifest() == EXPECTED_FULL
    assert info.error is None


def test_tiff_exif_is_read_back(tmp_path):
    info = extract_media(write_tiff(tmp_path / "scan.TIF", exif=full_exif()))
    assert info.as_manifest() == EXPECTED_FULL


def test_raw_named_file_is_read_by_content(tmp_path):
    info = extract_media(write_fake_raw(tmp_path / "DSC_0001.NEF", exif=full_exif()))
    assert info.taken_at == "2024-06-01T14:03:07.25+02:00"
    assert (info.camera_make, info.camera_serial) == ("Canon", "012345678901")


def test_time_without_offset_or_subseconds_is_naive(tmp_path):
    info = extract_media(write_jpeg(tmp_path / "a.jpg", exif=make_exif(taken="2024:06:01 14:03:07")))
    assert info.taken_at == "2024-06-01T14:03:07"


def test_modify_date_is_not_taken_for_capture_time(tmp_path):
    exif = make_exif(modified="2024:06:01 14:03:07", make="Canon", model="X")
    assert extract_media(write_jpeg(tmp_path / "a.jpg", exif=exif)).taken_at is None


@pytest.mark.parametrize("placeholder", ["0000:00:00 00:00:00", "    :  :     :  :  ", "2024:13:45 99:00:00"])
def test_placeholder_dates_are_left_out(tmp_path, placeholder):
    info = extract_media(write_jpeg(tmp_path / "a.jpg", exif=make_exif(taken=placeholder, make="Nikon")))
    assert info.taken_at is None
    assert info.camera_make == "Nikon"


@pytest.mark.parametrize("lat,lon", [(59.9139, 10.7522), (-33.8568, 151.2153), (40.7128, -74.006), (-22.9, -43.2)])
def test_gps_is_signed_by_its_refs(tmp_path, lat, lon):
    info = extract_media(write_jpeg(tmp_path / "a.jpg", exif=make_exif(gps=(lat, lon))))
    assert info.gps == {"lat": pytest.approx(lat, abs=1e-6), "lon": pytest.approx(lon, abs=1e-6)}


def test_out_of_range_orientation_is_left_out(tmp_path):
    info = extract_media(write_jpeg(tmp_path / "a.jpg", exif=make_exif(orientation=9, make="X")))
    assert info.orientation is None


# --- the manifest shape ------------------------------------------------------------------

def test_manifest_leaves_absent_values_out_and_never_has_error():
    info = MediaInfo(taken_at="2024-06-01T14:03:07", width=10, error="no EXIF")
    assert info.as_manifest() == {"taken_at": "2024-06-01T14:03:07", "width": 10}


def test_manifest_round_trip():
    info = MediaInfo(**EXPECTED_FULL)
    again = media_from_manifest(info.as_manifest())
    assert again == info
    assert again.as_manifest() is not info.as_manifest()
    assert set(info.as_manifest()) == set(media.MANIFEST_KEYS)


def test_manifest_reader_ignores_unknown_keys_and_nulls():
    assert media_from_manifest({"width": 3, "height": None, "future_key": 1}) == MediaInfo(width=3)


def test_as_manifest_copies_gps():
    info = MediaInfo(gps={"lat": 1.0, "lon": 2.0})
    info.as_manifest()["gps"]["lat"] = 99.0
    assert info.gps == {"lat": 1.0, "lon": 2.0}


# --- kind_of -----------------------------------------------------------------------------

@pytest.mark.parametrize("name,kind", [
    ("IMG_0001.CR3", "raw"), ("img_0001.cr2", "raw"), ("DSC_1.NEF", "raw"), ("x.ARW", "raw"),
    ("x.dng", "raw"), ("x.RAF", "raw"), ("x.x3f", "raw"), ("x.IIQ", "raw"), ("x.mrw", "raw"),
    ("x.crw", "raw"), ("x.orf", "raw"), ("x.rw2", "raw"), ("x.pef", "raw"), ("x.srw", "raw"),
    ("img_0001.jpg", "jpeg"), ("A.JPEG", "jpeg"), ("a.HEIC", "heic"), ("a.heif", "heic"),
    ("a.tif", "tiff"), ("a.TIFF", "tiff"), ("MVI_1.MP4", "video"), ("a.mov", "video"),
    ("00001.MTS", "video"), ("IMG_1.XMP", "sidecar"), ("MVI_1.THM", "sidecar"),
    ("notes.txt", "other"), ("README", "other"), ("archive.tar.gz", "other"),
])
def test_kind_of_goes_by_extension_ignoring_case(name, kind):
    assert kind_of(name) == kind
    assert kind_of(Path("DCIM/100CANON") / name) == kind


# --- real camera samples -----------------------------------------------------------------

def test_real_camera_jpegs(samples):
    canon = extract_media(samples / "jpg" / "Canon_40D.jpg")
    assert canon.as_manifest() == {
        "taken_at": "2008-05-30T15:56:01.00", "camera_make": "Canon",
        "camera_model": "Canon EOS 40D", "orientation": 1, "width": 100, "height": 68,
    }
    olympus = extract_media(samples / "jpg" / "tests" / "42_IndexError.jpg")
    assert olympus.camera_serial == "B9V508278"
    assert olympus.lens_model == "OLYMPUS M.14-42mm F3.5-5.6 II R"
    nokia = extract_media(samples / "jpg" / "mobile" / "HMD_Nokia_8.3_5G.jpg")
    assert nokia.taken_at == "2022-08-14T14:12:31+03:00"


def test_real_gps_sample(samples):
    info = extract_media(samples / "jpg" / "gps" / "DSCN0010.jpg")
    assert info.gps == {"lat": pytest.approx(43.46745, abs=1e-4), "lon": pytest.approx(11.88513, abs=1e-4)}


def test_real_heic_has_offset_subseconds_and_altitude(samples):
    info = extract_media(samples / "heic" / "IMG_5195.HEIC")
    assert info.taken_at == "2021-04-11T15:47:53.054-05:00"
    assert (info.camera_make, info.camera_model) == ("Apple", "iPhone 11 Pro Max")
    assert (info.width, info.height) == (4032, 3024)
    assert info.gps["lat"] > 0 and info.gps["lon"] < 0 and "alt" in info.gps


def test_xmp_capture_time_is_used_when_exif_has_none(samples):
    info = extract_media(samples / "jpg" / "tests" / "30-type_error.jpg")
    assert info.taken_at == "2013-07-05T03:18:27+00:00"


def test_real_tiff_dimensions(samples):
    info = extract_media(samples / "tiff" / "BSG1.tiff")
    assert (info.width, info.height) == (635, 348)
    assert info.error == "EXIF has no capture time or camera"


def test_exiftool_when_installed_dates_maker_note_only_files(samples, monkeypatch):
    monkeypatch.undo()
    if media.find_exiftool() is None:
        pytest.skip("exiftool is not installed (it is optional)")
    info = extract_media(samples / "jpg" / "Reconyx_HC500_Hyperfire.jpg")
    assert info.taken_at == "2020-03-16T10:00:00"
    assert info.error is None


def test_every_sample_gives_a_result(samples):
    for path in sorted(samples.rglob("*")):
        if path.is_file():
            info = extract_media(path)
            assert isinstance(info, MediaInfo)
            assert info.has_capture_data() or info.error, path


# --- broken media ------------------------------------------------------------------------

def test_zero_byte_raw(tmp_path):
    (tmp_path / "IMG_0001.CR2").write_bytes(b"")
    assert extract_media(tmp_path / "IMG_0001.CR2") == MediaInfo(error="zero-byte file")


def test_truncated_jpeg_keeps_its_exif_and_says_truncated(tmp_path):
    whole = write_jpeg(tmp_path / "whole.jpg", 400, 300, exif=full_exif()).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    info = extract_media(tmp_path / "cut.jpg")
    assert info.error == "truncated JPEG"
    assert info.camera_model == "Canon EOS R5"


def test_header_only_jpeg(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00MM\x00*")
    info = extract_media(tmp_path / "a.jpg")
    assert info.error and not info.has_capture_data()


def test_garbage_bytes_named_nef(tmp_path):
    (tmp_path / "DSC_0001.NEF").write_bytes(random.Random(5).randbytes(50_000))
    info = extract_media(tmp_path / "DSC_0001.NEF")
    assert info.error
    assert not info.has_capture_data()


def test_garbage_exif_block(tmp_path):
    junk = random.Random(7).randbytes(2000)
    image = Image.new("RGB", (8, 8))
    image.save(tmp_path / "a.jpg", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08" + junk)
    info = extract_media(tmp_path / "a.jpg")
    assert (info.width, info.height) == (8, 8)


def test_tall_png_named_jpg(tmp_path):
    Image.new("L", (1, 50_000), 128).save(tmp_path / "tall.jpg", "PNG")
    info = extract_media(tmp_path / "tall.jpg")
    assert (info.width, info.height) == (1, 50_000)
    assert info.error == "no EXIF"


def tiny_png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_decompression_bomb_is_not_decoded(tmp_path):
    (tmp_path / "bomb.tif").write_bytes(tiny_png_declaring(100_000, 100_000))
    info = extract_media(tmp_path / "bomb.tif")
    assert isinstance(info, MediaInfo)
    assert info.error


def test_unsupported_and_missing_files(tmp_path):
    (tmp_path / "a.xyz").write_bytes(b"x")
    assert extract_media(tmp_path / "a.xyz").error == "unsupported format .xyz"
    assert extract_media(tmp_path / "IMG_1.XMP").error == "unsupported format .xmp"
    assert extract_media(tmp_path / "gone.jpg").error.startswith("cannot read")
    assert extract_media(tmp_path).error  # a directory


def test_invalid_samples_never_raise(samples):
    for path in sorted((samples / "jpg" / "invalid").glob("*.jpg")) + [samples / "jpg" / "corrupted.jpg"]:
        info = extract_media(path)
        assert info.width and info.height, path
        assert info.has_capture_data() or info.error == "no EXIF", path


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=4096), suffix=st.sampled_from([".jpg", ".NEF", ".CR3", ".MOV", ".MTS", ".tif", ".HEIC"]))
def test_arbitrary_bytes_never_raise(data, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x{suffix}"
        for prefix in (b"", b"\xff\xd8\xff\xe1", b"II*\x00\x08\x00\x00\x00", b"\x00\x00\x00\x18ftypmp42"):
            path.write_bytes(prefix + data)
            assert isinstance(extract_media(path), MediaInfo)


# --- video -------------------------------------------------------------------------------

def atom(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def quicktime(seconds: int, version: int = 0, size: tuple[int, int] = (1920, 1080)) -> bytes:
    if version == 1:
        mvhd = atom(b"mvhd", b"\x01\x00\x00\x00" + struct.pack(">QQIQ", seconds, seconds, 600, 0) + b"\x00" * 80)
    else:
        mvhd = atom(b"mvhd", b"\x00\x00\x00\x00" + struct.pack(">III", seconds, seconds, 600) + b"\x00" * 88)
    sound = atom(b"tkhd", b"\x00\x00\x00\x07" + b"\x00" * 76 + struct.pack(">II", 0, 0))
    video = atom(b"tkhd", b"\x00\x00\x00\x07" + b"\x00" * 76 + struct.pack(">II", size[0] << 16, size[1] << 16))
    moov = atom(b"moov", mvhd + atom(b"trak", sound) + atom(b"trak", video))
    return atom(b"ftyp", b"qt  \x00\x00\x00\x00qt  ") + atom(b"mdat", b"\x00" * 1000) + moov


SECONDS_1904 = int((datetime(2024, 6, 1, 12, 3, 7) - datetime(1904, 1, 1)).total_seconds())


@pytest.mark.parametrize("version", [0, 1])
def test_quicktime_creation_time_is_utc(tmp_path, version):
    (tmp_path / "MVI_0001.MOV").write_bytes(quicktime(SECONDS_1904, version))
    info = extract_media(tmp_path / "MVI_0001.MOV")
    assert info.taken_at == "2024-06-01T12:03:07+00:00"
    assert (info.width, info.height) == (1920, 1080)


def test_video_without_exiftool_on_path(tmp_path):
    (tmp_path / "a.mp4").write_bytes(quicktime(SECONDS_1904))
    assert extract_media(tmp_path / "a.mp4").taken_at == "2024-06-01T12:03:07+00:00"
    (tmp_path / "b.mp4").write_bytes(quicktime(0))
    assert extract_media(tmp_path / "b.mp4").error == "no capture time found"


def test_truncated_quicktime(tmp_path):
    (tmp_path / "a.mov").write_bytes(quicktime(SECONDS_1904)[:1100])
    info = extract_media(tmp_path / "a.mov")
    assert info.taken_at is None and info.error


def avchd(zone: int) -> bytes:
    marker = bytes.fromhex("17ee8c60f84d11d98cd60800200c9a66") + b"MDPM"
    tags = bytes([0x18, zone, 0x20, 0x24, 0x06]) + bytes([0x19, 0x01, 0x14, 0x03, 0x07])
    return b"\x47" + b"\x00" * 5000 + marker + bytes([2]) + tags + b"\x00" * 5000


@pytest.mark.parametrize("zone,suffix", [(0x04, "+02:00"), (0x24 | 0x01, "-02:30"), (0xFF, "")])
def test_avchd_capture_time_with_zone(tmp_path, zone, suffix):
    (tmp_path / "00001.MTS").write_bytes(avchd(zone))
    assert extract_media(tmp_path / "00001.MTS").taken_at == "2024-06-01T14:03:07" + suffix


# --- threads -----------------------------------------------------------------------------

def test_concurrent_extraction_matches_sequential(tmp_path):
    paths = [write_jpeg(tmp_path / f"{i}.jpg", exif=full_exif()) for i in range(4)]
    paths += [write_tiff(tmp_path / "t.tif", exif=full_exif()), write_fake_raw(tmp_path / "r.CR2", exif=full_exif())]
    (tmp_path / "z.NEF").write_bytes(b"")
    (tmp_path / "v.MOV").write_bytes(quicktime(SECONDS_1904))
    paths += [tmp_path / "z.NEF", tmp_path / "v.MOV"]
    if SAMPLES.is_dir():
        paths += sorted(p for p in SAMPLES.rglob("*") if p.suffix.lower() in (".jpg", ".heic", ".tiff"))
    expected = [extract_media(p) for p in paths]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            assert list(pool.map(extract_media, paths)) == expected


def test_exiftool_is_not_started_for_random_bytes_under_a_raw_name(tmp_path, monkeypatch):
    """An undated file costs an exiftool process only when it starts like its format."""
    calls = []
    monkeypatch.setattr(media, "find_exiftool", lambda: "/bin/false")
    monkeypatch.setattr(media, "_read_exiftool", lambda p: calls.append(p.name) or {})
    (tmp_path / "RANDOM.CR3").write_bytes(os.urandom(4096))
    (tmp_path / "REAL.CR3").write_bytes(b"\x00\x00\x00\x18ftypcrx " + os.urandom(4096))
    extract_media(tmp_path / "RANDOM.CR3")
    extract_media(tmp_path / "REAL.CR3")
    assert calls == ["REAL.CR3"]
