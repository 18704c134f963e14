"""Durability: the only module that writes archive files.

Guarantees, in the words the rest of the code relies on:

* ``atomic_write_bytes``/``atomic_write_json``: after they return, the file has either its old
  or its new content after a power cut, never a mix, and its name survives.
* ``copy_to_sinks``: reads the source exactly once, feeding every sink (one per destination)
  and a sha256 of the bytes read. Each ``Sink`` writes to a temporary file and only
  ``commit`` gives the data its final name, after fsync and verification. An import keeps
  its temporary files in a directory of their own (``TEMP_DIR`` in the session directory,
  beside ``files/``), under names it makes up: no source file name can meet them.
* ``hash_dropping_cache``: re-reads a file after dropping its cached pages. On a file system
  the kernel reads from a block device, that re-read reaches the device; on FUSE it may
  not: :mod:`imalinkd.readback` decides, drops the device's cache where it can, and says
  which it was.

An fsync that fails is never retried: after a failed fsync the kernel may have dropped the
dirty pages, so a retry could "succeed" on lost data. The file then counts as not copied.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import orjson

from imalinkd.drivefile import open_regular

CHUNK = 1024 * 1024  # fits the CPU caches: hashing and writing a chunk reuse hot memory
TEMP_PREFIX = ".imalinkd-partial-"
TEMP_DIR = ".imalinkd-tmp"  # a session's temporary copies: beside files/, on its file system
_RENAME_LOCK = threading.Lock()  # commits on file systems without hard links


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename/creation/removal in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str | os.PathLike[str]) -> None:
    """``os.makedirs(path, exist_ok=True)``, durably: after it returns, every directory it
    created survives a power cut, since each new directory's parent is fsynced once the
    directory is in it (a new file's own fsync does not make its parent's entry durable on
    every file system). Several threads may make the same directories at once."""
    path = os.fspath(path).rstrip("/") or "/"
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        make_dirs(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        if os.path.isdir(path):
            return
        raise
    fsync_dir(parent or ".")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename, fsync dir)."""
    path = os.fspath(path)
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(d)


