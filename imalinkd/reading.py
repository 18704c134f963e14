"""Reading an archive drive for a reindex: what each session directory holds, as plain
values (:class:`DriveState`), and nothing outside the drive.

For every session directory: its manifest, validated (unless the catalog's record of it
shows it unchanged: :class:`KnownManifest`), and the size of every regular file below its
``files/`` (one ``lstat`` each, never following a symlink: :mod:`imalinkd.walk`).
Whatever is hostile or damaged is rejected by name and the rest is read. A large drive is
read a slice at a time; threads and a helper process are used where they are measured or
known to be faster. Also here, as the reindex's stages share them: the garbage-collector
pause (:func:`gc_paused`) and the progress value (:class:`ReindexProgress`)."""

from __future__ import annotations

import gc
import os
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping

from imalinkd import manifest as mf, storage
from imalinkd.errors import ManifestError, StorageError
from imalinkd.walk import DigestHelper, files_digest, read_files_dir

_gc_lock = threading.Lock()
_gc_holders = 0
_gc_was_enabled = False


@contextmanager
def gc_paused():
    """Hold off Python's cyclic garbage collector while a reindex runs (any thread).

    A large reindex allocates millions of small objects (entries, rows) that form no
    cycles, yet each allocation burst starts a collection that walks every live object
    again: a fifth to a third of the time of a 100,000-file reindex. Reference counting
    still frees everything; cycles made meanwhile are collected after. Nested and
    concurrent uses are counted, and the collector is enabled again only if it was. It is
    never held across a ``--verify`` (which can take hours in the daemon): only the stages
    that build those objects hold it off then."""
    global _gc_holders, _gc_was_enabled
    with _gc_lock:
        if _gc_holders == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_holders += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holders -= 1
            if _gc_holders == 0 and _gc_was_enabled:
                gc.enable()


@dataclass
class ReindexProgress:
    """Live progress of a reindex, handed to the ``progress`` callback (read-only there).

    Phases: ``reading_sessions`` (``files_done`` of ``files_total`` session directories of
    the root read), ``verifying`` with ``--verify`` (files and bytes re-hashed, the file at
    hand) and ``writing_catalog``. The attribute names are those of an import's progress,
    ``unit`` says what is counted."""

    phase: str
    root: str
    unit: str = "sessions"
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    current_file: str | None = None


Progress = Callable[[ReindexProgress], None] | None


# --- values read from a drive ----------------------------------------------------------------


# A manifest file as stat-ed: (st_size, st_mtime_ns, st_ctime_ns).
ManifestSignature = tuple[int, int, int]


@dataclass(frozen=True)
class KnownManifest:
    """What the catalog recorded of a copy's manifest when it last read it."""

    session_uuid: str
    signature: ManifestSignature
    files_digest: str | None = None  # of its files, where the catalog compared its images with them
    files: int = 0  # as many as the catalog knows of: what listing them will cost


@dataclass(frozen=True)
class DriveSession:
    """One readable session directory on a root.

    ``manifest`` is None when the manifest was not read again because its signature is the
    one the catalog recorded (:func:`read_drive`); ``known_uuid`` then names the session.
    ``on_disk`` is always read from the drive, but None when it was listed by a helper
    process, which found it as the catalog recorded (``files_digest``): its sizes are not
    needed then, since the images need no comparing (``reindex.files_unchanged``)."""

    dir_name: str
    manifest: mf.SessionManifest | None
    on_disk: Mapping[str, int] | None  # path below files/ → size, regular files only (no partials)
    signature: ManifestSignature | None = None  # to record; None: read the manifest next time
    known_uuid: str | None = None
    files_digest: str | None = None  # of on_disk, to record with the signature (None without one)

    @property
    def session_uuid(self) -> str:
        return self.manifest.import_session_id if self.manifest is not None else self.known_uuid


@dataclass(frozen=True)
class DriveState:
    """What one storage root holds. ``present_dirs`` has every session directory name seen
    there, including those whose manifest was rejected (they are not *missing*)."""

    storage_id: str
    label: str
    sessions: tuple[DriveSession, ...]
    present_dirs: frozenset[str]
    present_uuid8: frozenset[str] = frozenset()


# --- reading a drive --------------------------------------------------------------------------


