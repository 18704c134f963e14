"""Listing a session's files: the size of every regular file below its ``files/``, never
following a symlink, and a digest of the listing.

This is most of what a reindex of a known drive costs: one ``lstat`` per file. It imports
nothing heavy, so that a reindex can run part of it in a helper process
(:class:`DigestHelper`) on another core while it lists the rest itself: one interpreter
cannot list faster, since each ``lstat`` costs more in Python's objects than in the system
call, and threads share one interpreter lock.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
from typing import Mapping, Sequence

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def walk_files(files_dir: str) -> tuple[dict[str, int], list[str]]:
    """Sizes of the regular files below ``files_dir`` by relative path, never following a
    symlink, and the symlinks met (relative paths). Every regular file is listed, whatever
    its name: an import keeps its temporary copies outside ``files/``.

    One ``scandir`` per directory, whose entry types come with the listing, and one
    ``lstat`` per regular file for its size: the least a size check can cost. Each
    directory is opened (``O_NOFOLLOW``) and listed by descriptor, so each ``lstat`` is
    relative to it (``fstatat``): no path resolved again from the top, a fifth faster on a
    large archive, and no directory swapped for a symlink while walking is followed."""
    sizes: dict[str, int] = {}
    links: list[str] = []
    try:
        top = os.open(files_dir, DIR_FLAGS)
    except OSError:
        return sizes, links
    stack = [("", top)]
    while stack:
        prefix, fd = stack.pop()
        try:
            with os.scandir(fd) as it:
                for e in it:
                    try:
                        if e.is_file(follow_symlinks=False):
                            sizes[prefix + e.name] = e.stat(follow_symlinks=False).st_size
                        elif e.is_dir(follow_symlinks=False):
                            stack.append((prefix + e.name + "/", os.open(e.name, DIR_FLAGS, dir_fd=fd)))
                        elif e.is_symlink():
                            links.append(prefix + e.name)
                    except OSError:
                        continue
        except OSError:
            continue
        finally:
            os.close(fd)
    return sizes, links


def read_files_dir(files_dir: str) -> tuple[dict[str, int] | None, str | None]:
    """A session's ``files/`` as ``(sizes, None)`` (:func:`walk_files`; nothing when it
    does not exist, as before the first file is copied), or ``(None, reason)`` when it
    must not or cannot be listed: a symlink is never followed."""
    try:
        st = os.lstat(files_dir)
    except FileNotFoundError:
        return {}, None
    except OSError as e:
        return None, f"cannot be read: {e.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return None, "files/ is a symbolic link; not followed"
    if stat.S_ISDIR(st.st_mode):
        return walk_files(files_dir)[0], None
    return {}, None


def files_digest(on_disk: Mapping[str, int]) -> str:
    """A digest of a session's files as listed (:func:`walk_files`): names, sizes and the
    order the walk met them in. The same files listed the same way give the same digest;
    anything else (a size, a name, a file added or gone, even only the order of a directory
    rewritten) gives another, which only costs a comparison of every size."""
    return hashlib.blake2b(repr(on_disk).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class DigestHelper:
    """The :func:`files_digest` of the ``files/`` directories ``dirs``, computed by a helper
    process (this module, run by the same interpreter) while the caller does other work.

    The paths go to the helper's standard input, NUL-separated, and each digest comes back
    on a line of its own, ``-`` for a directory that :func:`read_files_dir` would not list.
    :meth:`results` gives them in order; None in place of all of them when the helper could
    not be run or failed: the caller then lists those directories itself, as it would
    have. Nothing the helper says is trusted beyond being compared with a recorded digest."""

    def __init__(self, dirs: Sequence[str]) -> None:
        self._dirs = list(dirs)
        self._out: bytes | None = None  # set by the thread, read after it is joined
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = f"import sys; sys.path.insert(0, {package_parent!r}); from imalinkd.walk import main; main()"
        try:
            self._proc: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-I", "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, close_fds=True)
        except OSError:
            self._proc = None
            return
        data = b"\0".join(os.fsencode(d) for d in self._dirs)
        # fed and drained by a thread, so that neither pipe fills while the caller works
        self._thread = threading.Thread(target=self._talk, args=(data,), name="reindex-digests", daemon=True)
        self._thread.start()

    def _talk(self, data: bytes) -> None:
        try:
            out, _ = self._proc.communicate(data)
        except (OSError, ValueError):
            return
        if self._proc.returncode == 0:
            self._out = out

    def results(self) -> list[str | None] | None:
        if self._proc is None:
            return None
        self._thread.join()
        out = self._out
        if out is None:
            return None
        lines = out.decode("ascii", "replace").split("\n")
        if len(lines) != len(self._dirs):
            return None
        return [None if line == "-" else line for line in lines]


def main() -> None:
    """The helper's side of :class:`DigestHelper`."""
    paths = sys.stdin.buffer.read().split(b"\0")
    out = []
    for path in paths:
        sizes, _problem = read_files_dir(os.fsdecode(path))
        out.append("-" if sizes is None else files_digest(sizes))
    sys.stdout.write("\n".join(out))


if __name__ == "__main__":
    main()
