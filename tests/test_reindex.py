"""Reindexing: the pure plan on plain values, then real archives in temporary directories,
including a hostile drive. (Loop-mounted archives are in test_archive_e2e.py.)

The factories here (``make_root``, ``make_session``, ``config_for``) are shared by the
other archive tests."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from imalinkd import manifest as mf, storage
from imalinkd.catalog import Catalog, Image, ImportSession, Photo, SessionCopy, SkippedFile, StorageRoot
from imalinkd.config import parse_config
from imalinkd.reading import DriveSession, DriveState, read_drive
from imalinkd.reindex import CatalogCopy, CatalogSession, CatalogState, plan_reindex, reindex_all, reindex_path

# --- shared factories ---------------------------------------------------------------------------




def indexed_archive(tmp_path):
    """A storage root with one session, indexed into a fresh catalog."""
    root = tmp_path / "archive"
    marker = make_root(root)
    sid, sdir = make_session(root, marker)
    config = config_for(tmp_path, root)
    catalog = Catalog.open(config)
    reindex_path(config, catalog, str(root))
    return root, marker, sid, sdir, config, catalog


def config_for(tmp_path, root=None, **storage_keys):
    data = {"catalog": {"url": f"sqlite:///{tmp_path}/catalog.db"}, "storage": dict(storage_keys)}
    if root is not None:
        data["storage"]["root"] = str(root)
    data["daemon"] = {"state_dir": str(tmp_path / "state")}
    return parse_config(data)


def make_root(path, label="T7") -> storage.Marker:
    return storage.init_storage(str(path), label)


SHOT_FILES = {
    "DCIM/100CANON/IMG_0001.CR3": b"raw one",
    "DCIM/100CANON/IMG_0001.JPG": b"jpeg one",
    "DCIM/100CANON/IMG_0002.JPG": b"jpeg two!",
}


def make_session(root, marker_or_id, files=None, *, status="completed", description="trip", sid=None,
                 when=None, skipped=(), listed=None, copy_files=True, source_path="/media/card", media=True):
    """A session directory as the importer leaves it: files below files/ and a manifest.
    ``listed`` limits which files the manifest lists (an interrupted checkpoint)."""
    files = SHOT_FILES if files is None else files
    sid = sid or str(uuid.uuid4())
    storage_id = getattr(marker_or_id, "storage_id", marker_or_id)
    when = when or datetime(2026, 11, 24, 12, 0, tzinfo=timezone.utc)
    name = storage.session_dir_name(when, description, sid)
    sdir = os.path.join(str(root), name)
    os.makedirs(sdir)
    entries = []
    for rel, data in files.items():
        if copy_files:
            p = os.path.join(sdir, "files", rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)
        if listed is not None and rel not in listed:
            continue
        m = {"camera_make": "Canon", "camera_model": "EOS R5", "width": 6000, "height": 4000,
             "taken_at": "2026-11-24T10:00:00", "gps": {"lat": 59.9, "lon": 10.7}} if media else None
        entries.append(mf.FileEntry(rel, "files/" + rel, len(data), hashlib.sha256(data).hexdigest(),
                                    storage.iso(when) if copy_files else None, media=m))
    man = mf.SessionManifest(
        import_session_id=sid, storage_id=storage_id, created_at=storage.iso(when) or "", source_path=source_path,
        description=description, source={"kind": "card", "label": "EOS_DIGITAL"}, copy_status=status,
        copy_started_at=storage.iso(when), copy_completed_at=storage.iso(when) if status == "completed" else None,
        copy_files=copy_files, photos_created=len({e.storage_path.rsplit(".", 1)[0].lower() for e in entries}),
        file_manifest=entries, skipped=[mf.SkippedEntry(p, r) for p, r in skipped],
    )
    mf.write_manifest(sdir, man)
    pin_manifest_times(sdir)
    return sid, sdir


def pin_manifest_times(path, age_seconds=-86400):
    """Give ``path``'s manifest (or every manifest one level below a root ``path``) an mtime
    ``age_seconds`` before now. The default, a day *ahead*, is a manifest "just written"
    (too recent for reindex to record its signature) however long the test then takes; a
    positive age is one written long ago. Never left to how fast the machine runs."""
    import time

    when = time.time_ns() - int(age_seconds * 1_000_000_000)
    here = os.path.join(str(path), mf.FILENAME)
    targets = [here] if os.path.isfile(here) else [os.path.join(str(path), n, mf.FILENAME) for n in os.listdir(path)]
    for target in targets:
        if os.path.isfile(target):
            os.utime(target, ns=(when, when))


def counts(catalog: Catalog) -> dict:
    with catalog.session() as s:
        return {
            "sessions": s.scalar(select(func.count()).select_from(ImportSession)),
            "images": s.scalar(select(func.count()).select_from(Image)),
            "photos": s.scalar(select(func.count()).select_from(Photo)),
            "skipped": s.scalar(select(func.count()).select_from(SkippedFile)),
        }


# --- the pure plan ------------------------------------------------------------------------------

ROOT_A = "11111111-1111-4111-8111-111111111111"
ROOT_B = "22222222-2222-4222-8222-222222222222"
S1 = "aaaaaaaa-0000-4000-8000-000000000001"


def manifest_value(sid=S1, storage_id=ROOT_A, status="completed", files=None):
    files = files if files is not None else {"DCIM/IMG_1.CR3": 10, "DCIM/IMG_1.JPG": 5, "DCIM/IMG_2.JPG": 7}
    entries = [mf.FileEntry(rel, "files/" + rel, size, "0" * 64, "2026-11-24T12:00:00Z",
                            media={"camera_model": "R5"} if rel.endswith("JPG") else None) for rel, size in files.items()]
    return mf.SessionManifest(sid, storage_id, "2026-11-24T12:00:00Z", "/media/card", "trip", {"kind": "card"},
                              status, photos_created=2, file_manifest=entries)


def drive(*sessions, storage_id=ROOT_A, present=None):
    names = frozenset(present if present is not None else (d.dir_name for d in sessions))
    return DriveState(storage_id, "T7", tuple(sessions), names)


def on_disk_of(m):
    return {e.files_relative: e.file_size for e in m.file_manifest}


def test_plan_adds_a_session_the_catalog_lacks_with_images_photos_and_counts():
    m = manifest_value()
    plan = plan_reindex(drive(DriveSession("20261124_import_trip_aaaaaaaa", m, on_disk_of(m))), CatalogState({}))
    [new] = plan.new_sessions
    assert new.session["storage_uuid"] == S1 and new.session["storage_id"] == ROOT_A
    assert new.session["total_files"] == 3 and new.session["total_size_bytes"] == 22
    assert new.session["copy_status"] == "completed" and new.session["photos_created"] == 2
    assert len(new.photos) == 2 and {p["key"] for p in new.photos} == {"DCIM/img_1", "DCIM/img_2"}
    assert next(p for p in new.photos if p["key"] == "DCIM/img_1")["camera_model"] == "R5"
    assert [row["size_mismatch"] for _, row in new.image_rows()] == [False, False, False]
    assert new.copy == {"storage_id": ROOT_A, "storage_directory_name": "20261124_import_trip_aaaaaaaa", "missing": False}


def test_plan_is_empty_when_catalog_and_drive_agree():
    m = manifest_value()
    ds = DriveSession("20261124_import_trip_aaaaaaaa", m, on_disk_of(m))
    cs = CatalogSession(1, S1, ROOT_A, ds.dir_name, False, True, (CatalogCopy(7, ROOT_A, ds.dir_name, False),),
                        {"DCIM/IMG_1.CR3": (1, 10, False), "DCIM/IMG_1.JPG": (2, 5, False), "DCIM/IMG_2.JPG": (3, 7, False)})
    plan = plan_reindex(drive(ds), CatalogState({S1: cs}))
    assert plan.is_empty and plan.copies_seen == [7]


def test_plan_marks_a_gone_directory_missing_and_unmarks_it_when_back():
    cs = CatalogSession(1, S1, ROOT_A, "20261124_import_trip_aaaaaaaa", False, True,
                        (CatalogCopy(7, ROOT_A, "20261124_import_trip_aaaaaaaa", False),))
    plan = plan_reindex(drive(), CatalogState({S1: cs}))
    assert plan.sessions_missing == [1] and plan.copies_missing == [7] and not plan.new_sessions
    # another root being indexed says nothing about this session
    assert plan_reindex(drive(storage_id=ROOT_B), CatalogState({S1: cs})).is_empty
    m = manifest_value()
    back = CatalogSession(1, S1, ROOT_A, cs.dir_name, True, True, (CatalogCopy(7, ROOT_A, cs.dir_name, True),))
    plan = plan_reindex(drive(DriveSession(cs.dir_name, m, on_disk_of(m))), CatalogState({S1: back}))
    assert plan.sessions_back == [1] and plan.copies_seen == [7]


def test_plan_keeps_a_directory_with_a_rejected_manifest_as_present():
    cs = CatalogSession(1, S1, ROOT_A, "20261124_import_trip_aaaaaaaa", False)
    assert plan_reindex(drive(present={"20261124_import_trip_aaaaaaaa"}), CatalogState({S1: cs})).sessions_missing == []


def test_plan_flags_sizes_that_no_longer_match_and_unflags_them():
    m = manifest_value()
    disk = {**on_disk_of(m), "DCIM/IMG_1.CR3": 3}
    del disk["DCIM/IMG_2.JPG"]
    name = "20261124_import_trip_aaaaaaaa"
    cs = CatalogSession(1, S1, ROOT_A, name, False, True, (CatalogCopy(7, ROOT_A, name, False),),
                        {"DCIM/IMG_1.CR3": (1, 10, False), "DCIM/IMG_1.JPG": (2, 5, True), "DCIM/IMG_2.JPG": (3, 7, False)})
    plan = plan_reindex(drive(DriveSession(name, m, disk)), CatalogState({S1: cs}))
    assert sorted(plan.size_flags) == [(1, True), (2, False), (3, True)]


def test_plan_records_a_replica_on_another_root_not_a_conflict():
    m = manifest_value()
    name = "20261124_import_trip_aaaaaaaa"
    cs = CatalogSession(1, S1, ROOT_A, name, False, True, (CatalogCopy(7, ROOT_A, name, False),))
    plan = plan_reindex(drive(DriveSession(name, m, on_disk_of(m)), storage_id=ROOT_B), CatalogState({S1: cs}))
    assert plan.new_copies == [{"session_id": 1, "storage_id": ROOT_B, "storage_directory_name": name, "missing": False}]
    assert plan.replicas == [S1] and not plan.new_sessions and not plan.size_flags


def test_plan_adds_a_session_first_seen_on_a_replica_with_its_home_root():
    m = manifest_value(storage_id=ROOT_A)
    plan = plan_reindex(drive(DriveSession("20261124_import_trip_aaaaaaaa", m, on_disk_of(m)), storage_id=ROOT_B), CatalogState({}))
    [new] = plan.new_sessions
    assert new.session["storage_id"] == ROOT_A and new.copy["storage_id"] == ROOT_B and plan.replicas == [S1]


def test_plan_turns_an_interrupted_session_into_a_failed_resumable_one():
    m = manifest_value(status="in_progress", files={"DCIM/IMG_1.CR3": 10})
    disk = {"DCIM/IMG_1.CR3": 10, "DCIM/IMG_1.JPG": 5, "DCIM/IMG_2.JPG": 7}
    plan = plan_reindex(drive(DriveSession("20261124_import_trip_aaaaaaaa", m, disk)), CatalogState({})
                        )
    [new] = plan.new_sessions
    assert new.session["copy_status"] == "failed" and new.session["total_files"] == 1
    assert len(new.images) == 1 and "2 more committed files" in new.note and "resume" in new.session["error"]


# --- real archives in temporary directories --------------------------------------------------------


def test_reindex_rebuilds_a_deleted_catalog_with_the_same_rows(tmp_path):
    root = tmp_path / "archive"
    marker = make_root(root)
    sid1, _ = make_session(root, marker, skipped=[("DCIM/link", "symlink")])
    sid2, _ = make_session(root, marker, {"DCIM/A.JPG": b"a", "DCIM/B.MOV": b"bb"}, description="second")
    # search_depth 0: reindex_all looks at each mount point itself only, so an archive some
    # other program left two levels below / (in /tmp, say) is not counted here
    config = config_for(tmp_path, root, search_depth=0)
    catalog = Catalog.open(config)
    report = reindex_path(config, catalog, str(root))
    assert report.ok, report.rejected
    first = counts(catalog)
    assert first == {"sessions": 2, "images": 5, "photos": 4, "skipped": 1}
    catalog.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(f"{tmp_path}/catalog.db{suffix}"):
            os.unlink(f"{tmp_path}/catalog.db{suffix}")
    catalog = Catalog.open(config)
    assert reindex_all(config, catalog).ok
    assert counts(catalog) == first
    with catalog.session() as s:
        row = s.scalar(select(ImportSession).where(ImportSession.storage_uuid == sid1))
        assert (row.total_files, row.photos_created, row.copy_status, row.storage_id) == (3, 2, "completed", marker.storage_id)
        photo = s.scalar(select(Photo).where(Photo.session_id == row.id, Photo.key == "DCIM/100CANON/img_0001"))
        assert (photo.camera_model, photo.width, photo.gps_lat) == ("EOS R5", 6000, 59.9)
        assert s.scalar(select(StorageRoot.last_seen_path)) == str(root)
    # a second reindex changes nothing
    again = reindex_path(config, catalog, str(root))
    assert again.roots[0].sessions_added == 0 and counts(catalog) == first


def test_reindex_flags_a_file_whose_size_changed_without_hashing(tmp_path):
    root, marker, sid, sdir, config, catalog = indexed_archive(tmp_path)
    with open(os.path.join(sdir, "files/DCIM/100CANON/IMG_0002.JPG"), "ab") as f:
        f.write(b"grown")
    report = reindex_path(config, catalog, str(root))
    assert report.roots[0].size_mismatches == 1
    with catalog.session() as s:
        assert s.scalars(select(Image.storage_relative_path).where(Image.size_mismatch)).all() == ["DCIM/100CANON/IMG_0002.JPG"]


def test_verify_rehashes_and_names_damaged_files(tmp_path):
    root = tmp_path / "archive"
    marker = make_root(root)
    _, sdir = make_session(root, marker)
    victim = os.path.join(sdir, "files/DCIM/100CANON/IMG_0001.JPG")
    with open(victim, "r+b") as f:
        f.write(b"X")  # same size, other bytes: only a re-hash sees it
    config = config_for(tmp_path, root)
    catalog = Catalog.open(config)
    assert reindex_path(config, catalog, str(root)).ok
    report = reindex_path(config, catalog, str(root), verify=True)
    assert [p for p, _ in report.damaged] == [victim] and not report.ok
    with catalog.session() as s:
        assert s.scalar(select(StorageRoot.last_verified_at)) is not None


def test_progress_counts_sessions_read_then_files_and_bytes_verified(tmp_path):
    root = tmp_path / "archive"
    marker = make_root(root)
    for i in range(3):
        make_session(root, marker, {f"DCIM/IMG_{i}.JPG": b"x" * (i + 1), "DCIM/B.CR3": b"raw"}, description=f"s{i}")
    config = config_for(tmp_path, root)
    catalog = Catalog.open(config)
    seen = []
    report = reindex_path(config, catalog, str(root), verify=True,
                          progress=lambda p: seen.append((p.phase, p.files_done, p.files_total, p.bytes_done, p.bytes_total)))
    assert report.ok and report.roots[0].verified_files == 6
    reading = [x for x in seen if x[0] == "reading_sessions"]
    verifying = [x for x in seen if x[0] == "verifying"]
    assert reading[-1][1:3] == (3, 3)
    assert [x[1] for x in verifying] == [0, 1, 2, 3, 4, 5, 6] and verifying[-1][3] == verifying[-1][4] == 3 * 3 + 6
    assert seen[-1][0] == "writing_catalog"
    assert [x[0] for x in seen] == sorted((x[0] for x in seen), key=["reading_sessions", "verifying", "writing_catalog"].index)


def test_removed_session_directory_is_marked_missing_not_deleted(tmp_path):
    import shutil

    root, marker, sid, sdir, config, catalog = indexed_archive(tmp_path)
    moved = tmp_path / "elsewhere"
    shutil.move(sdir, moved)
    assert reindex_path(config, catalog, str(root)).roots[0].sessions_missing == 1
    with catalog.session() as s:
        assert s.scalar(select(ImportSession.missing).where(ImportSession.storage_uuid == sid)) is True
        assert s.scalar(select(func.count()).select_from(Image)) == 3
    shutil.move(moved, sdir)
    assert reindex_path(config, catalog, str(root)).roots[0].sessions_back == 1


def test_interrupted_session_on_the_drive_becomes_failed_and_resumable(tmp_path):
    root = tmp_path / "archive"
    marker = make_root(root)
    sid, _ = make_session(root, marker, status="in_progress", listed={"DCIM/100CANON/IMG_0001.CR3"})
    config = config_for(tmp_path, root)
    catalog = Catalog.open(config)
    report = reindex_path(config, catalog, str(root))
    assert report.ok and "resumable" in report.roots[0].notes[0][1]
    with catalog.session() as s:
        row = s.scalar(select(ImportSession).where(ImportSession.storage_uuid == sid))
        assert (row.copy_status, row.total_files) == ("failed", 1)


# --- a hostile or damaged drive -------------------------------------------------------------------


def build_hostile_drive(base, outside):
    """A drive with one good session and one of each kind of damage. Returns
    (root path, good session id, {what: path expected in the rejection})."""
    root = os.path.join(base, "photos")
    marker = make_root(root)
    good, _ = make_session(root, marker, description="good")
    bad: dict[str, str] = {}
    # absolute and .. paths in a manifest
    for what, path in (("absolute", "/etc/passwd"), ("dotdot", "../../outside/secret")):
        _, sdir = make_session(root, marker, description=what)
        data = json.load(open(os.path.join(sdir, "metadata.json")))
        data["file_manifest"][0]["storage_path"] = path
        open(os.path.join(sdir, "metadata.json"), "w").write(json.dumps(data))
        bad[what] = os.path.join(sdir, "metadata.json")
    # truncated and non-JSON manifests
    _, sdir = make_session(root, marker, description="truncated")
    raw = open(os.path.join(sdir, "metadata.json"), "rb").read()
    open(os.path.join(sdir, "metadata.json"), "wb").write(raw[: len(raw) // 2])
    bad["truncated"] = os.path.join(sdir, "metadata.json")
    _, sdir = make_session(root, marker, description="garbage")
    open(os.path.join(sdir, "metadata.json"), "wb").write(b"\x00\xffnot json at all")
    bad["garbage"] = os.path.join(sdir, "metadata.json")
    # a session directory that is a symlink out of the drive, to a valid-looking session
    os.makedirs(outside, exist_ok=True)
    _, foreign = make_session(outside, marker, description="foreign")
    link = os.path.join(root, os.path.basename(foreign).replace("foreign", "linked"))
    os.symlink(foreign, link)
    bad["symlink"] = link
    # files/ inside a session that is a symlink
    _, sdir = make_session(root, marker, description="fileslink", files={})
    os.symlink(outside, os.path.join(sdir, "files"))
    bad["fileslink"] = os.path.join(sdir, "files")
    return root, good, bad


def test_hostile_drive_is_rejected_by_name_and_the_rest_indexed(tmp_path):
    outside = str(tmp_path / "outside")
    root, good, bad = build_hostile_drive(str(tmp_path / "drive"), outside)
    # a second root on the drive whose marker is malformed
    broken = tmp_path / "drive" / "other"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"format": "imalink-storage", "storage_id": "not-a-uuid"}))
    bad["marker"] = str(broken / "config.json")
    config = config_for(tmp_path, root)
    catalog = Catalog.open(config)
    report = reindex_path(config, catalog, str(tmp_path / "drive"))
    rejected = dict(report.rejected)
    for what, path in bad.items():
        assert path in rejected, (what, report.rejected)
    assert "not-a-uuid" in rejected[bad["marker"]]
    assert "symbolic link" in rejected[bad["symlink"]]
    assert "absolute" in rejected[bad["absolute"]] and "'..'" in rejected[bad["dotdot"]]
    assert len(report.rejected) == len(bad)
    with catalog.session() as s:
        uuids = set(s.scalars(select(ImportSession.storage_uuid)))
        assert good in uuids
        # the symlinked session out of the drive was not read; files/ symlink: session not indexed
        assert len(uuids) == 1
        assert all(not p.startswith("/") and ".." not in p for p in s.scalars(select(Image.storage_relative_path)))


def test_two_markers_claiming_one_storage_id_are_both_rejected(tmp_path):
    a = tmp_path / "drive" / "a"
    marker = make_root(a)
    make_session(a, marker)
    b = tmp_path / "drive" / "b"
    b.mkdir(parents=True)
    (b / "config.json").write_text((a / "config.json").read_text())
    config = config_for(tmp_path)
    catalog = Catalog.open(config)
    report = reindex_path(config, catalog, str(tmp_path / "drive"))
    assert sorted(p for p, _ in report.rejected) == [str(a / "config.json"), str(b / "config.json")]
    assert all("claimed by more than one marker" in r for _, r in report.rejected)
    assert counts(catalog)["sessions"] == 0


def test_a_copy_of_a_known_archive_elsewhere_is_rejected_while_the_original_is_reachable(tmp_path):
    import shutil

    a = tmp_path / "a"
    marker = make_root(a)
    make_session(a, marker)
    config = config_for(tmp_path, a)
    catalog = Catalog.open(config)
    assert reindex_path(config, catalog, str(a)).ok
    shutil.copytree(a, tmp_path / "b")
    report = reindex_path(config, catalog, str(tmp_path / "b"))
    assert [p for p, _ in report.rejected] == [str(tmp_path / "b" / "config.json")]
    assert "already the archive" in report.rejected[0][1]


def test_path_without_a_storage_root_is_reported(tmp_path):
    (tmp_path / "empty").mkdir()
    config = config_for(tmp_path)
    report = reindex_path(config, Catalog.open(config), str(tmp_path / "empty"))
    assert not report.ok and "no storage root here" in report.rejected[0][1]
    assert json.loads(json.dumps(report.as_json()))["rejected"][0]["path"] == str(tmp_path / "empty")
    (tmp_path / "a-file").write_text("x")
    for path, problem in ((tmp_path / "nowhere", "does not exist"), (tmp_path / "a-file", "is not a directory")):
        report = reindex_path(config, Catalog.open(config), str(path))
        assert report.rejected == [(str(path), f"{problem}: give a mount point or a storage root")]


def test_replica_root_is_recorded_as_a_second_copy(tmp_path):
    import shutil

    a = tmp_path / "a"
    marker_a = make_root(a, "main")
    sid, sdir = make_session(a, marker_a)
    b = tmp_path / "b"
    make_root(b, "backup")
    shutil.copytree(sdir, b / os.path.basename(sdir))
    config = config_for(tmp_path, a)
    catalog = Catalog.open(config)
    assert reindex_path(config, catalog, str(a)).ok
    report = reindex_path(config, catalog, str(b))
    assert report.ok and report.roots[0].replicas == 1
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(ImportSession)) == 1
        assert s.scalar(select(func.count()).select_from(SessionCopy)) == 2


# --- reindexing an archive the catalog already holds ------------------------------------------------


def age_manifests(root, seconds=3600):
    """Make every manifest older than the racy window, as on a drive whose imports are over."""
    pin_manifest_times(root, seconds)


def count_manifest_reads(monkeypatch) -> list[str]:
    reads: list[str] = []
    real = mf.read_manifest

    def counting(session_dir):
        reads.append(os.path.basename(str(session_dir)))
        return real(session_dir)

    monkeypatch.setattr(mf, "read_manifest", counting)
    return reads


def indexed_settled_archive(tmp_path, sessions=2):
    root = tmp_path / "archive"
    marker = make_root(root)
    made = [make_session(root, marker, description=f"trip{i}") for i in range(sessions)]
    age_manifests(root)
    config = config_for(tmp_path, root)
    catalog = Catalog.open(config)
    first = reindex_path(config, catalog, str(root))
    assert first.ok and first.roots[0].manifests_read == sessions
    return root, marker, made, config, catalog


def test_unchanged_sessions_are_not_read_again(tmp_path, monkeypatch):
    root, marker, made, config, catalog = indexed_settled_archive(tmp_path)
    before = counts(catalog)
    reads = count_manifest_reads(monkeypatch)
    report = reindex_path(config, catalog, str(root))
    assert report.ok and reads == []
    r = report.roots[0]
    assert (r.sessions_on_drive, r.manifests_read, r.sessions_added, r.size_mismatches) == (2, 0, 0, 0)
    assert counts(catalog) == before


def test_a_changed_manifest_is_read_again(tmp_path, monkeypatch):
    root, marker, made, config, catalog = indexed_settled_archive(tmp_path)
    sid, sdir = made[0]
    m = mf.read_manifest(sdir)
    m.description = "renamed trip"
    mf.write_manifest(sdir, m)
    reads = count_manifest_reads(monkeypatch)
    report = reindex_path(config, catalog, str(root))
    assert report.ok and reads == [os.path.basename(sdir)]
    age_manifests(root)  # its new signature was too recent to record: read once more, then not
    reindex_path(config, catalog, str(root))
    reads.clear()
    reindex_path(config, catalog, str(root))
    assert reads == []


def test_a_manifest_replaced_by_a_hostile_one_is_read_and_rejected(tmp_path):
    root, marker, made, config, catalog = indexed_settled_archive(tmp_path)
    sid, sdir = made[0]
    path = os.path.join(sdir, mf.FILENAME)
    st = os.stat(path)
    data = json.load(open(path))
    data["file_manifest"][0]["storage_path"] = "../../etc/passwd"
    with open(path, "w") as f:
        f.write(json.dumps(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with its old mtime back
    report = reindex_path(config, catalog, str(root))
    assert [p for p, _ in report.rejected] == [path] and "'..'" in report.rejected[0][1]
    with catalog.session() as s:  # damaged, not gone
        assert s.scalar(select(ImportSession.missing).where(ImportSession.storage_uuid == sid)) is False
    assert not reindex_path(config, catalog, str(root)).ok  # rejected every time, not remembered


def test_a_file_grown_in_place_is_flagged_though_its_manifest_is_unchanged(tmp_path, monkeypatch):
    root, marker, made, config, catalog = indexed_settled_archive(tmp_path)
    sid, sdir = made[1]
    victim = os.path.join(sdir, "files/DCIM/100CANON/IMG_0001.CR3")
    with open(victim, "ab") as f:
        f.write(b"grown")
    reads = count_manifest_reads(monkeypatch)
    report = reindex_path(config, catalog, str(root))
    assert reads == [] and report.roots[0].size_mismatches == 1
    with catalog.session() as s:
        assert s.scalars(select(Image.storage_relative_path).where(Image.size_mismatch)).all() == ["DCIM/100CANON/IMG_0001.CR3"]
    os.truncate(victim, len(SHOT_FILES["DCIM/100CANON/IMG_0001.CR3"]))
    os.unlink(os.path.join(sdir, "files/DCIM/100CANON/IMG_0002.JPG"))
    reindex_path(config, catalog, str(root))
    assert reads == []
    with catalog.session() as s:
        assert s.scalars(select(Image.storage_relative_path).where(Image.size_mismatch)).all() == ["DCIM/100CANON/IMG_0002.JPG"]


def test_images_are_compared_only_when_a_sessions_files_changed(tmp_path):
    """The files' digest recorded by the last reindex stands for its comparison: while the
    files list the same, the catalog's images are not loaded to compare again (shown here
    by a size changed in the catalog alone, which is not noticed); once a file changes,
    the session's images are compared, every one."""
    root, marker, made, config, catalog = indexed_settled_archive(tmp_path)
    sid, sdir = made[0]
    with catalog.session() as s:
        digests = dict(s.execute(select(SessionCopy.storage_directory_name, SessionCopy.files_digest)).all())
        assert all(len(d) == 32 for d in digests.values()) and len(set(digests.values())) == 1  # same files, same digest
        image = s.scalars(select(Image).join(ImportSession).where(ImportSession.storage_uuid == sid,
                                                                  Image.storage_relative_path == "DCIM/100CANON/IMG_0001.JPG")).one()
        image.file_size += 1  # the catalog alone now disagrees with the drive
    report = reindex_path(config, catalog, str(root))
    assert report.roots[0].size_mismatches == 0
    with open(os.path.join(sdir, "files/DCIM/100CANON/IMG_0002.JPG"), "ab") as f:
        f.write(b"grown")
    report = reindex_path(config, catalog, str(root))
    assert report.roots[0].size_mismatches == 2
    with catalog.session() as s:
        assert sorted(s.scalars(select(Image.storage_relative_path).where(Image.size_mismatch))) == [
            "DCIM/100CANON/IMG_0001.JPG", "DCIM/100CANON/IMG_0002.JPG"]
        new = s.scalar(select(SessionCopy.files_digest).where(SessionCopy.storage_directory_name == os.path.basename(sdir)))
    assert new != digests[os.path.basename(sdir)]


