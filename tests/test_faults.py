"""Faults on real file systems: a full disk, an archive that turns read-only, a card that is
pulled mid-copy, a power cut (FS_IOC_SHUTDOWN on a loop-mounted ext4 archive), an fsync
that fails. Each leaves a failed, resumable session with nothing wrong under a final name,
and `resume` completes it once the cause is gone."""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
from pathlib import Path

import pytest

from cards import make_card, tree_hashes
from imalinkd import durable
from imalinkd.config import parse_config
from imalinkd.importer import import_source, resume_session, verify_sessions
from imalinkd.storage import init_storage
from mounts import ext4_image, is_mounted, require_root, run

FS_IOC_SHUTDOWN = 0x8004587D  # _IOR('X', 125, __u32)
FS_GOING_FLAGS_NOLOGFLUSH = 2  # like pulling the plug: the journal is not flushed


def config_for(tmp_path: Path, root: Path, **imp):
    """The config of an archive at ``root``, made a storage root as 'imalinkd init-storage' does."""
    init_storage(root)
    return parse_config({
        "catalog": {"url": f"sqlite:///{tmp_path / 'catalog.db'}"},
        "storage": {"root": str(root)},
        "import": {"thumbnails": False, "checkpoint_seconds": 0.0, **imp},
    })


def assert_nothing_wrong_under_final_names(session_dir: Path, card, partials_allowed: bool = False) -> None:
    """``partials_allowed``: on a file system gone read-only a temporary file cannot be
    deleted; it has no final name, and resume removes it."""
    for rel, sha in tree_hashes(session_dir / "files").items():
        if durable.is_partial_name(os.path.basename(rel)):
            assert partials_allowed, f"partial file left: {rel}"
            continue
        assert card.files.get(rel) == sha, f"wrong bytes under a final name: {rel}"


def plenty(_path):
    return (1 << 40, 1 << 41)


def test_full_disk_fails_cleanly_and_resumes_after_space_is_freed(tmp_path):
    require_root()
    with ext4_image(tmp_path / "arch", size_mb=64) as mnt:
        filler = mnt / "filler.bin"
        with open(filler, "wb") as f:
            f.write(b"\0" * (46 * 1024 * 1024))
        card = make_card(tmp_path / "card", shots=12, raw_kb=1024)  # ~16 MiB: does not fit
        cfg = config_for(tmp_path, mnt / "photos")
        result = import_source(cfg, card.root, disk_free=plenty)  # preflight told there is room
        assert result.copy_status == "failed"
        assert "full" in result.error
        session = Path(result.storage_path)
        assert_nothing_wrong_under_final_names(session, card)
        filler.unlink()
        done = resume_session(cfg, result.session_uuid)
        assert done.copy_status == "completed"
        assert tree_hashes(session / "files") == card.files
        assert verify_sessions(cfg, [done.session_uuid]).ok


def test_preflight_on_a_real_small_disk_refuses_before_copying(tmp_path):
    require_root()
    with ext4_image(tmp_path / "arch", size_mb=16) as mnt:
        card = make_card(tmp_path / "card", shots=12, raw_kb=1024)
        cfg = config_for(tmp_path, mnt / "photos")
        from imalinkd.errors import StorageFullError

        with pytest.raises(StorageFullError) as e:
            import_source(cfg, card.root)
        assert "free" in str(e.value) and "needed" in str(e.value)
        assert [p.name for p in (mnt / "photos").iterdir()] == ["config.json"]