# A manifest modified less than this long before it was stat-ed may be modified again
# without its mtime changing (FAT keeps mtimes to 2 s), so its signature is not recorded and
# the next reindex reads it again. Git's "racily clean" index entries, for the same reason.
RACY_NS = 2_000_000_000


def manifest_signature(path: str, now_ns: int | None = None) -> ManifestSignature | None:
    """The signature of the manifest at ``path`` (its ``lstat``), or None when it cannot be
    trusted to show the next change: not a regular file, or modified too recently.

    Size, mtime and ctime together: rewriting a manifest changes its mtime; ``cp -a``,
    ``rsync -a`` or ``touch -d`` can put an old mtime back, but not the ctime, which the
    kernel sets on every change (an atomic replace makes a new inode, with its own ctime)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode) or now_ns - st.st_mtime_ns <= RACY_NS:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


SessionRead = tuple[mf.SessionManifest | None, dict[str, int] | None, tuple[str, str] | None, ManifestSignature | None]


def read_session_dir(path: str, known: ManifestSignature | None = None) -> SessionRead:
    """One session directory: its validated manifest, the sizes of its files and the
    manifest's signature; or the item rejected ``(path, reason)`` (with the manifest, and
    its signature, when only ``files/`` is at fault). Reads nothing outside ``path``.

    When the manifest's signature is ``known`` (what the catalog recorded when it last read
    it), the manifest is neither read nor parsed and None is returned in its place; the
    rest is read as always: a ``files/`` that became a symlink is still rejected, and every
    file's size is still read, since a file can change size in place with neither the
    manifest nor any directory changing. The signature is taken before the manifest is
    read: a change made while reading shows as a new signature next time."""
    signature = manifest_signature(os.path.join(path, mf.FILENAME))
    if known is not None and signature == known:
        m = None
    else:
        try:
            m = mf.read_manifest(path)
        except ManifestError as e:
            return None, None, (str(e.fields.get("path") or os.path.join(path, mf.FILENAME)), str(e)), None
        except OSError as e:
            return None, None, (os.path.join(path, mf.FILENAME), f"cannot be read: {e.strerror or e}"), None
    files_dir = os.path.join(path, "files")
    on_disk, problem = read_files_dir(files_dir)
    if problem is not None:
        return m, None, (files_dir, problem), signature
    return m, on_disk, None, signature


# Session directories are read by a few threads when that is faster. On a drive just
# plugged in (nothing cached) it is: opening, reading and stat-ing files release the GIL
# and their waits overlap. On a cached drive reading is short system calls and parsing,
# and threads only fight over the GIL (a 100,000-file archive read warm takes over half as
# long again with four threads as with one). Which case holds is measured, not guessed:
# the directories are read in batches, one in SAMPLE_EVERY in this thread and the next in
# the threads, each timed per file; the batches up to the next sample go the faster way.
# The results are taken in directory order, so what is read and rejected does not depend
# on the threads.
READ_THREADS = 4
READ_BATCH = 25
SAMPLE_EVERY = 8


def _read_dirs(dirs: list[str], signatures: list[ManifestSignature | None], threads: int,
               done: Callable[[int], None] = lambda n: None) -> list[SessionRead]:
    """``read_session_dir`` over ``dirs``, in order: in this thread, or in ``threads``
    threads when that is measured to be faster (see READ_THREADS). ``done`` is told how
    many directories are read so far, after each batch."""
    results: list[SessionRead] = []
    if threads <= 1 or len(dirs) <= READ_BATCH:
        for i in range(0, len(dirs), READ_BATCH):
            results += map(read_session_dir, dirs[i:i + READ_BATCH], signatures[i:i + READ_BATCH])
            done(len(results))
        return results
    per_file = {False: 0.0, True: 0.0}  # seconds per file read, by threaded
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="reindex-read") as pool:
        for n, i in enumerate(range(0, len(dirs), READ_BATCH)):
            batch = (dirs[i:i + READ_BATCH], signatures[i:i + READ_BATCH])
            phase = n % SAMPLE_EVERY
            threaded = phase == 1 if phase < 2 else per_file[True] < per_file[False]
            t = time.monotonic()
            got = list(pool.map(read_session_dir, *batch) if threaded else map(read_session_dir, *batch))
            if phase < 2:
                files = sum(len(r[1] or ()) + (len(r[0].file_manifest) if r[0] is not None else 0) for r in got)
                per_file[threaded] = (time.monotonic() - t) / max(files, 1)
            results += got
            done(len(results))
    return results


# Where a slice's known sessions, those whose manifest and files the catalog recorded
# (KnownManifest.files_digest), hold at least this many files, about half of them are
# listed by a helper process (walk.DigestHelper) on the other core while this one reads the
# rest: a known session whose files still give the recorded digest needs nothing more.
HELPER_FILES = 20_000


def _read_shared(dirs: list[str], knowns: list[KnownManifest | None], threads: int,
                 done: Callable[[int], None], helper_files: int | None) -> list[SessionRead]:
    """``read_session_dir`` over ``dirs`` (whose catalog records are ``knowns``), in
    order, with a helper process listing part of them (see HELPER_FILES).

    A directory goes to the helper only if its manifest's signature, taken here first, is
    the recorded one; what comes back is compared with the recorded digest. When they are
    equal its SessionRead has no sizes (``on_disk`` None), and its files need no comparing;
    otherwise, or if the helper failed, the directory is read here as any other."""
    signatures = [k.signature if k is not None else None for k in knowns]
    offered = [i for i, k in enumerate(knowns) if k is not None and k.files_digest is not None]
    if helper_files is None or sum(knowns[i].files for i in offered) < helper_files:
        return _read_dirs(dirs, signatures, threads, done)
    now = time.time_ns()
    taken: dict[int, ManifestSignature] = {}
    mine = helper = 0  # files given to each side: the helper gets each session while it has fewer
    for i in offered:
        k = knowns[i]
        if helper < mine and manifest_signature(os.path.join(dirs[i], mf.FILENAME), now) == k.signature:
            taken[i] = k.signature
            helper += k.files
        else:
            mine += k.files
    if not taken:
        return _read_dirs(dirs, signatures, threads, done)
    listing = DigestHelper([os.path.join(dirs[i], "files") for i in taken])
    here = [i for i in range(len(dirs)) if i not in taken]
    results: list[SessionRead | None] = [None] * len(dirs)

    # progress in proportion: the helper lists its share meanwhile, and says nothing until done
    def done_here(n: int) -> None:
        done(n * len(dirs) // max(len(here), 1))

    try:
        for i, r in zip(here, _read_dirs([dirs[i] for i in here], [signatures[i] for i in here], threads, done_here)):
            results[i] = r
    finally:  # the helper is waited for even if reading here failed: no process left behind
        digests = listing.results() or [None] * len(taken)
    for (i, signature), digest in zip(taken.items(), digests):
        if digest is not None and digest == knowns[i].files_digest:
            results[i] = (None, None, None, signature)
        else:  # changed since (or the helper failed): read here, as any other
            results[i] = read_session_dir(dirs[i], signature)
    done(len(dirs))
    return results


# A large drive is read, planned and written a slice of session directories at a time, so
# that a rebuild of a million files does not hold every manifest and every new row in
# memory at once (about 2 kB per file); a slice is cut where the manifests still to be read
# reach this many bytes. A 100,000-file archive (40 MB of manifests) is one slice.
SLICE_BYTES = 64 * 1024 * 1024


@gc_paused()
def read_drive(root: str, marker: storage.Marker, threads: int = READ_THREADS,
               known: Mapping[str, KnownManifest] | None = None,
               progress: Progress = None, helper_files: int | None = HELPER_FILES) -> tuple[DriveState, list[tuple[str, str]]]:
    """Read every session directory of the root at ``root``. Returns the drive's state and
    the rejected items ``(path, reason)``. Nothing outside ``root`` is read. ``progress``
    is told how many session directories are read, as they are.

    ``known`` maps directory names to what the catalog recorded of their manifests: a
    manifest whose signature is still that one is not read again (its session is the
    recorded one); with ``known`` None or empty, every manifest is read. Where the catalog
    recorded the files too, a helper process may list some of them (``helper_files``, see
    HELPER_FILES): those found as recorded come with no sizes (``on_disk`` None)."""
    try:
        return next(read_drive_slices(root, marker, threads, known, progress, slice_bytes=None, helper_files=helper_files))
    except StorageError as e:
        return DriveState(marker.storage_id, marker.label, (), frozenset()), [(root, e.fields["message"])]


def read_drive_slices(root: str, marker: storage.Marker, threads: int = READ_THREADS,
                      known: Mapping[str, KnownManifest] | None = None, progress: Progress = None,
                      slice_bytes: int | None = SLICE_BYTES,
                      helper_files: int | None = HELPER_FILES) -> Iterator[tuple[DriveState, list[tuple[str, str]]]]:
    """:func:`read_drive` a slice at a time (see SLICE_BYTES; None: one slice): yields
    each slice's state and rejected items, in directory-name order. Each state's
    ``present_dirs`` are the whole root's, so that no slice takes the sessions of another
    for missing; a session read in an earlier slice is rejected in a later one, as it
    would be in one read. ``helper_files``: see HELPER_FILES (None: no helper)."""
    known = known or {}
    seen_uuids: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as e:  # nothing can be said of its sessions, not even that they are gone
        raise StorageError(path=root, message=f"cannot list the storage root: {e.strerror or e}") from None
    # in name order: a rejection of the entry itself, or a session directory to read
    items: list[tuple[str, str] | os.DirEntry] = []
    present: set[str] = set()
    uuid8: set[str] = set()
    for entry in entries:
        if not storage.is_session_dir_name(entry.name):
            continue
        path = entry.path
        if entry.is_symlink():
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            items.append((path, f"session directory is a symbolic link (to {target!r}); not followed"))
            continue
        if not entry.is_dir(follow_symlinks=False):
            items.append((path, "has a session directory's name but is not a directory"))
            continue
        present.add(entry.name)
        uuid8.add(entry.name[-8:])
        items.append(entry)
    present_dirs, present_uuid8 = frozenset(present), frozenset(uuid8)
    report = ReindexProgress("reading_sessions", root, files_total=len(present))
    for part in _slices(items, known, slice_bytes):
        with gc_paused():
            dirs = [it.path for it in part if isinstance(it, os.DirEntry)]
            knowns = [known.get(it.name) for it in part if isinstance(it, os.DirEntry)]
            before = report.files_done

            def done(n: int) -> None:
                if progress is not None:
                    report.files_done = before + n
                    progress(report)

            results = iter(_read_shared(dirs, knowns, threads, done, helper_files))
            report.files_done = before + len(dirs)
            sessions: list[DriveSession] = []
            rejected: list[tuple[str, str]] = []
            for item in part:
                if not isinstance(item, os.DirEntry):
                    rejected.append(item)
                    continue
                m, on_disk, problem, signature = next(results)
                path = item.path
                if m is not None:
                    uuid_ = m.import_session_id
                else:  # not read again when its signature is the known one, else rejected
                    uuid_ = known[item.name].session_uuid if signature is not None else None
                if uuid_ is not None and uuid_ in seen_uuids:
                    rejected.append((path, f"holds session {uuid_}, already read from {seen_uuids[uuid_]} on this root"))
                    continue
                if uuid_ is not None:
                    seen_uuids[uuid_] = path
                if problem is not None:
                    rejected.append(problem)
                    continue
                if signature is None:  # nothing recorded: read again next time
                    digest = None
                elif on_disk is None:  # listed by the helper, and as the catalog recorded
                    digest = known[item.name].files_digest
                else:
                    digest = files_digest(on_disk)
                sessions.append(DriveSession(item.name, m, on_disk, signature, None if m is not None else uuid_, digest))
        yield DriveState(marker.storage_id, marker.label, tuple(sessions), present_dirs, present_uuid8), rejected
        del sessions, rejected, results  # the slice is the caller's now: nothing of it kept while reading the next


def _slices(items: list, known: Mapping[str, KnownManifest], slice_bytes: int | None) -> Iterator[list]:
    """``items`` in consecutive runs whose manifests to read (those not ``known``) add up
    to about ``slice_bytes``; at least one run, even of nothing."""
    if slice_bytes is None:
        yield items
        return
    part: list = []
    size = 0
    for item in items:
        part.append(item)
        if isinstance(item, os.DirEntry) and item.name not in known:
            try:
                size += os.lstat(os.path.join(item.path, mf.FILENAME)).st_size
            except OSError:
                pass
        if size >= slice_bytes:
            yield part
            part, size = [], 0
    if part or not items:
        yield part