def test_plan_compares_images_unless_manifest_and_files_are_as_recorded():
    m = manifest_value()
    name = "20261124_import_trip_aaaaaaaa"
    disk = {**on_disk_of(m), "DCIM/IMG_2.JPG": 8}  # grew on the drive
    images = {rel: (i, size, False) for i, (rel, size) in enumerate(on_disk_of(m).items())}
    sig = (100, 1, 1)

    def plan(ds_digest, copy_digest, manifest=None):
        ds = DriveSession(name, manifest, disk, sig, S1, ds_digest)
        cs = CatalogSession(1, S1, ROOT_A, name, False, True, (CatalogCopy(7, ROOT_A, name, False, sig, copy_digest),), images)
        return plan_reindex(drive(ds), CatalogState({S1: cs}))

    assert plan("d1", "d1").is_empty  # as recorded: not compared
    changed = plan("d2", "d1")
    assert changed.size_flags == [(2, True)] and changed.signatures_changed == [(7, (sig, "d2"))]
    assert plan("d1", None).size_flags == [(2, True)]  # nothing recorded yet
    assert plan("d1", "d1", manifest=m).size_flags == [(2, True)]  # the manifest was read: it changed
    unlisted = DriveSession(name, None, None, sig, S1, "d2")  # sizes not kept, yet not as recorded
    cs = CatalogSession(1, S1, ROOT_A, name, False, True, (CatalogCopy(7, ROOT_A, name, False, sig, "d1"),), images)
    with pytest.raises(ValueError, match="not as the catalog recorded"):
        plan_reindex(drive(unlisted), CatalogState({S1: cs}))
    replica = DriveSession(name, None, disk, sig, S1, "d1")
    cs = CatalogSession(1, S1, ROOT_B, name, False, True, (CatalogCopy(7, ROOT_A, name, False, sig, None),))
    assert plan_reindex(drive(replica), CatalogState({S1: cs})).is_empty  # a replica's files are not compared: no digest