def test_archive_turning_read_only_fails_and_resumes_when_writable_again(tmp_path):
    """The kernel turns ext4 read-only on a file-system error (errors=remount-ro); the
    debugging switch trigger_fs_error makes it do so now."""
    require_root()
    image = tmp_path / "arch.img"
    with ext4_image(tmp_path / "arch", size_mb=96, image=image) as mnt:
        run("mount", "-o", "remount,errors=remount-ro", str(mnt))
        dev = next(line.split()[-2] for line in open("/proc/self/mountinfo") if line.split()[4] == str(mnt))
        trigger = Path("/sys/fs/ext4") / os.path.basename(dev) / "trigger_fs_error"
        if not trigger.exists():
            pytest.skip("this kernel has no ext4 trigger_fs_error switch")
        card = make_card(tmp_path / "card", shots=20, raw_kb=512)
        cfg = config_for(tmp_path, mnt / "photos", workers=1)
        flipped = []

        def progress(p):
            if p.files_done >= 2 and not flipped:
                trigger.write_text("imalinkd test: simulated file-system error\n")
                flipped.append(True)

        result = import_source(cfg, card.root, progress=progress)
        assert flipped and result.copy_status == "failed"
        assert "read-only" in result.error
        assert_nothing_wrong_under_final_names(Path(result.storage_path), card, partials_allowed=True)
        with pytest.raises(Exception):
            resume_session(cfg, result.session_uuid)  # still read-only: refused, nothing lost
    subprocess.run(["e2fsck", "-fy", str(image)], capture_output=True)
    with ext4_image(tmp_path / "arch", image=image):
        done = resume_session(cfg, result.session_uuid)
        assert done.copy_status == "completed"
        assert tree_hashes(Path(done.storage_path) / "files") == card.files  # partials gone too


def test_card_pulled_mid_copy_leaves_resumable_session(tmp_path):
    require_root()
    card_tree = make_card(tmp_path / "tree", shots=10, raw_kb=512)
    image = tmp_path / "card.img"
    with ext4_image(tmp_path / "fill", size_mb=32, image=image) as fill:
        subprocess.run(["cp", "-a", f"{card_tree.root}/.", str(fill)], check=True)
    mnt = tmp_path / "media" / "CARD"
    cfg = config_for(tmp_path, tmp_path / "archive", workers=1)
    with ext4_image(mnt, image=image):
        pulled = []

        def progress(p):
            if p.files_done >= 2 and not pulled:
                subprocess.run(["umount", "-l", str(mnt)], check=True)
                pulled.append(True)

        result = import_source(cfg, mnt, progress=progress)
        assert pulled and result.copy_status == "failed"
        assert "source went away" in result.error or "card" in result.error
        assert_nothing_wrong_under_final_names(Path(result.storage_path), card_tree)
    assert not is_mounted(mnt)
    # the card comes back (at another path: resume is told where)
    with ext4_image(tmp_path / "media" / "CARD2", image=image) as again:
        done = resume_session(cfg, result.session_uuid, source=again)
        assert done.copy_status == "completed"
        assert tree_hashes(Path(done.storage_path) / "files") == card_tree.files


def _shutdown(mount_point: Path) -> None:
    fd = os.open(mount_point, os.O_RDONLY)
    try:
        fcntl.ioctl(fd, FS_IOC_SHUTDOWN, struct.pack("I", FS_GOING_FLAGS_NOLOGFLUSH))
    finally:
        os.close(fd)


def test_power_cut_loses_only_uncommitted_files_and_resume_recopies_them(tmp_path):
    require_root()
    card = make_card(tmp_path / "card", shots=16, raw_kb=768)
    image = tmp_path / "arch.img"
    with ext4_image(tmp_path / "arch", size_mb=96, image=image) as mnt:
        cfg = config_for(tmp_path, mnt / "photos", workers=2)
        cut = []

        def progress(p):
            if p.files_done >= 5 and not cut:
                _shutdown(mnt)
                cut.append(p.files_done)

        result = import_source(cfg, card.root, progress=progress)
        assert cut and result.copy_status == "failed"
    # plug the drive back in: journal replay, then every committed file must be intact
    with ext4_image(tmp_path / "arch", image=image):
        session = Path(result.storage_path)
        survived = tree_hashes(session / "files")
        assert len(survived) >= cut[0] - 1
        assert_nothing_wrong_under_final_names(session, card, partials_allowed=True)
        done = resume_session(cfg, result.session_uuid)
        assert done.copy_status == "completed"
        assert tree_hashes(session / "files") == card.files
        report = verify_sessions(cfg, [done.session_uuid])
        assert report.ok and report.checked == len(card.files)


