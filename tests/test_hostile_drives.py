"""Drives made to hurt the daemon, on real ext4 loop mounts: FIFOs where a manifest or a
marker should be, manifests nested thousands of levels deep, numbers beyond 64 bits, a
manifest over the size cap. Each is rejected by name and the rest of the drive indexed."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cards import make_card
from mounts import make_exfat_image
from namespaces import MountNamespace
from test_reindex import make_root, make_session

from imalinkd import manifest as mf

REPO = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def imalinkd_command(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "imalinkd", "--config", str(config), *args]


def imalinkd(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(imalinkd_command(config, *args), capture_output=True, text=True, env=env(), timeout=180)


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
    _, sdir = make_session(root, marker, description="device")
    path = os.path.join(sdir, mf.FILENAME)
    os.unlink(path)
    os.mknod(path, 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # as /dev/zero: endless zeros
    bad["device"] = path
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


def ext4_from_tree(image: Path, tree: Path, size_mb: int = 64) -> Path:
    """An ext4 image holding a copy of ``tree`` (FIFOs and sparse files as they are), made
    without mounting it: nothing hostile is ever visible on this machine's mounts."""
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-d", str(tree), str(image)], check=True, capture_output=True)
    shutil.rmtree(tree)  # its FIFOs are left nowhere
    return image


@pytest.fixture
def namespace():
    ns = MountNamespace()
    yield ns
    ns.close()


def test_hostile_manifests_and_markers_are_rejected_by_name_and_the_rest_indexed(tmp_path, namespace):
    config = write_config(tmp_path)
    tree = tmp_path / "tree"
    good, bad_in_tree = build_drive(tree / "photos")
    image = ext4_from_tree(tmp_path / "drive.img", tree)
    drive = tmp_path / "drive"
    bad = {what: str(drive / os.path.relpath(path, tree)) for what, path in bad_in_tree.items()}
    namespace.mount_loop(image, drive)
    r = subprocess.run(namespace.command(*imalinkd_command(config, "reindex", str(drive))), capture_output=True, text=True,
                       env=env(), timeout=180)  # a FIFO read would hang: the timeout makes it a failure
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    for what, path in bad.items():
        assert any(f"rejected {path}" in line for line in lines), (what, r.stderr)
    named = {what: next(line for line in lines if f"rejected {path}" in line) for what, path in bad.items()}
    assert "FIFO" in named["fifo"] and "FIFO" in named["fifo_marker"] and "character device" in named["device"]
    assert "nested more than 1,024 levels" in named["deep"] and "nested" in named["deepnan"] and "nested" in named["deepmedia"]
    assert "byte count" in named["hugeint"] and "byte count" in named["u64"] and "out of range" in named["mtime"]
    assert "over the limit" in named["big"]
    sessions = json.loads(imalinkd(config, "sessions", "--json").stdout)
    assert sorted(s["import_session_id"] for s in sessions) == sorted(good.values())


@pytest.mark.parametrize("content", [
    b"[" * 100_000,  # beyond orjson's 1,024 levels
    # within them, but a NaN first sends it to the standard library, beyond Python's 1,000
    b'{"format": "imalink-storage", "n": NaN, "x": ' + b"[" * 1010 + b"]" * 1010 + b"}",
])
def test_a_marker_nested_too_deeply_is_an_invalid_marker_not_a_crash(tmp_path, content):
    from imalinkd import storage
    from imalinkd.errors import MarkerError

    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(MarkerError, match="nested"):
        storage.read_marker(tmp_path)
    assert storage.claims_to_be_marker(str(tmp_path / "config.json")) is False


# --- markers that are not believed -----------------------------------------------------------------


def marker_text(storage_id: str) -> str:
    return json.dumps({"format": "imalink-storage", "format_version": 1, "storage_id": storage_id, "label": "fake",
                       "created_at": "2026-12-01T00:00:00Z"})


def ignored(r: subprocess.CompletedProcess, marker: Path, why: str) -> bool:
    """Whether the command logged the marker as ignored, for that reason, once."""
    lines = [line for line in r.stderr.splitlines() if "storage_marker_ignored" in line and f"path={marker} " in line]
    return len(lines) == 1 and why in lines[0]


