"""Drives made to hurt the daemon, on real ext4 loop mounts: FIFOs where a manifest or a
marker should be, manifests nested thousands of levels deep, numbers beyond 64 bits, a
manifest over the size cap. Each is rejected by name and the rest of the drive indexed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mounts import ext4_image, require_root
from test_reindex import make_root, make_session

from imalinkd import manifest as mf

REPO = Path(__file__).resolve().parent.parent


def imalinkd(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # a hang (a FIFO read) would stop the command forever: the timeout turns it into a failure
    return subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(config), *args],
                          capture_output=True, text=True, env=env, timeout=180)


def write_config(tmp_path: Path) -> Path:
    path = tmp_path / "imalinkd.toml"
    path.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/catalog.db"\n\n[storage]\nroot = "{tmp_path}/home-archive"\n\n'
                    f'[daemon]\nstate_dir = "{tmp_path}/state"\n\n[api]\nlisten = ""\n')
    return path


def rewrite(sdir: str, change) -> str:
    """Rewrite a session's manifest as text; returns the manifest's path."""
    path = os.path.join(sdir, mf.FILENAME)
    with open(path) as f:
        text = change(f.read())
    with open(path, "w") as f:
        f.write(text)
    return path


def edit(sdir: str, change) -> str:
    def apply(text: str) -> str:
        data = json.loads(text)
        change(data)
        return json.dumps(data)
    return rewrite(sdir, apply)


def build_drive(root: Path) -> tuple[dict[str, str], dict[str, str]]:
    """A storage root with good sessions and one of each hostile manifest. Returns the
    session ids that must be indexed and {what: path that must be named as rejected}."""
    marker = make_root(root)
    good: dict[str, str] = {}
    bad: dict[str, str] = {}
    good["plain"], _ = make_session(root, marker, description="good")
    # an unsigned 64-bit width (orjson reads it): kept out of the catalog's integer column
    good["wide"], sdir = make_session(root, marker, description="wide")
    edit(sdir, lambda d: d["file_manifest"][0]["media"].update(width=2**64 - 1))

    _, sdir = make_session(root, marker, description="fifo")
    path = os.path.join(sdir, mf.FILENAME)
    os.unlink(path)
    os.mkfifo(path)
    bad["fifo"] = path
    _, sdir = make_session(root, marker, description="deep")
    bad["deep"] = rewrite(sdir, lambda t: t[:-2] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}\n")
    # NaN sends it past orjson to the standard library, which recurses
    _, sdir = make_session(root, marker, description="deepnan")
    bad["deepnan"] = rewrite(sdir, lambda t: t[:-2] + ', "x": ' + "[" * 3000 + "NaN" + "]" * 3000 + "}\n")
    _, sdir = make_session(root, marker, description="deepmedia")
    # within orjson's 1,024 levels, but far beyond what may be stored and written again
    bad["deepmedia"] = rewrite(sdir, lambda t: t.replace('"media": {', '"media": {"notes": ' + "[" * 1000 + "]" * 1000 + ", ", 1))
    _, sdir = make_session(root, marker, description="huge")
    # orjson reads 2**70 as a float; with a NaN (which Python's json writes) it is the
    # standard library that reads the manifest, and makes it an int
    bad["hugeint"] = edit(sdir, lambda d: d["file_manifest"][0].update(file_size=2**70, mtime=float("nan")))
    _, sdir = make_session(root, marker, description="u64")
    bad["u64"] = edit(sdir, lambda d: d["file_manifest"][0].update(file_size=2**64 - 1))
    _, sdir = make_session(root, marker, description="mtime")
    bad["mtime"] = edit(sdir, lambda d: d["file_manifest"][0].update(mtime=2**64 - 1))
    _, sdir = make_session(root, marker, description="big")
    path = os.path.join(sdir, mf.FILENAME)
    with open(path, "r+b") as f:  # sparse: as big as the cap says, without the bytes
        f.truncate(mf.MAX_MANIFEST_BYTES + 1)
    bad["big"] = path
    # a directory beside the root whose marker is a FIFO
    other = root.parent / "other"
    other.mkdir()
    os.mkfifo(other / "config.json")
    bad["fifo_marker"] = str(other / "config.json")
    return good, bad


def test_hostile_manifests_and_markers_are_rejected_by_name_and_the_rest_indexed(tmp_path):
    require_root()
    config = write_config(tmp_path)
    with ext4_image(tmp_path / "drive", size_mb=64) as drive:
        good, bad = build_drive(drive / "photos")
        r = imalinkd(config, "reindex", str(drive))
        assert r.returncode == 1, r.stdout + r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        lines = r.stderr.splitlines()
        for what, path in bad.items():
            assert any(f"rejected {path}" in line for line in lines), (what, r.stderr)
        named = {what: next(line for line in lines if f"rejected {path}" in line) for what, path in bad.items()}
        assert "FIFO" in named["fifo"] and "FIFO" in named["fifo_marker"]
        assert "nested" in named["deep"] and "nested" in named["deepnan"] and "nested" in named["deepmedia"]
        assert "beyond 64 bits" in named["hugeint"]
        assert "byte count" in named["u64"] and "out of range" in named["mtime"]
        assert "over the limit" in named["big"]
        sessions = json.loads(imalinkd(config, "sessions", "--json").stdout)
        assert sorted(s["import_session_id"] for s in sessions) == sorted(good.values())


@pytest.mark.parametrize("content", [b"[" * 100_000, b'{"format": "imalink-storage", "x": ' + b"[" * 3000 + b"NaN" + b"]" * 3000 + b"}"])
def test_a_marker_nested_too_deeply_is_an_invalid_marker_not_a_crash(tmp_path, content):
    from imalinkd import storage
    from imalinkd.errors import MarkerError

    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(MarkerError, match="nested"):
        storage.read_marker(tmp_path)
    assert storage.claims_to_be_marker(str(tmp_path / "config.json")) is False
