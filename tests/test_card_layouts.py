"""Every card layout a camera writes (docs/media.md): recognised as a camera card without
configuration, imported whole, its files grouped into shots with their sidecars; files
that are no media counted apart; identical files of one source stored once; a folder
imported by hand named after the folder."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cards import LAYOUT_OF, LAYOUT_TREES, expected_shots, make_layout_card, tree_hashes
from mounts import exfat_mount, make_exfat_image
from imalinkd.cardlayout import camera_layout
from imalinkd.catalog import Catalog, Image, ImportSession, Photo, SkippedFile
from imalinkd.config import Config, parse_config
from imalinkd.daemon.identify import CardIdentity, find_storage_roots, is_camera_card, probe_filesystem
from imalinkd.daemon.policy import plan_card_job
from imalinkd.importer import import_source
from imalinkd.shots import count_shots, group_shots
from imalinkd.storage import init_storage


def make_config(tmp_path: Path):
    init_storage(tmp_path / "archive")  # as 'imalinkd init-storage' does
    return parse_config({
        "catalog": {"url": f"sqlite:///{tmp_path / 'catalog.db'}"},
        "storage": {"root": str(tmp_path / "archive")},
        "import": {"thumbnails": False},
        "api": {"listen": ""},
    })


def photos_of(cfg, session_uuid: str) -> tuple[list[set[str]], set[str]]:
    """The session's Photos as sets of files, and the files that belong to none."""
    cat = Catalog.open(cfg)
    try:
        with cat.session() as s:
            row = s.scalars(select(ImportSession).where(ImportSession.storage_uuid == session_uuid)).one()
            groups: dict[int, set[str]] = {}
            loose: set[str] = set()
            for img in s.scalars(select(Image).where(Image.session_id == row.id)):
                if img.photo_id is None:
                    loose.add(img.storage_relative_path)
                else:
                    groups.setdefault(img.photo_id, set()).add(img.storage_relative_path)
            assert s.scalar(select(func.count(Photo.id)).where(Photo.session_id == row.id)) == len(groups)
            return list(groups.values()), loose
    finally:
        cat.close()


@pytest.mark.parametrize("layout", sorted(LAYOUT_TREES))
def test_shots_of_every_layout(layout):
    rels = [rel for rel, _ in LAYOUT_TREES[layout]]
    got = sorted(sorted(members) for members in group_shots(rels).values()
                 if any(shot for rel, shot in LAYOUT_TREES[layout] if rel in members))
    assert got == sorted(sorted(files) for files in expected_shots(layout).values())
    others = sum(1 for _, shot in LAYOUT_TREES[layout] if shot is None)
    assert count_shots(rels) == (len(expected_shots(layout)), others)


@pytest.mark.parametrize("layout", sorted(LAYOUT_TREES))
def test_layout_recognised_from_its_tree(tmp_path, layout):
    make_layout_card(tmp_path / "card", layout)
    assert camera_layout(tmp_path / "card") == LAYOUT_OF[layout]


def test_a_stick_of_documents_is_no_camera_card(tmp_path):
    stick = tmp_path / "stick"
    (stick / "Documents").mkdir(parents=True)
    (stick / "Documents" / "letter.odt").write_bytes(b"x")
    (stick / ".Trashes").mkdir()
    (stick / ".Trashes" / "IMG_0001.JPG").write_bytes(b"x")  # hidden: a computer's, not a camera's
    (stick / "Photos" / "2019").mkdir(parents=True)
    (stick / "Photos" / "2019" / "IMG_0001.JPG").write_bytes(b"x")  # two levels down: a backup drive
    assert camera_layout(stick) is None
    (stick / "DCIM").symlink_to(stick / "Photos")  # a symlink named DCIM leads anywhere: not a layout
    assert camera_layout(stick) is None


@pytest.mark.parametrize("layout", sorted(LAYOUT_TREES))
def test_layout_card_on_exfat_is_a_card_and_imports_with_sidecars_grouped(tmp_path, layout):
    tree = make_layout_card(tmp_path / "tree", layout)
    image = make_exfat_image(tmp_path / "card.img", label="CAM_CARD", size_mb=16, tree=tree.root)
    mp = tmp_path / "media" / "CAM_CARD"
    with exfat_mount(image, mp) as mounted:
        source = next(line.split(" - ")[1].split()[1] for line in Path("/proc/self/mountinfo").read_text().splitlines()
                      if f" {mounted} " in line)
        fs_uuid, label, _ = probe_filesystem(source)
        assert is_camera_card(mounted)
        kind, job, reason = plan_card_job(config=Config(), mount_point=mounted, mount_source=source, device_number="7:0",
                                          identity=CardIdentity(fs_uuid, label), has_dcim=is_camera_card(mounted),
                                          storage_roots=find_storage_roots(mounted, 2))
        assert (kind, reason, job.description) == ("card", "start", "CAM_CARD")
        cfg = make_config(tmp_path)
        result = import_source(cfg, mounted, description=job.policy.description, template_values={"label": label})
        assert result.copy_status == "completed", result.error
        assert tree_hashes(Path(result.storage_path) / "files") == tree.files  # the card whole, byte for byte
    others = {rel for rel, shot in LAYOUT_TREES[layout] if shot is None}
    assert (result.photos_created, result.other_files) == (tree.shots, len(others))
    groups, loose = photos_of(cfg, result.session_uuid)
    assert sorted(map(sorted, groups)) == sorted(sorted(files) for files in expected_shots(layout).values())
    assert loose == others
    manifest = json.loads((Path(result.storage_path) / "metadata.json").read_text())
    assert (manifest["photos_created"], manifest["other_files"]) == (tree.shots, len(others))


