"""What the user is told is the truth (DESIGN §7), at the edges of an import, on real file
systems: duplicates counted only against archived copies that are there now, a failing card
never reported done, resume that compares files rather than names, the size recorded being
the size copied, temporary files no source name can collide with, and no copy thread left
writing once an import has failed."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from cards import make_card, tree_hashes
from imalinkd.catalog import Catalog, Image
from imalinkd.config import parse_config
from imalinkd.copier import CopyStage
from imalinkd.importer import import_source, resume_session, verify_sessions
from imalinkd.manifest import read_manifest
from imalinkd.storage import init_storage
from mounts import exfat_mount, ext4_image, is_mounted, make_exfat_image, require_exfat, require_root, run

FS_IOC_SHUTDOWN = 0x8004587D
FS_GOING_FLAGS_NOLOGFLUSH = 2
COPY_THREADS = ("imalinkd-read", "imalinkd-finish", "imalinkd-copy", "imalinkd-media")


def config_for(tmp_path: Path, root: Path, catalog: Path | None = None, **imp):
    init_storage(root)  # as 'imalinkd init-storage' does
    return parse_config({
        "catalog": {"url": f"sqlite:///{catalog or tmp_path / 'catalog.db'}"},
        "storage": {"root": str(root)},
        "import": {"thumbnails": False, "checkpoint_seconds": 0.0, **imp},
        "api": {"listen": ""},
    })


def copied_paths(result) -> set[str]:
    return {e.original_path for e in read_manifest(result.storage_path).file_manifest}


def archived_hashes(session: Path) -> set[str]:
    return set(tree_hashes(session / "files").values())


def stop_when_reading(monkeypatch, rel: str) -> threading.Event:
    """A stop request at a chosen point: as the copy (one reader) starts reading ``rel``,
    so that exactly the files before it are archived (a hook on the copy's byte counter)."""
    cancel = threading.Event()
    original = CopyStage._on_bytes

    def on_bytes(self, n):
        original(self, n)
        if self.progress.current_file == rel:
            cancel.set()

    monkeypatch.setattr(CopyStage, "_on_bytes", on_bytes)
    return cancel


# --- 4. duplicates -------------------------------------------------------------------------------


def test_a_duplicate_counts_only_when_its_archived_copy_is_there_whole(tmp_path):
    card = make_card(tmp_path / "card", shots=4)
    cfg = config_for(tmp_path, tmp_path / "archive")
    first = import_source(cfg, card.root)
    assert first.copy_status == "completed"
    files = Path(first.storage_path) / "files"
    gone, cut = sorted(card.files)[:2]
    (files / gone).unlink()
    with open(files / cut, "r+b") as f:
        f.truncate(100)
    again = import_source(cfg, card.root)
    assert again.copy_status == "completed"
    assert copied_paths(again) == {gone, cut}
    assert again.duplicates_skipped == len(card.files) - 2
    assert tree_hashes(Path(again.storage_path) / "files") == {r: card.files[r] for r in (gone, cut)}


def test_a_copy_flagged_by_reindex_is_no_duplicate_even_once_it_has_its_size_again(tmp_path):
    from imalinkd.reindex import reindex_path

    card = make_card(tmp_path / "card", shots=2)
    cfg = config_for(tmp_path, tmp_path / "archive")
    first = import_source(cfg, card.root)
    rel = sorted(card.files)[0]
    path = Path(first.storage_path) / "files" / rel
    data = path.read_bytes()
    path.write_bytes(data[:10])
    catalog = Catalog.open(cfg)
    try:
        assert reindex_path(cfg, catalog, str(tmp_path / "archive")).roots[0].size_mismatches == 1
        path.write_bytes(b"\0" * len(data))  # the right size, other bytes: still flagged
        with catalog.session() as s:
            assert s.scalar(select(Image.size_mismatch).where(Image.original_import_path == rel))
    finally:
        catalog.close()
    again = import_source(cfg, card.root)
    assert again.copy_status == "completed" and copied_paths(again) == {rel}


def test_a_copy_a_scrub_found_damaged_is_no_duplicate(tmp_path):
    from imalinkd import storage
    from imalinkd.scrub.budget import parse_budget
    from imalinkd.scrub.engine import scrub_root

    card = make_card(tmp_path / "card", shots=2)
    cfg = config_for(tmp_path, tmp_path / "archive")
    first = import_source(cfg, card.root)
    rel = sorted(card.files)[0]
    with open(Path(first.storage_path) / "files" / rel, "r+b") as f:  # a flipped bit: the size is right
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 1]))
    catalog = Catalog.open(cfg)
    try:
        root = str(tmp_path / "archive")
        assert len(scrub_root(catalog, root, storage.read_marker(root), parse_budget("pass")).findings) == 1
    finally:
        catalog.close()
    again = import_source(cfg, card.root)
    assert again.copy_status == "completed" and copied_paths(again) == {rel}
    assert tree_hashes(Path(again.storage_path) / "files") == {rel: card.files[rel]}


