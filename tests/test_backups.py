"""Backup archives on real drives (DESIGN §8): one read of an exFAT card (through FUSE)
feeds the primary and a backup on two ext4 loop images, each copy verified on its own
drive; the verdict counts copies on distinct drives; a backup absent at import time is
caught up by ``replicate``; ``safe`` answers for a card from the catalog.

Needs root (loop devices, mounts): skipped with a reason otherwise, never under CI=true.
Every mount made here is unmounted (and its loop device detached) in teardown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from cards import make_card, tree_hashes
from mounts import exfat_mount, make_exfat_image, require_root
from test_archive_e2e import images  # noqa: F401 (fixture)
from test_reindex import config_for

from imalinkd import storage
from imalinkd.catalog import Catalog, SessionCopy
from imalinkd.importer import import_source
from imalinkd.verdict import source_verdict

pytestmark = [pytest.mark.root, pytest.mark.slow]

if os.geteuid() != 0 and os.environ.get("CI") != "true":
    pytestmark.append(pytest.mark.skip(reason="needs root for loop-mounted ext4 and exFAT images"))


def cli(config_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(config_path), *args],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])


def write_config(tmp_path: Path, primary: Path, backups: list[str], copies: int) -> Path:
    path = tmp_path / "imalinkd.toml"
    path.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/catalog.db"\n[daemon]\nstate_dir = "{tmp_path}/state"\n'
                    f'[storage]\nroot = "{primary}"\nbackups = {json.dumps(backups)}\ncopies = {copies}\n')
    return path


def two_drives(tmp_path, images):  # noqa: F811
    require_root()
    primary = Path(images("primary.img").mount(tmp_path / "primary"))
    backup_img = images("backup.img")
    backup = Path(backup_img.mount(tmp_path / "backup"))
    storage.init_storage(str(primary), "PRIMARY")
    storage.init_storage(str(backup), "BACKUP")
    return primary, backup, backup_img


def loop_of(mount_point: Path) -> str:
    """The loop device under a FUSE mount (its source in mountinfo)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mount_point):
                return fields[fields.index("-") + 2]
    raise AssertionError(f"{mount_point} is not mounted")


def bytes_read(device: str) -> int:
    """Bytes read from a block device so far (sectors read, field 3 of its stat)."""
    name = os.path.basename(device)
    return int(Path(f"/sys/block/{name}/stat").read_text().split()[2]) * 512


def session_tree(root: Path, dirname: str) -> dict[str, str]:
    return tree_hashes(root / dirname / "files")


def test_one_read_of_the_card_feeds_both_archives_byte_exact(tmp_path, images):  # noqa: F811
    primary, backup, _img = two_drives(tmp_path, images)
    card = make_card(tmp_path / "card-tree", shots=10, raw_kb=400)
    image = make_exfat_image(tmp_path / "card.img", tree=card.root)
    config = config_for(tmp_path, primary, backups=[str(backup)], copies=2)
    (tmp_path / "alone").mkdir()
    storage.init_storage(str(primary / "alone"), "ALONE")
    alone = config_for(tmp_path / "alone", primary / "alone")  # its own catalog: no duplicates of it later
    with exfat_mount(image, tmp_path / "card") as mnt:  # the yardstick: an import to one archive only
        dev = loop_of(mnt)
        before = bytes_read(dev)
        assert import_source(alone, str(mnt), thumbnails=False).ok
        one_read = bytes_read(dev) - before
    with exfat_mount(image, tmp_path / "card") as mnt:
        dev = loop_of(mnt)
        before = bytes_read(dev)
        result = import_source(config, str(mnt), description="Trip", thumbnails=False)
        read = bytes_read(dev) - before
    assert result.copy_status == "completed", result
    out = result.as_json()
    assert out["safe_to_format"] is True and out["copies_verified"] == 2 and out["short_files"] == [], out
    assert result.source_no_longer_needed and "no longer needed" in result.message
    # the card was read once, about as much as for one archive (the file system reads whole
    # clusters and ahead, by amounts that vary from run to run, so the files' sizes are only
    # the lower bound; a second read of the card would be twice the yardstick)
    assert card.total_bytes <= read < 1.5 * one_read, (read, one_read, card.total_bytes)
    name = result.storage_directory_name
    assert session_tree(primary, name) == session_tree(backup, name) == card.files
    for root in (primary, backup):
        m = json.loads((root / name / "metadata.json").read_text())
        assert m["import_session_id"] == result.session_uuid and m["copy_status"] == "completed"
        assert len(m["file_manifest"]) == len(card.files)
        listed = (root / name / "manifest-sha256.txt").read_text()
        assert all(sha in listed for sha in card.files.values())
    catalog = Catalog.open(config)
    with catalog.session() as s:
        copies = s.scalars(select(SessionCopy.storage_id)).all()
    assert storage.read_marker(str(backup)).storage_id in copies


