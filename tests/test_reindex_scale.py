"""The fast paths of a large reindex give the same answers as the general ones: manifest
validation (every hostile path still rejected, with the same message), reading session
directories in threads (same sessions, same rejections, same order), and bulk inserts
through the DBAPI (the same rows as Core inserts, the same indexes afterwards)."""

from __future__ import annotations

import base64
import os
import threading
import time

import pytest
from sqlalchemy import func, select, text

from imalinkd import durable, manifest as mf, paths, reading, reindex, storage
from imalinkd.catalog import Catalog, Image, ImportSession, Photo, SessionCopy, SkippedFile, bulk
from imalinkd.errors import ManifestError
from imalinkd.reading import gc_paused, read_drive, read_drive_slices
from imalinkd.reindex import apply_plan, load_catalog_state, load_known_manifests, plan_reindex, reindex_path
from test_reindex import config_for, make_root, make_session, pin_manifest_times

SHA = "ab" * 32


def entry(**over):
    e = {"original_path": "DCIM/A.JPG", "storage_path": "files/DCIM/A.JPG", "file_size": 3, "sha256": SHA,
         "copied_at": "2026-11-24T12:00:00Z"}
    e.update(over)
    return e


def manifest_dict(*entries):
    return {"import_session_id": "aaaaaaaa-0000-4000-8000-000000000001", "storage_id": "x",
            "copy_status": "completed", "file_manifest": list(entries)}


def reference_path_error(e):
    """What the general rules say about an entry's paths (None: they accept them)."""
    try:
        paths.check_relative(paths.get_path(e, "original_path"))
        paths.check_relative(paths.get_path(e, "storage_path"))
    except (paths.UnsafePathError, KeyError, ValueError) as err:
        return f"file_manifest[0]: unsafe or missing path ({err})"
    return None


HOSTILE_PATHS = ["", "/etc/passwd", "//x", "a//b", "a/", ".", "..", "./a", "../a", "a/.", "a/..", "a/./b",
                 "a/../b", "a/../../..", "a\x00b", "\x00", "/", "files/../../x", "files//x", "files/./x"]


@pytest.mark.parametrize("bad", HOSTILE_PATHS)
@pytest.mark.parametrize("field", ["original_path", "storage_path"])
def test_every_unsafe_entry_path_is_rejected_with_the_general_message(bad, field):
    e = entry(**{field: bad})
    with pytest.raises(ManifestError) as exc:
        mf.parse_manifest(manifest_dict(e), "drive/s/metadata.json")
    message = str(exc.value)
    assert "drive/s/metadata.json" in message
    expected = reference_path_error(e)
    if expected is not None:
        assert expected in message
    else:  # safe as a path, but not below files/
        assert "not below files/" in message


@pytest.mark.parametrize("good", ["files/a", "files/...", "files/.a/..b/c.", "files/DCIM/100CANON/IMG_0001.CR3",
                                  "files/name with spaces/é.jpg", "files/a.b/c..d"])
def test_safe_paths_are_accepted_as_they_are(good):
    m = mf.parse_manifest(manifest_dict(entry(original_path=good[len("files/"):], storage_path=good)))
    assert m.file_manifest[0].storage_path == good


def test_paths_in_base64_go_through_the_general_rules():
    raw = b"files/\xff.JPG"
    ok = entry(storage_path="files/x.JPG", storage_path_b64=base64.b64encode(raw).decode())
    assert mf.parse_manifest(manifest_dict(ok)).file_manifest[0].storage_path == os.fsdecode(raw)
    hostile = entry(storage_path="files/fine", storage_path_b64=base64.b64encode(b"files/../../etc").decode())
    with pytest.raises(ManifestError, match=r"'\.\.' component"):
        mf.parse_manifest(manifest_dict(hostile))
    with pytest.raises(ManifestError, match="unsafe or missing path"):
        mf.parse_manifest(manifest_dict(entry(storage_path_b64="not base64!")))


