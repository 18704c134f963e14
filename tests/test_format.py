"""The published format (docs/format.md, imalinkd/schemas): versions, thumbnails named per
file, no host paths in a manifest."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

import schema_check
from cards import make_card
from imalinkd import manifest as mf, schemas, storage
from imalinkd.catalog import Catalog, Image, Photo
from imalinkd.config import parse_config
from imalinkd.errors import ManifestError, MarkerError
from imalinkd.importer import import_source
from imalinkd.media import extract_media
from imalinkd.reindex import reindex_path
from media_factory import make_exif, write_fake_raw, write_jpeg

REPO = Path(__file__).resolve().parents[1]


def config(tmp_path: Path, catalog: str = "catalog.db", **imp):
    storage.init_storage(tmp_path / "archive")  # as 'imalinkd init-storage' does
    return parse_config({
        "catalog": {"url": f"sqlite:///{tmp_path / catalog}"},
        "storage": {"root": str(tmp_path / "archive")},
        "import": {"thumbnails": False, **imp},
        "api": {"listen": ""},
    })


def test_each_file_names_the_thumbnail_of_its_shot_and_a_rebuilt_catalog_has_them(tmp_path):
    card = tmp_path / "card" / "DCIM" / "100CANON"
    card.mkdir(parents=True)
    exif = make_exif(model="X100V")
    write_jpeg(card / "IMG_0001.JPG", exif=exif)
    write_fake_raw(card / "IMG_0001.CR2", exif=exif)
    write_fake_raw(card / "IMG_0002.CR2", exif=make_exif(model="X100F"))  # another shot: not the same bytes
    result = import_source(config(tmp_path, thumbnails=True, thumbnail_size=64), tmp_path / "card")
    session = Path(result.storage_path)
    entries = {e["storage_path"]: e.get("thumbnail") for e in json.loads((session / "metadata.json").read_text())["file_manifest"]}
    assert entries == {
        "files/DCIM/100CANON/IMG_0001.JPG": "thumbnails/DCIM/100CANON/img_0001.jpg",
        "files/DCIM/100CANON/IMG_0001.CR2": "thumbnails/DCIM/100CANON/img_0001.jpg",
        "files/DCIM/100CANON/IMG_0002.CR2": "thumbnails/DCIM/100CANON/img_0002.jpg",
    }
    assert all((session / t).is_file() for t in entries.values())

    rebuilt = Catalog.open(f"sqlite:///{tmp_path / 'rebuilt.db'}")
    try:
        assert reindex_path(config(tmp_path, "rebuilt.db"), rebuilt, str(tmp_path / "archive")).ok
        with rebuilt.session() as s:
            thumbs = {p.key: p.thumbnail_path for p in s.scalars(select(Photo))}
    finally:
        rebuilt.close()
    assert thumbs == {"DCIM/100CANON/img_0001": "thumbnails/DCIM/100CANON/img_0001.jpg",
                      "DCIM/100CANON/img_0002": "thumbnails/DCIM/100CANON/img_0002.jpg"}


def test_a_manifest_names_no_path_of_the_host_even_in_media_errors(tmp_path):
    card = make_card(tmp_path / "card", shots=4)  # random bytes: every reader fails on them, quoting the file
    cfg = config(tmp_path)
    result = import_source(cfg, card.root)
    text = (Path(result.storage_path) / "metadata.json").read_text()
    data = json.loads(text)
    assert all(e.get("media_error") for e in data["file_manifest"])
    del data["source_path"]  # the one absolute path: where the source was, provenance
    assert str(tmp_path) not in json.dumps(data)
    catalog = Catalog.open(cfg)
    try:
        with catalog.session() as s:
            errors = list(s.scalars(select(Image.media_error)))
    finally:
        catalog.close()
    assert errors and not any(str(tmp_path) in e for e in errors)


def test_reader_errors_name_the_file_not_where_it_is(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    error = extract_media(tmp_path / "x.jpg").error
    assert "x.jpg" in error and str(tmp_path) not in error


def test_an_error_naming_a_file_of_the_session_names_it_relative_to_the_session(tmp_path):
    root = tmp_path / "archive"
    sdir = root / "20261124_import_session_1a2b3c4d"
    sdir.mkdir(parents=True)
    m = mf.SessionManifest(import_session_id="1a2b3c4d-0000-4000-8000-000000000000", storage_id="", created_at="2026-11-24T10:00:00Z",
                           source_path="/media/card", copy_status="failed",
                           error=f"cannot write {sdir}/files/DCIM/IMG_1.JPG; see {root}/20261123_import_x_00000000/files/A.JPG")
    mf.write_manifest(sdir, m)
    written = json.loads((sdir / "metadata.json").read_text())["error"]
    assert written == "cannot write files/DCIM/IMG_1.JPG; see 20261123_import_x_00000000/files/A.JPG"


def _manifest(**change) -> dict:
    d = {"format": "imalink-session", "format_version": 1, "import_session_id": "1a2b3c4d-0000-4000-8000-000000000000",
         "copy_status": "completed", "file_manifest": []}
    d.update(change)
    return {k: v for k, v in d.items() if v is not None}


def test_a_newer_major_version_is_refused_by_name_and_older_ones_are_read(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps(_manifest(format_version=2)))
    with pytest.raises(ManifestError) as e:
        mf.read_manifest(tmp_path)
    assert str(tmp_path / "metadata.json") in str(e.value)
    assert "format_version 2 is newer" in str(e.value) and "upgrade imalinkd" in str(e.value)
    # 1.0 (no format_minor, no thumbnails), and manifests from before the fields existed
    for older in (_manifest(), _manifest(format=None, format_version=None), _manifest(format_minor=7, thumbnail_kind="new")):
        (tmp_path / "metadata.json").write_text(json.dumps(older))
        assert mf.read_manifest(tmp_path).import_session_id.startswith("1a2b3c4d")
    (tmp_path / "metadata.json").write_text(json.dumps(_manifest(format="something-else")))
    with pytest.raises(ManifestError, match="not an imalinkd session manifest"):
        mf.read_manifest(tmp_path)


def test_a_marker_of_a_newer_major_version_is_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"format": "imalink-storage", "format_version": 2,
                                                      "storage_id": "1a2b3c4d-0000-4000-8000-000000000000"}))
    with pytest.raises(MarkerError) as e:
        storage.read_marker(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value) and "upgrade imalinkd" in str(e.value)


def test_what_imalinkd_writes_matches_the_published_schemas(tmp_path):
    cfg = config(tmp_path, thumbnails=True, thumbnail_size=32)
    card = make_card(tmp_path / "card", shots=3, hostile=True)
    session = Path(import_source(cfg, card.root).storage_path)
    assert schema_check.check_bytes("metadata", (session / "metadata.json").read_bytes(), "metadata.json") == []
    assert schema_check.check_bytes("config", (tmp_path / "archive" / "config.json").read_bytes(), "config.json") == []


def test_the_schema_check_of_the_test_suite_can_fail():
    bad = json.dumps(_manifest(file_manifest=[{"original_path": "../x", "storage_path": "elsewhere/x", "file_size": -1,
                                               "sha256": "nope", "copied_at": None}])).encode()
    problems = schema_check.check_bytes("metadata", bad, "metadata.json")
    assert len(problems) >= 4  # the path, the storage path, the size, the digest (and the fields missing)


def test_the_schemas_ship_in_the_package_and_in_the_docs():
    for name in schemas.NAMES:
        schema = schemas.load(name)
        assert schema["$id"].endswith(":1")
        assert json.loads((REPO / "docs" / "schemas" / f"{name}.schema.json").read_text()) == schema
    assert "metadata.schema.json" in (REPO / "docs" / "format.md").read_text()
