"""Stage 2, plan: which scanned files to copy, which are duplicates, how files form Photos.

Pure functions over plain values; the catalog look-ups are passed in as callables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from imalinkd import shots
from imalinkd.scan import SourceFile

SIDECAR_EXTENSIONS = shots.SIDECAR_EXTENSIONS


def photo_key(rel: str) -> str:
    """The Photo (shot) a file belongs to: :func:`imalinkd.shots.shot_key`. Files of one
    shot share a directory and a stem (``DCIM/100/IMG_1.CR3``, ``IMG_1.JPG`` and
    ``IMG_1.XMP`` or ``IMG_1.CR3.xmp``), stems compared without case, as on the FAT cards
    they come from; video cameras' layouts have their own rules there."""
    return shots.shot_key(rel)


def group_photos(rels: Iterable[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for rel in rels:
        groups.setdefault(photo_key(rel), []).append(rel)
    return groups


@dataclass(frozen=True)
class Duplicate:
    file: SourceFile
    sha256: str
    duplicate_of: str  # "<session uuid>:<storage_path>"


@dataclass
class Plan:
    to_copy: list[SourceFile] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    known_hashes: dict[str, str] = field(default_factory=dict)  # rel -> sha256 hashed while planning

    @property
    def planned_bytes(self) -> int:
        return sum(f.size for f in self.to_copy)


def plan_copy(
    files: list[SourceFile],
    archived_sizes: Callable[[set[int]], set[int]],
    hash_source: Callable[[SourceFile], str | None],
    find_archived: Callable[[str, int], str | None],
) -> Plan:
    """Split ``files`` into those to copy and duplicates of archived files.

    Only files whose size some archived file has are hashed up front (``hash_source``):
    a card of new photos is read exactly once, by the copy itself. ``hash_source`` returns
    None for a file it could not read; the copy stage then meets and records the error."""
    plan = Plan()
    sizes = archived_sizes({f.size for f in files})
    for f in files:
        if f.size in sizes:
            digest = hash_source(f)
            if digest is not None:
                plan.known_hashes[f.rel] = digest
                original = find_archived(digest, f.size)
                if original is not None:
                    plan.duplicates.append(Duplicate(f, digest, original))
                    continue
        plan.to_copy.append(f)
    return plan