@pytest.mark.parametrize("change, problem", [
    ({"original_path": 5}, "unsafe or missing path"),
    ({"storage_path": None}, "unsafe or missing path"),
    ({"file_size": -1}, "not a byte count"),
    ({"file_size": True}, "not a byte count"),
    ({"file_size": 3.0}, "not a byte count"),
    ({"sha256": SHA.upper()}, "not a hex sha256"),
    ({"sha256": SHA[:-1]}, "not a hex sha256"),
    ({"sha256": SHA + "0"}, "not a hex sha256"),
    ({"sha256": SHA[:-1] + "\n"}, "not a hex sha256"),
    ({"sha256": SHA[:-1] + "g"}, "not a hex sha256"),
])
def test_sizes_and_hashes_are_checked_on_every_entry(change, problem):
    entries = [entry(storage_path=f"files/{i}.JPG") for i in range(50)]
    entries.append(entry(**{"storage_path": "files/last.JPG", **change}))
    with pytest.raises(ManifestError, match=r"file_manifest\[50\]: .*" + problem):
        mf.parse_manifest(manifest_dict(*entries))


def test_an_entry_listed_twice_is_rejected():
    with pytest.raises(ManifestError, match="listed twice"):
        mf.parse_manifest(manifest_dict(entry(), entry()))


# --- reading the drive ------------------------------------------------------------------------------


def build_mixed_drive(root):
    marker = make_root(root)
    for i in range(6):
        make_session(root, marker, {f"DCIM/IMG_{i}.JPG": b"x" * (i + 1), "DCIM/sub/A.CR3": b"raw"}, description=f"s{i}")
    _, broken = make_session(root, marker, description="broken")
    with open(os.path.join(broken, mf.FILENAME), "w") as f:
        f.write("{ truncated")
    sid, first = make_session(root, marker, description="twice")
    copy = os.path.join(str(root), os.path.basename(first).replace("twice", "twicf"))
    os.makedirs(copy)
    os.link(os.path.join(first, mf.FILENAME), os.path.join(copy, mf.FILENAME))
    _, linked = make_session(root, marker, description="linkedfiles")
    os.rename(os.path.join(linked, "files"), os.path.join(linked, "elsewhere"))
    os.symlink("elsewhere", os.path.join(linked, "files"))
    pin_manifest_times(root)  # every manifest "just written", however slow the machine
    return marker


class TestClock:
    """Stands in for the ``time`` module in :mod:`imalinkd.reading`: ``monotonic`` moves
    only when the test says; ``time_ns`` is the real one."""

    __test__ = False

    def __init__(self) -> None:
        self.now = 0.0
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds

    @staticmethod
    def time_ns() -> int:
        return time.time_ns()


@pytest.mark.parametrize("threaded_faster", [False, True])
def test_reading_in_threads_gives_the_same_sessions_and_rejections_in_order(tmp_path, monkeypatch, threaded_faster):

    root = tmp_path / "archive"
    marker = build_mixed_drive(root)
    serial = read_drive(str(root), marker, threads=1)
    # batches of two: of each three, the first is read in this thread and the second in
    # the threads, each timed; the third goes the way that was faster. Reading is made
    # slow in one of the two ways, on a clock of the test's own (a loaded machine's
    # scheduling never decides which way is faster).
    monkeypatch.setattr(reading, "READ_BATCH", 2)
    monkeypatch.setattr(reading, "SAMPLE_EVERY", 3)
    real_read = reading.read_session_dir
    where: dict[str, bool] = {}  # directory → read in a pool thread
    clock = TestClock()
    monkeypatch.setattr(reading, "time", clock)

    def read(path, known=None):
        pooled = threading.current_thread() is not threading.main_thread()
        where[os.path.basename(path)] = pooled
        if pooled != threaded_faster:
            clock.advance(1.0)
        return real_read(path, known)

    monkeypatch.setattr(reading, "read_session_dir", read)
    threaded = read_drive(str(root), marker, threads=4)
    assert threaded == serial
    names = sorted(where)
    assert len(names) >= 7
    for n, i in enumerate(range(0, len(names), 2)):
        expected = n % 3 == 1 or (n % 3 == 2 and threaded_faster)
        assert [where[name] for name in names[i:i + 2]] == [expected] * len(names[i:i + 2]), (n, where)
    drive, rejected = threaded
    assert len(drive.sessions) == 7 and len(rejected) == 3
    assert any("already read from" in r for _, r in rejected)
    assert any("files/ is a symbolic link" in r for _, r in rejected)


