"""Live paths: finding roots, resolving a storage_id, statting files without following
symlinks, and the manual override. (Remounts on real loop images: test_archive_e2e.py.)"""

from __future__ import annotations

import json
import os

import pytest

from imalinkd.catalog import Catalog
from imalinkd.errors import StorageError
from imalinkd.locate import SafeTree, discover_roots, resolve_root, session_path, storage_status, update_storage_path
from imalinkd.reindex import reindex_path

from test_reindex import config_for, indexed_archive, make_root


def test_discover_finds_roots_up_to_the_depth_and_names_bad_markers(tmp_path):
    make_root(tmp_path / "a")
    make_root(tmp_path / "x" / "b")
    make_root(tmp_path / "x" / "y" / "too-deep")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{trunc")
    os.symlink(tmp_path / "a", tmp_path / "link")
    found, rejected = discover_roots(str(tmp_path), 2)
    assert sorted(os.path.relpath(f.path, tmp_path) for f in found) == ["a", "x/b"]
    assert [p for p, _ in rejected] == [str(tmp_path / "bad" / "config.json")]
    assert "not readable JSON" in rejected[0][1]


def test_resolve_prefers_configured_root_then_last_seen_and_checks_identity(tmp_path):
    a = tmp_path / "a"
    marker = make_root(a)
    other = tmp_path / "other"
    make_root(other)  # a different archive at the configured path is not ours
    config = config_for(tmp_path, other, search_depth=0)
    catalog = Catalog.open(config)
    assert resolve_root(config, catalog, marker.storage_id) is None
    reindex_path(config, catalog, str(a))  # records the last-seen path
    assert resolve_root(config, catalog, marker.storage_id) == str(a)
    assert resolve_root(config_for(tmp_path, a), catalog, marker.storage_id) == str(a)


def test_session_reached_through_symlinks_is_not_accessible(tmp_path):
    root, marker, sid, sdir, config, catalog = indexed_archive(tmp_path)
    assert storage_status(config, catalog, sid)["files_accessible"] == 3
    camera = os.path.join(sdir, "files", "DCIM", "100CANON")
    os.rename(camera, camera + ".real")
    os.symlink(camera + ".real", camera)
    st = storage_status(config, catalog, sid)
    assert st["storage_accessible"] and st["files_accessible"] == 0
    tree = SafeTree(os.path.join(sdir, "files"))
    assert tree.size("DCIM/100CANON/IMG_0001.JPG") is None and tree.size("../metadata.json") is None
    os.rename(sdir, sdir + ".moved")
    os.symlink(sdir + ".moved", sdir)
    assert session_path(config, catalog, sid) is None


def test_update_storage_path_validates_and_records_the_root(tmp_path):
    root, marker, sid, sdir, config, catalog = indexed_archive(tmp_path)
    moved = tmp_path / "deep" / "er" / "still" / "archive"
    moved.parent.mkdir(parents=True)
    os.rename(root, moved)
    by_id = config_for(tmp_path, storage_id=marker.storage_id, search_depth=0)
    assert storage_status(by_id, catalog, sid)["storage_accessible"] is False
    with pytest.raises(StorageError, match="no storage marker"):
        update_storage_path(catalog, sid, str(tmp_path))
    stranger = tmp_path / "stranger"
    make_root(stranger)
    with pytest.raises(StorageError, match="not in this storage root"):
        update_storage_path(catalog, sid, str(stranger))
    out = update_storage_path(catalog, sid, os.path.join(moved, os.path.basename(sdir)))
    assert out["root_path"] == str(moved) and json.dumps(out)
    st = storage_status(by_id, catalog, sid)
    assert st["storage_accessible"] and st["storage_path"] == os.path.join(moved, os.path.basename(sdir))