def test_a_copy_verify_found_damaged_is_no_duplicate(tmp_path):
    card = make_card(tmp_path / "card", shots=2)
    cfg = config_for(tmp_path, tmp_path / "archive")
    first = import_source(cfg, card.root)
    rel = sorted(card.files)[0]
    with open(Path(first.storage_path) / "files" / rel, "r+b") as f:  # a flipped bit: the size is right
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 1]))
    report = verify_sessions(cfg, [first.session_uuid])
    assert report.damaged == ["files/" + rel]
    again = import_source(cfg, card.root)
    assert again.copy_status == "completed" and copied_paths(again) == {rel}
    assert verify_sessions(cfg, [again.session_uuid]).ok


def test_an_archive_that_is_not_plugged_in_holds_no_duplicates_unless_configured(tmp_path):
    require_root()
    card = make_card(tmp_path / "card", shots=3)
    with ext4_image(tmp_path / "drive1") as drive1:
        first = import_source(config_for(tmp_path, drive1 / "photos"), card.root)
        assert first.copy_status == "completed"
    assert not is_mounted(tmp_path / "drive1")
    # the configured choice: counted as archived, but the source is not called unneeded
    trusting = config_for(tmp_path, tmp_path / "drive2", unplugged_duplicates="skip")
    trusted = import_source(trusting, card.root)
    assert trusted.session_uuid is None and trusted.duplicates_skipped == len(card.files)
    assert "no longer needed" not in trusted.message and "not plugged in" in trusted.message
    # the default: copied again
    again = import_source(config_for(tmp_path, tmp_path / "drive2"), card.root)
    assert again.copy_status == "completed" and again.duplicates_skipped == 0
    assert tree_hashes(Path(again.storage_path) / "files") == card.files
    assert "no longer needed" in again.message


def test_drop_folder_delete_keeps_a_file_whose_only_copy_is_not_plugged_in(tmp_path):
    require_root()
    from test_daemon_e2e import Daemon, wait_for, write_config

    drop = tmp_path / "dropbox"
    drop.mkdir()
    payload = os.urandom(50_000)
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "IMG_1.JPG").write_bytes(payload)
    with ext4_image(tmp_path / "drive1") as drive1:
        first = import_source(config_for(tmp_path, drive1 / "photos"), tmp_path / "earlier")
        assert first.copy_status == "completed"
    init_storage(tmp_path / "archive")  # as 'imalinkd init-storage' does
    config = write_config(tmp_path / "imalinkd.toml", tmp_path, 'unplugged_duplicates = "skip"\n'
                          f'[[drop_folder]]\npath = "{drop}"\nafter_import = "delete"\n')
    d = Daemon(tmp_path, config).start()
    try:
        (drop / "IMG_1.JPG").write_bytes(payload)
        wait_for(lambda: d.has_event("drop_import_finished"), 30, "the drop folder import")
        assert (drop / "IMG_1.JPG").read_bytes() == payload
    finally:
        d.stop()
        d.close()


# --- 5. a failing card ---------------------------------------------------------------------------