# --- writing the catalog ------------------------------------------------------------------------------

TABLES = (ImportSession, Photo, Image, SkippedFile, SessionCopy)


def dump(catalog):
    """Every row of the tables a reindex fills, as stored (ids included), and the schema."""
    with catalog.engine.connect() as c:
        rows = {m.__tablename__: c.execute(text(f"SELECT * FROM {m.__tablename__} ORDER BY id")).all() for m in TABLES}
        schema = c.execute(text("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")).all()
    return rows, schema


@pytest.mark.parametrize("bulk_rows", [5000, 1])
def test_dbapi_inserts_store_the_same_rows_as_core_inserts(tmp_path, monkeypatch, bulk_rows):

    monkeypatch.setattr(reindex, "_BULK_ROWS", bulk_rows)  # 1: the indexes are dropped and built again
    root = tmp_path / "archive"
    marker = make_root(root)
    make_session(root, marker, skipped=[("DCIM/link", "symlink"), ("DCIM/B.JPG", "duplicate")])
    make_session(root, marker, {"DCIM/A.JPG": b"a", "DCIM/A.XMP": b"x", "DCIM/B.MOV": b"bb"}, description="two", media=False)
    make_session(root, marker, {"x/" + os.fsdecode(b"\xff.JPG"): b"raw"}, description="legacy", copy_files=False)
    make_session(root, marker, status="in_progress", listed={"DCIM/100CANON/IMG_0001.CR3"}, description="cut")
    drive, rejected = read_drive(str(root), marker)
    assert not rejected and len(drive.sessions) == 4
    now = storage.utcnow()
    dumps = []
    for name, fast in (("core", False), ("dbapi", True)):
        catalog = Catalog.open(f"sqlite:///{tmp_path}/{name}.db")
        with catalog.session() as s:
            apply_plan(s, plan_reindex(drive, load_catalog_state(s, drive)), now, dbapi_inserts=fast)
        dumps.append(dump(catalog))
        catalog.close()
    (core_rows, core_schema), (fast_rows, fast_schema) = dumps
    assert fast_rows == core_rows and fast_schema == core_schema
    assert len(fast_rows["images"]) == 3 + 3 + 1 + 1


def test_bulk_inserts_after_existing_rows_keep_ids_and_indexes(tmp_path, monkeypatch):

    monkeypatch.setattr(reindex, "_BULK_ROWS", 1)
    a, b = tmp_path / "a", tmp_path / "b"
    make_session(a, make_root(a), description="first")
    make_session(b, make_root(b), description="second")
    config = config_for(tmp_path)
    catalog = Catalog.open(config)
    schema_before = dump(catalog)[1]
    assert reindex_path(config, catalog, str(a)).ok
    assert reindex_path(config, catalog, str(b)).ok  # the tables are no longer empty
    rows, schema = dump(catalog)
    assert schema == schema_before
    photo_ids = {r.id for r in rows["photos"]}
    assert len(photo_ids) == 4 and all(r.photo_id in photo_ids for r in rows["images"])
    with catalog.session() as s:
        for sid, key in s.execute(select(Photo.session_id, Photo.key)):
            members = s.scalars(select(Image.storage_relative_path).where(Image.photo_id == select(Photo.id).where(
                Photo.session_id == sid, Photo.key == key).scalar_subquery())).all()
            assert members and all(reindex.shot_key(m) == key for m in members)


def test_a_failed_bulk_insert_leaves_the_catalog_and_its_indexes_as_they_were(tmp_path, monkeypatch):

    monkeypatch.setattr(reindex, "_BULK_ROWS", 1)
    root = tmp_path / "archive"
    marker = make_root(root)
    make_session(root, marker)
    config = config_for(tmp_path, root)
    catalog = Catalog.open(config)
    before = dump(catalog)

    def broken(*args, **kwargs):
        raise RuntimeError("power cut")

    monkeypatch.setattr(reindex, "_upsert_root", broken)
    with pytest.raises(RuntimeError):
        reindex_path(config, catalog, str(root))
    assert dump(catalog) == before
    monkeypatch.undo()
    assert reindex_path(config, catalog, str(root)).ok


