"""Drop folders: the completeness rules on plain values, then real files and a slow writer."""

import os
import queue
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from imalinkd.daemon.dropfolder import DropFolderSource, FolderTracker, is_ignored_name
from imalinkd.daemon.events import DropBatchSettled

F = Path("/drop")


def stat_of(sizes):
    def stat(path):
        size = sizes.get(path)
        return None if size is None else SimpleNamespace(st_size=size, st_mtime_ns=size)
    return stat


def test_temporary_and_hidden_files_are_ignored():
    for name in (".hidden.jpg", "a.JPG.part", "b.tmp", "c.crdownload", ".sync/x.jpg", "d.jpg~"):
        assert is_ignored_name(F / name, F), name
    assert not is_ignored_name(F / "sub/IMG_1.JPG", F)
    assert is_ignored_name(Path("/elsewhere/x.jpg"), F)


def test_file_still_open_is_not_taken_however_quiet():
    t = FolderTracker(F, settle_seconds=2)
    t.touched(F / "a.jpg", 0, closed=False)
    assert t.take_batch(100, stat_of({F / "a.jpg": 5})) is None
    assert t.next_deadline() is None  # waits for the close event, no timed wake-ups


def test_closed_and_stable_file_is_taken_after_settle_time():
    t = FolderTracker(F, settle_seconds=2)
    t.touched(F / "a.jpg", 0, closed=False)
    t.touched(F / "a.jpg", 1, closed=True)
    assert t.take_batch(2.5, stat_of({F / "a.jpg": 5})) is None
    assert t.take_batch(3.0, stat_of({F / "a.jpg": 5})) == (F / "a.jpg",)
    assert t.files == {}


def test_file_changing_without_events_restarts_its_clock():
    t = FolderTracker(F, settle_seconds=2)
    t.touched(F / "a.jpg", 0, closed=False)
    assert t.take_batch(1.0, stat_of({F / "a.jpg": 5})) is None  # not quiet yet
    assert t.take_batch(3.0, stat_of({F / "a.jpg": 5})) is None  # still open
    t.touched(F / "a.jpg", 3.5, closed=True)
    assert t.take_batch(5.5, stat_of({F / "a.jpg": 6})) is None  # grew since last look
    assert t.take_batch(7.5, stat_of({F / "a.jpg": 6})) == (F / "a.jpg",)


def test_burst_is_one_batch_once_the_whole_folder_is_quiet():
    t = FolderTracker(F, settle_seconds=2)
    sizes = {}
    for i in range(5):
        p = F / f"{i}.jpg"
        sizes[p] = 10
        t.touched(p, i, closed=True)
    assert t.take_batch(5.0, stat_of(sizes)) is None  # last file at t=4
    assert t.take_batch(8.0, stat_of(sizes)) == tuple(sorted(sizes))


def test_file_deleted_before_settling_leaves_the_batch():
    t = FolderTracker(F, settle_seconds=1)
    t.touched(F / "a.jpg", 0, closed=True)
    t.touched(F / "b.jpg", 0, closed=True)
    t.removed(F / "b.jpg", 0.5)
    assert t.take_batch(5, stat_of({F / "a.jpg": 1})) == (F / "a.jpg",)


def _collect(q, timeout):
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            out.append(q.get(timeout=max(0.01, deadline - time.monotonic())))
        except queue.Empty:
            break
    return out


def test_slow_writer_becomes_one_batch_only_after_completion(tmp_path):
    """Two files written slowly (pauses of any length: both stay open meanwhile) and a
    third renamed in before the last one closes: one batch of all three, complete."""
    q = queue.Queue()
    source = DropFolderSource(q, [(tmp_path, 0.5)])
    source.start()
    try:
        done = threading.Event()

        def write_slowly():
            with open(tmp_path / "IMG_1.JPG", "wb") as one, open(tmp_path / "IMG_2.JPG", "wb") as two:
                for f in (one, two):
                    for _ in range(6):
                        f.write(os.urandom(64 * 1024))
                        f.flush()
                        time.sleep(0.2)  # slow: whatever the pauses come to, the files stay open
                one.close()
                (tmp_path / "IMG_3.JPG.part").write_bytes(b"x" * 100)
                os.rename(tmp_path / "IMG_3.JPG.part", tmp_path / "IMG_3.JPG")
            done.set()

        writer = threading.Thread(target=write_slowly)
        writer.start()
        first = q.get(timeout=60)
        writer.join()
        assert done.is_set()
        assert isinstance(first, DropBatchSettled)
        assert first.folder == tmp_path
        assert first.paths == (tmp_path / "IMG_1.JPG", tmp_path / "IMG_2.JPG", tmp_path / "IMG_3.JPG")
        assert all(p.stat().st_size == 6 * 64 * 1024 for p in first.paths[:2])
        assert _collect(q, 1.0) == []  # one batch only
    finally:
        source.stop()


def test_writer_holding_a_file_open_past_the_settle_time_is_waited_for(tmp_path):
    q = queue.Queue()
    source = DropFolderSource(q, [(tmp_path, 0.3)])
    source.start()
    try:
        with open(tmp_path / "big.mov", "wb") as f:
            f.write(b"a" * 1000)
            f.flush()
            time.sleep(1.0)  # pause longer than the settle time, file still open
            assert q.empty()
            f.write(b"b" * 1000)
        batch = q.get(timeout=5)
        assert batch.paths == (tmp_path / "big.mov",)
        assert (tmp_path / "big.mov").stat().st_size == 2000
    finally:
        source.stop()


