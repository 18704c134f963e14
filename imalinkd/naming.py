"""Session descriptions from templates (``{label}``, ``{camera_model}``, ``{date}``,
``{folder}``). Unknown or missing values render as empty text; the result is cleaned into a
directory name by :func:`imalinkd.storage.clean_description`."""

from __future__ import annotations

import string


class _Values(dict):
    def __missing__(self, key: str) -> str:
        return ""


def render_description(template: str | None, **values: object) -> str:
    """Fill a description template. A malformed template is used literally."""
    if not template:
        return ""
    clean = _Values({k: ("" if v is None else str(v)) for k, v in values.items()})
    try:
        return string.Formatter().vformat(template, (), clean).strip()
    except (ValueError, IndexError, AttributeError):
        return template
