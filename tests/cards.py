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
