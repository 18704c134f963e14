"""Identifying real filesystems: an exFAT card image on a loop device mounted through FUSE
(this is how camera cards look on a machine without a kernel exFAT driver)."""

import json
import subprocess
from pathlib import Path

import pytest

from mounts import require_exfat as require_loop_mounts

from imalinkd.daemon.identify import (
    CardIdentity,
    find_storage_roots,
    has_dcim,
    is_camera_card,
    parse_blkid_export,
    probe_filesystem,
)
from imalinkd.daemon.policy import plan_card_job
from imalinkd.config import Config




def mount_card_image(img: Path, mount_point: Path, label="EOS_DIGITAL", files=None) -> str:
    """Make (if needed) and mount an exFAT image read-only; returns the loop device."""
    if not img.exists():
        with open(img, "wb") as f:
            f.truncate(16 * 1024 * 1024)
        subprocess.run(["mkfs.exfat", "-L", label, str(img)], check=True, capture_output=True)
        if files:
            dev = subprocess.run(["losetup", "-f", "--show", str(img)], check=True, capture_output=True, text=True).stdout.strip()
            fill = img.with_suffix(".fill")
            fill.mkdir()
            try:
                subprocess.run(["mount.exfat-fuse", dev, str(fill)], check=True, capture_output=True)
                try:
                    for rel, data in files.items():
                        (fill / rel).parent.mkdir(parents=True, exist_ok=True)
                        (fill / rel).write_bytes(data)
                finally:
                    subprocess.run(["umount", str(fill)], check=True)
            finally:
                subprocess.run(["losetup", "-d", dev], check=False)
                fill.rmdir()
    dev = subprocess.run(["losetup", "-f", "--show", str(img)], check=True, capture_output=True, text=True).stdout.strip()
    mount_point.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount.exfat-fuse", "-o", "ro", dev, str(mount_point)], check=True, capture_output=True)
    except subprocess.CalledProcessError:
        subprocess.run(["losetup", "-d", dev], check=False)
        raise
    return dev


def unmount_card(mount_point: Path, dev: str) -> None:
    if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
    subprocess.run(["losetup", "-d", dev], capture_output=True)


@pytest.fixture
def exfat_card(tmp_path):
    require_loop_mounts()
    mp = tmp_path / "media" / "EOS_DIGITAL"
    dev = mount_card_image(tmp_path / "card.img", mp, files={"DCIM/100CANON/IMG_0001.JPG": b"jpeg"})
    yield mp, dev
    unmount_card(mp, dev)


def test_blkid_export_parsing():
    assert parse_blkid_export("DEVNAME=/dev/loop0\nLABEL=A=B\nUUID=EF8E-F480\nTYPE=exfat\n") == {
        "DEVNAME": "/dev/loop0", "LABEL": "A=B", "UUID": "EF8E-F480", "TYPE": "exfat",
    }


def test_fuse_exfat_card_is_identified_and_classified_as_card(exfat_card):
    mp, dev = exfat_card
    mountinfo = Path("/proc/self/mountinfo").read_text()
    line = next(l for l in mountinfo.splitlines() if f" {mp} " in l)
    source = line.split(" - ")[1].split()[1]
    assert source == dev  # FUSE exFAT: the mount source is the loop device itself
    fs_uuid, label, fstype = probe_filesystem(source)
    assert label == "EOS_DIGITAL" and fstype == "exfat"
    assert fs_uuid and len(fs_uuid) == 9 and fs_uuid[4] == "-"
    assert is_camera_card(mp)
    kind, job, _ = plan_card_job(
        config=Config(), mount_point=mp, mount_source=source, device_number=line.split()[2],
        identity=CardIdentity(fs_uuid, label), has_dcim=has_dcim(mp), storage_roots=find_storage_roots(mp, 2),
    )
    assert kind == "card" and job.description == "EOS_DIGITAL" and job.identity.fs_uuid == fs_uuid


def test_probe_of_something_that_is_not_a_block_device(tmp_path):
    assert probe_filesystem("tmpfs") == (None, None, None)
    (tmp_path / "f").write_text("x")
    assert probe_filesystem(str(tmp_path / "f")) == (None, None, None)


def test_dcim_in_any_case_but_not_a_symlink(tmp_path):
    assert not has_dcim(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "DCIM").symlink_to(tmp_path / "elsewhere")
    assert not has_dcim(tmp_path)
    (tmp_path / "DCIM").unlink()
    (tmp_path / "dcim").mkdir()
    assert has_dcim(tmp_path)
    assert not has_dcim(tmp_path / "missing")


def _marker(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"format": "imalink-storage", "format_version": 1}))


def test_storage_markers_found_at_root_and_below_within_depth(tmp_path):
    _marker(tmp_path / "a")
    _marker(tmp_path / "x" / "y" / "too_deep")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.json").write_text('{"format": "something-else"}')
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("not json")
    assert find_storage_roots(tmp_path, 1) == (tmp_path / "a",)
    assert find_storage_roots(tmp_path, 3) == (tmp_path / "a", tmp_path / "x" / "y" / "too_deep")
    _marker(tmp_path)
    assert find_storage_roots(tmp_path, 3) == (tmp_path,)


def test_marker_behind_a_symlink_is_not_followed(tmp_path):
    _marker(tmp_path / "real")
    (tmp_path / "mnt").mkdir()
    (tmp_path / "mnt" / "link").symlink_to(tmp_path / "real")
    assert find_storage_roots(tmp_path / "mnt", 2) == ()


def test_reused_loop_device_name_gets_the_new_filesystems_identity(tmp_path):
    """blkid's cache answers by device name; a reused name must not carry the old card's
    identity over to the next one."""
    require_loop_mounts()
    images = []
    for label in ("FIRST", "SECOND"):
        img = tmp_path / f"{label}.img"
        with open(img, "wb") as f:
            f.truncate(16 * 1024 * 1024)
        subprocess.run(["mkfs.exfat", "-L", label, str(img)], check=True, capture_output=True)
        images.append(img)
    for _attempt in range(5):  # another process may grab the freed device in between
        dev = subprocess.run(["losetup", "-f", "--show", str(images[0])], check=True, capture_output=True, text=True).stdout.strip()
        try:
            assert probe_filesystem(dev)[1] == "FIRST"
        finally:
            subprocess.run(["losetup", "-d", dev], check=True)
        if subprocess.run(["losetup", dev, str(images[1])], capture_output=True).returncode == 0:
            break
    else:
        pytest.fail("could not reattach a loop device")
    try:
        assert probe_filesystem(dev)[1] == "SECOND"
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