def _shutdown(mount_point: Path) -> None:
    fd = os.open(mount_point, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", FS_GOING_FLAGS_NOLOGFLUSH))
    finally:
        os.close(fd)


def test_a_card_failing_mid_import_ends_failed_and_resume_retries_what_was_unread(tmp_path):
    require_root()
    tree = make_card(tmp_path / "tree", shots=12, raw_kb=384, hostile=True)
    (tree.root / "DCIM" / "100CANON" / "IMG_0002.THM").write_bytes(b"excluded on purpose")
    image = tmp_path / "card.img"
    with ext4_image(tmp_path / "fill", size_mb=32, image=image) as fill:
        subprocess.run(["cp", "-a", f"{tree.root}/.", str(fill)], check=True)
    cfg = config_for(tmp_path, tmp_path / "archive", workers=1, readers=1, exclude=["*.THM"])
    failing = []
    with ext4_image(tmp_path / "media" / "CARD", image=image) as mnt:
        def progress(p):
            if p.files_done >= 2 and not failing:
                _shutdown(mnt)  # every read from now on: EIO
                failing.append(True)

        result = import_source(cfg, mnt, progress=progress)
    assert failing and result.copy_status == "failed"
    assert "Input/output error" in result.error
    assert "no longer needed" not in result.message and "resume" in result.message
    with ext4_image(tmp_path / "media" / "CARD2", image=image) as again:
        done = resume_session(cfg, result.session_uuid, source=again)
    assert done.copy_status == "completed", done.error
    assert tree_hashes(Path(done.storage_path) / "files") == tree.files
    reasons = " ".join(s.reason for s in read_manifest(done.storage_path).skipped)
    assert "symlink" in reasons and "FIFO" in reasons and "filtered out" in reasons


def test_files_left_out_on_purpose_do_not_keep_a_session_from_completing(tmp_path):
    card = make_card(tmp_path / "card", shots=3, hostile=True)
    result = import_source(config_for(tmp_path, tmp_path / "archive"), card.root)
    assert result.copy_status == "completed" and "no longer needed" in result.message
    assert {s["reason"].split()[0] for s in result.as_json()["skipped"]} >= {"symlink", "FIFO"}


# --- 6. resume by content, not by name -------------------------------------------------------------


def test_resume_after_the_card_was_formatted_in_the_camera_keeps_its_new_photos(tmp_path, monkeypatch):
    require_exfat()
    old = make_card(tmp_path / "old", shots=8, raw_kb=1200, seed=1)
    image = make_exfat_image(tmp_path / "card.img", tree=old.root)
    cfg = config_for(tmp_path, tmp_path / "archive", workers=1, readers=1)
    cancel = stop_when_reading(monkeypatch, sorted(old.files)[3])
    with exfat_mount(image, tmp_path / "mnt") as mnt:
        first = import_source(cfg, mnt, cancel=cancel)
    monkeypatch.undo()
    assert first.copy_status == "failed"
    done_before = read_manifest(first.storage_path).file_manifest
    assert len(done_before) == 3
    # formatted in the camera, new photos under the same names; one even has the size and
    # the modification time of the photo its name had before
    new = make_card(tmp_path / "new", shots=8, raw_kb=1200, seed=2)
    twin = done_before[0]
    (new.root / twin.original_path).write_bytes(os.urandom(twin.file_size))
    new.files[twin.original_path] = hashlib.sha256((new.root / twin.original_path).read_bytes()).hexdigest()
    make_exfat_image(image, tree=new.root)
    with exfat_mount(image, tmp_path / "mnt", readonly=False) as mnt:
        os.utime(mnt / twin.original_path, (twin.mtime, twin.mtime))
    with exfat_mount(image, tmp_path / "mnt") as mnt:
        assert (mnt / twin.original_path).stat().st_mtime == twin.mtime
        done = resume_session(cfg, first.session_uuid, source=mnt)
    assert done.copy_status == "completed", done.error
    session = Path(done.storage_path)
    assert set(new.files.values()) <= archived_hashes(session)
    assert {e.sha256 for e in done_before} <= archived_hashes(session)
    assert verify_sessions(cfg, [done.session_uuid]).ok


# --- 7. sizes --------------------------------------------------------------------------------------


def test_a_file_that_grew_between_scan_and_copy_is_recorded_with_the_size_copied(tmp_path):
    card = make_card(tmp_path / "card", shots=3)
    rel = sorted(card.files)[0]
    grown = []

    def progress(p):
        if p.phase == "database_import" and not grown:  # scanned, not yet copied
            with open(card.root / rel, "ab") as f:
                f.write(os.urandom(3000))
            grown.append(True)

    cfg = config_for(tmp_path, tmp_path / "archive")
    result = import_source(cfg, card.root, progress=progress)
    assert grown and result.copy_status == "completed"
    [entry] = [e for e in read_manifest(result.storage_path).file_manifest if e.original_path == rel]
    assert entry.file_size == (card.root / rel).stat().st_size == card.sizes[rel] + 3000
    assert result.total_size_bytes == card.total_bytes + 3000
    assert verify_sessions(cfg, [result.session_uuid]).ok


def test_a_file_written_to_while_it_is_copied_is_not_archived_from_that_read(tmp_path, monkeypatch):
    """A writer appending to the file while it is read, at a chosen point: after the first
    chunk of the copy (a hook on the copy's byte counter, in the same thread)."""
    card = make_card(tmp_path / "card", shots=3)
    rel = sorted(card.files)[0]
    with open(card.root / rel, "ab") as f:
        f.write(os.urandom(3 * 1024 * 1024))  # several chunks
    original = CopyStage._on_bytes
    written = []

    def on_bytes(self, n):
        original(self, n)
        if self.progress.current_file == rel and not written:
            with open(card.root / rel, "ab") as f:
                f.write(b"more")
            written.append(True)

    monkeypatch.setattr(CopyStage, "_on_bytes", on_bytes)
    cfg = config_for(tmp_path, tmp_path / "archive", readers=1)
    result = import_source(cfg, card.root)
    monkeypatch.undo()
    assert written and result.copy_status == "failed"
    assert rel in result.error and "changed while it was being copied" in result.error
    assert rel not in copied_paths(result)
    done = resume_session(cfg, result.session_uuid)
    assert done.copy_status == "completed"
    assert tree_hashes(Path(done.storage_path) / "files") == tree_hashes(card.root)
    assert verify_sessions(cfg, [done.session_uuid]).ok


# --- 8. temporary names --------------------------------------------------------------------------


def test_card_files_named_like_temporary_files_are_archived_and_kept(tmp_path):
    from imalinkd.reindex import reindex_path

    card = tmp_path / "card" / "DCIM" / "100"
    card.mkdir(parents=True)
    (card / "IMG_0001.JPG").write_bytes(os.urandom(200_000))
    # the name the copy of IMG_0001.JPG has used for its temporary file, and others like it
    # that sort between the two, so that it is committed before IMG_0001.JPG is read
    tag = hashlib.sha1(b"IMG_0001.JPG").hexdigest()[:16]
    for name in (f".imalinkd-partial-{tag}", ".imalinkd-partial-zz1", ".imalinkd-partial-zz2", ".imalinkd-partial-zz3"):
        (card / name).write_bytes(os.urandom(5000))
    expected = tree_hashes(tmp_path / "card")
    cfg = config_for(tmp_path, tmp_path / "archive", workers=1, readers=1)
    result = import_source(cfg, tmp_path / "card")
    assert result.copy_status == "completed" and result.total_files == len(expected)
    session = Path(result.storage_path)
    assert tree_hashes(session / "files") == expected
    catalog = Catalog.open(cfg)
    try:
        report = reindex_path(cfg, catalog, str(tmp_path / "archive"))
        assert report.ok and report.roots[0].size_mismatches == 0 and report.roots[0].sessions_missing == 0
    finally:
        catalog.close()
    assert tree_hashes(session / "files") == expected
    assert verify_sessions(cfg, [result.session_uuid]).ok


def test_resume_keeps_committed_files_named_like_temporary_files(tmp_path, monkeypatch):
    card = tmp_path / "card" / "DCIM"
    card.mkdir(parents=True)
    names = [f".imalinkd-partial-{i:016x}" for i in range(6)]  # as earlier versions named theirs
    for i, name in enumerate(names):
        (card / name).write_bytes(os.urandom(1_500_000 + i))
    cfg = config_for(tmp_path, tmp_path / "archive", workers=1, readers=1)
    cancel = stop_when_reading(monkeypatch, "DCIM/" + names[3])
    first = import_source(cfg, tmp_path / "card", cancel=cancel)
    monkeypatch.undo()
    assert first.copy_status == "failed"
    files = Path(first.storage_path) / "files"
    kept = {p.name: p.stat().st_ino for p in (files / "DCIM").iterdir()}
    assert len(kept) == 3
    done = resume_session(cfg, first.session_uuid)
    assert done.copy_status == "completed"
    assert tree_hashes(files) == tree_hashes(tmp_path / "card")
    assert {n: (files / "DCIM" / n).stat().st_ino for n in kept} == kept  # not copied again


# --- 9. no copy thread outlives a failed import --------------------------------------------------


def test_an_import_failing_at_a_checkpoint_stops_its_copy_threads_before_it_returns(tmp_path):
    require_root()
    from imalinkd.errors import CatalogError

    card = make_card(tmp_path / "card", shots=24, raw_kb=1024)
    image = tmp_path / "catdisk.img"
    with open(image, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", str(image))
    with ext4_image(tmp_path / "catdisk", image=image) as catdisk:
        cfg = config_for(tmp_path, tmp_path / "archive", catalog=catdisk / "catalog.db", workers=2, readers=2)
        filled = []

        def fill_the_catalog_disk(p):
            if p.files_done >= 1 and not filled:
                with open(catdisk / "filler.bin", "wb", buffering=0) as f:
                    for chunk in (1 << 20, 1 << 12, 1):
                        try:
                            while True:
                                f.write(b"\0" * chunk)
                        except OSError:
                            pass
                filled.append(True)

        with pytest.raises(CatalogError):
            import_source(cfg, card.root, progress=fill_the_catalog_disk)
        alive = [t.name for t in threading.enumerate() if t.name.startswith(COPY_THREADS)]
        [session] = [p for p in (tmp_path / "archive").iterdir() if p.is_dir()]
        after_return = sorted(str(p.relative_to(session)) for p in session.rglob("*"))
        for t in threading.enumerate():
            if t.name.startswith(COPY_THREADS):
                t.join(timeout=60)
        assert alive == [], f"copy threads still running after the import failed: {alive}"
        assert sorted(str(p.relative_to(session)) for p in session.rglob("*")) == after_return
        (catdisk / "filler.bin").unlink()
