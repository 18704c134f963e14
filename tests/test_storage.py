"""Storage roots, session names, paths and manifests: the drive's own records."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone

import pytest

from imalinkd import manifest, paths, storage
from imalinkd.errors import ManifestError, MarkerError


def test_session_dir_name_follows_the_design():
    ts = datetime(2026, 11, 24, 23, 30, tzinfo=timezone.utc)
    sid = "1a2b3c4d-0000-4000-8000-000000000000"
    assert storage.session_dir_name(ts, "EOS_DIGITAL", sid) == "20261124_import_EOS_DIGITAL_1a2b3c4d"
    assert storage.session_dir_name(ts, "Trip: Bergen/Oslo!", sid) == "20261124_import_Trip__Bergen_Oslo__1a2b3c4d"
    assert storage.session_dir_name(ts, None, sid) == "20261124_import_session_1a2b3c4d"
    assert storage.session_dir_name(ts, "../..", sid) == "20261124_import_session_1a2b3c4d"
    long = storage.session_dir_name(ts, "x" * 80, sid)
    assert long == f"20261124_import_{'x' * 50}_1a2b3c4d"
    assert storage.is_session_dir_name(long)


def test_marker_round_trip_and_idempotent_init(tmp_path):
    m = storage.init_storage(tmp_path / "root", "T7")
    assert storage.init_storage(tmp_path / "root") == m
    data = json.loads((tmp_path / "root" / "config.json").read_text())
    assert data["format"] == "imalink-storage" and data["storage_id"] == m.storage_id and data["created_at"].endswith("Z")


@pytest.mark.parametrize("content, problem", [
    ("{", "not readable JSON"),
    ('{"format": "other"}', "'format' is not"),
    ('{"format": "imalink-storage", "storage_id": "nope"}', "is not a UUID"),
    ('{"format": "imalink-storage", "storage_id": "1a2b3c4d-0000-4000-8000-000000000000", "format_version": 99}', "newer"),
])
def test_bad_markers_are_rejected_naming_the_file(tmp_path, content, problem):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(MarkerError) as e:
        storage.read_marker(tmp_path)
    assert problem in str(e.value) and str(tmp_path / "config.json") in str(e.value)


def test_marker_that_is_a_symlink_is_not_followed(tmp_path):
    storage.init_storage(tmp_path / "real")
    (tmp_path / "fake").mkdir()
    os.symlink(tmp_path / "real" / "config.json", tmp_path / "fake" / "config.json")
    with pytest.raises(MarkerError):
        storage.read_marker(tmp_path / "fake")


def test_find_storage_roots_within_depth_without_following_symlinks(tmp_path):
    storage.init_storage(tmp_path / "a" / "photos")
    storage.init_storage(tmp_path / "b" / "c" / "d")
    os.symlink(tmp_path / "a", tmp_path / "link")
    found = [os.path.relpath(f.path, tmp_path) for f in storage.find_storage_roots(str(tmp_path), depth=2)]
    assert found == ["a/photos"]
    deeper = {os.path.relpath(f.path, tmp_path) for f in storage.find_storage_roots(str(tmp_path), depth=3)}
    assert deeper == {"a/photos", "b/c/d"}


@pytest.mark.parametrize("bad", ["/etc/passwd", "../x", "a/../../b", "a//b", "./a", "", "a\x00b"])
def test_unsafe_relative_paths_are_refused(bad):
    with pytest.raises(paths.UnsafePathError):
        paths.check_relative(bad)


def test_non_utf8_paths_round_trip_through_the_manifest_encoding():
    raw = os.fsdecode(b"DCIM/\xff\xfe_\xe9.JPG")
    entry: dict = {}
    paths.put_path(entry, "original_path", raw)
    assert entry["original_path"] == "DCIM/\\xff\\xfe_\\xe9.JPG"
    json.dumps(entry).encode("utf-8")  # valid UTF-8 JSON
    assert paths.get_path(json.loads(json.dumps(entry)), "original_path") == raw
    plain: dict = {}
    paths.put_path(plain, "p", "DCIM/ÆØÅ.JPG")
    assert plain == {"p": "DCIM/ÆØÅ.JPG"}


def _manifest_dict(**over):
    d = {
        "import_session_id": "1a2b3c4d-0000-4000-8000-000000000000",
        "copy_status": "completed",
        "file_manifest": [{"original_path": "DCIM/A.JPG", "storage_path": "files/DCIM/A.JPG", "file_size": 3,
                           "sha256": "a" * 64, "copied_at": "2026-11-24T00:00:00Z"}],
    }
    d.update(over)
    return d


@pytest.mark.parametrize("change, problem", [
    ({"storage_path": "/etc/passwd"}, "absolute"),
    ({"storage_path": "files/../../etc/passwd"}, "'..'"),
    ({"storage_path": "DCIM/A.JPG"}, "not below files/"),
    ({"original_path": "../A.JPG"}, "'..'"),
    ({"sha256": "xyz"}, "not a hex sha256"),
    ({"file_size": -1}, "not a byte count"),
])
def test_hostile_manifest_entries_are_rejected_with_the_file_named(tmp_path, change, problem):
    d = _manifest_dict()
    d["file_manifest"][0].update(change)
    (tmp_path / "metadata.json").write_text(json.dumps(d))
    with pytest.raises(ManifestError) as e:
        manifest.read_manifest(tmp_path)
    assert problem in str(e.value) and str(tmp_path / "metadata.json") in str(e.value)


def test_truncated_manifest_is_rejected(tmp_path):
    (tmp_path / "metadata.json").write_text(json.dumps(_manifest_dict())[:60])
    with pytest.raises(ManifestError) as e:
        manifest.read_manifest(tmp_path)
    assert "truncated or damaged" in str(e.value)


def test_manifest_round_trip(tmp_path):
    m = manifest.parse_manifest(_manifest_dict())
    m.skipped.append(manifest.SkippedEntry(os.fsdecode(b"\xff.JPG"), "symlink"))
    manifest.write_manifest(tmp_path, m)
    again = manifest.read_manifest(tmp_path)
    assert again.file_manifest == m.file_manifest and again.skipped == m.skipped
    raw = json.loads((tmp_path / "metadata.json").read_text())
    assert raw["total_files"] == 1 and raw["total_size_bytes"] == 3


def test_concurrent_initialisation_agrees_on_one_identity(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        markers = list(pool.map(lambda _: storage.init_storage(tmp_path / "root"), range(16)))
    assert len({m.storage_id for m in markers}) == 1
    assert storage.read_marker(tmp_path / "root") == markers[0]
    assert [p.name for p in (tmp_path / "root").iterdir()] == ["config.json"]


def test_writability_probes_of_parallel_imports_do_not_collide(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: storage.check_writable(str(tmp_path)), range(64)))
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_marker_that_claims_the_format_is_reported_not_lost(tmp_path):
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "config.json").write_text('{"format": "imalink-storage", "storage_id": "not-a-uuid"}')
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"format": "some-other-app"}')
    errors: list[str] = []
    claimed: list[str] = []
    assert storage.find_storage_roots(str(tmp_path), 2, errors, claimed) == []
    assert claimed == [str(tmp_path / "damaged")]
    assert len(errors) == 2 and any("not a UUID" in e for e in errors)
