"""Waiting on a condition in tests: polled until it holds or a generous timeout passes, so a
slow or loaded machine only makes a test slower, never makes it fail."""

from __future__ import annotations

import time


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    """The first true value ``predicate()`` returns; AssertionError naming ``what`` when
    none came within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_until(predicate, what: str, timeout: float = 120) -> None:
    """:func:`wait_for` with the reason first, for conditions whose value is not needed."""
    wait_for(predicate, timeout, what, interval=0.01)