def test_an_unchanged_session_whose_files_became_a_symlink_is_rejected(tmp_path):
    import shutil

    root, marker, made, config, catalog = indexed_settled_archive(tmp_path)
    sid, sdir = made[0]
    shutil.move(os.path.join(sdir, "files"), tmp_path / "outside")
    os.symlink(tmp_path / "outside", os.path.join(sdir, "files"))
    report = reindex_path(config, catalog, str(root))
    assert [p for p, _ in report.rejected] == [os.path.join(sdir, "files")]


def test_gone_and_back_sessions_are_seen_without_reading_manifests(tmp_path, monkeypatch):
    import shutil

    root, marker, made, config, catalog = indexed_settled_archive(tmp_path)
    sid, sdir = made[0]
    reads = count_manifest_reads(monkeypatch)
    shutil.move(sdir, tmp_path / "away")
    assert reindex_path(config, catalog, str(root)).roots[0].sessions_missing == 1
    shutil.move(tmp_path / "away", sdir)
    assert reindex_path(config, catalog, str(root)).roots[0].sessions_back == 1
    assert reads == []


def test_a_session_directory_replaced_by_a_symlink_is_rejected(tmp_path):
    import shutil

    root, marker, made, config, catalog = indexed_settled_archive(tmp_path)
    sid, sdir = made[0]
    shutil.move(sdir, tmp_path / "outside")
    os.symlink(tmp_path / "outside", sdir)
    report = reindex_path(config, catalog, str(root))
    assert [p for p, _ in report.rejected] == [sdir] and "symbolic link" in report.rejected[0][1]


