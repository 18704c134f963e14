"""The README's set-up as a new user meets it: the package installs into a fresh virtual
environment with its data files (migrations), and the installed `imalinkd` starts the
daemon on the embedded defaults — SQLite catalog and storage root under the user's own
directories — as an ordinary user, with no config file anywhere."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mounts import require_root

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with the project installed from a copy of the source tree (the
    dependencies come from the running interpreter, so this needs no network)."""
    base = Path(tempfile.mkdtemp(prefix="imalinkd-venv-"))
    os.chmod(base, 0o755)
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "__pycache__", ".pytest_cache"))
    env_dir = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(env_dir)], check=True)
    r = subprocess.run([str(env_dir / "bin" / "pip"), "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    yield env_dir
    shutil.rmtree(base, ignore_errors=True)


def test_installed_package_has_its_migrations_and_runs_an_import(venv, tmp_path):
    exe = venv / "bin" / "imalinkd"
    card = tmp_path / "card" / "DCIM" / "100CANON"
    card.mkdir(parents=True)
    (card / "IMG_0001.JPG").write_bytes(os.urandom(2048))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/c.db"\n[storage]\nroot = "{tmp_path}/archive"\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(exe), "--config", str(cfg), "import", str(tmp_path / "card"), "--json"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["copy_status"] == "completed"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env)
    for command in ("run", "import", "init-storage", "sessions", "status", "verify", "resume", "rollback",
                    "reindex", "scan-locations", "check-config"):
        assert command in r.stdout


def _free_port_8765() -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8765))
            return True
        except OSError:
            return False


def test_daemon_starts_on_the_embedded_defaults_as_an_ordinary_user(venv):
    require_root("switching to an unprivileged user")
    if shutil.which("runuser") is None:
        pytest.skip("no runuser")
    if not _free_port_8765():
        pytest.skip("port 8765 (the default API port) is in use on this machine")
    home = Path(tempfile.mkdtemp(prefix="imalinkd-home-"))
    os.chmod(home, 0o777)
    sock_path = home / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    os.chmod(sock_path, 0o777)
    notify.settimeout(60)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "NOTIFY_SOCKET": str(sock_path)}
    proc = subprocess.Popen(["runuser", "-u", "nobody", "--", str(venv / "bin" / "imalinkd"), "run"],
                            env=env, cwd=home, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        messages = b""
        deadline = time.monotonic() + 60
        while b"READY=1" not in messages and time.monotonic() < deadline:
            messages += notify.recv(4096) + b"\n"
        assert b"READY=1" in messages, proc.stdout.read1(4000) if proc.poll() is not None else "no READY=1"
        import urllib.request

        with urllib.request.urlopen("http://127.0.0.1:8765/import-sessions", timeout=10) as r:
            assert r.status == 200 and json.loads(r.read()) == []
        assert (home / ".local" / "state" / "imalinkd" / "catalog.db").exists()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
            notify.close()
            shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode == 0