# --- manifests decoded, values converted -----------------------------------------------------------


def test_a_manifest_with_what_only_pythons_json_writes_is_still_read(tmp_path):
    root = tmp_path / "archive"
    marker = make_root(root)
    _, sdir = make_session(root, marker, {"DCIM/A.JPG": b"a"})
    path = os.path.join(sdir, mf.FILENAME)
    with open(path) as f:
        text = f.read()
    # NaN and an integer beyond 64 bits: json.dumps writes them, orjson refuses them
    text = text.replace('"width": 6000', '"width": NaN, "serial": 123456789012345678901234567890')
    with open(path, "w") as f:
        f.write(text)
    m = mf.read_manifest(sdir)
    [e] = m.file_manifest
    assert e.media["serial"] == 123456789012345678901234567890 and e.media["width"] != e.media["width"]
    from imalinkd.catalog import media_json

    assert '"serial":123456789012345678901234567890' in media_json(e.media)
    assert media_json({"width": float("nan")}) == '{"width":null}'  # NaN is not JSON: null in the catalog
    with open(path, "w") as f:
        f.write(text[: len(text) // 2])
    with pytest.raises(ManifestError, match="not valid JSON.*truncated or damaged"):
        mf.read_manifest(sdir)


def test_media_json_is_compact_with_sorted_keys():
    from imalinkd.catalog import media_json

    assert media_json({"b": 1, "a": {"d": 2.5, "c": "É"}}) == '{"a":{"c":"É","d":2.5},"b":1}'
    assert media_json(None) is None and media_json({}) is None


COPIED_AT = ["2026-11-24T12:00:00Z", "2026-11-24T12:00:00+02:00", "2026-11-24T23:59:59Z", "2026-11-24T12:00:00.250000Z",
             "2026-11-24T12:00:00", "2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z", "2026-11-24T24:00:00Z", "0000-01-01T00:00:00Z",
             "garbage", "", None, 17]


def test_timestamps_stored_by_dbapi_inserts_are_those_core_inserts_store(tmp_path):

    root = tmp_path / "archive"
    marker = make_root(root)
    files = {f"DCIM/IMG_{i}.JPG": b"x" * i for i in range(len(COPIED_AT))}
    _, sdir = make_session(root, marker, files)
    path = os.path.join(sdir, mf.FILENAME)
    data = mf.decode_json(open(path, "rb").read())
    for entry, value in zip(data["file_manifest"], COPIED_AT):
        entry["copied_at"] = value
    durable.atomic_write_json(path, data)
    drive, rejected = read_drive(str(root), marker)
    assert not rejected
    stored = []
    for name, fast in (("core", False), ("dbapi", True)):
        catalog = Catalog.open(f"sqlite:///{tmp_path}/{name}.db")
        with catalog.session() as s:
            apply_plan(s, plan_reindex(drive, load_catalog_state(s, drive)), storage.utcnow(), dbapi_inserts=fast)
        with catalog.engine.connect() as c:
            stored.append(c.execute(text("SELECT storage_relative_path, copied_at FROM images ORDER BY id")).all())
        with catalog.session() as s:  # and each reads back through the ORM
            assert len(s.scalars(select(Image.copied_at)).all()) == len(COPIED_AT)
        catalog.close()
    assert stored[0] == stored[1]
    by_value = dict(zip(COPIED_AT, (v for _, v in stored[1])))
    assert by_value["2026-11-24T12:00:00Z"] == "2026-11-24 12:00:00.000000"
    assert by_value["2026-11-24T12:00:00+02:00"] == "2026-11-24 10:00:00.000000"
    assert by_value["2026-13-01T00:00:00Z"] is None and by_value["2026-11-24T24:00:00Z"] is None
    assert bulk.CANONICAL_UTC("2026-11-24T12:00:00Z") is not None


def test_the_collector_is_held_off_while_any_reindex_runs_and_restored_after():
    import gc
    import threading

    assert gc.isenabled()
    inside, release = threading.Event(), threading.Event()

    def other():
        with gc_paused():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=other)
    with gc_paused():
        assert not gc.isenabled()
        t.start()
        inside.wait(10)
    assert not gc.isenabled()  # the other thread's reindex still runs
    release.set()
    t.join()
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # not enabled by a reindex when it was off before
    finally:
        gc.enable()


# --- a large root, a slice at a time -------------------------------------------------------------


def test_a_root_read_and_written_in_slices_gives_the_same_catalog_and_report(tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "archive"
    marker = build_mixed_drive(root)
    whole_drive, whole_rejected = read_drive(str(root), marker)
    slices = list(read_drive_slices(str(root), marker, slice_bytes=1))  # a session directory a slice
    assert len(slices) == 9 + 1  # one per directory, and the last one's
    assert [ds for drive, _ in slices for ds in drive.sessions] == list(whole_drive.sessions)
    assert [r for _, rejected in slices for r in rejected] == whole_rejected  # a session twice: across slices too
    assert all(drive.present_dirs == whole_drive.present_dirs for drive, _ in slices)

    results = []
    written: list[int] = []  # the transactions of both reindexes of each catalog
    real_slice = reindex._index_slice

    def counted(*args, **kwargs):
        written[-1] += 1
        return real_slice(*args, **kwargs)

    monkeypatch.setattr(reindex, "_index_slice", counted)
    for name, slice_bytes in (("whole", None), ("sliced", 1)):
        monkeypatch.setattr(reading, "SLICE_BYTES", slice_bytes)
        config = config_for(tmp_path / name, root)
        catalog = Catalog.open(config)
        written.append(0)
        first = reindex_path(config, catalog, str(root))
        # a session directory gone: marked missing once, and no other
        gone = sorted(p for p in root.iterdir() if p.is_dir() and "_s0_" in p.name)[0]
        shutil.move(str(gone), str(tmp_path / f"{name}-away"))
        second = reindex_path(config, catalog, str(root))
        shutil.move(str(tmp_path / f"{name}-away"), str(gone))
        with catalog.session() as s:
            missing = s.scalars(select(ImportSession.storage_directory_name).where(ImportSession.missing)).all()
        results.append((dump(catalog)[0], first.as_json(), second.as_json(), missing))
        catalog.close()
    (whole_rows, whole_first, whole_second, whole_missing), (rows, first, second, missing) = results
    assert whole_missing == missing == [gone.name]
    for report in (whole_first, first, whole_second, second):
        report.pop("seconds")
        report["roots"][0].pop("health")
    for table in rows:  # the same rows, ids included; only when each copy was last seen differs
        def seen_aside(row, table=table):
            return row[:4] + row[5:] if table == "session_copies" else row
        assert [seen_aside(r) for r in rows[table]] == [seen_aside(r) for r in whole_rows[table]], table
    assert (first, second) == (whole_first, whole_second)
    assert first["roots"][0]["sessions_added"] == 7 and second["roots"][0]["sessions_missing"] == 1
    assert written == [1 + 1, 10 + 9]  # whole: one each; sliced: one a directory (one fewer when gone)


# --- a session taken again from the drive keeps its ids -----------------------------------------


@pytest.mark.parametrize("fast", [True, False])
def test_a_session_whose_manifest_moved_on_keeps_its_id_and_its_images_ids(tmp_path, fast):
    """Failed here with two files, completed elsewhere with four, and a new session beside it
    whose directory comes first: the session and its two images keep their ids (which API
    clients hold), even though SQLite would hand the freed largest id to the first new row."""
    import shutil
    import uuid

    root = tmp_path / "archive"
    marker = make_root(root)
    files = {f"DCIM/IMG_{i}.JPG": bytes([i]) * (i + 1) for i in range(4)}
    sid = str(uuid.uuid4())
    _, sdir = make_session(root, marker, files, sid=sid, status="failed", listed=set(list(files)[:2]), description="trip")
    catalog = Catalog.open(f"sqlite:///{tmp_path}/catalog.db")

    def index(fast_inserts: bool):
        drive, rejected = read_drive(str(root), marker)
        assert not rejected
        with catalog.session() as s:
            apply_plan(s, plan_reindex(drive, load_catalog_state(s, drive)), storage.utcnow(), dbapi_inserts=fast_inserts)

    index(fast)
    with catalog.session() as s:
        session_id = s.scalar(select(ImportSession.id).where(ImportSession.storage_uuid == sid))
        before = dict(s.execute(select(Image.storage_relative_path, Image.id)).all())
    assert len(before) == 2 and max(before.values()) == 2
    # completed elsewhere: the drive's manifest now lists all four
    _, done = make_session(tmp_path / "elsewhere", marker, files, sid=sid, description="trip")
    shutil.copy(os.path.join(done, mf.FILENAME), os.path.join(sdir, mf.FILENAME))
    make_session(root, marker, {"DCIM/NEW.JPG": b"new"}, description="aaa-first")
    index(fast)
    with catalog.session() as s:
        row = s.scalar(select(ImportSession).where(ImportSession.storage_uuid == sid))
        after = dict(s.execute(select(Image.storage_relative_path, Image.id).where(Image.session_id == row.id)).all())
        assert (row.id, row.copy_status, row.total_files) == (session_id, "completed", 4)
        assert {rel: after[rel] for rel in before} == before and len(after) == 4
        assert s.scalar(select(func.count()).select_from(Image)) == 5


# --- a helper process listing part of a known drive ----------------------------------------------


def test_a_known_drive_is_listed_partly_by_a_helper_with_the_same_outcome(tmp_path, monkeypatch):
    from test_reindex import indexed_settled_archive

    root, marker, made, config, catalog = indexed_settled_archive(tmp_path, sessions=6)
    with catalog.session() as s:
        known = load_known_manifests(s, marker.storage_id)
    assert len(known) == 6 and all(k.files_digest and k.files == 3 for k in known.values())
    alone, _ = read_drive(str(root), marker, known=known, helper_files=None)
    progress: list[int] = []
    shared, rejected = read_drive(str(root), marker, known=known, helper_files=0,
                                  progress=lambda p: progress.append(p.files_done))
    assert progress == sorted(progress) and progress[-1] == 6  # in proportion while the helper lists
    listed_there = {ds.dir_name for ds in shared.sessions if ds.on_disk is None}
    assert len(listed_there) == 3 and not rejected
    assert [(ds.dir_name, ds.signature, ds.files_digest) for ds in shared.sessions] == [
        (ds.dir_name, ds.signature, ds.files_digest) for ds in alone.sessions]

    # a file grown in place in a session the helper lists: read here after all, and flagged
    grown = sorted(listed_there)[0]
    victim = os.path.join(str(root), grown, "files/DCIM/100CANON/IMG_0002.JPG")
    with open(victim, "ab") as f:
        f.write(b"grown")
    monkeypatch.setattr(reading, "HELPER_FILES", 0)
    report = reindex_path(config, catalog, str(root))
    assert report.ok and report.roots[0].size_mismatches == 1 and report.roots[0].manifests_read == 0
    with catalog.session() as s:
        flagged = s.execute(select(ImportSession.storage_directory_name, Image.storage_relative_path)
                            .join(Image.session).where(Image.size_mismatch)).all()
    assert flagged == [(grown, "DCIM/100CANON/IMG_0002.JPG")]


def test_files_listed_by_the_helper_are_read_again_if_the_catalog_changed_meanwhile(tmp_path):
    from test_reindex import indexed_settled_archive

    root, marker, made, config, catalog = indexed_settled_archive(tmp_path, sessions=2)
    with catalog.session() as s:
        known = load_known_manifests(s, marker.storage_id)
    drive, _ = read_drive(str(root), marker, known=known, helper_files=0)
    (ds,) = [ds for ds in drive.sessions if ds.on_disk is None]
    with catalog.session() as s:  # another reindex recorded something else meanwhile
        copy = s.scalars(select(SessionCopy).where(SessionCopy.storage_directory_name == ds.dir_name)).one()
        copy.files_digest = "0" * 32
        image = s.scalars(select(Image).where(Image.session_id == copy.session_id)).first()
        image.file_size += 1
    _drive, plan = reindex._index_slice(catalog, storage.FoundRoot(str(root), marker), drive, {}, False)
    assert plan.size_flags == [(image.id, True)]
    with catalog.session() as s:
        assert s.scalar(select(SessionCopy.files_digest).where(SessionCopy.id == copy.id)) == ds.files_digest
