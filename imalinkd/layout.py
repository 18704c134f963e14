"""Config layouts that cannot work, refused when the config is loaded.

A config can be valid key by key and still describe an arrangement that silently does
nothing or does harm: a drop folder inside the storage root (the daemon would import the
archive into itself, or the files dropped there are taken for part of the archive), the
storage root inside a drop folder, one drop folder inside another (every file imported
twice), the storage root where a ``[[card]] path`` rule expects cards (the archive drive
would be imported as a card), or a ``[[card]] path`` that ``[daemon] mount_paths`` keeps the
daemon from ever looking at.

:func:`problems` lists them, each naming the keys, the paths and what to change; ``config``
raises the first as a ``ConfigError``, so ``check-config``, every command, the daemon's
start and its SIGHUP reload refuse such a config the same way.

Paths are compared after resolving symlinks as far as they exist (``/tmp/x`` and
``/private/tmp/x`` are one folder), component by component (``/a/bc`` is not inside ``/a/b``).
"""

from __future__ import annotations

import fnmatch
import glob
import os
from pathlib import Path


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _inside(inner: Path, outer: Path) -> bool:
    """Whether ``inner`` is ``outer`` or below it."""
    return inner == outer or outer in inner.parents


def _literal_prefix(pattern: str) -> Path:
    """The directories of a glob before its first wildcard: ``/media/*/EOS*`` -> ``/media``."""
    parts = []
    for part in Path(pattern).parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path("/")


def _matches_glob_or_below(path: Path, pattern: str) -> Path | None:
    """The ancestor of ``path`` (or ``path`` itself) that the mount point glob ``pattern``
    matches, or None."""
    for candidate in (path, *path.parents):
        if fnmatch.fnmatchcase(str(candidate), pattern):
            return candidate
    return None


def _may_meet(a: str, b: str) -> bool:
    """Whether some path could match both the glob ``a`` and the directory-or-glob ``b`` of
    ``mount_paths`` (a mount below a directory listed there counts). Decided on the literal
    prefixes: when neither contains the other, no path can match both."""
    pa, pb = _literal_prefix(a), _literal_prefix(b.rstrip("/") or "/")
    return _inside(pa, pb) or _inside(pb, pa)


def problems(config) -> list[tuple[str, str]]:
    """``(key, reason)`` for every arrangement in ``config`` that cannot work."""
    out: list[tuple[str, str]] = []
    root = config.storage_root
    real_root = _real(root) if root is not None else None
    drops = [(i, d, _real(d.path)) for i, d in enumerate(config.drop_folders)]
    for i, drop, real in drops:
        key = f"drop_folder[{i}].path"
        if real_root is not None and _inside(real, real_root):
            where = "is the storage root" if real == real_root else f"is inside the storage root {root}"
            out.append((key, f"{drop.path} {where}: the archive's own files would be taken for new "
                             "photos (or dropped files for part of the archive). Use a folder outside the storage root"))
        elif real_root is not None and _inside(real_root, real):
            out.append((key, f"the storage root {root} is inside the drop folder {drop.path}: every archived file "
                             "would be dropped again. Use a drop folder that does not hold the archive"))
        for j, other, other_real in drops:
            if j != i and _inside(real, other_real) and (real != other_real or j < i):
                out.append((key, f"{drop.path} is inside (or the same as) drop_folder[{j}] {other.path}: its files "
                                 "would be imported twice. Keep one of them"))
    for i, card in enumerate(config.cards):
        if not card.path or not card.enabled:
            continue
        key = f"card[{i}].path"
        if real_root is not None:
            hit = _matches_glob_or_below(real_root, card.path) or _matches_glob_or_below(Path(str(root)), card.path)
            if hit is not None:
                out.append((key, f"the storage root {root} is on {hit}, which this rule treats as a camera card: "
                                 "the archive drive would be imported as a card. Narrow the rule's path"))
        mount_paths = config.daemon.mount_paths
        if mount_paths and not any(_may_meet(card.path, mp) for mp in mount_paths):
            out.append((key, f"{card.path!r} is outside every [daemon] mount_paths entry ({', '.join(mount_paths)}): "
                             "no mount this rule matches is ever looked at. Add its folder to mount_paths"))
    return out
