"""Catalog commands start fast: ``sessions`` and ``status`` import none of the heavy engine
(EXIF, images, web server, file watching, udev) and, on a catalog already at the newest
schema, none of Alembic's machinery. Checked by the modules a real process loaded, not by
timing it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("exiv2", "PIL", "fastapi", "uvicorn", "starlette", "watchdog", "pyudev", "alembic", "imalinkd.importer",
         "imalinkd.photos", "imalinkd.thumbnails", "imalinkd.daemon.service", "imalinkd.api")

PROBE = """
import json, sys
from imalinkd.cli import main
rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def loaded_modules(*args: str) -> set[str]:
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stderr.strip().splitlines()[-1])
    assert report["rc"] == 0, r.stderr
    return set(report["modules"])


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.fixture
def cfg(tmp_path) -> Path:
    p = tmp_path / "imalinkd.toml"
    p.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/catalog.db"\n\n[storage]\nroot = "{tmp_path}/archive"\n\n'
                 '[api]\nlisten = ""\n')
    return p


@pytest.mark.parametrize("command", [["sessions", "--json"], ["sessions"], ["status", "--json"], ["status"]])
def test_catalog_commands_import_no_heavy_module(cfg, command):
    loaded_modules("--config", str(cfg), "sessions", "--json")  # the first use creates and migrates the catalog
    modules = loaded_modules("--config", str(cfg), *command)
    assert heavy_in(modules) == []
    assert "imalinkd.catalog" in modules  # the probe did reach the catalog


def test_first_use_still_migrates_with_alembic(cfg, tmp_path):
    modules = loaded_modules("--config", str(cfg), "sessions", "--json")
    assert "alembic.command" in modules
    import sqlite3

    with sqlite3.connect(tmp_path / "catalog.db") as db:
        from imalinkd.catalog import _head_revision

        assert db.execute("SELECT version_num FROM alembic_version").fetchone()[0] == _head_revision()