def test_files_present_at_start_are_picked_up_and_reading_them_is_no_event(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(b"1")
    (tmp_path / ".hidden").write_bytes(b"1")
    q = queue.Queue()
    source = DropFolderSource(q, [(tmp_path, 0.2)])
    source.start()
    try:
        batch = q.get(timeout=5)
        assert batch.paths == (tmp_path / "sub" / "a.jpg",)
        (tmp_path / "sub" / "a.jpg").read_bytes()  # the importer reading the file
        assert _collect(q, 0.8) == []
    finally:
        source.stop()


def test_missing_folder_is_skipped(tmp_path):
    source = DropFolderSource(queue.Queue(), [(tmp_path / "nope", 1)])
    source.start()
    source.stop()


# --- what events missed: new subfolders listed, the periodic rescan ---------------------------------


def test_a_rescan_takes_files_no_event_announced_and_not_those_already_taken():
    t = FolderTracker(F, settle_seconds=2)
    t.touched(F / "a.jpg", 0, closed=True)
    assert t.take_batch(3, stat_of({F / "a.jpg": 5})) == (F / "a.jpg",)
    # a is kept in the folder (after_import = "keep"); b was written while events were lost
    t.rescan(10, {F / "a.jpg": (5, 5), F / "b.jpg": (7, 7)})
    assert t.take_batch(13, stat_of({F / "a.jpg": 5, F / "b.jpg": 7})) == (F / "b.jpg",)
    # a changed since its batch took it: taken again; b did not
    t.rescan(20, {F / "a.jpg": (6, 6), F / "b.jpg": (7, 7)})
    assert t.take_batch(23, stat_of({F / "a.jpg": 6, F / "b.jpg": 7})) == (F / "a.jpg",)
    t.rescan(30, {F / "b.jpg": (7, 7)})  # a deleted: forgotten
    assert F / "a.jpg" not in t.taken and t.files == {}


def test_a_file_whose_close_event_was_lost_is_taken_once_unchanged_over_a_rescan_interval():
    t = FolderTracker(F, settle_seconds=2)
    t.touched(F / "a.jpg", 0, closed=False)
    t.rescan(300, {F / "a.jpg": (5, 5)})
    assert t.take_batch(303, stat_of({F / "a.jpg": 5})) is None  # could still be being written
    t.rescan(600, {F / "a.jpg": (6, 6)})  # it was: grew
    assert t.take_batch(603, stat_of({F / "a.jpg": 6})) is None
    t.rescan(900, {F / "a.jpg": (6, 6)})  # unchanged over a whole interval
    assert t.take_batch(903, stat_of({F / "a.jpg": 6})) == (F / "a.jpg",)


def test_a_directory_moved_in_whole_is_taken(tmp_path):
    """Its files were written elsewhere: inside the drop folder they make no event at all."""
    drop, outside = tmp_path / "drop", tmp_path / "outside"
    drop.mkdir()
    (outside / "trip" / "day2").mkdir(parents=True)
    for rel in ("trip/IMG_1.JPG", "trip/IMG_2.JPG", "trip/day2/IMG_3.JPG"):
        (outside / rel).write_bytes(os.urandom(1000))
    q = queue.Queue()
    source = DropFolderSource(q, [(drop, 0.2)], rescan_seconds=0)
    source.start()
    try:
        os.rename(outside / "trip", drop / "trip")
        batch = q.get(timeout=60)
        assert batch.paths == (drop / "trip/IMG_1.JPG", drop / "trip/IMG_2.JPG", drop / "trip/day2/IMG_3.JPG")
    finally:
        source.stop()


def test_files_written_into_a_new_subfolder_at_once_are_always_taken(tmp_path):
    """mkdir, then files written straight away: some before the new folder's watch is in
    place. Every file, every time."""
    q = queue.Queue()
    source = DropFolderSource(q, [(tmp_path, 0.3)], rescan_seconds=0)
    source.start()
    try:
        for run in range(5):
            sub = tmp_path / f"import{run}" / "DCIM"
            sub.mkdir(parents=True)
            want = set()
            for i in range(20):
                (sub / f"IMG_{i}.JPG").write_bytes(b"x" * (i + 1))
                want.add(sub / f"IMG_{i}.JPG")
            got: set[Path] = set()
            while got != want:
                batch = q.get(timeout=60)
                assert set(batch.paths) <= want, batch.paths
                got |= set(batch.paths)
    finally:
        source.stop()


def test_the_periodic_rescan_takes_a_file_whose_events_were_lost(tmp_path):
    q = queue.Queue()
    source = DropFolderSource(q, [(tmp_path, 0.2)], rescan_seconds=1)
    source.start()
    try:
        source._observer.unschedule_all()  # from now on no event arrives, as after a queue overflow
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / "IMG_9.JPG").write_bytes(b"lost")
        batch = q.get(timeout=60)
        assert batch.paths == (tmp_path / "sub" / "IMG_9.JPG",)
        assert _collect(q, 2.5) == []  # taken once, not again by the next rescans
    finally:
        source.stop()
