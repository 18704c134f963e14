"""Examining a new mount when the process has run out of file descriptors (a real EMFILE,
in a child process whose limit is lowered): the look fails, is retried, and succeeds once
descriptors are free again; it is never taken as "not a card"."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import errno, json, os, resource, sys, threading, time
from pathlib import Path
import structlog.testing
from imalinkd.daemon import identify
from imalinkd.daemon.events import MountAppeared
from imalinkd.daemon.examine import examine_until_done

mp = Path(sys.argv[1])
event = MountAppeared(mount_point=mp, device="0:99", fstype="tmpfs", mount_source="tmpfs")
resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 40, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
hogs = []
with structlog.testing.capture_logs() as logs:
    try:
        while True:
            hogs.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as e:
        assert e.errno == errno.EMFILE
    try:
        identify.has_dcim(mp)
        dcim_under_emfile = "answered"
    except identify.ExaminationFailed as e:
        dcim_under_emfile = str(e)
    result = {}
    stopping = threading.Event()
    t = threading.Thread(target=lambda: result.update(ex=examine_until_done(
        event, 2, wanted=lambda: True, stopping=stopping, delays=(0.05,))))
    t.start()
    deadline = time.monotonic() + 60
    while not any(e["event"] == "mount_examination_failed" for e in logs) and time.monotonic() < deadline:
        time.sleep(0.01)
    for fd in hogs:
        os.close(fd)
    t.join(60)
    stopping.set()
ex = result.get("ex")
print(json.dumps({
    "dcim_under_emfile": dcim_under_emfile,
    "failures": [e["error"] for e in logs if e["event"] == "mount_examination_failed"],
    "has_dcim": ex.has_dcim if ex else None,
}))
"""


def test_a_look_that_hits_emfile_is_retried_until_it_sees_the_card(tmp_path):
    card = tmp_path / "card"
    (card / "DCIM" / "100CANON").mkdir(parents=True)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(card)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert "Too many open files" in out["dcim_under_emfile"]  # "unknown", not "no DCIM"
    assert out["failures"] and "file descriptors left" in out["failures"][0]
    assert out["has_dcim"] is True


def test_a_look_that_stops_being_wanted_ends_without_an_answer(tmp_path):
    import threading

    from imalinkd.daemon.events import MountAppeared
    from imalinkd.daemon.examine import examine_until_done

    event = MountAppeared(mount_point=tmp_path / "gone", device="0:98", fstype="tmpfs", mount_source="tmpfs")
    assert examine_until_done(event, 2, wanted=lambda: False, stopping=threading.Event()) is None
    stopping = threading.Event()
    stopping.set()
    assert examine_until_done(event, 2, wanted=lambda: True, stopping=stopping) is None
