"""Cameras on a USB cable, through the real gphoto2 command and libgphoto2's "Directory
Browse" virtual camera (a folder seen as a camera): no real camera is attached here. The
only fake is a wrapper script around gphoto2 (a process boundary) that can hold one file's
transfer until the test releases it, so that a kill lands mid-import without any timing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import select

from cards import sha256_of, tree_hashes
from mounts import require_tools
from imalinkd.camera import Camera, Gphoto2, Staging, parse_auto_detect, parse_listing, parse_serial
from imalinkd.camera_import import find_resumable_camera_session, import_camera, staging_dir
from imalinkd.catalog import Catalog, ImportSession
from imalinkd.config import parse_config
from imalinkd.daemon.camera import changes
from imalinkd.daemon.events import CameraAppeared, CameraGone
from imalinkd.storage import init_storage
from waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
BROWSE = "Directory Browse"




def make_camera_tree(root: Path) -> dict[str, str]:
    """What a camera holds (only media: Directory Browse lists media files only)."""
    files = {
        "DCIM/100CANON/IMG_0001.JPG": os.urandom(300_000),
        "DCIM/100CANON/IMG_0001.CR2": os.urandom(700_000),
        "DCIM/100CANON/IMG_0002.JPG": os.urandom(250_000),
        "DCIM/101CANON/MVI_0003.MP4": os.urandom(900_000),
        "DCIM/101CANON/IMG 0004.JPG": os.urandom(5_000),  # a space in a name
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return {rel: sha256_of(root / rel) for rel in files}


def config_for(tmp_path: Path, gphoto2: str = "gphoto2"):
    init_storage(tmp_path / "archive")  # as 'imalinkd init-storage' does
    return parse_config({
        "catalog": {"url": f"sqlite:///{tmp_path / 'catalog.db'}"},
        "storage": {"root": str(tmp_path / "archive")},
        "daemon": {"state_dir": str(tmp_path / "state")},
        "import": {"thumbnails": False},
        "api": {"listen": ""},
        "cameras": {"gphoto2": gphoto2, "ports": [f"{BROWSE}@disk:{tmp_path / 'camera'}"]},
    })


def write_config_file(tmp_path: Path, gphoto2: str, extra: str = "") -> Path:
    init_storage(tmp_path / "archive")  # as 'imalinkd init-storage' does
    path = tmp_path / "imalinkd.toml"
    path.write_text(f"""
[catalog]
url = "sqlite:///{tmp_path / 'catalog.db'}"
[storage]
root = "{tmp_path / 'archive'}"
[daemon]
state_dir = "{tmp_path / 'state'}"
mount_paths = ["{tmp_path}"]
[import]
thumbnails = false
[api]
listen = ""
[cameras]
gphoto2 = "{gphoto2}"
ports = ["{BROWSE}@disk:{tmp_path / 'camera'}"]
{extra}
""")
    return path


def gated_gphoto2(tmp_path: Path, hold_nth_transfer: int | None) -> tuple[Path, Path]:
    """A gphoto2 that logs each call and holds the n-th file transfer until ``release``
    exists. Returns (the script, its log)."""
    log = tmp_path / "gphoto2.log"
    script = tmp_path / "gphoto2-gated"
    hold = hold_nth_transfer or 0
    script.write_text(f"""#!/bin/sh
echo "$$ $*" >> "{log}"
case "$*" in
  *--get-file*)
    n=$(grep -c -- "--get-file" "{log}")
    if [ "$n" -eq {hold} ]; then
      echo "held $$" >> "{log}"
      while [ ! -e "{tmp_path / 'release'}" ]; do sleep 0.05; done
    fi;;