def remove_durably(path: str | os.PathLike[str]) -> None:
    """Remove ``path`` (nothing when it is absent); after this returns the removal survives
    power loss."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(os.path.dirname(os.fspath(path)) or ".")


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented JSON in ASCII (anything else escaped, so that non-UTF-8 names
    kept as surrogates stay representable), with a final newline.

    A manifest is rewritten at every checkpoint of a copy, and the standard library's
    indenting encoder is pure Python (a 2,000-file manifest: 23 ms, holding the GIL the
    copy's readers need). orjson writes the same text thirty times faster, so it is used
    whenever its output is ASCII; what it refuses (a surrogate, an integer beyond 64 bits,
    a key that is not a string) or writes otherwise (non-ASCII text) goes to ``json``. A
    float that JSON cannot hold (NaN) is written as null."""
    try:
        out = orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
        if out.isascii():
            return out
    except TypeError:  # orjson.JSONEncodeError included
        pass
    return (json.dumps(obj, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_bytes(path, json_bytes(obj))


def create_json_exclusive(path: str | os.PathLike[str], obj: Any) -> bool:
    """Create ``path`` with this JSON durably, unless it exists. Returns False (and leaves
    the existing file alone) when another writer got there first: two processes
    initialising one archive end up agreeing on one identity."""
    path = os.fspath(path)
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.{threading.get_ident()}.tmp")
    atomic_write_bytes(tmp, json_bytes(obj))
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        if os.path.lexists(path):  # no hard links (FAT): a narrow race remains
            return False
        os.rename(tmp, path)
        fsync_dir(d)
        return True
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    fsync_dir(d)
    return True


def drop_cache(fd: int) -> None:
    """Ask the kernel to forget the clean cached pages of ``fd`` (after fsync they are clean)."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def hash_fd(fd: int, chunk: int = CHUNK) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    while True:
        k = os.readv(fd, [buf])
        if not k:
            break
        h.update(view[:k])
        n += k
    return h.hexdigest(), n


def hash_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """sha256 and size of a file as read now (page cache allowed). Only a regular file is
    read (a FIFO is refused, never waited on: :func:`imalinkd.drivefile.open_regular`)."""
    fd = open_regular(path)[0]
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


def hash_dropping_cache(path: str | os.PathLike[str]) -> tuple[str, int]:
    """sha256 and size of a file re-read after its cached pages were dropped (whether the
    re-read reached the device depends on the file system: see :mod:`imalinkd.readback`).
    Only a regular file is read, as by :func:`hash_file`."""
    fd = open_regular(path)[0]
    try:
        drop_cache(fd)
        result = hash_fd(fd)
        drop_cache(fd)
        return result
    finally:
        os.close(fd)


class Sink:
    """One destination of a copy: a temporary file, in ``temp_dir`` (which must be on the
    target's file system) or else beside ``target``.

    Life cycle: ``open`` → ``write``* → ``finish`` (fsync) → ``commit`` (rename, fsync dir),
    or ``discard`` at any point. ``commit`` refuses to replace an existing file: a name
    collision never overwrites anything. The temporary file is created exclusively, under a
    fresh random name, so it never opens (or truncates) a file that is already there.
    """

    def __init__(self, target: str, temp_dir: str | None = None) -> None:
        self.target = target
        # A short fixed-length name: a long source name plus a suffix could pass NAME_MAX.
        self.temp = os.path.join(temp_dir or self.directory, f"{TEMP_PREFIX}{uuid.uuid4().hex[:16]}")
        self.fd = -1
        self.size = 0
        self.readback: str | None = None  # how verify's re-read was made (imalinkd.readback)

    @property
    def directory(self) -> str:
        """The target's directory (``commit`` may be retried under another target)."""
        return os.path.dirname(self.target)

    def open(self) -> None:
        make_dirs(self.directory)
        self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)

    def write(self, data: memoryview) -> None:
        while data:
            data = data[os.write(self.fd, data):]

    def finish(self, times_ns: tuple[int, int] | None) -> None:
        """fsync the data (never retried on failure) and set the modification time."""
        if times_ns is not None:
            os.utime(self.fd, ns=times_ns)
        os.fsync(self.fd)
        drop_cache(self.fd)
        os.close(self.fd)
        self.fd = -1

    def verify(self, level: str, sha256: str, size: int) -> str | None:
        """Check the temporary file against what was written. Returns a problem or None;
        ``readback`` then says how the re-read was made (None: size only, nothing re-read)."""
        if level == "size":
            actual = os.stat(self.temp).st_size
            return None if actual == size else f"size on disk {actual}, wrote {size}"
        from imalinkd.readback import reread_hash

        digest, actual, self.readback = reread_hash(self.temp)
        if actual != size:
            return f"size on disk {actual}, wrote {size}"
        if digest != sha256:
            return f"sha256 on disk {digest[:12]}…, wrote {sha256[:12]}…"
        return None

    def commit(self) -> None:
        """Give the verified file its final name; after this returns, it survives power loss.

        ``link`` + ``unlink`` instead of ``rename`` so that an existing target is never
        replaced (EEXIST is raised instead)."""
        try:
            os.link(self.temp, self.target)
            os.unlink(self.temp)
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
                raise
            # File systems without hard links (FAT, exFAT): check, then rename, under one
            # lock. Only this process writes into its session directory (the session lock),
            # and within it the lock keeps two finishers from both seeing a name free — on
            # a case-insensitive drive IMG_1.JPG and img_1.jpg are one name.
            with _RENAME_LOCK:
                if os.path.lexists(self.target):
                    raise FileExistsError(errno.EEXIST, "File exists", self.target) from None
                os.rename(self.temp, self.target)
        fsync_dir(self.directory)

    def discard(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1
        try:
            os.unlink(self.temp)
        except FileNotFoundError:
            pass
        except OSError:
            pass


class BackupSink(Sink):
    """A sink whose failure ends only itself (a backup drive full, pulled or failing): the
    read goes on feeding the others, and ``error`` says why this one stopped."""

    def __init__(self, target: str, temp_dir: str | None = None) -> None:
        super().__init__(target, temp_dir)
        self.error: OSError | None = None

    def write(self, data: memoryview) -> None:
        if self.error is not None:
            return
        try:
            super().write(data)
        except OSError as e:
            self.error = e


class SourceIOError(OSError):
    """Reading the source failed (as opposed to writing a destination)."""


@dataclass
class CopyOutcome:
    sha256: str
    size: int


def copy_to_sinks(
    src_fd: int,
    sinks: Sequence[Sink],
    on_bytes: Callable[[int], None] | None = None,
    cancel: threading.Event | None = None,
    chunk: int = CHUNK,
) -> CopyOutcome:
    """Read ``src_fd`` once to its end, writing every chunk to every sink and hashing it.

    Sinks must be opened already. Raises OSError from either side; ``InterruptedError`` when
    ``cancel`` is set (the caller discards the sinks)."""
    h = hashlib.sha256()
    total = 0
    buf = bytearray(chunk)
    view = memoryview(buf)
    try:
        os.posix_fadvise(src_fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except OSError:
        pass
    while True:
        if cancel is not None and cancel.is_set():
            raise InterruptedError(errno.EINTR, "cancelled")
        try:
            k = os.readv(src_fd, [buf])
        except OSError as e:
            raise SourceIOError(e.errno, e.strerror) from e
        if not k:
            break
        piece = view[:k]
        h.update(piece)
        for s in sinks:
            s.write(piece)
        total += k
        if on_bytes is not None:
            on_bytes(k)
    return CopyOutcome(h.hexdigest(), total)


def is_partial_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def is_legacy_partial_name(name: str) -> bool:
    """The name earlier versions gave a temporary copy beside its target (the prefix and
    16 hex digits); such a file in ``files/`` that nothing records is a leftover."""
    tag = name[len(TEMP_PREFIX):]
    return name.startswith(TEMP_PREFIX) and len(tag) == 16 and all(c in "0123456789abcdef" for c in tag)


def clear_temp_dir(path: str | os.PathLike[str]) -> int:
    """Delete the temporary copies an interrupted import left in its ``TEMP_DIR``; returns
    how many. Nothing in it has a final name, so nothing in it is kept."""
    n = 0
    try:
        entries = list(os.scandir(path))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.is_file(follow_symlinks=False) or entry.is_symlink():
            try:
                os.unlink(entry.path)
                n += 1
            except FileNotFoundError:
                pass
    return n


def remove_partials(root: str | os.PathLike[str], keep: Callable[[str], bool] = lambda p: False) -> int:
    """Delete temporary copies left by an interrupted import below ``root``, except paths
    for which ``keep`` is true (a committed source file that happens to look like one)."""
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if is_partial_name(name) and not keep(os.path.join(dirpath, name)):
                try:
                    os.unlink(os.path.join(dirpath, name))
                    n += 1
                except FileNotFoundError:
                    pass
    return n