def test_failed_fsync_is_not_retried_and_the_file_counts_as_not_copied(tmp_path, monkeypatch):
    """fsync failing is injected at the system-call boundary (the only way to make a real
    disk fail on demand without a faulty device)."""
    card = make_card(tmp_path / "card", shots=4)
    cfg = config_for(tmp_path, tmp_path / "archive", workers=1)
    real_fsync = os.fsync
    data_fsyncs: list[str] = []
    failed: list[str] = []

    def flaky_fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if durable.TEMP_PREFIX in target:
            data_fsyncs.append(target)
            if len(data_fsyncs) == 2:  # the second file's data fsync fails
                failed.append(target)
                raise OSError(errno.EIO, "Input/output error")
        return real_fsync(fd)

    monkeypatch.setattr(durable.os, "fsync", flaky_fsync)
    result = import_source(cfg, card.root)
    monkeypatch.setattr(durable.os, "fsync", real_fsync)
    assert result.copy_status == "failed" and "fsync" in result.error
    assert data_fsyncs.count(failed[0]) == 1, "a failed fsync was retried"
    assert not os.path.exists(failed[0])
    assert_nothing_wrong_under_final_names(Path(result.storage_path), card)
    done = resume_session(cfg, result.session_uuid)
    assert done.copy_status == "completed"
    assert tree_hashes(Path(done.storage_path) / "files") == card.files


def test_an_exfat_archive_keeps_names_that_differ_only_in_case(tmp_path):
    """Archive drives are often exFAT: no hard links, names compared without case. Two
    source files whose names differ only in case both survive, neither overwritten."""
    from mounts import exfat_mount, make_exfat_image

    image = make_exfat_image(tmp_path / "archive.img", label="ARCHIVE", size_mb=64)
    src = tmp_path / "card" / "DCIM" / "100"
    src.mkdir(parents=True)
    contents = []
    for i in range(12):  # pairs, so that parallel finishers race for the same name
        for name in (f"IMG_{i:02d}A.JPG", f"IMG_{i:02d}a.JPG"):  # adjacent in copy order
            data = os.urandom(70_000 + 1000 * len(contents))
            (src / name).write_bytes(data)
            contents.append(data)
    with exfat_mount(image, tmp_path / "mnt", readonly=False) as mnt:
        cfg = config_for(tmp_path, mnt / "photos")
        result = import_source(cfg, tmp_path / "card")
        assert result.copy_status == "completed" and result.total_files == len(contents)
        files = Path(result.storage_path) / "files" / "DCIM" / "100"
        assert sorted(p.read_bytes() for p in files.iterdir()) == sorted(contents)
        assert verify_sessions(cfg, [result.session_uuid]).ok


