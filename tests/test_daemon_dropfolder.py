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
