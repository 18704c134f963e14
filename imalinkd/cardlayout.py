"""Which camera layout a mounted card has, from its top directories: DCIM (stills, GoPro,
DJI, phones), Sony XAVC (``PRIVATE/M4ROOT``), AVCHD (``PRIVATE/AVCHD/BDMV``), Panasonic
(``PRIVATE/PANA_GRP``, P2 ``CONTENTS/VIDEO``), Canon XF (``CONTENTS/CLIPS001``), Sony
XDCAM (``XDROOT``, ``BPAV``), and by content a card that holds camera media files at its
top level or one directory down (Blackmagic, RED, Atomos and other recorders).

Only directory listings are read (a few, bounded); nothing is opened. docs/media.md has
the tree of every layout. A card is imported whole whatever its layout; the layout only
decides whether a mount is a camera card at all.
"""

from __future__ import annotations

import os
from imalinkd import shots

# (name, directories any of which makes the layout), first match wins; names compare
# without case, as FAT and exFAT do
LAYOUTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dcim", ("DCIM",)),
    ("sony-xavc", ("PRIVATE/M4ROOT",)),
    ("avchd", ("PRIVATE/AVCHD/BDMV", "AVCHD/BDMV")),
    ("panasonic", ("PRIVATE/PANA_GRP", "CONTENTS/VIDEO")),
    ("sony-xdcam", ("XDROOT", "BPAV")),
)

# directories a computer or the card's file system adds, never a camera's media
SYSTEM_DIRS = frozenset(("system volume information", "$recycle.bin", "lost+found", ".trashes", ".spotlight-v100",
                         ".fseventsd", ".trash-1000"))
LOOK_AT = 256  # entries read per directory by the content rule


def _child(directory: str, name: str) -> str | None:
    """The entry of ``directory`` named ``name`` in any case, when it is a directory (not
    a symlink to one), else None."""
    try:
        with os.scandir(directory) as it:
            for entry in it:
                if entry.name.casefold() == name.casefold() and entry.is_dir(follow_symlinks=False):
                    return entry.path
    except OSError:
        return None
    return None


def _has_path(root: str, rel: str) -> bool:
    current: str | None = root
    for part in rel.split("/"):
        current = _child(current, part)
        if current is None:
            return False
    return True


def camera_layout(mount_point: str | os.PathLike[str]) -> str | None:
    """The name of the camera layout of the card at ``mount_point`` (one of ``LAYOUTS``,
    ``canon-xf`` for ``CONTENTS/CLIPS…``, or ``media`` for the rule by content), or None
    when it is no camera card."""
    root = os.fspath(mount_point)
    for name, dirs in LAYOUTS:
        if any(_has_path(root, d) for d in dirs):
            return name
    if _canon_xf(root):
        return "canon-xf"
    return "media" if has_top_media(root) else None


def _canon_xf(root: str) -> bool:
    contents = _child(root, "CONTENTS")
    if contents is None:
        return False
    try:
        with os.scandir(contents) as it:
            return any(e.name.upper().startswith("CLIPS") and e.is_dir(follow_symlinks=False) for e in it)
    except OSError:
        return False


def has_top_media(root: str) -> bool:
    """Whether a photo or video file lies at the top of ``root`` or in one of its top
    directories (hidden and system directories left out); at most ``LOOK_AT`` entries
    of each directory are looked at."""
    subdirs: list[str] = []
    if _media_in(root, subdirs):
        return True
    return any(_media_in(d, None) for d in subdirs[:LOOK_AT])


def _media_in(directory: str, subdirs: list[str] | None) -> bool:
    try:
        with os.scandir(directory) as it:
            for i, entry in enumerate(it):
                if i >= LOOK_AT:
                    break
                name = entry.name
                if name.startswith(".") or name.casefold() in SYSTEM_DIRS:
                    continue
                if entry.is_file(follow_symlinks=False) and shots.is_media(name):
                    return True
                if subdirs is not None and entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
    except OSError:
        return False
    return False

