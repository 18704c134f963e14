"""Real loop-mounted file systems for tests: ext4 archives, exFAT camera cards (through
FUSE, as this kind of kernel may lack an exFAT driver), tmpfs. Each helper is a context
manager that unmounts and detaches what it made, whatever happens in the test."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pytest


def require_root(what: str = "loop devices and mounts") -> None:
    """Skip (with the reason) when the test cannot mount; under CI=true, fail instead."""
    reason = None
    if os.geteuid() != 0:
        reason = f"needs root for {what}"
    elif not Path("/dev/loop-control").exists():
        reason = "no /dev/loop-control: loop devices unavailable"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true forbids skipping")
        pytest.skip(reason)


def require_tools(*tools: str) -> None:
    """Skip (with the reason) when a program the test drives is missing; under CI=true,
    where .ci/run installs them all, fail instead."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        reason = f"missing {', '.join(missing)} (.ci/run installs them)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true forbids skipping")
        pytest.skip(reason)


def require_exfat() -> None:
    """Root, loop devices and the exFAT tools (exfatprogs, exfat-fuse, blkid)."""
    require_root("exFAT card images")
    require_tools("losetup", "mkfs.exfat", "mount.exfat-fuse", "blkid")


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip()


def umount(mount_point: str | os.PathLike[str], lazy_fallback: bool = True) -> None:
    r = subprocess.run(["umount", os.fspath(mount_point)], capture_output=True)
    if r.returncode != 0 and lazy_fallback:
        subprocess.run(["umount", "-l", os.fspath(mount_point)], capture_output=True)


def is_mounted(mount_point: str | os.PathLike[str]) -> bool:
    mp = os.path.realpath(mount_point)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == mp for line in f)


@contextlib.contextmanager
def ext4_image(mount_point: Path, size_mb: int = 64, label: str = "ARCHIVE", image: Path | None = None) -> Iterator[Path]:
    """A fresh ext4 file system of ``size_mb`` mounted at ``mount_point``."""
    require_root()
    image = image or mount_point.with_suffix(".img")
    if not image.exists():
        with open(image, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        run("mkfs.ext4", "-q", "-F", "-L", label, "-m", "0", str(image))
    mount_point.mkdir(parents=True, exist_ok=True)
    run("mount", "-o", "loop", str(image), str(mount_point))
    try:
        yield mount_point
    finally:
        if is_mounted(mount_point):
            umount(mount_point)


@contextlib.contextmanager
def loop_device(image: Path) -> Iterator[str]:
    dev = run("losetup", "-f", "--show", str(image))
    try:
        yield dev
    finally:
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def make_exfat_image(image: Path, label: str = "EOS_DIGITAL", size_mb: int = 64, tree: Path | None = None) -> Path:
    """An exFAT image like an SDXC card, filled with a copy of ``tree``."""
    require_exfat()
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    run("mkfs.exfat", "-L", label, str(image))
    if tree is not None:
        fill = image.with_suffix(".fill")
        with exfat_mount(image, fill, readonly=False):
            shutil.copytree(tree, fill, dirs_exist_ok=True, symlinks=True)
            os.sync()
        fill.rmdir()
    return image


@contextlib.contextmanager
def exfat_mount(image: Path, mount_point: Path, readonly: bool = True) -> Iterator[Path]:
    """Mount an exFAT image through FUSE on a loop device; unmount and detach after."""
    require_exfat()
    mount_point.mkdir(parents=True, exist_ok=True)
    with loop_device(image) as dev:
        run("mount.exfat-fuse", "-o", "ro" if readonly else "rw", dev, str(mount_point))
        try:
            yield mount_point
        finally:
            if is_mounted(mount_point):
                umount(mount_point)
