"""The service's decisions on plain values, and its automount against a real block device."""

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from mounts import require_root, require_tools

from imalinkd.config import Config, DaemonConfig
from imalinkd.daemon.events import BlockDeviceAdded, BlockDeviceRemoved
from imalinkd.daemon.policy import drop_files_to_delete
from imalinkd.daemon.service import Daemon, after_import_action, import_summary, outcome_of, status_text
from imalinkd.daemon.udev import mount_readonly, unmount


def test_status_names_running_and_waiting_cards():
    assert status_text({}, {}, {}) == "idle, watching for cards"
    text = status_text({"k1": "card EOS_DIGITAL"}, {"k2": "NIKON"}, {"k1": "12/340 files"})
    assert text == "importing card EOS_DIGITAL (12/340 files); waiting for the archive: NIKON"


def test_outcome_of_import_results():
    assert outcome_of(SimpleNamespace(session_uuid=None, copy_status="completed")) == "nothing_new"
    assert outcome_of(SimpleNamespace(session_uuid="u", copy_status="completed")) == "completed"
    assert outcome_of(SimpleNamespace(session_uuid="u", copy_status="failed")) == "failed"


def test_after_import_action_only_after_success():
    assert after_import_action("unmount", "completed") == "unmount"
    assert after_import_action("power-off", "nothing_new") == "power-off"
    assert after_import_action("unmount", "failed") is None  # the card stays for the resume
    assert after_import_action("unmount", "cancelled") is None
    assert after_import_action("none", "completed") is None


def test_drop_delete_takes_only_archived_unchanged_files():
    folder = Path("/drop")
    batch = (folder / "a.jpg", folder / "b.jpg", folder / "c.jpg", folder / "d.jpg", folder / "gone.jpg")
    archived = {"a.jpg": 10, "b.jpg": 10}
    sizes = {"a.jpg": 10, "b.jpg": 11, "c.jpg": 5, "d.jpg": 7}
    assert drop_files_to_delete(batch, folder, archived, {"c.jpg"}, sizes) == [folder / "a.jpg", folder / "c.jpg"]


# --- automount on a real loop device -----------------------------------------------------------


def _require_root(*tools):
    require_root("mounting")
    require_tools("losetup", *tools)


@pytest.fixture
def loop_device(tmp_path):
    devices = []

    def attach(mkfs: list[str]) -> str:
        img = tmp_path / f"dev{len(devices)}.img"
        with open(img, "wb") as f:
            f.truncate(16 * 1024 * 1024)
        subprocess.run([*mkfs, str(img)], check=True, capture_output=True)
        dev = subprocess.run(["losetup", "-f", "--show", str(img)], check=True, capture_output=True, text=True).stdout.strip()
        devices.append(dev)
        return dev

    yield attach
    for dev in devices:
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split(" - ")
            if len(fields) == 2 and fields[1].split()[1] == dev:
                subprocess.run(["umount", "-l", line.split()[4]], capture_output=True)
        subprocess.run(["losetup", "-d", dev], capture_output=True)


def _options_of(mount_point: Path) -> set[str]:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4] == str(mount_point):
            return set(line.split()[5].split(","))
    raise AssertionError(f"{mount_point} is not mounted")


@pytest.mark.parametrize("fs", ["ext4", "exfat"])
def test_mount_readonly_is_nosuid_nodev_noexec(tmp_path, loop_device, fs):
    mkfs = ["mkfs.ext4", "-q", "-L", "CARD"] if fs == "ext4" else ["mkfs.exfat", "-L", "CARD"]
    _require_root(mkfs[0])
    dev = loop_device(mkfs)
    target = tmp_path / "media" / "CARD"
    mount_readonly(dev, target, fs)  # exFAT: FUSE when the kernel has no driver
    try:
        assert {"ro", "nosuid", "nodev", "noexec"} <= _options_of(target)
    finally:
        unmount(target)
    assert not target.exists()


def test_removable_card_is_automounted_under_the_state_dir_and_unmounted_when_removed(tmp_path, loop_device):
    _require_root("mkfs.ext4")
    dev = loop_device(["mkfs.ext4", "-q", "-L", "EOS_DIGITAL"])
    config = Config(daemon=DaemonConfig(state_dir=tmp_path / "state", automount=True))
    daemon = Daemon(config, None, environ={})
    daemon.handle(BlockDeviceAdded(dev, "some-uuid", "EOS_DIGITAL", "ext4", removable=True))
    target = tmp_path / "state" / "media" / "EOS_DIGITAL"
    try:
        assert daemon.state.automounted == {dev: target}
        assert {"ro", "nosuid", "nodev", "noexec"} <= _options_of(target)
    finally:
        daemon.handle(BlockDeviceRemoved(dev))
    assert daemon.state.automounted == {}
    assert not target.exists()