def test_verify_reads_every_manifest(tmp_path, monkeypatch):
    root, marker, made, config, catalog = indexed_settled_archive(tmp_path)
    reads = count_manifest_reads(monkeypatch)
    report = reindex_path(config, catalog, str(root), verify=True)
    assert report.ok and len(reads) == 2 and report.roots[0].verified_files == 6


def test_a_manifest_written_a_moment_ago_is_not_trusted_to_stay_unchanged(tmp_path, monkeypatch):
    root = tmp_path / "archive"
    make_session(root, make_root(root))
    config = config_for(tmp_path, root)
    catalog = Catalog.open(config)
    reindex_path(config, catalog, str(root))
    with catalog.session() as s:
        assert s.execute(select(SessionCopy.manifest_size, SessionCopy.files_digest)).one() == (None, None)
    reads = count_manifest_reads(monkeypatch)
    reindex_path(config, catalog, str(root))
    assert len(reads) == 1


def test_a_catalog_from_before_manifest_signatures_upgrades_and_reindexes(tmp_path, monkeypatch):
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import inspect

    from imalinkd.catalog import MIGRATIONS

    root, marker, made, config, catalog = indexed_settled_archive(tmp_path)
    with open(os.path.join(made[0][1], "files/DCIM/100CANON/IMG_0002.JPG"), "ab") as f:
        f.write(b"grown")
    before = counts(catalog)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with catalog.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    with catalog.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0001"
        assert "manifest_size" not in {c["name"] for c in inspect(conn).get_columns("session_copies")}
    catalog.close()

    catalog = Catalog.open(config)  # upgrades
    assert counts(catalog) == before
    reads = count_manifest_reads(monkeypatch)
    report = reindex_path(config, catalog, str(root))
    assert report.ok and len(reads) == 2 and report.roots[0].size_mismatches == 1
    reads.clear()
    report = reindex_path(config, catalog, str(root))
    assert report.ok and reads == [] and counts(catalog) == before
    with catalog.session() as s:
        assert s.scalar(select(func.count()).select_from(Image).where(Image.size_mismatch)) == 1
        assert all(c.manifest_size and c.files_digest for c in s.scalars(select(SessionCopy)))


