"""Stage 1, scan: list what a source holds, without following anything out of it.

Symlinks are never followed (recorded as skipped), special files (FIFOs, sockets, devices)
are skipped, unreadable directories are recorded (as errors: what they hold was meant to be
imported) and the rest is scanned. Paths are
relative to the source and built only from directory entries, so ``..`` or an absolute
path cannot come out of a scan. The source is only read.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass
from typing import Callable, Iterable


@dataclass(frozen=True)
class SourceFile:
    rel: str  # relative to the source root, "/"-separated
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Skipped:
    rel: str
    reason: str
    error: bool = False  # True: could not be read (not left out on purpose); keeps a session from completing


@dataclass(frozen=True)
class ScanResult:
    files: list[SourceFile]
    skipped: list[Skipped]
    device: int  # st_dev of the source root: tells later whether the card is still there

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def wants(rel: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    """The file-type filter of a policy: ``include`` extensions (case-insensitive, with or
    without the dot; empty: everything) and ``exclude`` globs on the relative path."""
    include = tuple(include)
    if include:
        ext = os.path.splitext(rel)[1].lower().lstrip(".")
        if ext not in {e.lower().lstrip(".") for e in include}:
            return False
    for pattern in exclude:
        if fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(os.path.basename(rel), pattern):
            return False
    return True


def scan_source(
    root: str,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    only: Iterable[str] | None = None,
    skip_dirs: Iterable[str] = (),
    scandir: Callable = os.scandir,
) -> ScanResult:
    """Walk ``root``. ``only`` limits the scan to those relative paths (a drop-folder batch);
    ``skip_dirs`` are absolute directories never entered (an archive inside the source)."""
    include, exclude = tuple(include), tuple(exclude)
    try:
        st = os.stat(root)
    except OSError as e:
        from imalinkd.errors import SourceError

        raise SourceError(path=root, message=e.strerror or str(e)) from None
    if not stat.S_ISDIR(st.st_mode):
        from imalinkd.errors import SourceError

        raise SourceError(path=root, message="not a directory")
    only_set = set(only) if only is not None else None
    skip_real = {os.path.realpath(d) for d in skip_dirs}
    files: list[SourceFile] = []
    skipped: list[Skipped] = []
    stack = [("", root)]
    while stack:
        rel_dir, abs_dir = stack.pop()
        if os.path.realpath(abs_dir) in skip_real:
            skipped.append(Skipped(rel_dir, "the storage root itself (not imported into itself)"))
            continue
        try:
            with scandir(abs_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            skipped.append(Skipped(rel_dir or ".", f"unreadable directory: {e.strerror or e}", error=True))
            continue
        subdirs = []
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                est = entry.stat(follow_symlinks=False)
            except OSError as e:
                skipped.append(Skipped(rel, f"cannot stat: {e.strerror or e}", error=True))
                continue
            mode = est.st_mode
            if stat.S_ISLNK(mode):
                try:
                    target = os.readlink(entry.path)
                except OSError:
                    target = "?"
                skipped.append(Skipped(rel, f"symlink to {os.fsencode(target).decode('utf-8', 'backslashreplace')} (not followed)"))
            elif stat.S_ISDIR(mode):
                if only_set is None or any(p.startswith(rel + "/") for p in only_set):
                    subdirs.append((rel, entry.path))
            elif stat.S_ISREG(mode):
                if only_set is not None and rel not in only_set:
                    continue
                if wants(rel, include, exclude):
                    files.append(SourceFile(rel, est.st_size, est.st_mtime_ns))
                else:
                    skipped.append(Skipped(rel, "filtered out by the policy's file types"))
            else:
                skipped.append(Skipped(rel, f"{_special_kind(mode)} (not a regular file)"))
        stack.extend(reversed(subdirs))
    files.sort(key=lambda f: f.rel)
    return ScanResult(files=files, skipped=skipped, device=st.st_dev)
