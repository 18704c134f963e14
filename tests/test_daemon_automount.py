"""Headless plug-in: the daemon mounts a removable card itself (read-only, nosuid, nodev,
noexec) under its own directory, imports it, and unmounts it per after_import.

The real daemon runs in this process; the only fake is udev itself (this machine may have
none): a stand-in for ``BlockDeviceSource`` reports the loop device as udev would. The
cards are real file systems on loop devices: ext4, and exFAT mounted through FUSE."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cards import make_card, sha256_of
from mounts import is_mounted, require_exfat, require_root, require_tools, run

from imalinkd.config import parse_config
from imalinkd.daemon import service, udev
from imalinkd.daemon.events import BlockDeviceAdded, BlockDeviceRemoved, StopRequested
from imalinkd.storage import init_storage

pytestmark = [pytest.mark.slow, pytest.mark.root]


def _wait(predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _options_of(mount_point: Path) -> set[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4] == str(mount_point):
            return set(line.split()[5].split(","))
    raise AssertionError(f"{mount_point} is not mounted")


@pytest.fixture
def card_device(tmp_path):
    """A loop device holding a card image (ext4 or exFAT) filled with a DCIM tree."""
    devices: list[str] = []

    def make(fs: str, label: str):
        tree = make_card(tmp_path / f"tree-{label}", shots=4)
        img = tmp_path / f"{label}.img"
        with open(img, "wb") as f:
            f.truncate(32 * 1024 * 1024)
        if fs == "ext4":
            require_root("an ext4 card image")
            run("mkfs.ext4", "-q", "-L", label, "-d", str(tree.root), str(img))
        else:
            from mounts import make_exfat_image

            make_exfat_image(img, label=label, size_mb=32, tree=tree.root)
        dev = run("losetup", "-f", "--show", str(img))
        devices.append(dev)
        uuid = run("blkid", "-o", "value", "-s", "UUID", dev)
        return dev, uuid, tree

    yield make
    for dev in devices:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split(" - ")
            if len(fields) == 2 and fields[1].split()[1] == dev:
                subprocess.run(["umount", "-l", line.split()[4]], capture_output=True)
        for _ in range(50):  # a lazily unmounted FUSE card lets go once its process exits
            if subprocess.run(["losetup", "-d", dev], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)


class FakeUdev:
    """Stands in for udev's monitor: reports the given devices as udev would at start."""

    added: list[BlockDeviceAdded] = []

    def __init__(self, events) -> None:
        self.events = events

    def start(self) -> None:
        for event in self.added:
            self.events.put(event)

    def stop(self) -> None:
        pass


def _config(tmp_path: Path, after_import: str):
    if not (tmp_path / "archive").exists():
        init_storage(tmp_path / "archive")  # as 'imalinkd init-storage' does
    return parse_config({
        "catalog": {"url": f"sqlite:///{tmp_path}/catalog.db"},
        "storage": {"root": str(tmp_path / "archive")},
        "api": {"listen": ""},
        "import": {"thumbnails": False},
        # The daemon's own automount area (<state_dir>/media) lies in this test's directory.
        "daemon": {"state_dir": str(tmp_path / "state"), "mount_paths": [str(tmp_path)], "watchdog": False},
        "card": [{"label": "*", "after_import": after_import}],
    }, source="test")


def _run_daemon(daemon: service.Daemon, body) -> None:
    """``daemon.run()`` on this (the main) thread, ``body`` on another; then stop it."""
    failure: list[BaseException] = []

    def drive() -> None:
        try:
            body()
        except BaseException as e:
            failure.append(e)
        finally:
            daemon.events.put(StopRequested())

    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    try:
        assert daemon.run() == 0
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
        thread.join(timeout=60)
    if failure:
        raise failure[0]


def _sessions(daemon: service.Daemon) -> list[dict]:
    """The catalog's sessions as ``imalinkd sessions --json`` shows them."""
    from sqlalchemy import select

    from imalinkd.catalog import ImportSession
    from imalinkd.importer import session_dir_of, session_json

    if daemon.catalog is None:
        return []
    with daemon.catalog.session() as s:
        rows = list(s.scalars(select(ImportSession)))
    return [session_json(r, session_dir_of(daemon.config, daemon.catalog, r)) for r in rows]


def _completed(daemon: service.Daemon) -> list[dict]:
    return [s for s in _sessions(daemon) if s["copy_status"] == "completed"] if not daemon.state.jobs else []


@pytest.mark.parametrize("fs", ["ext4", "exfat"])
def test_a_plugged_card_is_mounted_read_only_by_the_daemon_and_imported(tmp_path, card_device, monkeypatch, fs):
    require_exfat() if fs == "exfat" else require_tools("losetup", "mkfs.ext4", "blkid")
    dev, uuid, tree = card_device(fs, "EOS_DIGITAL")
    monkeypatch.setattr(udev, "udev_available", lambda *a: True)  # the boundary: udev runs ...
    monkeypatch.setattr(udev, "udisks2_running", lambda *a, **k: False)  # ... and no desktop automounter
    monkeypatch.setattr(FakeUdev, "added", [BlockDeviceAdded(dev, uuid, "EOS_DIGITAL", fs, removable=True)])
    monkeypatch.setattr(udev, "BlockDeviceSource", FakeUdev)
    daemon = service.Daemon(_config(tmp_path, "none"), None, environ={})  # automount = "auto", the default
    target = tmp_path / "state" / "media" / "EOS_DIGITAL"

    def body() -> None:
        _wait(lambda: _completed(daemon), "a completed session")
        assert daemon.automount and daemon.state.automounted == {dev: target}
        assert {"ro", "nosuid", "nodev", "noexec"} <= _options_of(target)
        [session] = _sessions(daemon)
        files = Path(session["storage_path"]) / "files"
        for rel, digest in tree.files.items():
            assert sha256_of(files / rel) == digest, rel
        daemon.events.put(BlockDeviceRemoved(dev))  # the card is pulled out
        _wait(lambda: not is_mounted(target), "the daemon to unmount the card")

    _run_daemon(daemon, body)
    assert not target.exists()


def test_after_import_unmount_unmounts_a_card_the_daemon_mounted(tmp_path, card_device, monkeypatch):
    require_tools("losetup", "mkfs.ext4", "blkid")
    dev, uuid, _tree = card_device("ext4", "NIKON")
    monkeypatch.setattr(udev, "udev_available", lambda *a: True)
    monkeypatch.setattr(udev, "udisks2_running", lambda *a, **k: False)
    monkeypatch.setattr(FakeUdev, "added", [BlockDeviceAdded(dev, uuid, "NIKON", "ext4", removable=True)])
    monkeypatch.setattr(udev, "BlockDeviceSource", FakeUdev)
    daemon = service.Daemon(_config(tmp_path, "unmount"), None, environ={})
    target = tmp_path / "state" / "media" / "NIKON"

    def body() -> None:
        _wait(lambda: _completed(daemon), "a completed session")
        _wait(lambda: daemon.state.automounted == {} and not is_mounted(target), "the card unmounted after its import")

    _run_daemon(daemon, body)
    assert not target.exists()
