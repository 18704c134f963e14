"""Reading a small file from a drive someone else may have written: never blocking on it,
never reading more than its kind of file can hold, never decoding JSON without bounds.

A drive can hold a FIFO, a device node or a socket under any name (``metadata.json``,
``config.json``). Opening a FIFO for reading blocks until a writer comes, which on a drive
nobody writes is forever; opening a device node calls its driver. So every file read from
a drive is looked at (``O_PATH``, ``O_NOFOLLOW``, ``fstat``) before it is opened for
reading, or opened with ``O_NONBLOCK`` where ``/proc`` is missing: only a regular file of
at most the size allowed is read, else :class:`UnsafeFileError` names what it is. Its
``strerror`` is the reason, so callers that report ``OSError.strerror`` name it as they
would any other read error.

JSON from a drive is decoded by :func:`load_json`: orjson first (fast, and it stops at
1,024 levels of nesting), the standard library only for what orjson refuses but Python's
``json`` writes (``NaN``, integers beyond 64 bits), with the nesting bounded.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from typing import Any

import orjson

OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
# The range of an SQL BIGINT (and of SQLite's integers): what the catalog can hold.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1


class UnsafeFileError(OSError):
    """A file on a drive that is not read: not a regular file, or larger than allowed."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: str | os.PathLike[str], max_bytes: int | None = None) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without following a symlink, having looked at what it is
    first; return the descriptor and its ``fstat``. Raises OSError as ``os.open`` does, and
    UnsafeFileError (nothing read, nothing left open) when it is not a regular file or is
    larger than ``max_bytes``.

    The name is opened with ``O_PATH`` (which opens nothing: no FIFO waited on, no device
    driver called), looked at with ``fstat``, and only a regular file is then opened for
    reading, through ``/proc/self/fd`` (the same inode, whatever the name points to by
    then). Without ``/proc`` it is opened with ``O_NONBLOCK`` and looked at after."""
    pfd = os.open(path, os.O_PATH | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        _check(os.fstat(pfd), path, max_bytes)
        try:
            fd = os.open(f"/proc/self/fd/{pfd}", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:  # no /proc
            fd = os.open(path, OPEN_FLAGS)
    finally:
        os.close(pfd)
    try:
        st = os.fstat(fd)
        _check(st, path, max_bytes)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _check(st: os.stat_result, path: str | os.PathLike[str], max_bytes: int | None) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(errno.EINVAL, f"is {_kind(st.st_mode)}, not a regular file; not read", os.fspath(path))
    if max_bytes is not None and st.st_size > max_bytes:
        raise UnsafeFileError(errno.EFBIG, f"is {st.st_size:,} bytes, over the limit of {max_bytes:,} for this file; not read",
                              os.fspath(path))


def read_regular(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The whole content of the regular file ``path``, at most ``max_bytes`` (see
    :func:`open_regular`); a file that grew past the limit while read is refused too."""
    fd, _st = open_regular(path, max_bytes)
    with os.fdopen(fd, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise UnsafeFileError(errno.EFBIG, f"grew over the limit of {max_bytes:,} bytes while read; not read", os.fspath(path))
    return raw


def load_json(raw: bytes) -> Any:
    """``raw`` decoded as JSON, within bounds; raises ValueError saying what is wrong.

    orjson decodes what it can (several times faster than the standard library on a large
    file). It refuses nesting deeper than 1,024 levels: that is final. What else it refuses
    goes to the standard library, which reads ``NaN`` and ``Infinity`` and integers beyond
    64 bits (Python's ``json`` writes them all; an integer of more than 4,300 digits is
    refused) and gives the message for what is not JSON at all; nesting beyond Python's
    recursion limit is refused there. Whoever stores a number checks its range
    (:func:`in_int_range`): orjson reads unsigned 64-bit integers too."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if "depth limit" in str(e) or "recursion" in str(e).lower():  # as orjson words it
            raise ValueError("nested more than 1,024 levels deep") from None
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError too
        raise ValueError(f"not valid JSON ({e.__class__.__name__}: {e})") from None


def nesting_within(value: Any, levels: int) -> bool:
    """Whether ``value`` holds no list or object more than ``levels`` levels deep (a
    scalar: 0, ``{"a": 1}``: 1). Cheap for the shallow values it is meant for."""
    stack = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if type(v) is dict:
            children = v.values()
        elif type(v) is list:
            children = v
        else:
            continue
        if depth + 1 > levels:
            return False
        stack.extend((c, depth + 1) for c in children if type(c) in (dict, list))
    return True


def in_int_range(value: Any) -> bool:
    """Whether ``value`` is an int (not a bool) the catalog's integer columns can hold."""
    return type(value) is int and INT_MIN <= value <= INT_MAX