def _fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last block."""
    filler = directory / "filler.bin"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
    return filler


def _catalog_disk(tmp_path: Path):
    """An 8 MiB ext4 image for a catalog, with 4 KiB blocks as on any real disk: on the 1 KiB
    blocks mkfs gives so small a file system, SQLite's shared-memory file, which it
    allocates by writing the last byte of each 4 KiB page, keeps holes that a full disk
    cannot fill, and touching them through its mapping kills the process (SIGBUS)."""
    image = tmp_path / "catdisk.img"
    with open(image, "wb") as f:
        f.truncate(8 * 1024 * 1024)
    run("mkfs.ext4", "-q", "-F", "-b", "4096", "-m", "0", str(image))
    return ext4_image(tmp_path / "catdisk", image=image)


def _catalog_on_full_disk(tmp_path: Path, archive: Path):
    """A config whose catalog is on a file system then filled, and the catalog, open: its
    connection keeps SQLite's shared-memory file, so the others open it and fail only when
    they write."""
    from imalinkd.catalog import Catalog

    mnt = tmp_path / "catdisk"
    init_storage(archive)
    cfg = parse_config({
        "catalog": {"url": f"sqlite:///{mnt / 'catalog.db'}"},
        "storage": {"root": str(archive)},
        "import": {"thumbnails": False, "checkpoint_seconds": 0.0},
    })
    catalog = Catalog.open(cfg)
    with catalog.engine.connect() as c:
        c.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    return cfg, _fill(mnt), catalog


def test_a_catalog_disk_full_before_an_import_refuses_it_clearly(tmp_path):
    require_root()
    from imalinkd.errors import CatalogError

    card = make_card(tmp_path / "card", shots=2)
    with _catalog_disk(tmp_path):
        cfg, filler, catalog = _catalog_on_full_disk(tmp_path, tmp_path / "archive")
        with pytest.raises(CatalogError, match=r"database or disk is full \(its file system is full: 0 B free\); "
                                               r"this change was not recorded"):
            import_source(cfg, card.root)
        assert not [p for p in (tmp_path / "archive").iterdir() if p.is_dir()]  # no session begun
        filler.unlink()
        assert import_source(cfg, card.root).copy_status == "completed"
        catalog.close()


def test_a_catalog_disk_filling_during_an_import_leaves_it_on_the_drive_resumable(tmp_path):
    require_root()
    from imalinkd.catalog import Catalog
    from imalinkd.errors import CatalogError
    from imalinkd.reindex import reindex_path

    card = make_card(tmp_path / "card", shots=4)
    with _catalog_disk(tmp_path):
        cfg = config_for(tmp_path, tmp_path / "archive")
        cfg = parse_config({"catalog": {"url": f"sqlite:///{tmp_path / 'catdisk' / 'catalog.db'}"},
                            "storage": {"root": str(tmp_path / "archive")},
                            "import": {"thumbnails": False, "checkpoint_seconds": 0.0}})
        fillers = []

        def fill_after_two_files(p):
            if p.files_done >= 2 and not fillers:
                fillers.append(_fill(tmp_path / "catdisk"))

        with pytest.raises(CatalogError) as failure:
            import_source(cfg, card.root, progress=fill_after_two_files)
        message = str(failure.value)
        assert "database or disk is full" in message and "imalinkd resume" in message
        [session] = [p for p in (tmp_path / "archive").iterdir() if p.is_dir()]
        assert session.name in message and (session / "metadata.json").is_file()
        assert_nothing_wrong_under_final_names(session, card)
        fillers[0].unlink()
        catalog = Catalog.open(cfg)
        assert reindex_path(cfg, catalog, str(tmp_path / "archive")).ok  # the drive tells the catalog
        catalog.close()
        done = resume_session(cfg, session.name[-8:], source=str(card.root))
        assert done.copy_status == "completed"
        assert tree_hashes(session / "files") == card.files


def test_a_full_catalog_disk_fails_a_reindex_clearly_and_records_nothing(tmp_path):
    require_root()
    from imalinkd.catalog import ImportSession
    from imalinkd.errors import CatalogError
    from imalinkd.reindex import reindex_path
    from sqlalchemy import func, select

    archive = tmp_path / "archive"
    for i in range(3):
        assert import_source(config_for(tmp_path / f"other{i}", archive), make_card(tmp_path / f"card{i}", shots=3, seed=i + 1).root).copy_status == "completed"
    with _catalog_disk(tmp_path):
        cfg, filler, catalog = _catalog_on_full_disk(tmp_path, archive)
        with pytest.raises(CatalogError, match="database or disk is full.*not recorded"):
            reindex_path(cfg, catalog, str(archive))
        filler.unlink()
        with catalog.session() as s:
            assert s.scalar(select(func.count()).select_from(ImportSession)) == 0
        report = reindex_path(cfg, catalog, str(archive))
        assert report.ok and report.roots[0].sessions_added == 3
        catalog.close()


def _lock_is_free(session: Path) -> bool:
    from imalinkd.sessions import LOCK_NAME

    fd = os.open(session / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def test_a_session_whose_catalog_row_cannot_be_written_is_not_left_held(tmp_path, monkeypatch):
    """In a long-running daemon, a session begun on the drive whose catalog row failed must
    not stay locked (or counted as being imported) until the process ends."""
    import imalinkd.importer as importer
    from imalinkd.errors import CatalogError
    from imalinkd.sessions import _ACTIVE

    def refused(*args, **kwargs):
        raise CatalogError(url="sqlite:///catalog.db", message="cannot read or write it: database or disk is full")

    monkeypatch.setattr(importer, "_add_session_row", refused)
    card = make_card(tmp_path / "card", shots=2)
    cfg = config_for(tmp_path, tmp_path / "archive")
    with pytest.raises(CatalogError):
        import_source(cfg, card.root)
    [session] = [p for p in (tmp_path / "archive").iterdir() if p.is_dir()]
    assert _lock_is_free(session) and session.name[-8:] not in {s[:8] for s in _ACTIVE}
    monkeypatch.undo()
    from imalinkd.catalog import Catalog
    from imalinkd.reindex import reindex_path

    catalog = Catalog.open(cfg)
    assert reindex_path(cfg, catalog, str(tmp_path / "archive")).ok  # as the message says: reindex, then resume
    catalog.close()
    done = resume_session(cfg, session.name[-8:], source=str(card.root))
    assert done.copy_status == "completed" and tree_hashes(session / "files") == card.files
