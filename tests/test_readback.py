"""Verification re-reads that reach the disk, and say so only when they do: archives on
FUSE file systems (exfat-fuse, ntfs-3g on loop devices), whose re-read after dropping the
file's cached pages would be served from the block device's cache; and one whose FUSE
file system has no block device at all (ntfs-3g on an image file), which is recorded and
shown as such. The loop device's own read counter shows what reached the device."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cards import make_card
from imalinkd import readback, storage
from imalinkd.catalog import Catalog, ImportSession
from imalinkd.config import parse_config
from imalinkd.importer import import_source, verify_sessions
from imalinkd.manifest import read_manifest
from mounts import ext4_image, exfat_mount, is_mounted, make_exfat_image, require_root, run, umount

REPO = Path(__file__).resolve().parents[1]


def config_for(tmp_path: Path, root: Path):
    return parse_config({
        "catalog": {"url": f"sqlite:///{tmp_path / 'catalog.db'}"},
        "storage": {"root": str(root)},
        "import": {"thumbnails": False},
    })


def sectors_read(device: str) -> int:
    """Sectors the block device has read since it was set up (/sys/block/*/stat)."""
    return int(Path(f"/sys/block/{os.path.basename(device)}/stat").read_text().split()[2])


def device_of(mount_point: Path) -> str:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mount_point):
                return fields[fields.index("-") + 2]
    raise AssertionError(f"{mount_point} is not mounted")


def make_ntfs_image(image: Path, size_mb: int = 96) -> Path:
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    subprocess.run(["mkntfs", "-F", "-f", "-q", "-L", "SHARED", str(image)], check=True, capture_output=True)
    return image


@contextlib.contextmanager
def ntfs_mount(image: Path, mount_point: Path, *, loop: bool = True):
    """NTFS through ntfs-3g, as drives shared with Windows are mounted: on a loop device
    (``fuseblk``), or reading the image file itself (plain ``fuse``, no block device)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        source = str(image)
        if loop:
            from mounts import loop_device

            source = stack.enter_context(loop_device(image))
        run("ntfs-3g", source, str(mount_point))
        try:
            yield mount_point
        finally:
            if is_mounted(mount_point):
                umount(mount_point)


@contextlib.contextmanager
def fuse_archive(kind: str, tmp_path: Path, *, loop: bool = True):
    require_root()
    if kind == "exfat-fuse":
        with exfat_mount(make_exfat_image(tmp_path / "t7.img", label="T7", size_mb=96), tmp_path / "mnt", readonly=False) as mnt:
            yield mnt
    else:
        with ntfs_mount(make_ntfs_image(tmp_path / "shared.img"), tmp_path / "mnt", loop=loop) as mnt:
            yield mnt


@pytest.mark.parametrize("kind", ["exfat-fuse", "ntfs-3g"])
def test_on_fuse_the_verification_reads_the_copies_from_the_device(tmp_path, kind):
    card = make_card(tmp_path / "card", shots=6, raw_kb=2048)
    with fuse_archive(kind, tmp_path) as mnt:
        device = device_of(mnt)
        root = mnt / "photos"
        storage.init_storage(root)
        cfg = config_for(tmp_path, root)
        before = sectors_read(device)
        result = import_source(cfg, card.root)
        read = (sectors_read(device) - before) * 512
        assert result.copy_status == "completed"
        # every copy was read back from the device (not just the drive's own bookkeeping)
        assert read >= card.total_bytes, f"{read} bytes read from {device}, {card.total_bytes} copied"
        assert read_manifest(result.storage_path).readback == "from-disk"
        catalog = Catalog.open(cfg)
        with catalog.session() as s:
            assert s.query(ImportSession).one().readback == "from-disk"
        catalog.close()
        before = sectors_read(device)
        report = verify_sessions(cfg, [result.session_uuid])  # the copies are in the device's cache now
        assert report.ok and report.readback == "from-disk"
        assert (sectors_read(device) - before) * 512 >= card.total_bytes


def test_a_fuse_archive_without_a_device_is_recorded_and_shown_as_page_cache_possible(tmp_path):
    """ntfs-3g reading an image file (a share, say, or a disk image) rather than a device:
    the re-read may come from the image file's cache; that is what is recorded and shown."""
    card = make_card(tmp_path / "card", shots=3, raw_kb=256)
    with fuse_archive("ntfs-3g", tmp_path, loop=False) as mnt:
        root = mnt / "photos"
        storage.init_storage(root)
        cfg_path = tmp_path / "imalinkd.toml"
        cfg_path.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/catalog.db"\n\n[storage]\nroot = "{root}"\n\n'
                            '[import]\nthumbnails = false\n\n[api]\nlisten = ""\n')

        def imalinkd(*args):
            return subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(cfg_path), *args], cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)

        r = imalinkd("import", str(card.root), "--json")
        assert r.returncode == 0, r.stderr
        sid = json.loads(r.stdout)["import_session_id"]
        assert read_manifest(json.loads(r.stdout)["storage_path"]).readback == "page-cache-possible"
        st = json.loads(imalinkd("status", sid, "--json").stdout)
        assert (st["verification"], st["readback"]) == ("sha256", "page-cache-possible")
        text = imalinkd("status", sid).stdout
        assert "not proof of what the disk holds" in text
        assert [s["readback"] for s in json.loads(imalinkd("sessions", "--json").stdout)] == ["page-cache-possible"]
        v = imalinkd("verify", sid, "--json")
        assert v.returncode == 0 and json.loads(v.stdout)["readback"] == "page-cache-possible"


def test_kernel_file_systems_are_read_from_the_device(tmp_path):
    require_root()
    with ext4_image(tmp_path / "mnt") as mnt:
        (mnt / "f").write_bytes(b"x" * 10000)
        assert readback.route_for(mnt / "f").kind == readback.FROM_DISK
        assert readback.reread_hash(mnt / "f")[1:] == (10000, readback.FROM_DISK)
    tmpfs = tmp_path / "tmpfs"
    tmpfs.mkdir()
    run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(tmpfs))
    try:
        (tmpfs / "f").write_bytes(b"y")
        assert readback.reread_hash(tmpfs / "f")[2] == readback.PAGE_CACHE_POSSIBLE
    finally:
        umount(tmpfs)


def test_on_fuse_a_scrub_reads_the_files_from_the_device(tmp_path):
    """A scrub re-verifies against the disk, not a cache: on exfat-fuse the files just
    written are still in the loop device's cache, and a scrub must read them from it all
    the same (the device's cache dropped as for an import's read-back)."""
    from imalinkd.scrub.budget import parse_budget
    from imalinkd.scrub.engine import scrub_root

    card = make_card(tmp_path / "card", shots=6, raw_kb=2048)
    with fuse_archive("exfat-fuse", tmp_path) as mnt:
        device = device_of(mnt)
        root = mnt / "photos"
        storage.init_storage(root)
        cfg = config_for(tmp_path, root)
        assert import_source(cfg, card.root).copy_status == "completed"
        # the copies are in the device's cache now: read them all through the mount once more
        for f in root.rglob("*"):
            if f.is_file():
                f.read_bytes()
        catalog = Catalog.open(cfg)
        try:
            before = sectors_read(device)
            report = scrub_root(catalog, str(root), storage.read_marker(root), parse_budget("pass"))
            read = (sectors_read(device) - before) * 512
        finally:
            catalog.close()
        assert report.clean and report.checked == len(card.files)
        assert read >= card.total_bytes, f"the scrub read {read} bytes from {device}, {card.total_bytes} archived"
