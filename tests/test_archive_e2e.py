"""Portable archives on a real ext4 loop image: import, unplug, plug in at another path,
reindex, rebuild a lost catalog, replicas on a second image, storage health; and a known
archive on an exFAT image, reindexed with the listing helper.

Needs root (loop devices, mounts): skipped with a reason otherwise, never under CI=true.
Every mount made here is unmounted (and its loop device detached) in teardown."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from sqlalchemy import func, select

from imalinkd.catalog import Catalog, Image, ImportSession, Photo, SessionCopy
from imalinkd.locate import resolve_root, scan_locations, session_path, storage_status, update_storage_path
from imalinkd import reading
from imalinkd.reading import read_drive
from imalinkd.reindex import load_known_manifests, reindex_path

from mounts import exfat_mount, make_exfat_image
from test_reindex import SHOT_FILES, age_manifests, build_hostile_drive, config_for, make_root, make_session

pytestmark = [pytest.mark.root, pytest.mark.slow]

if os.geteuid() != 0 and os.environ.get("CI") != "true":
    pytestmark.append(pytest.mark.skip(reason="needs root for loop-mounted ext4 images"))


class LoopImage:
    """An ext4 image file, mounted and unmounted at will; ``close`` leaves nothing mounted."""

    def __init__(self, path, size="64M") -> None:
        self.path = str(path)
        self.mounted: list[str] = []
        subprocess.run(["truncate", "-s", size, self.path], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", self.path], check=True)

    def mount(self, where) -> str:
        where = str(where)
        os.makedirs(where, exist_ok=True)
        subprocess.run(["mount", "-o", "loop", self.path, where], check=True)
        self.mounted.append(where)
        return where

    def umount(self, where) -> None:
        subprocess.run(["umount", str(where)], check=True)
        self.mounted.remove(str(where))

    def close(self) -> None:
        for where in reversed(self.mounted):
            subprocess.run(["umount", where], check=False)
        self.mounted.clear()
        out = subprocess.run(["losetup", "-j", self.path], capture_output=True, text=True).stdout
        for line in out.splitlines():
            subprocess.run(["losetup", "-d", line.split(":", 1)[0]], check=False)


@pytest.fixture
def images(tmp_path):
    made: list[LoopImage] = []

    def make(name="archive.img", size="64M") -> LoopImage:
        img = LoopImage(tmp_path / name, size)
        made.append(img)
        return img

    yield make
    for img in made:
        img.close()


def make_card(path) -> int:
    """A small camera card tree: RAW+JPEG pairs and a lone JPEG."""
    n = 0
    for i in range(1, 4):
        for ext, size in (("CR3", 3000), ("JPG", 1000)):
            p = path / "DCIM" / "100CANON" / f"IMG_{i:04d}.{ext}"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(os.urandom(size + i))
            n += 1
    (path / "DCIM" / "100CANON" / "IMG_0099.JPG").write_bytes(os.urandom(777))
    return n + 1


def import_card(config, card, description):
    from imalinkd.importer import import_source

    result = import_source(config, str(card), description=description, thumbnails=False)
    assert result.copy_status == "completed", result
    return result


def snapshot(catalog):
    with catalog.session() as s:
        sessions = sorted(
            (r.storage_uuid, r.storage_directory_name, r.total_files, r.total_size_bytes, r.photos_created, r.copy_status)
            for r in s.scalars(select(ImportSession))
        )
        images = sorted(s.execute(select(ImportSession.storage_uuid, Image.storage_relative_path, Image.sha256, Image.file_size,
                                                Image.media_json)
                                  .join(ImportSession, Image.session_id == ImportSession.id)).all())
        photos = sorted(s.execute(select(ImportSession.storage_uuid, Photo.key).join(ImportSession, Photo.session_id == ImportSession.id)).all())
    return sessions, images, photos


def test_archive_remounted_elsewhere_is_found_reindexed_and_rebuilt(tmp_path, images):
    img = images()
    first = img.mount(tmp_path / "mnt" / "a")
    root = os.path.join(first, "photos")
    make_root(root)
    config = config_for(tmp_path, root)
    catalog = Catalog.open(config)
    card = tmp_path / "card"
    n = make_card(card)
    r1 = import_card(config, card, "trip")
    card2 = tmp_path / "card2"
    make_card(card2)
    r2 = import_card(config, card2, "second")
    sid = r1.as_json()["import_session_id"]
    st = storage_status(config, catalog, sid)
    assert st["storage_accessible"] and st["files_accessible"] == n == st["total_files"]
    before = snapshot(catalog)
    storage_id = st["storage_id"]

    # unplugged: inaccessible, not an error, nothing deleted, nothing written to the mount point
    img.umount(first)
    by_id = config_for(tmp_path, storage_id=storage_id)
    st = storage_status(by_id, catalog, sid)
    assert st["storage_accessible"] is False and st["storage_path"] is None and st["files_accessible"] == 0
    assert session_path(by_id, catalog, sid) is None
    assert snapshot(catalog) == before and os.listdir(first) == []

    # plugged in at another path: found by identity with no manual step
    second = img.mount(tmp_path / "media" / "user" / "T7")
    st = storage_status(by_id, catalog, sid)
    assert st["storage_accessible"] and st["storage_path"].startswith(second + "/") and st["files_accessible"] == n
    report = reindex_path(by_id, catalog, second)
    assert report.ok and report.roots[0].path == os.path.join(second, "photos")
    assert report.roots[0].sessions_added == 0 and snapshot(catalog) == before
    for r in (r1, r2):
        assert storage_status(by_id, catalog, r.as_json()["import_session_id"])["storage_accessible"]

    # catalog deleted outright: rebuilt from the drive with the same sessions, images, photos
    catalog.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{tmp_path}/catalog.db{suffix}"):
            os.unlink(f"{tmp_path}/catalog.db{suffix}")
    catalog = Catalog.open(by_id)
    report = reindex_path(by_id, catalog, second)
    assert report.ok and report.roots[0].sessions_added == 2
    assert snapshot(catalog) == before
    assert storage_status(by_id, catalog, sid)["files_accessible"] == n


def test_hostile_drive_on_a_loop_image_is_rejected_cleanly(tmp_path, images):
    mnt = images().mount(tmp_path / "hostile")
    outside = str(tmp_path / "outside")
    root, good, bad = build_hostile_drive(mnt, outside)
    config = config_for(tmp_path)
    catalog = Catalog.open(config)
    report = reindex_path(config, catalog, mnt)
    assert set(bad.values()) == {p for p, _ in report.rejected}
    with catalog.session() as s:
        assert list(s.scalars(select(ImportSession.storage_uuid))) == [good]


def test_replica_on_a_second_image_shows_as_a_second_copy(tmp_path, images):
    main = images("main.img").mount(tmp_path / "main")
    backup = images("backup.img").mount(tmp_path / "backup")
    root = os.path.join(main, "photos")
    make_root(root)
    config = config_for(tmp_path, root)
    catalog = Catalog.open(config)
    card = tmp_path / "card"
    n = make_card(card)
    sid = import_card(config, card, "trip").as_json()["import_session_id"]
    reindex_path(config, catalog, main)
    make_root(os.path.join(backup, "photos"), "backup")
    sdir = session_path(config, catalog, sid)
    shutil.copytree(sdir, os.path.join(backup, "photos", os.path.basename(sdir)), symlinks=True)
    report = reindex_path(config, catalog, backup)
    assert report.ok and report.roots[0].replicas == 1
    st = storage_status(config, catalog, sid)
    assert [c["accessible"] for c in st["copies"]] == [True, True]
    assert [c["home"] for c in st["copies"]] == [True, False]
    assert {c["label"] for c in st["copies"]} >= {"backup"}
    # home drive away: the session is still reachable through its replica
    subprocess.run(["umount", main], check=True)
    try:
        st = storage_status(config, catalog, sid)
        assert st["storage_accessible"] and st["storage_path"].startswith(backup) and st["files_accessible"] == n
        assert [c["accessible"] for c in st["copies"]] == [False, True]
    finally:
        subprocess.run(["mount", "-o", "loop", str(tmp_path / "main.img"), main], check=True)
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(SessionCopy)) == 2


def test_scan_locations_reports_health_and_manual_override(tmp_path, images):
    mnt = images().mount(tmp_path / "deep")
    root = os.path.join(mnt, "a", "b", "c", "photos")  # deeper than the search depth
    make_root(root)
    config = config_for(tmp_path, root)
    catalog = Catalog.open(config)
    card = tmp_path / "card"
    make_card(card)
    sid = import_card(config, card, "trip").as_json()["import_session_id"]
    locs = [loc for loc in scan_locations(config, catalog) if loc["path"] == root]
    [loc] = locs
    assert loc["session_count"] == 1 and loc["sessions"][0].endswith(sid[:8])
    assert loc["total_bytes"] > 0 and 0 <= loc["free_bytes"] <= loc["total_bytes"]
    assert 0 < loc["utilisation_percent"] < 100 and loc["low_space"] is False
    storage_id = loc["storage_id"]
    # moved where neither the config nor a mount scan finds it: the manual override does
    moved = os.path.join(mnt, "x", "y", "z", "archive")
    os.makedirs(os.path.dirname(moved))
    os.rename(root, moved)
    by_id = config_for(tmp_path, storage_id=storage_id, search_depth=1)
    assert resolve_root(by_id, catalog, storage_id) is None
    assert storage_status(by_id, catalog, sid)["storage_accessible"] is False
    out = update_storage_path(catalog, sid, moved)
    assert out["storage_path"].startswith(moved)
    assert storage_status(by_id, catalog, sid)["storage_accessible"] is True
    low = config_for(tmp_path, storage_id=storage_id, free_space_warning_percent=100.0)
    assert storage_status(low, catalog, sid)["storage_health"]["low_space"] is True


def test_a_known_exfat_archive_is_listed_partly_by_the_helper_and_a_grown_file_flagged(tmp_path, monkeypatch):
    """An archive drive formatted exFAT (as many portable drives come), through FUSE: what a
    reindex records of its manifests and files holds there too (2 s mtimes, no inode
    ctime of its own), and the helper process lists it as this process would."""
    image = make_exfat_image(tmp_path / "t7.img", label="T7")
    with exfat_mount(image, tmp_path / "mnt", readonly=False) as mnt:
        root = mnt / "photos"
        marker = make_root(root)
        made = [make_session(root, marker, description=f"trip{i}") for i in range(4)]
        age_manifests(root)
        config = config_for(tmp_path, root)
        catalog = Catalog.open(config)
        try:
            assert reindex_path(config, catalog, str(root)).roots[0].manifests_read == 4
            with catalog.session() as s:
                known = load_known_manifests(s, marker.storage_id)
            assert len(known) == 4 and all(k.files_digest for k in known.values())
            drive, rejected = read_drive(str(root), marker, known=known, helper_files=0)
            assert not rejected and sum(ds.on_disk is None for ds in drive.sessions) == 2

            monkeypatch.setattr(reading, "HELPER_FILES", 0)
            report = reindex_path(config, catalog, str(root))
            assert report.ok and (report.roots[0].manifests_read, report.roots[0].size_mismatches) == (0, 0)
            for _sid, sdir in made:  # one file grown in place in every session, the helper's too
                with open(os.path.join(sdir, "files", "DCIM/100CANON/IMG_0001.JPG"), "ab") as f:
                    f.write(b"grown")
            report = reindex_path(config, catalog, str(root))
            assert report.ok and (report.roots[0].manifests_read, report.roots[0].size_mismatches) == (0, 4)
            for _sid, sdir in made:
                os.truncate(os.path.join(sdir, "files", "DCIM/100CANON/IMG_0001.JPG"), len(SHOT_FILES["DCIM/100CANON/IMG_0001.JPG"]))
            reindex_path(config, catalog, str(root))
            with catalog.session() as s:
                assert s.scalar(select(func.count()).select_from(Image).where(Image.size_mismatch)) == 0
        finally:
            catalog.close()
