"""Which files form one shot (a Photo), and which files are not media at all.

A shot is the files a camera wrote for one picture or one clip: the image, its RAW, a
video, and their sidecars (``.XMP``, ``.THM``, GoPro ``.LRV``, a ``.WAV`` voice memo,
Sony ``M01.XML``, AVCHD clip info). Most cameras name them alike in one directory
(``IMG_1.CR3``, ``IMG_1.JPG``, ``IMG_1.XMP``); video cameras spread a clip over sibling
directories (``CLIP/C0001.MP4`` and ``THMBNL/C0001T01.JPG``), and those rules are here,
by path alone, so that the importer and a reindex of an archive give the same shots.
docs/media.md has the tree of every layout.

A group of files with no media file in it (``MISC/AUTXFER.DAT``, ``MEDIAPRO.XML``, a
README) is no shot: those files are archived with the card but counted apart.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

from imalinkd.media import kind_of

# extensions that name a sidecar: a trailing one may follow the full name of its file
# (``IMG_1.CR3.xmp``)
SIDECAR_EXTENSIONS = {".xmp", ".thm", ".pp3", ".dop", ".aae", ".lrv", ".lrf", ".srt"}
MEDIA_KINDS = frozenset(("raw", "jpeg", "heic", "tiff", "video", "image"))

# Sony (XAVC ``M4ROOT``, XDCAM ``XDROOT``, XDCAM EX ``BPAV``) and Panasonic P2/Canon XF
# (``CONTENTS``) name a clip's companions after it with a letter and two digits:
# C0001M01.XML (metadata), C0001T01.JPG (thumbnail), C0001S03.MP4 (proxy), R01.BIM, I01.PPN
_COMPANION = re.compile(r"^(.+?)_?[MTSRI]\d\d$", re.IGNORECASE)
# per layout root: the directory a companion lives in -> the directory of its clip
_SIBLINGS = {
    "/M4ROOT/": {"THMBNL": "CLIP", "SUB": "CLIP"},
    "/XDROOT/": {"THMBNL": "CLIP", "SUB": "CLIP"},
    "/BPAV/": {},
    "/CONTENTS/": {"CLIP": "VIDEO", "ICON": "VIDEO", "PROXY": "VIDEO", "VOICE": "VIDEO", "AUDIO": "VIDEO"},
}
_P2_AUDIO = re.compile(r"^(\d{4}[0-9A-Z]{2})\d\d$", re.IGNORECASE)  # 0001AB00.MXF: audio track 00
_GOPRO = re.compile(r"^G[HXL](\d{6})$", re.IGNORECASE)  # GX010001.MP4, GL010001.LRV, GH010001.MP4
_CANON_XF_CLIP = re.compile(r"^[A-Z]{2}\d{4}$", re.IGNORECASE)  # CONTENTS/CLIPS001/AA0001/
_FRAME = re.compile(r"^(.+)_\d{4,}$")  # CinemaDNG frames: clip_1/clip_1_000001.dng


def shot_key(rel: str) -> str:
    """The key of the shot ``rel`` (a relative, ``/``-separated path) belongs to: its
    directory and lower-case stem, after the layout rules of docs/media.md. Files with
    the same key are one shot. Computed for every file of an archive on a reindex, so the
    usual path costs a few string operations."""
    if "//" in rel or rel.startswith("/") or rel.endswith("/"):
        directory, name = os.path.split(rel)
        split = os.path.splitext
    else:
        directory, _, name = rel.rpartition("/")
        split = _splitext
    stem, ext = split(name)
    ext = ext.lower()
    if ext in SIDECAR_EXTENSIONS:
        inner_stem, inner_ext = split(stem)
        if inner_ext:
            stem = inner_stem
    if directory:
        upper = f"/{directory.upper()}/"
        if "/BDMV/" in upper:  # AVCHD: BDMV/CLIPINF/00000.CPI is the clip info of BDMV/STREAM/00000.MTS
            if upper.endswith("/CLIPINF/"):
                directory = directory[:-7] + ("STREAM" if directory[-7:].isupper() else "stream")
        else:
            root = next((r for r in _SIBLINGS if r in upper), None)
            if root is not None:
                directory, stem = _video_layout(directory, _SIBLINGS[root], stem)
            elif ext == ".dng":
                directory, stem = _frame_clip(directory, stem)
            elif upper.endswith(".RDC/"):  # RED: A001_C001_0101XY.RDC/A001_C001_0101XY_001.R3D
                stem = directory.rpartition("/")[2][:-4]
    if stem[:1] in "gG" and len(stem) == 8:
        m = _GOPRO.match(stem)
        if m:
            stem = "GX" + m.group(1)
    stem = stem.lower()
    return f"{directory}/{stem}" if directory else stem


def _splitext(name: str) -> tuple[str, str]:
    """``os.path.splitext`` of a name without slashes."""
    i = name.rfind(".")
    if i > 0 and name[:i].lstrip("."):
        return name[:i], name[i:]
    return name, ""


def _video_layout(directory: str, siblings: dict[str, str], stem: str) -> tuple[str, str]:
    """Sony, P2 and Canon XF: a companion file's clip directory and stem."""
    parent, _, last = directory.rpartition("/")
    clip_dir = siblings.get(last.upper())
    if clip_dir is not None:
        directory = f"{parent}/{clip_dir if last.isupper() else clip_dir.capitalize()}" if parent else clip_dir
        if clip_dir == "VIDEO" and last.upper() == "AUDIO":
            m = _P2_AUDIO.match(stem)
            stem = m.group(1) if m else stem
    m = _COMPANION.match(stem)
    if m:
        stem = m.group(1)
    clips = parent.rpartition("/")[2].upper()
    if clips.startswith("CLIPS") and _CANON_XF_CLIP.match(last):
        stem = last  # Canon XF: CONTENTS/CLIPS001/AA0001/AA000101.MXF, AA000102.MXF, … are one clip
    elif last.upper().startswith("CLIPS") and _CANON_XF_CLIP.match(stem):
        directory = f"{directory}/{stem}"  # CONTENTS/CLIPS001/AA0001.XML describes that clip
    return directory, stem


def _frame_clip(directory: str, stem: str) -> tuple[str, str]:
    """CinemaDNG (Blackmagic): every frame of a clip is a DNG in the clip's own directory,
    named after it; the clip is the shot."""
    last = directory.rpartition("/")[2]
    m = _FRAME.match(stem)
    if m and m.group(1).lower() == last.lower():
        return directory, last
    return directory, stem


def group_shots(rels: Iterable[str]) -> dict[str, list[str]]:
    """Files by shot key, in the order met."""
    groups: dict[str, list[str]] = {}
    for rel in rels:
        groups.setdefault(shot_key(rel), []).append(rel)
    return groups


def is_media(rel: str) -> bool:
    """A photo or video file (by extension, any case); sidecars and anything else are not."""
    return kind_of(rel) in MEDIA_KINDS


def is_shot(members: Iterable[str]) -> bool:
    """Whether a group of files is a shot: it holds at least one photo or video."""
    return any(is_media(m) for m in members)


def count_shots(rels: Iterable[str]) -> tuple[int, int]:
    """``(shots, other files)``: the number of shots among ``rels``, and the number of
    files that belong to no shot (camera databases, ``MISC/``, text)."""
    shots = others = 0
    for members in group_shots(rels).values():
        if is_shot(members):
            shots += 1
        else:
            others += len(members)
    return shots, others