def test_plan_takes_a_manifest_that_moved_on_but_not_one_an_importer_is_writing():
    m = manifest_value()  # completed, on the drive
    name = "20261124_import_trip_aaaaaaaa"
    behind = CatalogSession(1, S1, ROOT_A, name, False, True, (CatalogCopy(7, ROOT_A, name, False),), {},
                            copy_status="failed", total_files=1)
    plan = plan_reindex(drive(DriveSession(name, m, on_disk_of(m))), CatalogState({S1: behind}))
    assert plan.sessions_replaced == [1] and [n.session["copy_status"] for n in plan.new_sessions] == ["completed"]
    busy = CatalogSession(1, S1, ROOT_A, name, False, True, (CatalogCopy(7, ROOT_A, name, False),), {},
                          copy_status="in_progress", total_files=1, active=True)
    plan = plan_reindex(drive(DriveSession(name, m, on_disk_of(m))), CatalogState({S1: busy}))
    assert plan.sessions_replaced == [] and plan.new_sessions == []


def test_a_session_resumed_with_another_catalog_is_complete_after_reindex(tmp_path):
    """Failed here, resumed on another machine (another catalog), back here: reindex takes
    the drive's word for it."""
    import threading

    from cards import make_card, tree_hashes
    from imalinkd.importer import import_source, resume_session

    card = make_card(tmp_path / "card", shots=4)
    make_root(tmp_path / "archive")
    here = config_for(tmp_path, tmp_path / "archive")
    cancel = threading.Event()
    cancel.set()
    failed = import_source(here, card.root, cancel=cancel)
    assert failed.copy_status == "failed"
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    elsewhere = config_for(other_dir, tmp_path / "archive")
    reindex_path(elsewhere, Catalog.open(elsewhere), str(tmp_path / "archive"))
    assert resume_session(elsewhere, failed.session_uuid, source=card.root).copy_status == "completed"
    catalog = Catalog.open(here)
    report = reindex_path(here, catalog, str(tmp_path / "archive"))
    assert report.ok
    with catalog.session() as s:
        row = s.scalars(select(ImportSession)).one()
        assert row.copy_status == "completed" and row.total_files == len(card.files)
        assert {i.storage_relative_path: i.sha256 for i in s.scalars(select(Image))} == card.files
    assert tree_hashes(tmp_path / "archive" / failed.storage_directory_name / "files") == card.files


def test_a_root_that_cannot_be_listed_leaves_the_catalog_as_it_is(tmp_path, monkeypatch):
    """An I/O error listing the root (a failing drive) says nothing of its sessions: none is
    marked missing."""
    import errno

    root, marker, sid, sdir, config, catalog = indexed_archive(tmp_path)
    real_scandir = os.scandir

    def failing(path="."):
        if os.fspath(path) == str(root):
            raise OSError(errno.EIO, "Input/output error")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", failing)
    report = reindex_path(config, catalog, str(root))
    assert report.rejected == [(str(root), "cannot list the storage root: Input/output error")]
    with catalog.session() as s:
        assert not s.scalar(select(ImportSession.missing).where(ImportSession.storage_uuid == sid))
    drive, rejected = read_drive(str(root), marker)
    assert drive.sessions == () and rejected == report.rejected