def test_mixed_folder_counts_photos_and_other_files_apart(tmp_path):
    folder = tmp_path / "Holiday 2026"
    (folder / "MISC").mkdir(parents=True)
    for i in range(9):
        (folder / f"IMG_{i:04d}.JPG").write_bytes(b"jpeg %d" % i)
    (folder / "MISC" / "AUTXFER.DAT").write_bytes(b"dat")
    (folder / "MVI_0100.MP4").write_bytes(b"mp4")
    (folder / "README").write_bytes(b"read me")
    cfg = make_config(tmp_path)
    result = import_source(cfg, folder)
    assert result.copy_status == "completed" and result.total_files == 12
    assert (result.photos_created, result.other_files) == (10, 2)
    assert result.as_json()["other_files"] == 2
    assert "_import_Holiday_2026_" in result.storage_directory_name  # named after the folder


def test_cli_import_of_a_folder_is_named_after_it_and_reports_other_files(tmp_path):
    folder = tmp_path / "Bergen"
    folder.mkdir()
    (folder / "IMG_0001.JPG").write_bytes(b"a")
    (folder / "notes.txt").write_bytes(b"b")
    cfg_path = tmp_path / "imalinkd.toml"
    init_storage(tmp_path / "archive")
    cfg_path.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path / "c.db"}"\n[storage]\nroot = "{tmp_path / "archive"}"\n'
                        f'[import]\nthumbnails = false\n[api]\nlisten = ""\n')
    import sys

    r = subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(cfg_path), "import", str(folder), "--json"],
                       capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert "_import_Bergen_" in out["storage_directory_name"]
    assert (out["photos_created"], out["other_files"]) == (1, 1)


def test_identical_files_within_one_source_are_stored_once(tmp_path):
    card = tmp_path / "card"
    (card / "DCIM/100CANON").mkdir(parents=True)
    (card / "DCIM/101CANON").mkdir(parents=True)
    same = bytes(range(256)) * 400
    (card / "DCIM/100CANON/IMG_0001.JPG").write_bytes(same)
    (card / "DCIM/101CANON/IMG_0001.JPG").write_bytes(same)  # the same photo twice on one card
    (card / "DCIM/101CANON/COPY.JPG").write_bytes(same)
    (card / "DCIM/100CANON/IMG_0002.JPG").write_bytes(same[:-1] + b"\x00")  # same size and head, other bytes
    (card / "DCIM/100CANON/IMG_0003.JPG").write_bytes(b"x" * len(same))  # same size, other head
    cfg = make_config(tmp_path)
    result = import_source(cfg, card, description="twice")
    assert result.copy_status == "completed"
    files = tree_hashes(Path(result.storage_path) / "files")
    assert sorted(files) == ["DCIM/100CANON/IMG_0001.JPG", "DCIM/100CANON/IMG_0002.JPG", "DCIM/100CANON/IMG_0003.JPG"]
    assert result.duplicates_skipped == 2 and result.total_files == 3
    kept = f"{result.session_uuid}:files/DCIM/100CANON/IMG_0001.JPG"
    manifest = json.loads((Path(result.storage_path) / "metadata.json").read_text())
    dups = {s["original_path"]: s["duplicate_of"] for s in manifest["skipped_files"]}
    assert dups == {"DCIM/101CANON/IMG_0001.JPG": kept, "DCIM/101CANON/COPY.JPG": kept}
    assert manifest["duplicates_skipped"] == 2
    cat = Catalog.open(cfg)
    try:
        with cat.session() as s:
            rows = {r.original_path: r.duplicate_of for r in s.scalars(select(SkippedFile))}
            assert rows == dups
    finally:
        cat.close()


def test_a_rebuilt_catalog_has_the_same_shots_and_other_files(tmp_path):
    from imalinkd.reindex import reindex_path

    tree = make_layout_card(tmp_path / "card", "sony-xavc")
    cfg = make_config(tmp_path)
    result = import_source(cfg, tree.root, description="sony")
    before = photos_of(cfg, result.session_uuid)
    (tmp_path / "catalog.db").unlink()
    cat = Catalog.open(cfg)
    try:
        assert reindex_path(cfg, cat, str(tmp_path / "archive")).ok
    finally:
        cat.close()
    after = photos_of(cfg, result.session_uuid)
    assert sorted(map(sorted, after[0])) == sorted(map(sorted, before[0])) and after[1] == before[1]
    assert len(after[0]) == tree.shots