def test_fixed_disk_or_automount_off_is_left_alone(tmp_path):
    config = Config(daemon=DaemonConfig(state_dir=tmp_path / "state", automount=True))
    daemon = Daemon(config, None, environ={})
    daemon.handle(BlockDeviceAdded("/dev/sda1", "u", "DATA", "ext4", removable=False))
    off = Daemon(Config(daemon=DaemonConfig(state_dir=tmp_path / "state", automount=False)), None, environ={})
    off.handle(BlockDeviceAdded("/dev/sdb1", "u", "EOS_DIGITAL", "exfat", removable=True))
    assert daemon.state.automounted == {} and off.state.automounted == {}
    assert not (tmp_path / "state" / "media").exists()


def test_import_summary_names_the_sessions_that_hold_the_card():
    refs = ["1a2b3c4d-0000-0000-0000-000000000000:files/DCIM/A.JPG"] * 3
    assert import_summary("EOS_DIGITAL", refs, 12) == "card EOS_DIGITAL: already imported in session 1a2b3c4d; 12 new files"
    refs.append("99999999-0000:files/B.JPG")
    assert import_summary("EOS_DIGITAL", refs, 0) == (
        "card EOS_DIGITAL: already imported in sessions 1a2b3c4d, 99999999; 0 new files"
    )
    assert import_summary("X", [], 5) == "card X: 5 new files"


def _examined(daemon):
    from imalinkd.daemon.events import MountExamined

    event = daemon.events.get(timeout=5)
    assert isinstance(event, MountExamined)
    return event


def test_mount_gone_before_its_examination_ends_is_forgotten(tmp_path):
    from imalinkd.daemon.events import MountAppeared, MountGone

    (tmp_path / "card" / "DCIM").mkdir(parents=True)
    daemon = Daemon(Config(daemon=DaemonConfig(state_dir=tmp_path / "state")), None, environ={})
    appeared = MountAppeared(tmp_path / "card", "0:99", "tmpfs", "tmpfs")
    daemon.handle(appeared)
    daemon.handle(MountGone(tmp_path / "card", "0:99"))
    examined = _examined(daemon)
    assert examined.has_dcim
    daemon.handle(examined)
    assert daemon.state.mounts == {} and daemon.state.jobs == {}


def test_mount_without_dcim_is_recorded_as_ignored_and_starts_nothing(tmp_path):
    from imalinkd.daemon.events import MountAppeared

    (tmp_path / "usb").mkdir()
    daemon = Daemon(Config(daemon=DaemonConfig(state_dir=tmp_path / "state")), None, environ={})
    daemon.handle(MountAppeared(tmp_path / "usb", "0:98", "tmpfs", "tmpfs"))
    daemon.handle(_examined(daemon))
    assert daemon.state.mounts[tmp_path / "usb"].kind == "ignore"
    assert daemon.state.jobs == {}


def test_mounts_outside_mount_paths_are_not_even_examined(tmp_path):
    from imalinkd.daemon.events import MountAppeared

    config = Config(daemon=DaemonConfig(state_dir=tmp_path / "state", mount_paths=("/media",)))
    daemon = Daemon(config, None, environ={})
    daemon.handle(MountAppeared(tmp_path, "0:97", "tmpfs", "tmpfs"))
    assert daemon.state.examining == {} and daemon.events.empty()


def test_import_gate_keeps_reindex_apart_from_imports():
    import threading

    from imalinkd.daemon.service import ImportGate

    gate = ImportGate()
    never = threading.Event()
    order = []
    with gate.importing(never) as a, gate.importing(never) as b:  # imports run together
        assert a and b
        started = threading.Event()

        def reindex():
            started.set()
            with gate.reindexing(never) as ok:
                order.append(("reindex", ok))

        t = threading.Thread(target=reindex)
        t.start()
        started.wait()
        t.join(0.2)
        assert t.is_alive() and order == []  # waits for the imports
        order.append(("imports done", True))
    t.join(2)
    assert order == [("imports done", True), ("reindex", True)]


def test_import_gate_waiter_gives_up_when_cancelled():
    import threading

    from imalinkd.daemon.service import ImportGate

    gate = ImportGate()
    cancel = threading.Event()
    result = []
    with gate.reindexing(threading.Event()):
        t = threading.Thread(target=lambda: result.append(gate.importing(cancel).__enter__()))
        t.start()
        t.join(0.1)
        assert t.is_alive()
        cancel.set()
        gate.wake()
        t.join(2)
    assert result == [False]
