"""Template filters: numbers and times as a person reads them."""

from __future__ import annotations

from imalinkd import errors
from imalinkd.paths import display


def human_bytes(n: int | float | None) -> str:
    return "–" if n is None else errors.human_bytes(float(n))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def when(iso: str | None) -> str:
    """``2026-11-24T10:11:12Z`` as ``2026-11-24 10:11 UTC``."""
    if not iso:
        return "–"
    return iso.replace("T", " ")[:16] + " UTC"


def percent(part: float | None, whole: float | None) -> float:
    if not whole:
        return 0.0
    return max(0.0, min(100.0, 100.0 * float(part or 0) / float(whole)))


STATUS_TEXT = {"completed": "Completed", "failed": "Failed", "in_progress": "In progress", "not_started": "Not started"}


def status_text(status: str | None) -> str:
    return STATUS_TEXT.get(status or "", status or "–")


FILTERS = {"bytes": human_bytes, "duration": duration, "when": when, "status_text": status_text, "path": display}
GLOBALS = {"percent": percent}
