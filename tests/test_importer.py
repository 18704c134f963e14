"""The import engine on real files in temporary directories and a real SQLite catalog."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from cards import make_card, sha256_of, tree_hashes
from imalinkd import durable
from imalinkd.catalog import Catalog, Image, ImportSession, Photo, SkippedFile
from imalinkd.config import parse_config
from imalinkd.errors import SessionStateError, StorageFullError, StorageNotMountedError
from imalinkd.importer import import_source, resume_session, rollback_session, verify_sessions
from imalinkd.manifest import read_manifest
from imalinkd.storage import init_storage
from sqlalchemy import select


def make_config(tmp_path: Path, **imp) -> object:
    init_storage(tmp_path / "archive")  # as 'imalinkd init-storage' does
    return parse_config({
        "catalog": {"url": f"sqlite:///{tmp_path / 'catalog.db'}"},
        "storage": {"root": str(tmp_path / "archive")},
        "import": {"thumbnails": False, **imp},
        "api": {"listen": ""},
    })


@pytest.fixture
def cfg(tmp_path):
    return make_config(tmp_path)


def test_full_import_archives_every_file_byte_exact(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=6)
    result = import_source(cfg, card.root, description="Trip to Bergen")
    assert result.copy_status == "completed"
    assert result.total_files == len(card.files)
    assert result.total_size_bytes == card.total_bytes
    assert result.photos_created == card.shots
    session = Path(result.storage_path)
    assert session.name.startswith(result.storage_directory_name[:8]) and session.name.endswith(result.session_uuid[:8])
    assert "_import_Trip_to_Bergen_" in session.name
    assert tree_hashes(session / "files") == card.files
    assert (tmp_path / "archive" / "config.json").is_file()
    leftovers = [n for _, _, ns in os.walk(session) for n in ns if durable.is_partial_name(n) or n == ".imalinkd.lock"]
    assert leftovers == []


def test_manifest_has_every_design_field_and_matches_disk(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=3)
    result = import_source(cfg, card.root)
    m = json.loads((Path(result.storage_path) / "metadata.json").read_text())
    for key in ("format", "format_version", "import_session_id", "created_at", "source_path", "total_files",
                "total_size_bytes", "photos_created", "duplicates_skipped", "copy_status", "copy_completed_at",
                "copy_started_at", "storage_id", "description", "source", "file_manifest", "skipped_files"):
        assert key in m, key
    assert m["copy_status"] == "completed" and m["created_at"].endswith("Z")
    assert m["total_files"] == len(card.files)
    for e in m["file_manifest"]:
        assert e["storage_path"] == "files/" + e["original_path"]
        assert sha256_of(Path(result.storage_path) / e["storage_path"]) == e["sha256"]
        assert e["copied_at"].endswith("Z")


def test_modification_times_are_preserved(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=2)
    rel = next(iter(card.files))
    os.utime(card.root / rel, (1_600_000_000, 1_600_000_000))
    result = import_source(cfg, card.root)
    assert os.stat(Path(result.storage_path) / "files" / rel).st_mtime == 1_600_000_000


def test_reimport_copies_nothing_and_creates_no_session(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=4)
    first = import_source(cfg, card.root)
    again = import_source(cfg, card.root)
    assert again.session_uuid is None and again.copy_status == "completed"
    assert again.duplicates_skipped == len(card.files)
    assert sorted(p.name for p in (tmp_path / "archive").iterdir() if p.is_dir()) == [first.storage_directory_name]


def test_new_files_on_a_known_card_make_a_session_with_only_those(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=4)
    import_source(cfg, card.root)
    (card.root / "DCIM/100CANON/IMG_0100.CR2").write_bytes(os.urandom(3000))
    result = import_source(cfg, card.root)
    assert result.total_files == 1
    assert result.duplicates_skipped == len(card.files)
    m = read_manifest(result.storage_path)
    dups = [s for s in m.skipped if s.duplicate_of]
    assert len(dups) == len(card.files)
    assert all(s.duplicate_of.count(":") == 1 and s.duplicate_of.split(":")[1].startswith("files/") for s in dups)


def test_files_with_unarchived_sizes_are_not_hashed_before_copying(tmp_path, cfg, monkeypatch):
    """Duplicate detection must not cost a full extra read of a card of new photos."""
    card = make_card(tmp_path / "card", shots=4)
    calls = []
    real = durable.hash_file
    monkeypatch.setattr(durable, "hash_file", lambda p: calls.append(p) or real(p))
    import_source(cfg, card.root)
    assert calls == []


def test_hostile_card_imports_safely(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=3, hostile=True)
    before = {p: os.lstat(p).st_mtime_ns for p in (card.root / "DCIM").rglob("*")}
    result = import_source(cfg, card.root)
    assert result.copy_status == "completed"
    files = Path(result.storage_path) / "files"
    assert tree_hashes(files) == card.files
    assert not any(os.path.islink(os.path.join(d, n)) for d, ds, ns in os.walk(files) for n in ds + ns)
    reasons = {s.original_path: s.reason for s in result.skipped}
    assert "symlink" in reasons["DCIM/100CANON/LINK_0001.JPG"]
    assert "symlink" in reasons["DCIM/ETCDIR"]
    assert "FIFO" in reasons["DCIM/100CANON/FIFO_0001.JPG"]
    # non-UTF-8 name: exact bytes on disk, lossless in the manifest
    weird = os.fsdecode(b"DCIM/100CANON/\xff\xfe_weird_\xe9.JPG")
    assert os.path.exists(os.fsencode(files) + b"/" + os.fsencode(weird))
    m = read_manifest(result.storage_path)
    assert weird in {e.original_path for e in m.file_manifest}
    raw = json.loads((Path(result.storage_path) / "metadata.json").read_bytes().decode("utf-8"))
    entry = next(e for e in raw["file_manifest"] if "original_path_b64" in e)
    assert entry["original_path"] == "DCIM/100CANON/\\xff\\xfe_weird_\\xe9.JPG"
    # the source was not written to
    assert {p: os.lstat(p).st_mtime_ns for p in (card.root / "DCIM").rglob("*")} == before


def test_unreadable_file_is_recorded_and_the_rest_imported(tmp_path, cfg):
    if os.geteuid() == 0:
        # root reads mode-000 files; use a directory entry that cannot be opened instead
        card = make_card(tmp_path / "card", shots=2)
        bad = card.root / "DCIM/100CANON/SOCKET.JPG"
        import socket

        s = socket.socket(socket.AF_UNIX)
        s.bind(str(bad))
        result = import_source(cfg, card.root)
        s.close()
        assert "socket" in {x.original_path: x.reason for x in result.skipped}["DCIM/100CANON/SOCKET.JPG"]
    else:
        card = make_card(tmp_path / "card", shots=2)
        bad = card.root / "DCIM/100CANON/IMG_0002.CR2"
        bad.chmod(0)
        result = import_source(cfg, card.root)
        assert "unreadable" in {x.original_path: x.reason for x in result.skipped}["DCIM/100CANON/IMG_0002.CR2"]
    assert result.copy_status == "completed"


def test_name_collision_never_overwrites(tmp_path, cfg):
    """A file already under the target name (here planted by hand) is kept; the new one
    gets a name of its own."""
    card = make_card(tmp_path / "card", shots=1)
    rel = next(iter(card.files))
    from imalinkd.copier import CopyStage  # the commit step is what guarantees this

    target = tmp_path / "t" / "files" / rel
    target.parent.mkdir(parents=True)
    target.write_bytes(b"precious")
    sink = durable.Sink(str(target))
    sink.open()
    sink.write(memoryview(b"other"))
    sink.finish(None)
    run = CopyStage.__new__(CopyStage)
    run.files_dir = str(tmp_path / "t" / "files")
    new_rel = run._commit(sink, rel)
    assert target.read_bytes() == b"precious"
    assert new_rel.endswith("~1.CR2") and (tmp_path / "t" / "files" / new_rel).read_bytes() == b"other"


def test_catalog_rows_match_the_import(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=4, hostile=True)
    result = import_source(cfg, card.root)
    cat = Catalog.open(cfg)
    with cat.session() as s:
        row = s.scalars(select(ImportSession)).one()
        images = list(s.scalars(select(Image)))
        photos = list(s.scalars(select(Photo)))
        skipped = list(s.scalars(select(SkippedFile)))
    assert row.copy_status == "completed" and row.storage_uuid == result.session_uuid
    assert row.storage_size_mb == card.total_bytes // (1024 * 1024)
    assert {i.storage_relative_path: i.sha256 for i in images} == card.files
    assert len(photos) == card.shots == row.photos_created
    assert {s.original_path for s in skipped} == {"DCIM/100CANON/LINK_0001.JPG", "DCIM/ETCDIR", "DCIM/100CANON/FIFO_0001.JPG"}


def test_preflight_refuses_when_storage_is_too_small(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=2)
    with pytest.raises(StorageFullError) as e:
        import_source(cfg, card.root, disk_free=lambda p: (1000, 10_000))
    assert "1000 B free" in str(e.value) and "needed" in str(e.value)
    assert [p for p in (tmp_path / "archive").iterdir() if p.is_dir()] == []


def test_mount_guard_refuses_a_known_root_whose_marker_is_gone(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=1)
    import_source(cfg, card.root)
    archive = tmp_path / "archive"
    for p in sorted(archive.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    with pytest.raises(StorageNotMountedError) as e:
        import_source(cfg, card.root)
    assert "not mounted" in str(e.value)
    assert list(archive.iterdir()) == []


def test_cancel_leaves_a_resumable_session(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=8, raw_kb=512)
    cancel = threading.Event()
    seen = []

    def progress(p):
        seen.append(p.files_done)
        if p.files_done >= 2:
            cancel.set()

    result = import_source(cfg, card.root, cancel=cancel, progress=progress)
    assert result.copy_status == "failed" and "interrupted" in result.error
    files = Path(result.storage_path) / "files"
    for rel, sha in tree_hashes(files).items():
        assert card.files[rel] == sha  # nothing wrong under a final name
    inodes = {rel: os.stat(files / rel).st_ino for rel in tree_hashes(files)}
    done = resume_session(cfg, result.session_uuid[:8])
    assert done.copy_status == "completed" and done.total_files == len(card.files)
    assert tree_hashes(files) == card.files
    assert all(os.stat(files / rel).st_ino == ino for rel, ino in inodes.items())
    assert verify_sessions(cfg, [done.session_uuid]).ok


def test_resume_discards_partials_and_adopts_unrecorded_committed_files(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=4)
    cancel = threading.Event()
    cancel.set()
    result = import_source(cfg, card.root, cancel=cancel)
    files = Path(result.storage_path) / "files"
    rels = sorted(card.files)
    # as after a crash: one file committed but never recorded, one partial temp file
    (files / rels[0]).parent.mkdir(parents=True, exist_ok=True)
    (files / rels[0]).write_bytes((card.root / rels[0]).read_bytes())
    ino = os.stat(files / rels[0]).st_ino
    partial = files / os.path.dirname(rels[1]) / (durable.TEMP_PREFIX + "0123456789abcdef")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(b"half")
    done = resume_session(cfg, result.session_uuid)
    assert done.copy_status == "completed"
    assert not partial.exists()
    assert os.stat(files / rels[0]).st_ino == ino
    assert tree_hashes(files) == card.files
    assert len(read_manifest(result.storage_path).file_manifest) == len(card.files)


def test_verify_names_damaged_and_missing_files(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=3)
    result = import_source(cfg, card.root)
    files = Path(result.storage_path) / "files"
    rels = sorted(card.files)
    with open(files / rels[0], "r+b") as f:
        f.seek(10)
        b = f.read(1)
        f.seek(10)
        f.write(bytes([b[0] ^ 1]))
    (files / rels[1]).unlink()
    report = verify_sessions(cfg, [result.session_uuid])
    assert not report.ok
    assert report.damaged == ["files/" + rels[0]]
    assert report.missing == ["files/" + rels[1]]
    assert report.checked == len(card.files)


def test_rollback_removes_failed_session_and_refuses_completed_without_force(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=3)
    ok = import_source(cfg, card.root)
    with pytest.raises(SessionStateError):
        rollback_session(cfg, ok.session_uuid)
    (card.root / "DCIM/100CANON/NEW.CR2").write_bytes(os.urandom(5000))
    cancel = threading.Event()
    cancel.set()
    failed = import_source(cfg, card.root, cancel=cancel)
    out = rollback_session(cfg, failed.session_uuid)
    assert out["removed_directory"] == failed.storage_path and not os.path.exists(failed.storage_path)
    assert (card.root / "DCIM/100CANON/NEW.CR2").exists()
    rollback_session(cfg, ok.session_uuid, force=True)
    assert not os.path.exists(ok.storage_path)
    with Catalog.open(cfg).session() as s:
        assert list(s.scalars(select(ImportSession))) == []
        assert list(s.scalars(select(Image))) == []


@pytest.mark.parametrize("level", ["size", "sha256", "paranoid"])
def test_every_verification_level_imports_correctly(tmp_path, level):
    cfg = make_config(tmp_path, verify=level, workers=3)
    card = make_card(tmp_path / "card", shots=5)
    result = import_source(cfg, card.root)
    assert result.copy_status == "completed"
    assert tree_hashes(Path(result.storage_path) / "files") == card.files
    assert read_manifest(result.storage_path).verification == level


def test_archive_inside_the_source_is_not_imported_into_itself(tmp_path):
    card = make_card(tmp_path / "card", shots=2)
    init_storage(card.root / "archive")
    cfg = parse_config({"catalog": {"url": f"sqlite:///{tmp_path / 'c.db'}"}, "storage": {"root": str(card.root / "archive")}, "import": {"thumbnails": False}})
    result = import_source(cfg, card.root)
    assert tree_hashes(Path(result.storage_path) / "files") == card.files


def test_description_template_takes_camera_and_first_capture_date_from_the_photos(tmp_path, cfg):
    from media_factory import make_exif, write_jpeg

    card = tmp_path / "card" / "DCIM" / "100CANON"
    card.mkdir(parents=True)
    write_jpeg(card / "IMG_0002.JPG", exif=make_exif(taken="2024:06:02 10:00:00", model="Canon EOS R5"))
    write_jpeg(card / "IMG_0001.JPG", exif=make_exif(taken="2024:06:01 09:00:00", model="Canon EOS R5"))
    result = import_source(cfg, tmp_path / "card", description="{label}_{camera_model}_{date}",
                           template_values={"label": "EOS_DIGITAL"})
    assert "_import_EOS_DIGITAL_Canon_EOS_R5_2024-06-01_" in result.storage_directory_name


def test_thumbnails_and_media_are_recorded_for_each_photo(tmp_path):
    from media_factory import make_exif, write_jpeg

    cfg = make_config(tmp_path, thumbnails=True, thumbnail_size=64)
    card = tmp_path / "card" / "DCIM" / "100CANON"
    card.mkdir(parents=True)
    write_jpeg(card / "IMG_0001.JPG", width=400, height=300, exif=make_exif(taken="2024:06:01 09:00:00", model="X100V", orientation=6))
    (card / "IMG_0001.XMP").write_text("<x:xmpmeta/>")
    (card / "BROKEN.JPG").write_bytes(b"\xff\xd8\xff\xe0garbage")
    result = import_source(cfg, tmp_path / "card")
    assert result.copy_status == "completed" and result.photos_created == 2
    m = read_manifest(result.storage_path)
    media = {e.original_path: e for e in m.file_manifest}
    assert media["DCIM/100CANON/IMG_0001.JPG"].media["camera_model"] == "X100V"
    assert media["DCIM/100CANON/IMG_0001.JPG"].media["taken_at"].startswith("2024-06-01T09:00:00")
    assert media["DCIM/100CANON/BROKEN.JPG"].media_error
    thumb = Path(result.storage_path) / "thumbnails" / "DCIM" / "100CANON" / "img_0001.jpg"
    from PIL import Image as PILImage

    with PILImage.open(thumb) as im:
        assert max(im.size) == 64 and im.size[1] > im.size[0]  # orientation 6 applied: portrait
    with Catalog.open(cfg).session() as s:
        photo = s.scalars(select(Photo).where(Photo.key == "DCIM/100CANON/img_0001")).one()
        assert photo.camera_model == "X100V" and photo.thumbnail_path == "thumbnails/DCIM/100CANON/img_0001.jpg"
        assert len(photo.images) == 2


def test_files_of_a_session_gone_from_its_drive_are_not_duplicates(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=2)
    first = import_source(cfg, card.root)
    with Catalog.open(cfg).session() as s:
        s.scalars(select(ImportSession)).one().missing = True  # as reindex marks a deleted directory
    again = import_source(cfg, card.root)
    assert again.session_uuid is not None and again.total_files == len(card.files) and again.duplicates_skipped == 0
    assert again.session_uuid != first.session_uuid
