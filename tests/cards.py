"""Camera-card trees for tests: RAW+JPEG pairs in DCIM folders, optionally hostile."""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Card:
    root: Path
    files: dict[str, str] = field(default_factory=dict)  # rel (str, surrogateescape) -> sha256
    sizes: dict[str, int] = field(default_factory=dict)
    shots: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes.values())


def _put(card: Card, rel: str, data: bytes) -> None:
    path = card.root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    card.files[rel] = hashlib.sha256(data).hexdigest()
    card.sizes[rel] = len(data)


def make_card(root: Path, shots: int = 6, raw_kb: int = 64, seed: int = 1, hostile: bool = False) -> Card:
    """``shots`` shots; every other one RAW+JPEG. With ``hostile``: a symlink to /etc/passwd,
    a symlink to /etc, a FIFO, an empty file, a non-UTF-8 name and deep nesting."""
    rng = random.Random(seed)
    card = Card(root)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(shots):
        folder = "DCIM/100CANON" if i % 3 else "DCIM/101CANON"
        stem = f"IMG_{i + 1:04d}"
        _put(card, f"{folder}/{stem}.CR2", rng.randbytes(raw_kb * 1024 + rng.randint(0, 999)))
        if i % 2 == 0:
            _put(card, f"{folder}/{stem}.JPG", rng.randbytes(raw_kb * 341 + rng.randint(0, 999)))
        card.shots += 1
    if hostile:
        _put(card, "DCIM/100CANON/EMPTY_0001.JPG", b"")
        _put(card, os.fsdecode(b"DCIM/100CANON/\xff\xfe_weird_\xe9.JPG"), rng.randbytes(5000))
        _put(card, "DCIM/a/b/c/d/e/f/g/h/i/j/DEEP.JPG", rng.randbytes(1234))
        os.symlink("/etc/passwd", root / "DCIM/100CANON/LINK_0001.JPG")
        os.symlink("/etc", root / "DCIM/ETCDIR")
        os.mkfifo(root / "DCIM/100CANON/FIFO_0001.JPG")
        card.shots += 3
    return card


def sha256_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    """Every regular file below ``root`` (relative path -> sha256), symlinks not followed."""
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = os.path.join(dirpath, name)
            if os.path.isfile(p) and not os.path.islink(p):
                out[os.path.relpath(p, root)] = sha256_of(p)
    return out


# --- the card layouts cameras write (docs/media.md shows each tree) ------------------------
# Each file: (relative path, the shot it belongs to or None for a file that is no media).
# Shots are named after their main file; the importer must give one Photo per name.

