"""The udev adapter's translation, with Device-like fakes (the one boundary where fakes
stand in for the OS: udev is not running on every test machine)."""

from pathlib import Path

import pytest

from imalinkd.daemon.events import BlockDeviceAdded, BlockDeviceRemoved
from imalinkd.daemon.udev import automount_dir, translate, udev_available


class FakeDisk:
    def __init__(self, removable: bytes):
        self.attributes = {"removable": removable}


class FakeDevice:
    def __init__(self, action, node, parent=None, **props):
        self.action = action
        self.device_node = node
        self.properties = props
        self._parent = parent

    def find_parent(self, subsystem, device_type=None):
        return self._parent


SD_CARD = dict(
    ID_FS_USAGE="filesystem", ID_FS_UUID="EF8E-F480", ID_FS_LABEL="EOS_DIGITAL",
    ID_FS_TYPE="exfat", ID_BUS="usb", DEVTYPE="partition",
)


def test_usb_card_partition_becomes_block_device_added():
    event = translate(FakeDevice("add", "/dev/sdb1", **SD_CARD))
    assert event == BlockDeviceAdded("/dev/sdb1", "EF8E-F480", "EOS_DIGITAL", "exfat", removable=True)


def test_media_change_with_filesystem_counts_as_added():
    assert isinstance(translate(FakeDevice("change", "/dev/sdb1", **SD_CARD)), BlockDeviceAdded)


def test_removable_flag_of_parent_disk_marks_internal_reader():
    props = dict(SD_CARD, ID_BUS="scsi")
    assert translate(FakeDevice("add", "/dev/sdc1", FakeDisk(b"1\n"), **props)).removable
    assert not translate(FakeDevice("add", "/dev/sda1", FakeDisk(b"0\n"), **props)).removable


def test_mmc_reader_is_removable():
    props = dict(SD_CARD, ID_BUS="", DEVNAME="/dev/mmcblk0p1")
    assert translate(FakeDevice("add", "/dev/mmcblk0p1", None, **props)).removable


def test_device_without_filesystem_is_ignored():
    assert translate(FakeDevice("add", "/dev/sdb", DEVTYPE="disk", ID_BUS="usb")) is None
    assert translate(FakeDevice("add", None, **SD_CARD)) is None
    assert translate(FakeDevice("bind", "/dev/sdb1", **SD_CARD)) is None


def test_removal_is_reported_with_what_udev_still_knows():
    event = translate(FakeDevice("remove", "/dev/sdb1", **SD_CARD))
    assert event == BlockDeviceRemoved("/dev/sdb1", "EF8E-F480", "EOS_DIGITAL", "exfat")


def test_udev_available_reflects_this_machine():
    assert udev_available() == (Path("/run/udev/control").exists() or Path("/run/udev/data").is_dir())


def test_udev_available_looks_for_udevs_run_directory(tmp_path):
    assert not udev_available(tmp_path / "absent")
    (tmp_path / "data").mkdir()
    assert udev_available(tmp_path)


def test_automount_dir_is_named_after_label_or_uuid(tmp_path):
    assert automount_dir(tmp_path, "EOS_DIGITAL", "X", "/dev/sdb1") == tmp_path / "EOS_DIGITAL"
    assert automount_dir(tmp_path, None, "EF8E-F480", "/dev/sdb1") == tmp_path / "EF8E-F480"
    assert automount_dir(tmp_path, "../../etc", None, "/dev/sdb1").parent == tmp_path


def test_automount_auto_is_on_only_with_udev_and_without_udisks2():
    from imalinkd.daemon.udev import automount_choice

    assert automount_choice("auto", udev_running=True, udisks_running=False)[0] is True
    assert automount_choice("auto", udev_running=True, udisks_running=True) == (False, "udisks2 manages removable drives")
    assert automount_choice("auto", udev_running=False, udisks_running=False)[0] is False
    assert automount_choice("on", False, True)[0] is True and automount_choice(True, False, True)[0] is True
    assert automount_choice("off", True, False)[0] is False and automount_choice(False, True, False)[0] is False


def test_udisks2_is_seen_by_its_run_directory_or_its_process(tmp_path):
    from imalinkd.daemon.udev import udisks2_running

    proc = tmp_path / "proc"
    (proc / "1").mkdir(parents=True)
    (proc / "1" / "comm").write_text("systemd\n")
    assert not udisks2_running(tmp_path / "run-udisks2", proc)
    (proc / "812").mkdir()
    (proc / "812" / "comm").write_text("udisksd\n")
    assert udisks2_running(tmp_path / "run-udisks2", proc)
    (tmp_path / "run-udisks2").mkdir()
    assert udisks2_running(tmp_path / "run-udisks2", tmp_path / "none")


def test_a_device_mounted_anywhere_is_not_mounted_again(tmp_path):
    from imalinkd.daemon.udev import mounted_anywhere

    table = tmp_path / "mountinfo"
    table.write_text("36 25 7:3 / /home/ann/EOS rw,nosuid - exfat /dev/loop3 rw\n"
                     "37 25 0:40 / /run tmpfs rw - tmpfs tmpfs rw\n")
    assert mounted_anywhere("/dev/loop3", table) and not mounted_anywhere("/dev/loop4", table)


def test_the_daemon_watches_its_own_automount_directory_whatever_mount_paths_say(tmp_path):
    from imalinkd.config import Config, DaemonConfig
    from imalinkd.daemon.service import Daemon

    daemon = Daemon(Config(daemon=DaemonConfig(state_dir=tmp_path / "state", mount_paths=("/media/*",))), None, environ={})
    assert daemon._watched(tmp_path / "state" / "media" / "EOS_DIGITAL")
    assert daemon._watched(Path("/media/EOS_DIGITAL")) and not daemon._watched(tmp_path / "elsewhere")


def test_automount_setting_takes_auto_on_off_and_true_false():
    from imalinkd.config import parse_config
    from imalinkd.errors import ConfigError

    assert parse_config({}).daemon.automount == "auto"
    assert parse_config({"daemon": {"automount": True}}).daemon.automount == "on"
    assert parse_config({"daemon": {"automount": False}}).daemon.automount == "off"
    with pytest.raises(ConfigError, match="daemon.automount"):
        parse_config({"daemon": {"automount": "sometimes"}})
