"""Scrubs: a drive re-verified a slice per plug-in, oldest-verified first, a full pass
without reading any file twice, damage found and named, results kept in the catalog."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cards import make_card
from imalinkd import storage
from imalinkd.catalog import Catalog, FileCheck, Image, StorageRoot
from imalinkd.config import parse_config
from imalinkd.importer import import_source
from imalinkd.reindex import reindex_path
from imalinkd.scrub.budget import Budget, BudgetError, parse_budget
from imalinkd.scrub.engine import scrub_root
from imalinkd.scrub.findings import scrub_status
from mounts import ext4_image

REPO = Path(__file__).resolve().parents[1]


def config(tmp_path: Path, root: Path):
    return parse_config({
        "catalog": {"url": f"sqlite:///{tmp_path / 'catalog.db'}"},
        "storage": {"root": str(root)},
        "import": {"thumbnails": False},
        "api": {"listen": ""},
    })


def archive_with_cards(tmp_path: Path, root: Path, cards: int = 3, shots: int = 4):
    cfg = config(tmp_path, root)
    storage.init_storage(root, "ARCHIVE")
    for i in range(cards):
        card = make_card(tmp_path / f"card{i}", shots=shots, seed=i + 1)
        assert import_source(cfg, card.root).copy_status == "completed"
    return cfg


def flip_a_byte(path: Path, at: int = 100) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0x01]))
        f.flush()
        os.fsync(f.fileno())


def checks(catalog: Catalog) -> dict[int, int]:
    with catalog.session() as s:
        return dict(s.execute(select(FileCheck.image_id, FileCheck.seq)).all())


def test_three_plug_ins_of_a_third_each_verify_every_file_exactly_once(tmp_path):
    image = tmp_path / "drive.img"
    mp = tmp_path / "mnt"
    with ext4_image(mp, image=image):
        cfg = archive_with_cards(tmp_path, mp / "archive")
    catalog = Catalog.open(cfg)
    try:
        with catalog.session() as s:
            n_files = s.scalar(select(func.count()).select_from(Image))
        seen: list[set[int]] = []
        for plug in range(3):
            with ext4_image(mp, image=image):  # plugged in again
                root = str(mp / "archive")
                before = set(checks(catalog))
                report = scrub_root(catalog, root, storage.read_marker(root), parse_budget("34%"))
                assert report.clean and report.checked > 0
                after = checks(catalog)
                seen.append(set(after) - before)
                assert report.pass_completed == (plug == 2)
        assert sum(len(s) for s in seen) == n_files  # each file once: no run re-read another's
        assert set().union(*seen) == set(checks(catalog))
        with catalog.session() as s:
            drive = s.scalars(select(StorageRoot)).one()
            assert drive.scrub_seq == n_files and drive.scrub_passes == 1  # n checks made in all, one pass
            assert s.scalar(select(func.count()).select_from(FileCheck).where(FileCheck.result == "ok")) == n_files
        # the next plug-in begins the next pass with the files checked longest ago
        first = checks(catalog)
        with ext4_image(mp, image=image):
            root = str(mp / "archive")
            scrub_root(catalog, root, storage.read_marker(root), parse_budget("1B"))
        again = {i for i, seq in checks(catalog).items() if seq != first[i]}
        assert again == {min(first, key=first.get)}
    finally:
        catalog.close()


def test_a_flipped_byte_is_found_named_with_its_other_copy_and_counted(tmp_path):
    cfg = archive_with_cards(tmp_path, tmp_path / "archive", cards=1)
    # a replica of the session on a second drive, as a backup would hold it
    (tmp_path / "backup").mkdir()
    storage.init_storage(tmp_path / "backup", "BACKUP")
    session = next(p for p in (tmp_path / "archive").iterdir() if p.is_dir())
    shutil.copytree(session, tmp_path / "backup" / session.name, symlinks=True)
    catalog = Catalog.open(cfg)
    try:
        reindex_path(cfg, catalog, str(tmp_path / "backup"))
        victim = session / "files" / "DCIM" / "100CANON" / "IMG_0002.CR2"
        flip_a_byte(victim)
        (session / "files" / "DCIM" / "100CANON" / "IMG_0003.CR2").unlink()
        found = []
        root = str(tmp_path / "archive")
        report = scrub_root(catalog, root, storage.read_marker(root), parse_budget("pass"), on_damage=found.append)
        assert report.pass_completed and len(report.findings) == 2 and found == report.findings
        by_file = {f.path: f for f in report.findings}
        damaged = by_file["files/DCIM/100CANON/IMG_0002.CR2"]
        assert damaged.result == "damaged" and damaged.session_id and damaged.directory_name == session.name
        assert "sha256 on disk" in damaged.detail
        assert [c["label"] for c in damaged.other_copies] == ["BACKUP"]
        assert damaged.other_copies[0]["path"] == f"{session.name}/files/DCIM/100CANON/IMG_0002.CR2"
        assert by_file["files/DCIM/100CANON/IMG_0003.CR2"].result == "missing"

        status = scrub_status(catalog)
        assert status["results"]["damaged"] == 1 and status["results"]["missing"] == 1
        assert {d["file"] for d in status["damaged"]} == set(by_file)

        from fastapi.testclient import TestClient

        from imalinkd.api import create_app

        client = TestClient(create_app(cfg, catalog, token="t"))
        metrics = client.get("/metrics", headers={"Authorization": "Bearer t"}).text
        assert 'imalinkd_scrub_files{result="damaged"} 1.0' in metrics
        api = client.get("/scrub", headers={"Authorization": "Bearer t"}).json()
        assert {d["file"] for d in api["damaged"]} == set(by_file)
    finally:
        catalog.close()


def test_a_scrub_waits_while_a_card_is_imported(tmp_path):
    cfg = archive_with_cards(tmp_path, tmp_path / "archive", cards=1, shots=2)
    catalog = Catalog.open(cfg)
    importing, asked = threading.Event(), threading.Event()
    importing.set()

    def pause() -> bool:
        asked.set()
        return importing.is_set()

    try:
        root = str(tmp_path / "archive")
        result = []
        t = threading.Thread(target=lambda: result.append(scrub_root(catalog, root, storage.read_marker(root), Budget(), pause=pause)))
        t.start()
        assert asked.wait(60)
        assert checks(catalog) == {}  # nothing read or recorded while the import runs
        importing.clear()
        t.join(120)
        assert result and result[0].pass_completed and len(checks(catalog)) == result[0].files_on_drive
    finally:
        catalog.close()


def test_scrub_command_names_the_damage_and_exits_1(tmp_path):
    archive_with_cards(tmp_path, tmp_path / "archive", cards=1, shots=2)
    session = next(p for p in (tmp_path / "archive").iterdir() if p.is_dir())
    flip_a_byte(session / "files" / "DCIM" / "101CANON" / "IMG_0001.CR2")
    toml = tmp_path / "imalinkd.toml"
    toml.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/catalog.db"\n[storage]\nroot = "{tmp_path}/archive"\n[api]\nlisten = ""\n')
    run = subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(toml), "scrub", str(tmp_path / "archive"), "--budget", "pass"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert run.returncode == 1, run.stderr
    assert f"DAMAGED: {session.name}/files/DCIM/101CANON/IMG_0001.CR2" in run.stdout
    status = subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(toml), "status", "--json"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    damaged = json.loads(status.stdout)["scrub"]["damaged"]
    assert [d["file"] for d in damaged] == ["files/DCIM/101CANON/IMG_0001.CR2"]
    bad = subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(toml), "scrub", "--all", "--budget", "lots"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and "'lots'" in bad.stderr


@pytest.mark.parametrize("text, expected", [
    ("10%", Budget(share=0.1, text="10%")), ("33.5%", Budget(share=0.335, text="33.5%")),
    ("20GB", Budget(nbytes=20 * 10**9, text="20GB")), ("500MiB", Budget(nbytes=500 * 2**20, text="500MiB")),
    ("30m", Budget(seconds=1800, text="30m")), ("2h", Budget(seconds=7200, text="2h")), ("pass", Budget()),
])
def test_budgets(text, expected):
    assert parse_budget(text) == expected


@pytest.mark.parametrize("text", ["", "0%", "150%", "-3GB", "ten", "5 parsecs"])
def test_budgets_that_are_not(text):
    with pytest.raises(BudgetError, match="is not understood"):
        parse_budget(text)


def test_a_bad_budget_in_the_config_is_named():
    from imalinkd.errors import ConfigError

    with pytest.raises(ConfigError, match="scrub.budget"):
        parse_config({"scrub": {"budget": "lots"}})


def test_the_scrub_thread_reads_at_idle_io_priority_and_nothing_else_does():
    import psutil

    from imalinkd.scrub.engine import lower_io_priority

    seen = {}

    def scrub_thread():
        lower_io_priority()
        seen["scrub"] = psutil.Process(threading.get_native_id()).ionice().ioclass

    t = threading.Thread(target=scrub_thread)
    t.start()
    t.join(30)
    assert seen["scrub"] == psutil.IOPRIO_CLASS_IDLE
    assert psutil.Process(threading.get_native_id()).ionice().ioclass != psutil.IOPRIO_CLASS_IDLE


def test_a_time_budget_stops_the_scrub_and_the_next_one_goes_on_from_there(tmp_path, monkeypatch):
    import itertools

    from imalinkd.scrub import engine

    cfg = archive_with_cards(tmp_path, tmp_path / "archive", cards=2)
    catalog = Catalog.open(cfg)
    try:
        root = str(tmp_path / "archive")
        ticks = itertools.count(step=7.0)  # a clock that moves 7 s each time it is read
        monkeypatch.setattr(engine, "_clock", lambda: next(ticks))
        first = scrub_root(catalog, root, storage.read_marker(root), parse_budget("1m"))
        assert first.stopped == "budget" and 0 < first.checked < first.files_on_drive
        monkeypatch.undo()
        rest = scrub_root(catalog, root, storage.read_marker(root), parse_budget("pass"))
        assert rest.checked == first.files_on_drive - first.checked and rest.pass_completed
    finally:
        catalog.close()


def test_a_drive_pulled_mid_scrub_stops_it_and_nothing_is_called_damaged(tmp_path):
    from mounts import umount

    image, mp = tmp_path / "drive.img", tmp_path / "mnt"
    with ext4_image(mp, image=image):
        cfg = archive_with_cards(tmp_path, mp / "archive", cards=2)
        catalog = Catalog.open(cfg)
        try:
            root = str(mp / "archive")
            calls = []

            def pull_after_two_files() -> bool:  # asked before each file's first read
                calls.append(1)
                if len(calls) == 3:
                    umount(mp)  # yanked: its files vanish from the path
                return False

            report = scrub_root(catalog, root, storage.read_marker(root), parse_budget("pass"), pause=pull_after_two_files)
            assert report.stopped == "drive_gone" and report.checked == 2 and report.findings == []
            with catalog.session() as s:
                assert sorted(s.scalars(select(FileCheck.result))) == ["ok", "ok"]
        finally:
            catalog.close()