LAYOUT_TREES: dict[str, list[tuple[str, str | None]]] = {
    "dcim": [  # a Canon stills camera: RAW+JPEG pairs, a voice memo, the camera's database
        ("DCIM/100CANON/IMG_0001.CR3", "IMG_0001"),
        ("DCIM/100CANON/IMG_0001.JPG", "IMG_0001"),
        ("DCIM/100CANON/IMG_0001.WAV", "IMG_0001"),
        ("DCIM/100CANON/IMG_0002.CR3", "IMG_0002"),
        ("DCIM/100CANON/IMG_0002.CR3.xmp", "IMG_0002"),
        ("DCIM/100CANON/MVI_0003.MP4", "MVI_0003"),
        ("DCIM/100CANON/MVI_0003.THM", "MVI_0003"),
        ("DCIM/CANONMSC/M0100.CTG", None),
        ("MISC/AUTXFER.DAT", None),
    ],
    "gopro": [  # GoPro HERO: HEVC chapters, low-resolution proxy, thumbnail
        ("DCIM/100GOPRO/GX010001.MP4", "GX010001"),
        ("DCIM/100GOPRO/GL010001.LRV", "GX010001"),
        ("DCIM/100GOPRO/GX010001.THM", "GX010001"),
        ("DCIM/100GOPRO/GOPR0002.JPG", "GOPR0002"),
        ("DCIM/100GOPRO/GOPR0002.GPR", "GOPR0002"),
        ("MISC/version.txt", None),
    ],
    "dji": [  # a DJI drone: telemetry subtitles and a low-resolution copy per video
        ("DCIM/100MEDIA/DJI_0001.JPG", "DJI_0001"),
        ("DCIM/100MEDIA/DJI_0001.DNG", "DJI_0001"),
        ("DCIM/100MEDIA/DJI_0002.MP4", "DJI_0002"),
        ("DCIM/100MEDIA/DJI_0002.SRT", "DJI_0002"),
        ("DCIM/100MEDIA/DJI_0002.LRF", "DJI_0002"),
    ],
    "phone": [  # an iPhone over USB mass storage or a copied DCIM: Live Photo, edits
        ("DCIM/100APPLE/IMG_0001.HEIC", "IMG_0001"),
        ("DCIM/100APPLE/IMG_0001.MOV", "IMG_0001"),
        ("DCIM/100APPLE/IMG_0001.AAE", "IMG_0001"),
        ("DCIM/100APPLE/IMG_0002.PNG", "IMG_0002"),
    ],
    "sony-xavc": [  # Sony Alpha/FX: stills in DCIM, XAVC S clips in PRIVATE/M4ROOT
        ("DCIM/100MSDCF/DSC00001.ARW", "DSC00001"),
        ("DCIM/100MSDCF/DSC00001.JPG", "DSC00001"),
        ("PRIVATE/M4ROOT/CLIP/C0001.MP4", "C0001"),
        ("PRIVATE/M4ROOT/CLIP/C0001M01.XML", "C0001"),
        ("PRIVATE/M4ROOT/THMBNL/C0001T01.JPG", "C0001"),
        ("PRIVATE/M4ROOT/SUB/C0001S03.MP4", "C0001"),
        ("PRIVATE/M4ROOT/CLIP/C0002.MP4", "C0002"),
        ("PRIVATE/M4ROOT/CLIP/C0002M01.XML", "C0002"),
        ("PRIVATE/M4ROOT/MEDIAPRO.XML", None),
        ("PRIVATE/M4ROOT/STATUS.BIN", None),
        ("PRIVATE/M4ROOT/GENERAL/.keep", None),
    ],
    "sony-xavc-video": [  # a Sony camcorder card with clips only, no DCIM/
        ("PRIVATE/M4ROOT/CLIP/C0001.MP4", "C0001"),
        ("PRIVATE/M4ROOT/CLIP/C0001M01.XML", "C0001"),
        ("PRIVATE/M4ROOT/THMBNL/C0001T01.JPG", "C0001"),
        ("PRIVATE/M4ROOT/MEDIAPRO.XML", None),
    ],
    "avchd": [  # AVCHD (Sony, Panasonic, Canon camcorders): streams and their clip info
        ("PRIVATE/AVCHD/BDMV/STREAM/00000.MTS", "00000"),
        ("PRIVATE/AVCHD/BDMV/CLIPINF/00000.CPI", "00000"),
        ("PRIVATE/AVCHD/BDMV/STREAM/00001.MTS", "00001"),
        ("PRIVATE/AVCHD/BDMV/CLIPINF/00001.CPI", "00001"),
        ("PRIVATE/AVCHD/BDMV/PLAYLIST/00000.MPL", None),
        ("PRIVATE/AVCHD/BDMV/INDEX.BDM", None),
        ("PRIVATE/AVCHD/BDMV/MOVIEOBJ.BDM", None),
        ("PRIVATE/AVCHD/AVCHDTN/THUMB.TDT", None),
    ],
    "panasonic": [  # Panasonic P2: a clip's video, audio tracks, metadata, icon, proxy, voice memo
        ("CONTENTS/VIDEO/0001AB.MXF", "0001AB"),
        ("CONTENTS/AUDIO/0001AB00.MXF", "0001AB"),
        ("CONTENTS/AUDIO/0001AB01.MXF", "0001AB"),
        ("CONTENTS/CLIP/0001AB.XML", "0001AB"),
        ("CONTENTS/ICON/0001AB.BMP", "0001AB"),
        ("CONTENTS/PROXY/0001AB.MP4", "0001AB"),
        ("CONTENTS/VOICE/0001AB.WAV", "0001AB"),
        ("LASTCLIP.TXT", None),
    ],
    "canon-xf": [  # Canon XF: one directory per clip, long clips spanned over several files
        ("CONTENTS/CLIPS001/AA0001/AA000101.MXF", "AA0001"),
        ("CONTENTS/CLIPS001/AA0001/AA000102.MXF", "AA0001"),
        ("CONTENTS/CLIPS001/AA0001/AA0001M01.XML", "AA0001"),
        ("CONTENTS/CLIPS001/AA0001.XML", "AA0001"),
        ("CONTENTS/CLIPS001/AA0002/AA000201.MXF", "AA0002"),
        ("CONTENTS/CLIPS001/INDEX.MIF", None),
    ],
    "sony-xdcam": [  # Sony XDCAM (XDROOT): clip, metadata, proxy, thumbnail
        ("XDROOT/Clip/C0001.MXF", "C0001"),
        ("XDROOT/Clip/C0001M01.XML", "C0001"),
        ("XDROOT/Sub/C0001S01.MXF", "C0001"),
        ("XDROOT/Thmbnl/C0001T01.JPG", "C0001"),
        ("XDROOT/MEDIAPRO.XML", None),
        ("XDROOT/DISCMETA.XML", None),
    ],
    "media": [  # Blackmagic, Atomos and others: media at the root, no camera directory
        ("A001_08221630_C001.braw", "A001_08221630_C001"),
        ("A001_08221630_C002.mov", "A001_08221630_C002"),
        ("A001_08221630_C002.wav", "A001_08221630_C002"),
        ("clip_3/clip_3_000000.dng", "clip_3"),
        ("clip_3/clip_3_000001.dng", "clip_3"),
        ("readme.txt", None),
    ],
}

# the layout ``cardlayout.camera_layout`` must name for each tree
LAYOUT_OF = {"dcim": "dcim", "gopro": "dcim", "dji": "dcim", "phone": "dcim", "sony-xavc": "dcim",
             "sony-xavc-video": "sony-xavc", "avchd": "avchd", "panasonic": "panasonic", "canon-xf": "canon-xf",
             "sony-xdcam": "sony-xdcam", "media": "media"}


def make_layout_card(root: Path, layout: str, seed: int = 7, size: int = 3000) -> Card:
    """The tree ``LAYOUT_TREES[layout]`` with distinct random bytes in every file;
    ``card.shots`` is the number of shots it holds."""
    rng = random.Random(f"{seed}:{layout}")
    card = Card(root)
    root.mkdir(parents=True, exist_ok=True)
    for rel, _shot in LAYOUT_TREES[layout]:
        _put(card, rel, rng.randbytes(size + rng.randint(0, 999)))
    card.shots = len({shot for _rel, shot in LAYOUT_TREES[layout] if shot})
    return card


def expected_shots(layout: str) -> dict[str, set[str]]:
    """Shot name -> the files of that shot."""
    out: dict[str, set[str]] = {}
    for rel, shot in LAYOUT_TREES[layout]:
        if shot:
            out.setdefault(shot, set()).add(rel)
    return out
