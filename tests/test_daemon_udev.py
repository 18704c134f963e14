"""The udev adapter's translation, with Device-like fakes (the one boundary where fakes
stand in for the OS: udev is not running on every test machine)."""

from pathlib import Path

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
