"""How much one scrub may read: ``[scrub] budget`` and ``imalinkd scrub --budget``.

``"10%"`` a share of the drive's archived bytes; ``"20GB"``/``"500MiB"`` a byte count;
``"30m"``/``"90s"``/``"2h"`` a time (the time a scrub spends paused for an import does not
count); ``"pass"`` the rest of the current pass. A scrub always checks at least one file,
and never goes past the end of a pass."""

from __future__ import annotations

import re
from dataclasses import dataclass

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_TIMES = {"s": 1, "m": 60, "h": 3600}
_FORM = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z%]*)\s*$")


class BudgetError(ValueError):
    """A budget that is not one of the forms above; the message says which forms there are."""


@dataclass(frozen=True)
class Budget:
    share: float | None = None  # of the drive's archived bytes, 0 < share <= 1
    nbytes: int | None = None
    seconds: float | None = None
    text: str = "pass"

    def bytes_for(self, total_bytes: int) -> int | None:
        """The bytes this scrub may read on a drive holding ``total_bytes``; None: no limit
        by bytes."""
        if self.share is not None:
            return -(-int(total_bytes * self.share * 1_000_000) // 1_000_000)  # rounded up
        return self.nbytes

    def __str__(self) -> str:
        return self.text


def parse_budget(text: str) -> Budget:
    """``text`` as a Budget; BudgetError naming it and the accepted forms otherwise."""
    raw = str(text).strip()
    if raw.lower() in ("pass", "all"):
        return Budget(text="pass")
    m = _FORM.match(raw.lower())
    if m:
        number, unit = float(m.group(1)), m.group(2)
        if unit == "%" and 0 < number <= 100:
            return Budget(share=number / 100, text=raw)
        if unit in _TIMES and number > 0:
            return Budget(seconds=number * _TIMES[unit], text=raw)
        if unit in _UNITS and number >= 1:
            return Budget(nbytes=int(number * _UNITS[unit]), text=raw)
    raise BudgetError(f"scrub budget {text!r} is not understood: give a share of the drive's bytes (\"10%\"), "
                      "a size (\"20GB\", \"500MiB\"), a time (\"90s\", \"30m\", \"2h\") or \"pass\"")