def test_a_marker_in_a_tmpfs_or_owned_by_another_user_is_not_an_archive(tmp_path, namespace):
    """A local user who knows the archive's storage_id writes a marker with it where they
    can: a tmpfs (as /dev/shm), or a directory of their own on a real disk. The import
    goes to the real archive drive, whose marker is root's; the others are named and
    ignored, and an id found only on them is no archive at all."""
    real, owned, shared = (str(uuid.uuid4()) for _ in range(3))
    tree = tmp_path / "tree"
    make_root(tree / "photos")
    (tree / "photos" / "config.json").write_text(marker_text(real))
    for name, sid in (("owned", owned), ("shared", shared)):
        (tree / name).mkdir()
        (tree / name / "config.json").write_text(marker_text(sid))
    os.chown(tree / "owned", 65534, 65534)
    os.chown(tree / "owned" / "config.json", 65534, 65534)
    os.chmod(tree / "shared", 0o777)
    image = ext4_from_tree(tmp_path / "drive.img", tree)
    shm = tmp_path / "shm"
    shm.mkdir()
    namespace.run("mount", "-t", "tmpfs", "-o", "mode=1777", "tmpfs", shm)
    (tmp_path / "fake.json").write_text(marker_text(real))
    namespace.run("install", "-D", "-m", "0644", tmp_path / "fake.json", shm / "archive" / "config.json")
    drive = tmp_path / "drive"
    namespace.mount_loop(image, drive)
    card = make_card(tmp_path / "card", shots=2)

    def import_with(storage_id: str) -> subprocess.CompletedProcess:
        config = write_config(tmp_path)
        config.write_text(config.read_text().replace(f'root = "{tmp_path}/home-archive"', f'storage_id = "{storage_id}"'))
        return subprocess.run(namespace.command(*imalinkd_command(config, "import", str(card.root), "--json")),
                              capture_output=True, text=True, env=env(), timeout=180)

    r = import_with(real)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["storage_path"].startswith(str(drive / "photos") + "/")
    assert namespace.run("find", shm, "-name", "*_import_*") == ""
    assert ignored(r, shm / "archive" / "config.json", "tmpfs file system, not backed by a block device"), r.stderr
    for sid, where, why in ((owned, "owned", "owned by uid 65534"), (shared, "shared", "writable by other users")):
        r = import_with(sid)
        assert r.returncode != 0 and sid in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert ignored(r, drive / where / "config.json", why), r.stderr


def test_only_a_regular_file_within_its_limit_is_opened(tmp_path):
    """A FIFO is never waited on and a device never opened: both are looked at first."""
    from imalinkd import drivefile

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "small").write_bytes(b"12345")
    os.symlink(tmp_path / "small", tmp_path / "link")
    cases = {fifo: "a FIFO", Path("/dev/zero"): "a character device", tmp_path / "link": "a symbolic link",
             tmp_path: "a directory"}
    for path, kind in cases.items():
        with pytest.raises(drivefile.UnsafeFileError, match=f"is {kind}, not a regular file"):
            drivefile.read_regular(path, 100)
    with pytest.raises(drivefile.UnsafeFileError, match="over the limit of 4"):
        drivefile.read_regular(tmp_path / "small", 4)
    assert drivefile.read_regular(tmp_path / "small", 5) == b"12345"


def test_an_exfat_archive_through_fuse_is_found_only_with_allow_fuse(tmp_path, namespace):
    """Archive drives are often exFAT or NTFS mounted through FUSE (exfat-fuse, ntfs-3g):
    found by storage_id only with [storage] allow_fuse = true, and named when it is not."""
    tree = tmp_path / "tree"
    marker = make_root(tree / "photos")
    image = make_exfat_image(tmp_path / "t7.img", label="T7", tree=tree)
    drive = tmp_path / "drive"
    namespace.mount_exfat(image, drive, readonly=False)
    card = make_card(tmp_path / "card", shots=2)

    def import_with(allow_fuse: bool) -> subprocess.CompletedProcess:
        config = write_config(tmp_path)
        text = config.read_text().replace(f'root = "{tmp_path}/home-archive"', f'storage_id = "{marker.storage_id}"')
        config.write_text(text.replace("[storage]\n", f"[storage]\nallow_fuse = {str(allow_fuse).lower()}\n"))
        return subprocess.run(namespace.command(*imalinkd_command(config, "import", str(card.root), "--json")),
                              capture_output=True, text=True, env=env(), timeout=180)

    r = import_with(False)
    assert r.returncode != 0 and marker.storage_id in r.stderr, r.stderr
    assert ignored(r, drive / "photos" / "config.json", "allow_fuse = true"), r.stderr
    r = import_with(True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["storage_path"].startswith(str(drive / "photos") + "/")
