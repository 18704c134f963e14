"""Live progress of one import, as handed to a ``progress`` callback."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from imalinkd import paths


@dataclass
class Progress:
    """Live progress of one import; handed to the ``progress`` callback (read-only there)."""

    phase: str = "scanning"  # scanning, database_import, file_copying, post_processing, done
    session_uuid: str | None = None
    source: str = ""
    storage_path: str | None = None
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    current_file: str | None = None
    started: float = field(default_factory=time.monotonic)
    source_no_longer_needed: bool | None = None  # set as the import ends

    @property
    def elapsed(self) -> float:
        return max(time.monotonic() - self.started, 1e-6)

    @property
    def mb_per_s(self) -> float:
        return self.bytes_done / self.elapsed / 1e6

    @property
    def eta_seconds(self) -> float | None:
        if not self.bytes_done or self.bytes_done >= self.bytes_total:
            return None
        return (self.bytes_total - self.bytes_done) / (self.bytes_done / self.elapsed)

    def as_json(self) -> dict:
        return {
            "phase": self.phase,
            "session_uuid": self.session_uuid,
            "source": self.source,
            "storage_path": self.storage_path,
            "files_total": self.files_total,
            "files_done": self.files_done,
            "bytes_total": self.bytes_total,
            "bytes_done": self.bytes_done,
            "current_file": paths.display(self.current_file) if self.current_file else None,
            "mb_per_s": round(self.mb_per_s, 2),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "source_no_longer_needed": self.source_no_longer_needed,
        }


ProgressCallback = Callable[[Progress], None]
