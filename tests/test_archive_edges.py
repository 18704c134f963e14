"""The archive at its edges, on real loop-mounted drives: a drive yanked mid-import, a drive
not plugged in on first use, a mount point the catalog once knew, new directories made
durable, and a catalog that forgot what its drive remembers."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from cards import make_card, tree_hashes
from imalinkd import config as config_module
from imalinkd.catalog import Catalog, ImportSession, RootPath
from imalinkd.config import parse_config
from imalinkd.daemon.events import DropBatchSettled, JobFinished, MountAppeared
from imalinkd.daemon.service import Daemon
from imalinkd.errors import StorageNotInitialisedError, StorageNotMountedError
from imalinkd.heldroot import HeldRoot
from imalinkd.importer import find_resumable_session, import_source, open_storage, resume_session, take_unknown_sessions
from imalinkd.reindex import reindex_path
from imalinkd.storage import init_storage, read_marker
from mounts import ext4_image, is_mounted, require_root


def config_for(tmp_path: Path, root: Path | None, **extra) -> object:
    data = {
        "catalog": {"url": f"sqlite:///{tmp_path / 'catalog.db'}"},
        "import": {"thumbnails": False, "checkpoint_seconds": 0.0, "workers": 1, "readers": 1},
        "api": {"listen": ""},
        "daemon": {"state_dir": str(tmp_path / "state"), "mount_paths": [f"{tmp_path}/mounts/*"]},
        **extra,
    }
    if root is not None:
        data["storage"] = {"root": str(root)}
    return parse_config(data)


@contextlib.contextmanager
def catalog_of(cfg):
    catalog = Catalog.open(cfg)
    try:
        yield catalog
    finally:
        catalog.close()


def new_archive(tmp_path: Path, name: str = "T7", size_mb: int = 96) -> tuple[Path, Path]:
    """An ext4 archive drive image made a storage root at ``photos``: (image, mount
    point), left unmounted."""
    image = tmp_path / f"{name}.img"
    mnt = tmp_path / "mounts" / name
    with ext4_image(mnt, size_mb=size_mb, image=image):
        init_storage(mnt / "photos", name)
    return image, mnt


def card_drive(tmp_path: Path, card) -> Path:
    """An ext4 image holding the card's tree (a camera card's stand-in on a real device)."""
    image = tmp_path / "card.img"
    with ext4_image(tmp_path / "fill", size_mb=32, image=image) as fill:
        subprocess.run(["cp", "-a", f"{card.root}/.", str(fill)], check=True)
    return image


def yank(mount_point: Path) -> None:
    """What a desktop does with a drive pulled out: a lazy unmount."""
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def below(mount_point: Path) -> list[str]:
    """What is on the disk underneath an unmounted mount point."""
    assert not is_mounted(mount_point)
    return sorted(str(p.relative_to(mount_point)) for p in mount_point.rglob("*"))


def session_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


# --- 1. a drive yanked mid-import --------------------------------------------------------------


def copying(p, files_done: int) -> bool:
    """Has the copy stage begun and committed ``files_done`` files? (With 0: it has just
    begun, no file opened yet: every write of the copy comes after.)"""
    return getattr(p, "phase", None) == "file_copying" and p.files_done >= files_done


@pytest.mark.parametrize("after_files", [0, 2])
def test_archive_yanked_mid_import_fails_cleanly_and_writes_nothing_below_its_mount_point(tmp_path, after_files):
    require_root()
    card = make_card(tmp_path / "card", shots=12, raw_kb=512)
    image, mnt = new_archive(tmp_path)
    cfg = config_for(tmp_path, mnt / "photos")
    yanked = []

    def progress(p):
        if copying(p, after_files) and not yanked:
            yank(mnt)
            yanked.append(p.files_done)

    with ext4_image(mnt, image=image):
        result = import_source(cfg, card.root, progress=progress)
    assert yanked and result.copy_status == "failed" and result.archive_gone
    assert "went away" in result.error and str(mnt / "photos") in result.error
    assert "resume" in result.message and "no longer needed" not in result.message
    assert below(mnt) == []  # not a byte on the system disk
    with catalog_of(cfg) as catalog, catalog.session() as s:
        assert s.scalar(select(ImportSession.copy_status)) == "failed"
    with ext4_image(mnt, image=image):  # the drive is back
        done = resume_session(cfg, result.session_uuid, source=card.root)
        assert done.copy_status == "completed"
        assert tree_hashes(Path(done.storage_path) / "files") == card.files


def test_a_held_session_is_written_where_it_was_made_whatever_its_path_leads_to_now(tmp_path):
    root = tmp_path / "archive"
    marker = init_storage(root)
    held = HeldRoot(str(root), marker).make_session("20261201_import_trip_0123abcd")
    try:
        assert held.gone() is None and held.path == str(root / "20261201_import_trip_0123abcd")
        os.rename(root, tmp_path / "moved")
        init_storage(root)  # another archive now answers at the path
        assert "no longer leads to the drive" in held.gone()
        assert str(root) in held.gone_message() and "went away" in held.gone_message()
        Path(held.via, "files", "IMG_1.JPG").write_bytes(b"jpeg")
        assert (tmp_path / "moved" / "20261201_import_trip_0123abcd" / "files" / "IMG_1.JPG").read_bytes() == b"jpeg"
        assert not (root / "20261201_import_trip_0123abcd").exists()
    finally:
        held.close()


class YankingHub:
    """The daemon's live-progress output, standing in for the HTTP API's hub: it pulls the
    archive drive as the copy begins, as a user would."""

    def __init__(self, archive_mount: Path) -> None:
        self.archive_mount = archive_mount
        self.yanked = False

    def publish(self, progress) -> None:
        if not self.yanked and copying(progress, 0):
            self.yanked = True
            yank(self.archive_mount)

    def publish_result(self, result) -> None:
        pass

    def publish_error(self, *args) -> None:
        pass

    def observe_latency(self, seconds) -> None:
        pass


def mount_event(mount_point: Path) -> MountAppeared:
    """The mount table's record of ``mount_point``, as the daemon's mount source sees it."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, right = line.split(" - ")
        fields = left.split()
        if fields[4] == str(mount_point):
            fstype, source = right.split()[:2]
            return MountAppeared(mount_point, fields[2], fstype, source)
    raise AssertionError(f"{mount_point} is not mounted")