esac
exec gphoto2 "$@"
""")
    script.chmod(0o755)
    return script, log


def transfers(log: Path) -> list[str]:
    """The ``--folder F --no-recurse --get-file N`` part of each transfer logged."""
    return [line.split(" ", 1)[1].split("--folder", 1)[1] for line in log.read_text().splitlines() if "--get-file" in line]


# --- parsing gphoto2's output (no camera needed) -------------------------------------------------


def test_auto_detect_lists_usb_cameras_and_leaves_mass_storage_to_the_mount_table():
    out = ("Model                          Port\n----------------------------------------------------------\n"
           "Canon EOS 5D Mark III          usb:001,014\n"
           "Mass Storage Camera            disk:/media/EOS_DIGITAL\n"
           "Apple iPhone (PTP mode)        usb:002,003\n")
    assert parse_auto_detect(out) == [Camera("Canon EOS 5D Mark III", "usb:001,014"), Camera("Apple iPhone (PTP mode)", "usb:002,003")]
    assert parse_auto_detect("Model  Port\n-----\n") == []


def test_serial_number_from_the_summary():
    assert parse_serial("Camera summary:\nManufacturer: Canon Inc.\nModel: Canon EOS R5\n  Serial Number: 0a1b2c3d4e\n") == "0a1b2c3d4e"
    assert parse_serial("Serial Number: 00000000000000000000000000000000\n") is None
    assert parse_serial("Model: X\n") is None


def test_listing_numbers_files_within_their_folder_with_exact_sizes():
    listing = ("There is no file in folder '/'.\nThere are 2 files in folder '/DCIM/100CANON'.\n"
               "#1     IMG_0001.JPG               rd   293 KB image/jpeg 1796132901\n"
               "#2     IMG 0002.JPG               rd     5 KB image/jpeg 1796132902\n"
               "There is 1 file in folder '/DCIM/101CANON'.\n"
               "#3     MVI_0003.MP4               rd     8 KB video/mp4\n")
    info = "".join(f"Information on file '{n}' (folder '{f}'):\nFile:\n  Mime type:   'x'\n  Size:        {s} byte(s)\n"
                   for f, n, s in (("/DCIM/100CANON", "IMG_0001.JPG", 300000), ("/DCIM/100CANON", "IMG 0002.JPG", 5000),
                                   ("/DCIM/101CANON", "MVI_0003.MP4", 7777)))
    files = parse_listing(listing, info)
    assert [(f.rel, f.index, f.size, f.mtime) for f in files] == [
        ("DCIM/100CANON/IMG_0001.JPG", 1, 300000, 1796132901), ("DCIM/100CANON/IMG 0002.JPG", 2, 5000, 1796132902),
        ("DCIM/101CANON/MVI_0003.MP4", 1, 7777, None)]


def test_watcher_events_for_cameras_that_come_and_go():
    before = {("Canon EOS R5", "usb:001,014")}
    now = {("Canon EOS R5", "usb:001,015"), ("Nikon Z 6", "usb:001,016")}
    assert changes(before, now) == [CameraGone("Canon EOS R5", "usb:001,014"), CameraAppeared("Canon EOS R5", "usb:001,015"),
                                    CameraAppeared("Nikon Z 6", "usb:001,016")]
    assert changes(now, now) == []


def test_camera_ports_must_be_model_at_port(tmp_path):
    from imalinkd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"cameras.ports\[0\]"):
        parse_config({"cameras": {"ports": ["disk:/srv/phone"]}})


# --- through libgphoto2's Directory Browse camera ---------------------------------------------------


@pytest.fixture
def camera_tree(tmp_path):
    require_tools("gphoto2")
    return make_camera_tree(tmp_path / "camera")


def test_camera_import_ends_byte_exact_and_checked_against_the_camera(tmp_path, camera_tree):
    cfg = config_for(tmp_path)
    cam = Camera(BROWSE, f"disk:{tmp_path / 'camera'}")
    assert {(f.rel, f.size) for f in Gphoto2().list_files(cam)} == {
        (rel, (tmp_path / "camera" / rel).stat().st_size) for rel in camera_tree}
    result = import_camera(cfg, cam)
    assert result.copy_status == "completed", result.error
    assert tree_hashes(Path(result.storage_path) / "files") == camera_tree
    assert result.total_files == len(camera_tree) and result.photos_created == 4
    manifest = json.loads((Path(result.storage_path) / "metadata.json").read_text())
    assert manifest["source"]["kind"] == "camera" and manifest["source"]["label"] == BROWSE
    assert "_import_Directory_Browse_" in result.storage_directory_name
    mtime = (tmp_path / "camera" / "DCIM/100CANON/IMG_0001.JPG").stat().st_mtime
    assert int((Path(result.storage_path) / "files/DCIM/100CANON/IMG_0001.JPG").stat().st_mtime) == int(mtime)
    assert not any(staging_dir(cfg).iterdir())  # staging removed once checked
    again = import_camera(cfg, cam)
    assert again.session_uuid is None and again.copy_status == "completed" and "nothing new" in again.message


def test_new_files_on_the_camera_are_all_that_is_read_next_time(tmp_path, camera_tree):
    script, log = gated_gphoto2(tmp_path, None)
    cfg = config_for(tmp_path, str(script))
    cam = Camera(BROWSE, f"disk:{tmp_path / 'camera'}")
    assert import_camera(cfg, cam).ok
    (tmp_path / "camera/DCIM/101CANON/IMG_0005.JPG").write_bytes(os.urandom(1234))
    log.write_text("")
    result = import_camera(cfg, cam)
    assert result.ok and result.total_files == 1
    assert len(transfers(log)) == 1


def test_camera_import_killed_mid_transfer_resumes_without_reading_files_again(tmp_path, camera_tree):
    script, log = gated_gphoto2(tmp_path, hold_nth_transfer=3)
    config = write_config_file(tmp_path, str(script))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "imalinkd", "--config", str(config), "import-camera", "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    held = None
    try:
        held = int(wait_for(lambda: next((l.split()[1] for l in log.read_text().splitlines() if l.startswith("held")), None)
                            if log.exists() else None, 60, "the third transfer to be held"))
        os.killpg(proc.pid, signal.SIGKILL)  # the import, as by a power cut
    finally:
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        if held is not None:
            os.kill(held, signal.SIGKILL)  # the camera transfer it left behind
    cfg = config_for(tmp_path, str(script))
    staging = Staging(staging_dir(cfg), Camera(BROWSE, ""))
    staged = staging.load()
    assert len(staged) == 2  # two files read whole and journalled; the third was in flight
    first_run = transfers(log)
    assert len(first_run) == 3
    (tmp_path / "release").touch()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["copy_status"] == "completed" and out["total_files"] == len(camera_tree)
    assert tree_hashes(Path(out["storage_path"]) / "files") == camera_tree
    second_run = transfers(log)[3:]
    assert len(second_run) == len(camera_tree) - 2  # what was staged before was not read again
    assert not set(second_run) & set(first_run[:2])
    assert not staging.dir.exists()


def test_camera_session_interrupted_while_archiving_is_resumed(tmp_path, camera_tree):
    cfg = config_for(tmp_path)
    cam = Camera(BROWSE, f"disk:{tmp_path / 'camera'}")
    cancel = threading.Event()

    def progress(p):  # stopped as the copy into the archive starts: the session exists, unfinished
        if p.phase == "file_copying":
            cancel.set()

    first = import_camera(cfg, cam, cancel=cancel, progress=progress)
    assert first.copy_status == "failed" and first.session_uuid
    cat = Catalog.open(cfg)
    try:
        assert find_resumable_camera_session(cat, Camera(BROWSE, "x")) == first.session_uuid
    finally:
        cat.close()
    second = import_camera(cfg, cam)
    assert second.ok and second.session_uuid == first.session_uuid
    assert tree_hashes(Path(second.storage_path) / "files") == camera_tree
    cat = Catalog.open(cfg)
    try:
        with cat.session() as s:
            assert len(s.scalars(select(ImportSession)).all()) == 1
    finally:
        cat.close()


def test_a_camera_file_that_differs_from_what_was_read_is_never_called_safe(tmp_path, camera_tree):
    """The staged copy damaged between the camera read and the archive copy: the import
    says so and keeps the staging."""
    from imalinkd import camera_import

    cfg = config_for(tmp_path)
    cam = Camera(BROWSE, f"disk:{tmp_path / 'camera'}")
    real = camera_import._import_staged

    def damage_then_import(config, catalog, camera, staging, *a):
        victim = staging.dir / "DCIM/100CANON/IMG_0002.JPG"
        data = bytearray(victim.read_bytes())
        data[100] ^= 0xFF
        victim.write_bytes(bytes(data))
        return real(config, catalog, camera, staging, *a)

    camera_import._import_staged = damage_then_import
    try:
        result = import_camera(cfg, cam)
    finally:
        camera_import._import_staged = real
    assert result.copy_status == "failed" and "IMG_0002.JPG differs" in result.error
    assert Staging(staging_dir(cfg), Camera(BROWSE, "")).dir.is_dir()


def test_daemon_imports_a_camera_when_it_appears(tmp_path):
    require_tools("gphoto2")
    config = write_config_file(tmp_path, "gphoto2", "poll_seconds = 0.2\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log_path = tmp_path / "daemon.log"
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "imalinkd", "--config", str(config), "run"], stdout=logf,
                                stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(lambda: b"daemon_ready" in log_path.read_bytes(), 60, "the daemon to start")
        tree = make_camera_tree(tmp_path / "camera.tmp")
        (tmp_path / "camera.tmp").rename(tmp_path / "camera")  # the camera is plugged in
        wait_for(lambda: b"camera_import_finished" in log_path.read_bytes(), 120, "the camera import")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    events = [json.loads(l) for l in log_path.read_text().splitlines() if l.startswith("{")]
    done = next(e for e in events if e.get("event") == "camera_import_finished")
    assert done["outcome"] == "completed", log_path.read_text()[-3000:]
    session_dir = next((tmp_path / "archive").glob("*_import_Directory_Browse_*"))
    assert tree_hashes(session_dir / "files") == tree