def test_backup_absent_is_not_yet_safe_until_replicate_catches_up(tmp_path, images):  # noqa: F811
    primary, backup, backup_img = two_drives(tmp_path, images)
    backup_img.umount(backup)  # the backup drive is not plugged in: its mount point is a bare directory
    card = make_card(tmp_path / "card", shots=4, raw_kb=32)
    path = write_config(tmp_path, primary, [str(backup)], 2)
    r = cli(path, "import", str(card.root), "--json", "--no-thumbnails")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["copy_status"] == "completed"
    assert out["safe_to_format"] is False and out["copies_verified"] == 1 and out["source_no_longer_needed"] is False
    assert "not yet safe: 1 of 2 copies" in out["message"]
    assert len(out["short_files"]) == len(card.files)
    assert os.listdir(backup) == []  # nothing written below the bare mount point
    assert cli(path, "safe", str(card.root)).returncode == 1
    backup_img.mount(backup)
    r = cli(path, "replicate", "--all", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["copied"] == len(card.files)
    assert session_tree(backup, out["storage_directory_name"]) == card.files
    status = json.loads(cli(path, "status", out["import_session_id"], "--json").stdout)
    assert status["safe_to_format"] is True and status["copies_verified"] == 2
    sessions = json.loads(cli(path, "sessions", "--json").stdout)
    assert sessions[0]["safe_to_format"] is True
    r = cli(path, "safe", str(card.root))
    assert r.returncode == 0 and "no longer needed" in r.stdout, r.stdout


def test_two_roots_on_one_file_system_count_as_one_copy(tmp_path, images):  # noqa: F811
    require_root()
    drive = Path(images("one.img").mount(tmp_path / "one"))
    storage.init_storage(str(drive / "a"), "A")
    storage.init_storage(str(drive / "b"), "B")
    card = make_card(tmp_path / "card", shots=2, raw_kb=16)
    config = config_for(tmp_path, drive / "a", backups=[str(drive / "b")], copies=2)
    result = import_source(config, str(card.root), thumbnails=False)
    assert result.copy_status == "completed"
    assert session_tree(drive / "b", result.storage_directory_name) == card.files  # written to both
    out = result.as_json()
    assert out["safe_to_format"] is False and out["copies_verified"] == 1, out
    assert all(item["reason"] == "archives on one drive count as one copy" for item in out["short_files"])


def test_safe_names_the_file_missing_from_the_backup(tmp_path, images):  # noqa: F811
    primary, backup, backup_img = two_drives(tmp_path, images)
    card = make_card(tmp_path / "card", shots=3, raw_kb=16)
    path = write_config(tmp_path, primary, [str(backup)], 2)
    assert cli(path, "import", str(card.root), "--no-thumbnails").returncode == 0
    assert cli(path, "safe", str(card.root)).returncode == 0
    late = card.root / "DCIM" / "100CANON" / "IMG_0777.JPG"
    late.write_bytes(os.urandom(5000))
    backup_img.umount(backup)
    assert cli(path, "import", str(card.root), "--no-thumbnails").returncode == 0  # the new file: primary only
    backup_img.mount(backup)
    r = cli(path, "safe", str(card.root), "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    v = json.loads(r.stdout)
    assert v["safe_to_format"] is False and v["copies_verified"] == 1
    assert [item["path"] for item in v["short_files"]] == ["DCIM/100CANON/IMG_0777.JPG"]
    assert [o["label"] for o in v["short_files"][0]["on"]] == ["PRIMARY"]
    human = cli(path, "safe", str(card.root))
    assert human.returncode == 1 and "IMG_0777.JPG" in human.stdout and "no longer needed" not in human.stdout
    assert source_verdict(config_for(tmp_path, primary, backups=[str(backup)], copies=1), Catalog.open(config_for(tmp_path, primary)),
                          str(card.root))["safe_to_format"] is True


# --- the daemon: a card not yet safe stays mounted; the backup plugged in is caught up -----------


def test_daemon_catches_up_a_backup_plugged_in_and_then_lets_the_card_go(tmp_path):
    from namespaces import MountNamespace
    from test_daemon_drives import Daemon, card_image, env, wait_for
    from test_hostile_drives import ext4_from_tree

    ns = MountNamespace()
    daemon = None
    try:
        backup_id = storage.init_storage(str(tmp_path / "tree" / "photos"), "BACKUP").storage_id
        backup_image = ext4_from_tree(tmp_path / "backup.img", tmp_path / "tree")
        storage.init_storage(str(tmp_path / "archive"), "PRIMARY")
        card, image = card_image(tmp_path)
        daemon = Daemon(ns, tmp_path, watched=("media", "drives"), storage_keys=f'backups = ["id:{backup_id}"]\ncopies = 2',
                        extra='[[card]]\nafter_import = "unmount"')
        card_mount = tmp_path / "media" / "EOS_DIGITAL"
        ns.mount_exfat(image, card_mount)
        wait_for(lambda: daemon.has_event("card_not_yet_safe"), 120, "the card imported, not yet safe")
        [session] = daemon.completed_sessions()
        assert session["safe_to_format"] is False and session["copies_verified"] == 1
        assert "not yet safe: 1 of 2 copies" in next(e for e in daemon.events() if e.get("event") == "card_not_yet_safe")["message"]
        assert str(card_mount) in ns.run("cat", f"/proc/{daemon.proc.pid}/mountinfo")  # left mounted
        ns.mount_loop(backup_image, tmp_path / "drives" / "BACKUP")
        wait_for(lambda: daemon.has_event("backup_catch_up_done"), 120, "the backup caught up")
        wait_for(lambda: daemon.has_event("card_safe_to_format"), 60, "the verdict turned safe")
        wait_for(lambda: str(card_mount) not in ns.run("cat", f"/proc/{daemon.proc.pid}/mountinfo"), 60, "the card unmounted")
        [session] = daemon.completed_sessions()
        assert session["safe_to_format"] is True and session["copies_verified"] == 2
        files = ns.run("find", str(tmp_path / "drives" / "BACKUP" / "photos" / session["storage_directory_name"] / "files"), "-type", "f")
        assert len(files.splitlines()) == len(card.files)
    finally:
        if daemon is not None:
            daemon.stop()
        ns.close()


def test_a_backup_pulled_mid_import_drops_out_and_nothing_lands_on_its_bare_mount_point(tmp_path, images):  # noqa: F811
    primary, backup, _img = two_drives(tmp_path, images)
    card = make_card(tmp_path / "card", shots=12, raw_kb=64)
    config = config_for(tmp_path, primary, backups=[str(backup)], copies=2)
    pulled = []

    def pull_after_first_file(p) -> None:
        if p.files_done >= 1 and not pulled:
            pulled.append(subprocess.run(["umount", "-l", str(backup)], check=True))

    result = import_source(config, str(card.root), thumbnails=False, progress=pull_after_first_file)
    assert pulled and result.copy_status == "completed", result
    assert session_tree(primary, result.storage_directory_name) == card.files
    out = result.as_json()
    assert out["safe_to_format"] is False and out["copies_verified"] == 1 and not result.source_no_longer_needed
    assert os.listdir(backup) == []  # the bare mount point got nothing
