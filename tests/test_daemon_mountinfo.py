"""The mount table: parsing and diffing on plain text, then a real tmpfs mount."""

import os
import queue
import subprocess
import time
from pathlib import Path


from mounts import require_root, require_tools

from imalinkd.daemon.events import MountAppeared, MountGone
from imalinkd.daemon.mountinfo import MountTableSource, diff_mounts, is_interesting, parse_mountinfo

SAMPLE = (
    b"22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    b"23 22 0:21 / /proc rw,nosuid - proc proc rw\n"
    b"42 22 7:0 / /media/My\\040Card rw,nosuid,nodev shared:5 master:2 - fuseblk /dev/loop0 ro,allow_other\n"
    b"43 22 0:40 / /srv/back\\134slash rw - tmpfs tmpfs rw\n"
    b"garbage line\n"
)


def test_parse_unescapes_octal_and_skips_optional_fields():
    table = parse_mountinfo(SAMPLE)
    assert set(table) == {22, 23, 42, 43}
    card = table[42]
    assert card.mount_point == "/media/My Card"
    assert card.fstype == "fuseblk" and card.source == "/dev/loop0" and card.device == "7:0"
    assert table[43].mount_point == "/srv/back\\slash"


def test_non_utf8_mount_point_survives_as_surrogates():
    table = parse_mountinfo(b"50 22 0:41 / /mnt/\\377x rw - tmpfs tmpfs rw\n")
    assert os.fsencode(table[50].mount_point) == b"/mnt/\xffx"


def test_pseudo_filesystems_are_not_interesting():
    table = parse_mountinfo(SAMPLE)
    assert not is_interesting(table[23])
    assert is_interesting(table[42])
    assert not is_interesting(table[42], ignore_under=["/media"])


def test_diff_reports_present_mounts_as_appeared():
    table = parse_mountinfo(SAMPLE)
    events = diff_mounts({}, table)
    assert all(isinstance(e, MountAppeared) for e in events)
    assert events[0].mount_point == Path("/")  # parents before children


def test_diff_reports_gone_and_new():
    old = parse_mountinfo(SAMPLE)
    new = dict(old)
    del new[42]
    new.update(parse_mountinfo(b"44 22 7:1 / /media/B rw - fuseblk /dev/loop1 ro\n"))
    events = diff_mounts(old, new)
    assert events == [
        MountGone(mount_point=Path("/media/My Card"), device="7:0"),
        MountAppeared(Path("/media/B"), "7:1", "fuseblk", "/dev/loop1", "rw"),
    ]


def test_unchanged_table_gives_no_events():
    table = parse_mountinfo(SAMPLE)
    assert diff_mounts(table, dict(table)) == []


def _require_root():
    require_root("mounting")
    require_tools("mount")


def _next(q, kind, path, timeout=1.0):
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {kind.__name__} for {path} within {timeout}s")
        try:
            event = q.get(timeout=left)
        except queue.Empty:
            continue
        if isinstance(event, kind) and event.mount_point == path:
            return event


def test_real_tmpfs_mount_appears_and_disappears_within_a_second(tmp_path):
    _require_root()
    target = tmp_path / "mnt point"
    target.mkdir()
    q = queue.Queue()
    source = MountTableSource(q)
    source.start()
    mounted = False
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True)
        mounted = True
        event = _next(q, MountAppeared, target)
        assert event.fstype == "tmpfs"
        subprocess.run(["umount", str(target)], check=True)
        mounted = False
        _next(q, MountGone, target)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(target)], check=False)
        source.stop()


def test_present_mounts_are_reported_at_start(tmp_path):
    _require_root()
    target = tmp_path / "early"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True)
    q = queue.Queue()
    source = MountTableSource(q)
    try:
        source.start()
        _next(q, MountAppeared, target, timeout=0.1)
    finally:
        source.stop()
        subprocess.run(["umount", str(target)], check=False)


def test_idle_watcher_uses_no_cpu():
    q = queue.Queue()
    source = MountTableSource(q)
    source.start()
    try:
        p0 = time.process_time()
        time.sleep(0.5)
        assert time.process_time() - p0 < 0.05
    finally:
        source.stop()
    assert source._thread is None
