"""Relative paths as they appear in manifests and the catalog, and their safety rules.

In memory a path is a ``str`` as Python's file system calls give it: bytes that are not
UTF-8 are kept as lone surrogates (PEP 383 "surrogateescape"), so every name round-trips to
its exact bytes on disk.

In ``metadata.json`` a path is written as plain readable text (undecodable bytes shown as
``\\xNN``), and when the name is not valid UTF-8 the exact bytes are added beside it, in
base64, under the same key with ``_b64`` appended (``original_path_b64``,
``storage_path_b64``). Readers take the ``_b64`` form when it is there. The JSON file thus
stays valid UTF-8 for any tool, and no name is ever lost or altered.
"""

from __future__ import annotations

import base64
import os
import posixpath


class UnsafePathError(ValueError):
    """A relative path that could escape its directory (absolute, ``..``, NUL, empty)."""


def is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def to_bytes(path: str) -> bytes:
    return os.fsencode(path)


def from_bytes(raw: bytes) -> str:
    return os.fsdecode(raw)


def display(path: str) -> str:
    """Readable, valid-Unicode form of a path (undecodable bytes as ``\\xNN``)."""
    return to_bytes(path).decode("utf-8", "backslashreplace")


def put_path(entry: dict, key: str, path: str) -> None:
    """Store ``path`` under ``key`` in a manifest dict, losslessly (see module docstring)."""
    entry[key] = display(path)
    if not is_utf8(path):
        entry[key + "_b64"] = base64.b64encode(to_bytes(path)).decode("ascii")


def get_path(entry: dict, key: str) -> str:
    """Read a path stored by :func:`put_path`."""
    raw = entry.get(key + "_b64")
    if raw is not None:
        return from_bytes(base64.b64decode(raw, validate=True))
    value = entry[key]
    if not isinstance(value, str):
        raise UnsafePathError(f"{key} is not a string")
    return value


def check_relative(path: str) -> str:
    """Return ``path`` if it is a safe, normalised, ``/``-separated relative path.

    Raises UnsafePathError for absolute paths, ``..`` or ``.`` components, empty components
    and NUL bytes: such a path in a manifest comes from a damaged or hostile drive."""
    if not path:
        raise UnsafePathError("empty path")
    if "\x00" in path:
        raise UnsafePathError(f"NUL byte in path {display(path)!r}")
    if path.startswith("/"):
        raise UnsafePathError(f"absolute path {display(path)!r}")
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"path {display(path)!r} has a {part or 'empty'!r} component")
    return path


def join_under(base: str, rel: str) -> str:
    """Join a checked relative path below ``base``."""
    return posixpath.join(base, check_relative(rel))


def is_inside(path: str, root: str) -> bool:
    """True when the resolved ``path`` lies within the resolved ``root`` (symlinks followed)."""
    real = os.path.realpath(path)
    real_root = os.path.realpath(root)
    return real == real_root or real.startswith(real_root.rstrip("/") + "/")
