"""End to end: ``imalinkd run`` scrubs an ext4 archive drive (a loop image) each time it is
plugged in, a third of it each time, and names and counts the damage it finds."""

from __future__ import annotations

import json
import socket
import sqlite3
from pathlib import Path

import httpx

from cards import make_card
from mounts import is_mounted, require_root, run, umount
from test_daemon_e2e import Daemon, imalinkd, wait_for, write_config
from test_reindex import make_root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Drive:
    """An ext4 archive drive in an image file, plugged in (mounted) and pulled at will."""

    def __init__(self, image: Path, mount_point: Path) -> None:
        self.image, self.mount_point = image, mount_point
        with open(image, "wb") as f:
            f.truncate(64 * 1024 * 1024)
        run("mkfs.ext4", "-q", "-F", "-L", "PHOTOS", "-m", "0", str(image))
        mount_point.mkdir(parents=True, exist_ok=True)

    def plug(self) -> None:
        run("mount", "-o", "loop", str(self.image), str(self.mount_point))

    def pull(self) -> None:
        umount(self.mount_point)

    def cleanup(self) -> None:
        if is_mounted(self.mount_point):
            umount(self.mount_point)


def test_a_drive_plugged_in_three_times_is_verified_once_and_its_damage_named_and_counted(tmp_path):
    require_root("an ext4 archive drive on a loop device")
    port = free_port()
    config = write_config(tmp_path / "imalinkd.toml", tmp_path,
                          extra=f'\n[scrub]\nbudget = "34%"\n')
    text = config.read_text().replace('listen = ""', f'listen = "127.0.0.1:{port}"')
    config.write_text(text)
    make_root(tmp_path / "archive")  # as 'imalinkd init-storage' does
    drive = Drive(tmp_path / "drive.img", tmp_path / "drive")
    daemon = Daemon(tmp_path, config)
    try:
        drive.plug()
        root = drive.mount_point / "photos"
        assert imalinkd(config, "init-storage", str(root), "--label", "PHOTOS").returncode == 0
        for i in range(3):
            card = make_card(tmp_path / f"card{i}", shots=4, seed=i + 1)
            done = imalinkd(config, "import", str(card.root), "--storage", str(root), "--json")
            assert done.returncode == 0, done.stderr
        session = next(p for p in root.iterdir() if p.is_dir())
        victim = session / "files" / "DCIM" / "100CANON" / "IMG_0002.CR2"
        with open(victim, "r+b") as f:  # bit rot while the drive sat in a drawer
            f.seek(1000)
            b = f.read(1)
            f.seek(1000)
            f.write(bytes([b[0] ^ 0x10]))
        drive.pull()

        daemon.start()
        for plug in range(1, 4):
            drive.plug()
            wait_for(lambda: sum(e.get("event") == "drive_scrubbed" for e in daemon.log_events()) == plug, 120,
                     f"scrub number {plug}")
            drive.pull()
            wait_for(lambda: daemon.has_event("archive_unmounted"), 30, "the drive seen gone")

        db = sqlite3.connect(tmp_path / "catalog.db")
        n_files = db.execute("SELECT count(*) FROM images").fetchone()[0]  # all on this drive
        checks = db.execute("SELECT image_id, result FROM file_checks").fetchall()
        seq, passes = db.execute("SELECT scrub_seq, scrub_passes FROM storage_roots WHERE label = 'PHOTOS'").fetchone()
        db.close()
        assert len(checks) == n_files == len({i for i, _ in checks})
        assert seq == n_files and passes == 1  # as many reads as files: none read twice
        assert sorted(r for _, r in checks).count("damaged") == 1

        named = [e for e in daemon.log_events() if e.get("event") == "scrub_damage_found"]
        assert [(e["file"], e["storage_directory_name"]) for e in named] == [("files/DCIM/100CANON/IMG_0002.CR2", session.name)]
        assert any("scrub found damaged" in m and "IMG_0002.CR2" in m for m in daemon.messages)
        token = (tmp_path / "state" / "api-token").read_text().strip()
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=20).text
        assert 'imalinkd_scrub_checked_files_total{result="damaged"} 1.0' in metrics
        assert f'imalinkd_scrub_checked_files_total{{result="ok"}} {float(n_files - 1)}' in metrics
        status = json.loads(imalinkd(config, "status", "--json").stdout)
        assert [d["file"] for d in status["scrub"]["damaged"]] == ["files/DCIM/100CANON/IMG_0002.CR2"]
        daemon.stop(timeout=30)
    finally:
        daemon.close()
        drive.cleanup()
