"""Identical files within one source: stored once, the others recorded as duplicates.

A card can hold the same file twice (a camera's backup slot copied onto it, a folder
dragged in twice). Only files that share their size with another file of the source are
looked at; of those, the first 64 KiB are compared first, so that files of one size (the
uncompressed RAWs of a camera are all alike in size) are not read twice: only files equal
in size and head are hashed before the copy, which reads them again. Pure: the reads are
passed in as callables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from imalinkd.scan import SourceFile

HEAD_BYTES = 64 * 1024
REASON = "identical to another file of this source (stored once)"


@dataclass(frozen=True)
class SameFile:
    file: SourceFile
    sha256: str
    kept: str  # the relative path of the identical file that is copied


@dataclass
class SameFiles:
    keep: list[SourceFile] = field(default_factory=list)
    same: list[SameFile] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)  # rel -> sha256 hashed here


def find_same_files(files: list[SourceFile], read_head: Callable[[SourceFile], bytes | None],
                    hash_file: Callable[[SourceFile], str | None], known: dict[str, str] | None = None) -> SameFiles:
    """Split ``files`` into those to keep and those identical to a kept one (the first in
    path order is kept). ``known`` holds hashes already computed (by the planning against
    the archive); a file that cannot be read (None) is kept, and the copy meets the error."""
    known = known or {}
    out = SameFiles()
    by_size: dict[int, list[SourceFile]] = {}
    for f in files:
        by_size.setdefault(f.size, []).append(f)
    dropped: set[str] = set()
    for size, group in by_size.items():
        if size == 0 or len(group) < 2:
            continue
        by_head: dict[bytes, list[SourceFile]] = {}
        for f in group:
            head = read_head(f)
            if head is not None:
                by_head.setdefault(head, []).append(f)
        for alike in by_head.values():
            if len(alike) > 1:
                _split_by_hash(alike, hash_file, known, out, dropped)
    out.keep = [f for f in files if f.rel not in dropped]
    return out


def _split_by_hash(alike: list[SourceFile], hash_file, known: dict[str, str], out: SameFiles, dropped: set[str]) -> None:
    first: dict[str, str] = {}
    for f in sorted(alike, key=lambda f: f.rel):
        digest = known.get(f.rel) or hash_file(f)
        if digest is None:
            continue
        out.hashes[f.rel] = digest
        kept = first.setdefault(digest, f.rel)
        if kept != f.rel:
            out.same.append(SameFile(f, digest, kept))
            dropped.add(f.rel)
