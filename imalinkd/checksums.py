"""``manifest-sha256.txt``: a session checked with nothing but coreutils.

Each session directory holds, beside ``metadata.json``, one line per file below ``files/``
in the format of GNU ``sha256sum``, so that decades from now, without imalinkd::

    cd 20261124_import_EOS_DIGITAL_1a2b3c4d && sha256sum -c manifest-sha256.txt

checks every archived byte. The lines are exactly what ``sha256sum files/…`` itself
prints for each name (coreutils 9):

* ``<sha256>  files/<path>``: 64 lowercase hex digits, two spaces, the path relative to
  the session directory, as its raw bytes. A name that is not UTF-8 is written as the
  bytes it has on disk (``sha256sum`` compares bytes; it never decodes a name), so the
  check opens exactly that file.
* a name holding a backslash, a line feed or a carriage return gets ``sha256sum``'s own
  escaped form: the line starts with ``\\`` and the name has ``\\\\``, ``\\n``, ``\\r``.

It is also a BagIt (RFC 8493) payload manifest for every name that is UTF-8 and holds none
of ``%``, CR, LF and ``\\``: the same file name, algorithm and line syntax. For those four
characters the two formats disagree (BagIt percent-encodes CR, LF and ``%``; ``sha256sum``
escapes with backslashes and reads ``%`` literally), and this file follows ``sha256sum``:
its check is the promise made to the user, and a percent-encoded name would make it report
an intact file as missing. The session directory is not a bag (a bag's payload lives under
``data/``, and the layout keeps ``files/``); ``docs/format.md`` says how to make one.

The file is derived from ``metadata.json``, which stays the truth: it is rewritten (by
:func:`imalinkd.manifest.write_manifest`, atomically, just before ``metadata.json``, so
that it is never behind it) every time that is, and lists the entries of
``file_manifest``: the files committed so far. A session with no file below ``files/`` (a
legacy in-place session before adoption) has none.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from imalinkd import durable

FILENAME = "manifest-sha256.txt"
_ESCAPES = ((b"\\", b"\\\\"), (b"\n", b"\\n"), (b"\r", b"\\r"))


def line_for(sha256: str, storage_path: str) -> bytes:
    """The line ``sha256sum`` prints for a file named ``storage_path`` (``files/…``)."""
    name = os.fsencode(storage_path)
    if b"\\" in name or b"\n" in name or b"\r" in name:
        for raw, escaped in _ESCAPES:
            name = name.replace(raw, escaped)
        return b"\\" + sha256.encode("ascii") + b"  " + name + b"\n"
    return sha256.encode("ascii") + b"  " + name + b"\n"


def render(entries: Iterable[tuple[str, str]]) -> bytes:
    """The file's content for ``(storage_path, sha256)`` pairs, sorted by the names' bytes
    (the same session always gives the same file)."""
    pairs = sorted(((os.fsencode(p), p, sha) for p, sha in entries))
    return b"".join(line_for(sha, p) for _raw, p, sha in pairs)


def parse(raw: bytes) -> dict[str, str]:
    """``storage_path`` → sha256 from a file in this format (either line form)."""
    out: dict[str, str] = {}
    for line in raw.split(b"\n"):
        if not line:
            continue
        escaped = line.startswith(b"\\")
        if escaped:
            line = line[1:]
        digest, sep, name = line.partition(b"  ")
        if not sep or len(digest) != 64:
            raise ValueError(f"not a sha256sum line: {line[:80]!r}")
        if escaped:
            name = _unescape(name)
        out[os.fsdecode(name)] = digest.decode("ascii")
    return out


def _unescape(name: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(name):
        c = name[i:i + 1]
        if c == b"\\" and i + 1 < len(name):
            out += {b"\\": b"\\", b"n": b"\n", b"r": b"\r"}.get(name[i + 1:i + 2], name[i:i + 2])
            i += 2
        else:
            out += c
            i += 1
    return bytes(out)


def expected(manifest) -> bytes | None:
    """What ``manifest-sha256.txt`` of this session (a ``SessionManifest``) should hold;
    None when it should not exist (no file of the session is below ``files/``)."""
    if not manifest.copy_files or not manifest.file_manifest:
        return None
    return render((e.storage_path, e.sha256) for e in manifest.file_manifest)


def _current(path: str, limit: int) -> bytes | None:
    """The file's first ``limit`` bytes (enough to tell it differs), None when absent. A
    symlink is not followed: what is there is replaced, never what it points to."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:
        return b"\0"  # a symlink or unreadable: differs from anything we would write
    try:
        return os.read(fd, limit) if limit else b""
    finally:
        os.close(fd)


def write(session_dir: str | os.PathLike[str], manifest) -> bool:
    """Bring the session's ``manifest-sha256.txt`` in step with ``manifest``, atomically
    (the old or the new content survives a power cut, never a mix). Returns True when the
    file was written or removed, False when it already was as it should be."""
    path = os.path.join(session_dir, FILENAME)
    want = expected(manifest)
    have = _current(path, len(want or b"") + 1)
    if have == want:
        return False
    if want is None:
        durable.remove_durably(path)
    else:
        durable.atomic_write_bytes(path, want)
    return True


def write_for_root(root: str) -> dict[str, list[str]]:
    """Bring ``manifest-sha256.txt`` in step in every session directory of ``root`` (from
    its ``metadata.json``; no file is read or hashed): what ``imalinkd write-checksums``
    does for sessions written before the file existed. A session being imported right now
    is left to its importer; a manifest that cannot be read is reported, not guessed at.
    Returns the session directory names ``written``, ``unchanged``, ``busy`` and
    ``rejected`` (``"name: reason"``)."""
    from imalinkd import manifest as mf, storage
    from imalinkd.errors import ImalinkError, SessionBusyError
    from imalinkd.sessions import LOCK_NAME, SessionLock

    out: dict[str, list[str]] = {"written": [], "unchanged": [], "busy": [], "rejected": []}
    for name in sorted(os.listdir(root)):
        sdir = os.path.join(root, name)
        if not storage.is_session_dir_name(name) or os.path.islink(sdir) or not os.path.isdir(sdir):
            continue
        try:
            m = mf.read_manifest(sdir)
        except ImalinkError as e:
            out["rejected"].append(f"{name}: {e}")
            continue
        had_lock = os.path.lexists(os.path.join(sdir, LOCK_NAME))
        lock = SessionLock(sdir, m.import_session_id)
        try:
            lock.acquire()
        except SessionBusyError:
            out["busy"].append(name)
            continue
        try:
            m = mf.read_manifest(sdir)  # as it is now that no importer can change it
            out["written" if write(sdir, m) else "unchanged"].append(name)
        except (ImalinkError, OSError) as e:
            out["rejected"].append(f"{name}: {e}")
        finally:
            lock.release(remove=not had_lock)
    return out
