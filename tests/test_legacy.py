"""Legacy (in-place) imports and their adoption into the archive."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from sqlalchemy import func, select

from imalinkd import manifest as mf
from imalinkd.catalog import Catalog, Image, ImportSession, Photo
from imalinkd.errors import SessionStateError
from imalinkd.legacy import adopt, import_in_place
from imalinkd.storage import init_storage
from imalinkd.locate import file_path, storage_status
from imalinkd.reindex import reindex_path

from test_reindex import config_for, counts


@pytest.fixture
def setup(tmp_path):
    src = tmp_path / "old-photos"
    (src / "2019" / "summer").mkdir(parents=True)
    (src / "2019" / "summer" / "IMG_1.CR2").write_bytes(b"raw" * 100)
    (src / "2019" / "summer" / "IMG_1.JPG").write_bytes(b"jpg" * 50)
    (src / "2019" / "DSC_2.JPG").write_bytes(b"another" * 9)
    os.symlink("/etc/passwd", src / "2019" / "link.jpg")
    root = tmp_path / "archive"
    init_storage(root)  # as 'imalinkd init-storage' does
    config = config_for(tmp_path, root)
    return config, Catalog.open(config), src, root


def test_in_place_import_catalogues_files_where_they_are(setup):
    config, catalog, src, root = setup
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file() and not p.is_symlink()}
    result = import_in_place(config, catalog, str(src), "old")
    data = result.as_json()
    assert data["legacy"] is True and data["copy_files"] is False and data["total_files"] == 3
    assert data["photos_created"] == 2 and [s["reason"] for s in data["skipped"]] == ["symlink"]
    sdir = result.storage_path
    assert os.listdir(sdir) == ["metadata.json"]  # no files/: nothing was copied
    m = mf.read_manifest(sdir)
    assert m.copy_files is False and m.source_path == str(src)
    assert {e.original_path for e in m.file_manifest} == {"2019/summer/IMG_1.CR2", "2019/summer/IMG_1.JPG", "2019/DSC_2.JPG"}
    assert all(e.copied_at is None for e in m.file_manifest)
    assert {p: p.read_bytes() for p in before} == before  # the source is untouched
    st = storage_status(config, catalog, result.import_session_id)
    assert st["legacy"] and st["storage_accessible"] and st["storage_path"] == str(src) and st["files_accessible"] == 3
    with catalog.session() as s:
        row = s.scalar(select(ImportSession))
        assert row.copy_files is False
        img = s.scalar(select(Image).where(Image.original_import_path == "2019/DSC_2.JPG"))
    assert file_path(config, catalog, row, img) == str(src / "2019" / "DSC_2.JPG")


def test_legacy_session_survives_catalog_loss(setup, tmp_path):
    config, catalog, src, root = setup
    import_in_place(config, catalog, str(src), "old")
    first = counts(catalog)
    catalog.close()
    os.unlink(tmp_path / "catalog.db")
    catalog = Catalog.open(config)
    assert reindex_path(config, catalog, str(root)).ok
    assert counts(catalog) == first
    with catalog.session() as s:
        assert s.scalar(select(ImportSession.copy_files)) is False
        assert s.scalar(select(func.count()).select_from(Image).where(Image.size_mismatch)) == 0


def test_adopt_copies_with_verification_and_frees_the_source(setup):
    config, catalog, src, root = setup
    sid = import_in_place(config, catalog, str(src), "old").import_session_id
    result = adopt(config, catalog, sid[:8])
    assert result.ok and result.copied == 3 and result.as_json()["copy_files"] is True
    m = mf.read_manifest(result.storage_path)
    assert m.copy_files and m.copy_status == "completed" and all(e.copied_at for e in m.file_manifest)
    for e in m.file_manifest:
        assert open(os.path.join(result.storage_path, e.storage_path), "rb").read() == (src / e.original_path).read_bytes()
    shutil.rmtree(src)  # the source is no longer needed
    st = storage_status(config, catalog, sid)
    assert not st["legacy"] and st["storage_accessible"] and st["files_accessible"] == 3
    assert st["storage_path"] == result.storage_path
    with catalog.session() as s:
        assert s.scalar(select(ImportSession.copy_files)) is True
        assert s.scalar(select(func.count()).select_from(Image).where(Image.copied_at.is_(None))) == 0
        assert s.scalar(select(func.count()).select_from(Photo)) == 2
    with pytest.raises(SessionStateError):
        adopt(config, catalog, sid)
    # and it reindexes as an ordinary session
    assert reindex_path(config, catalog, str(root)).ok


def test_adopt_refuses_a_source_file_that_changed_and_completes_later(setup):
    config, catalog, src, root = setup
    sid = import_in_place(config, catalog, str(src), "old").import_session_id
    victim = src / "2019" / "DSC_2.JPG"
    good = victim.read_bytes()
    victim.write_bytes(b"tampered" * 9)
    result = adopt(config, catalog, sid)
    assert not result.ok and result.copied == 2
    assert result.failed[0][0] == "2019/DSC_2.JPG" and "changed since it was catalogued" in result.failed[0][1]
    assert json.loads(json.dumps(result.as_json()))["copy_files"] is False
    assert mf.read_manifest(result.storage_path).copy_files is False
    victim.write_bytes(good)
    again = adopt(config, catalog, sid)
    assert again.ok and again.copied == 1 and again.already_there == 2