def pump(daemon: Daemon, until, timeout: float = 180.0) -> None:
    """Run the daemon's event loop by hand until ``until()`` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        left = deadline - time.monotonic()
        assert left > 0, "timed out waiting for the daemon"
        try:
            daemon.handle(daemon.events.get(timeout=min(left, 5.0)))
        except queue.Empty:
            pass


def test_daemon_keeps_a_card_whose_archive_was_yanked_and_resumes_it_when_the_drive_returns(tmp_path):
    require_root()
    card = make_card(tmp_path / "cardtree", shots=12, raw_kb=512)
    card_image = card_drive(tmp_path, card)
    image, mnt = new_archive(tmp_path)
    cfg = config_for(tmp_path, mnt / "photos", card=[{"after_import": "unmount"}])
    daemon = Daemon(cfg, None, environ={})
    daemon.catalog = Catalog.open(cfg)
    daemon.hub = hub = YankingHub(mnt)
    finished: list[JobFinished] = []
    handle = daemon.handle

    def recording(event):
        if isinstance(event, JobFinished):
            finished.append(event)
        handle(event)

    daemon.handle = recording
    card_mnt = tmp_path / "mounts" / "EOS_DIGITAL"
    try:
        with ext4_image(mnt, image=image), ext4_image(card_mnt, image=card_image):
            daemon.handle(mount_event(card_mnt))
            pump(daemon, lambda: bool(finished))
            assert hub.yanked
            assert [f.outcome for f in finished] == ["waiting_for_storage"]
            assert is_mounted(card_mnt), "the card was ejected after its import failed"
            assert below(mnt) == []
            assert len(daemon.state.waiting) == 1
            # the drive is plugged in again: it is reindexed and the card's session resumed
            subprocess.run(["mount", "-o", "loop", str(image), str(mnt)], check=True)
            daemon.handle(mount_event(mnt))
            pump(daemon, lambda: any(f.outcome == "completed" and f.session_uuid for f in finished))
            done = [f for f in finished if f.outcome == "completed" and f.session_uuid][0]
            assert done.session_uuid == finished[0].session_uuid  # resumed, not a second session
            with daemon.catalog.session() as s:
                row = s.scalar(select(ImportSession).where(ImportSession.storage_uuid == done.session_uuid))
                assert row.copy_status == "completed"
                sdir = mnt / "photos" / row.storage_directory_name
            assert tree_hashes(sdir / "files") == card.files
            assert not is_mounted(card_mnt)  # after_import = "unmount", now that it is done
    finally:
        for job in list(daemon.state.jobs.values()):
            job.cancel.set()
            if job.thread is not None:
                job.thread.join(timeout=60)
        daemon.catalog.close()


# --- 2. first use with the drive not plugged in ------------------------------------------------


def test_configured_root_on_an_absent_drive_is_refused_naming_the_command(tmp_path):
    require_root()
    card = make_card(tmp_path / "card", shots=3)
    image, mnt = new_archive(tmp_path)
    root = mnt / "photos"
    cfg = config_for(tmp_path, root)
    with pytest.raises(StorageNotInitialisedError) as e:  # the drive is not plugged in
        import_source(cfg, card.root)
    assert str(root) in str(e.value) and f"imalinkd init-storage {root}" in str(e.value)
    assert below(mnt) == []
    r = cli(tmp_path, root, "import", str(card.root))
    assert r.returncode == 1 and f"imalinkd init-storage {root}" in r.stderr and "Traceback" not in r.stderr
    assert below(mnt) == []
    with ext4_image(mnt, image=image):  # plugged in: the import goes to the drive
        assert import_source(cfg, card.root).copy_status == "completed"
    assert below(mnt) == []


def cli(tmp_path: Path, root: Path, *args: str) -> subprocess.CompletedProcess:
    """``imalinkd`` run as a user runs it, with a config naming ``root``."""
    toml = tmp_path / "imalinkd.toml"
    toml.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path / "catalog.db"}"\n\n[storage]\nroot = "{root}"\n\n'
                    '[import]\nthumbnails = false\n\n[api]\nlisten = ""\n')
    return subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(toml), *args],
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1])


def test_only_the_embedded_default_root_is_made_on_first_use(tmp_path, monkeypatch):
    default = tmp_path / "state" / "archive"
    monkeypatch.setattr(config_module, "default_storage_root", lambda: default)
    card = make_card(tmp_path / "card", shots=2)
    cfg = config_for(tmp_path, None)
    result = import_source(cfg, card.root)
    assert result.copy_status == "completed" and read_marker(default) is not None
    assert Path(result.storage_path).parent == default


def test_daemon_card_and_drop_folder_wait_for_an_archive_that_is_not_made_yet(tmp_path):
    require_root()
    card = make_card(tmp_path / "cardtree", shots=3)
    card_image = card_drive(tmp_path, card)
    root = tmp_path / "mounts" / "T7" / "photos"
    drop = tmp_path / "drop"
    (drop / "sub").mkdir(parents=True)
    (drop / "sub" / "a.jpg").write_bytes(b"\xff\xd8" + os.urandom(3000))
    cfg = config_for(tmp_path, root, drop_folder=[{"path": str(drop), "after_import": "delete"}])
    daemon = Daemon(cfg, None, environ={})
    daemon.catalog = Catalog.open(cfg)
    card_mnt = tmp_path / "mounts" / "EOS_DIGITAL"
    try:
        with ext4_image(card_mnt, image=card_image):
            daemon.handle(mount_event(card_mnt))
            daemon.handle(DropBatchSettled(drop, (drop / "sub" / "a.jpg",)))
            pump(daemon, lambda: len(daemon.state.waiting) == 1 and len(daemon.state.waiting_drops) == 1 and not daemon.state.jobs)
            assert is_mounted(card_mnt)
        assert not root.exists() and (drop / "sub" / "a.jpg").exists()
    finally:
        daemon.catalog.close()


# --- 3. the mount guard remembers every path ---------------------------------------------------


def test_a_mount_point_once_seen_as_a_root_never_gets_a_new_marker_after_the_drive_was_seen_elsewhere(tmp_path, monkeypatch):
    """The drive is the embedded default root's mount point (the only root made on first
    use); it is then plugged in elsewhere once (reindexed there), and unplugged."""
    require_root()
    card = make_card(tmp_path / "card", shots=2)
    default = tmp_path / "mounts" / "T7"
    monkeypatch.setattr(config_module, "default_storage_root", lambda: default)
    cfg = config_for(tmp_path, None)
    image = tmp_path / "T7.img"
    with ext4_image(default, size_mb=64, image=image):
        first = import_source(cfg, card.root)  # first use: the default root is made on the drive
        assert first.copy_status == "completed"
        storage_id = read_marker(default).storage_id
    elsewhere = tmp_path / "mounts" / "elsewhere"
    with ext4_image(elsewhere, image=image), catalog_of(cfg) as catalog:
        assert reindex_path(cfg, catalog, str(elsewhere)).ok
    with pytest.raises(StorageNotMountedError) as e:  # unplugged: refused, no new archive
        import_source(cfg, make_card(tmp_path / "card2", shots=2, seed=7).root)
    assert storage_id in str(e.value)
    assert below(default) == []
    with catalog_of(cfg) as catalog, catalog.session() as s:
        seen = {(r.storage_id, r.path) for r in s.scalars(select(RootPath))}
    assert {(storage_id, str(default)), (storage_id, str(elsewhere))} <= seen


def test_a_configured_root_once_known_is_refused_as_not_mounted_even_after_it_was_seen_elsewhere(tmp_path):
    require_root()
    card = make_card(tmp_path / "card", shots=2)
    image, mnt = new_archive(tmp_path)
    cfg = config_for(tmp_path, mnt / "photos")
    with ext4_image(mnt, image=image):
        assert import_source(cfg, card.root).copy_status == "completed"
    with ext4_image(tmp_path / "mounts" / "other", image=image) as other, catalog_of(cfg) as catalog:
        assert reindex_path(cfg, catalog, str(other)).ok
    with pytest.raises(StorageNotMountedError) as e:
        import_source(cfg, make_card(tmp_path / "card2", shots=2, seed=9).root)
    assert "not mounted" in str(e.value)
    assert below(mnt) == []


def test_migration_keeps_the_last_seen_path_of_every_root(tmp_path):
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from imalinkd.catalog import MIGRATIONS

    cfg = config_for(tmp_path, tmp_path / "archive")
    catalog = Catalog.open(cfg)
    alembic = AlembicConfig()
    alembic.set_main_option("script_location", str(MIGRATIONS))
    with catalog.engine.begin() as conn:
        alembic.attributes["connection"] = conn
        command.downgrade(alembic, "0007")
    with catalog.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO storage_roots (storage_id, label, last_seen_path) "
                             "VALUES ('6f1c7a52-8b0e-4d43-9a55-0f2d3c4b5a69', 'T7', '/media/x/T7/photos')")
    catalog.migrate()
    with catalog.session() as s:
        assert [(r.storage_id, r.path) for r in s.scalars(select(RootPath))] == [
            ("6f1c7a52-8b0e-4d43-9a55-0f2d3c4b5a69", "/media/x/T7/photos")]
    catalog.close()
    with pytest.raises(StorageNotMountedError):
        open_storage(config_for(tmp_path, Path("/media/x/T7/photos")), Catalog.open(cfg))


# --- 12. new directories are made durable --------------------------------------------------------


def test_every_new_directory_of_a_session_is_fsynced_into_its_parent(tmp_path, monkeypatch):
    require_root()
    card = make_card(tmp_path / "card", shots=6)
    image, mnt = new_archive(tmp_path)
    cfg = config_for(tmp_path, mnt / "photos", **{"import": {"thumbnails": True, "thumbnail_size": 64, "checkpoint_seconds": 0.0}})
    synced: set[tuple[int, int]] = set()
    real_fsync = os.fsync

    def spy(fd):  # the real fsync, noting which directories it made durable
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.add((st.st_dev, st.st_ino))
        return real_fsync(fd)

    with ext4_image(mnt, image=image):
        monkeypatch.setattr(os, "fsync", spy)
        result = import_source(cfg, card.root)
        monkeypatch.undo()
        assert result.copy_status == "completed"
        session = Path(result.storage_path)
        new_dirs = [session] + [p for p in session.rglob("*") if p.is_dir()]
        assert {session / "files" / "DCIM" / "100CANON", session / "thumbnails"} <= set(new_dirs)
        # each new directory's entry is durable: its parent was fsynced (after it was made:
        # before, the directory did not exist to be fsynced)
        unsynced = [str(d) for d in new_dirs if (os.stat(d.parent).st_dev, os.stat(d.parent).st_ino) not in synced]
        assert unsynced == []


# --- 14. the catalog forgets, the drive remembers ------------------------------------------------


def _snapshot(db: Path, to: Path) -> None:
    src, dst = sqlite3.connect(db), sqlite3.connect(to)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()


def _restore(snapshot: Path, db: Path) -> None:
    """The catalog as it was at the snapshot: what a power cut does to its last writes."""
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(snapshot, db)


def test_a_session_the_catalog_lost_is_taken_from_the_drive_before_importing_again(tmp_path):
    require_root()
    card = make_card(tmp_path / "card", shots=5)
    image, mnt = new_archive(tmp_path)
    cfg = config_for(tmp_path, mnt / "photos")
    db = tmp_path / "catalog.db"
    with ext4_image(mnt, image=image):
        with catalog_of(cfg):
            pass
        _snapshot(db, tmp_path / "before.db")
        first = import_source(cfg, card.root)
        assert first.copy_status == "completed"
        _restore(tmp_path / "before.db", db)  # the power cut: the catalog lost the session
        again = import_source(cfg, card.root)
        assert again.session_uuid is None and again.duplicates_skipped == len(card.files)
        assert session_dirs(mnt / "photos") == [first.storage_directory_name]
        with catalog_of(cfg) as catalog, catalog.session() as s:
            assert s.scalar(select(ImportSession.storage_uuid)) == first.session_uuid


def test_an_unfinished_session_the_catalog_lost_is_found_and_resumed(tmp_path):
    require_root()
    card = make_card(tmp_path / "card", shots=8, raw_kb=256)
    image, mnt = new_archive(tmp_path)
    cfg = config_for(tmp_path, mnt / "photos")
    db = tmp_path / "catalog.db"
    with ext4_image(mnt, image=image):
        with catalog_of(cfg):
            pass
        _snapshot(db, tmp_path / "before.db")
        import threading

        cancel = threading.Event()
        first = import_source(cfg, card.root, cancel=cancel, progress=lambda p: p.files_done >= 2 and cancel.set(),
                              source_info=_card_info())
        assert first.copy_status == "failed"
        _restore(tmp_path / "before.db", db)
        with catalog_of(cfg) as catalog:  # what the daemon does when the card comes back
            root, marker = open_storage(cfg, catalog)
            assert take_unknown_sessions(catalog, root, marker) == 1
            assert find_resumable_session(catalog, "CARD-UUID", "EOS_DIGITAL") == first.session_uuid
        done = resume_session(cfg, first.session_uuid)
        assert done.copy_status == "completed" and tree_hashes(Path(done.storage_path) / "files") == card.files
        assert session_dirs(mnt / "photos") == [first.storage_directory_name]


def _card_info():
    from imalinkd.importer import SourceInfo

    return SourceInfo(kind="card", label="EOS_DIGITAL", fs_uuid="CARD-UUID")


def _damage_table(db: Path, table: str) -> None:
    """Overwrite the first b-tree page of ``table`` with garbage, as a failing disk would."""
    con = sqlite3.connect(db)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size = con.execute("PRAGMA page_size").fetchone()[0]
    rootpage = con.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    con.close()
    with open(db, "r+b") as f:
        f.seek((rootpage - 1) * page_size)
        f.write(b"\x0d\xff" + b"\xee" * (page_size - 2))


@pytest.mark.parametrize("table", ["images", "import_sessions", "storage_roots"])
def test_a_damaged_catalog_ends_an_import_with_a_clear_message_not_a_traceback(tmp_path, table):
    card = make_card(tmp_path / "card", shots=3)
    root = tmp_path / "archive"
    init_storage(root)
    cfg = config_for(tmp_path, root)
    assert import_source(cfg, card.root).copy_status == "completed"
    _damage_table(tmp_path / "catalog.db", table)
    make_card(tmp_path / "card2", shots=3, seed=4)
    r = cli(tmp_path, root, "import", str(tmp_path / "card2"), "--json")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert "database disk image is malformed" in r.stderr + r.stdout and "reindex" in r.stderr + r.stdout
