"""The published JSON Schemas of the files imalinkd writes on a drive (``docs/format.md``):
``config.schema.json`` (the storage root marker) and ``metadata.schema.json`` (a session's
manifest), each for its ``format_version``."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

NAMES = ("config", "metadata")


def load(name: str) -> dict[str, Any]:
    """The schema ``name`` (``config`` or ``metadata``) as a dict."""
    if name not in NAMES:
        raise ValueError(f"no schema {name!r}; there are {', '.join(NAMES)}")
    return json.loads(resources.files(__package__).joinpath(f"{name}.schema.json").read_text("utf-8"))
