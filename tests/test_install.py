"""The README's set-up as a new user meets it: the package installs into a fresh virtual
environment with its data files (migrations), and the installed `imalinkd` starts the
daemon on the embedded defaults (SQLite catalog, storage root and API token under the
default state directory) with no config file anywhere."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mounts import require_root

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with the project installed from a copy of the source tree, built as
    pip builds it for a new user. The dependencies are lent from the running interpreter's
    site-packages (a .pth file), so only the build backend is fetched."""
    base = tmp_path_factory.mktemp("venv")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "__pycache__", ".pytest_cache"))
    env_dir = base / "venv"
    try:
        yield _install(src, env_dir)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _install(src: Path, env_dir: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    import site
    import sysconfig

    purelib = Path(subprocess.run([str(env_dir / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    lent = [p for p in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if os.path.isdir(p)]
    (purelib / "_lent_dependencies.pth").write_text("\n".join(lent) + "\n")
    r = subprocess.run([str(env_dir / "bin" / "pip"), "install", "-q", "--no-deps", str(src)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    return env_dir


def test_installed_package_has_its_migrations_and_runs_an_import(venv, tmp_path):
    exe = venv / "bin" / "imalinkd"
    card = tmp_path / "card" / "DCIM" / "100CANON"
    card.mkdir(parents=True)
    (card / "IMG_0001.JPG").write_bytes(os.urandom(2048))
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/c.db"\n[storage]\nroot = "{tmp_path}/archive"\n')
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(exe), "--config", str(cfg), "init-storage", str(tmp_path / "archive")],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([str(exe), "--config", str(cfg), "import", str(tmp_path / "card"), "--json"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["copy_status"] == "completed"
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, cwd=tmp_path, env=env)
    for command in ("run", "import", "init-storage", "sessions", "status", "verify", "resume", "rollback",
                    "reindex", "scan-locations", "check-config"):
        assert command in r.stdout


WEB_CHECK = """
import sys, tempfile
import imalinkd.api.web as web
assert "site-packages" in web.__file__, web.__file__  # the installed copy, not the source tree
from fastapi.testclient import TestClient
from imalinkd.api.app import create_app
from imalinkd.catalog import Catalog
from imalinkd.config import parse_config
d = tempfile.mkdtemp()
config = parse_config({"catalog": {"url": f"sqlite:///{d}/c.db"}, "storage": {"root": f"{d}/archive"},
                       "daemon": {"state_dir": f"{d}/state"}})
client = TestClient(create_app(config, Catalog.open(config), token="t" * 32), base_url="http://localhost")
for path in ("/", "/sessions", "/locations", "/signin", "/static/app.js", "/static/app.css", "/docs",
             "/static-offline-docs/swagger-ui-bundle.js", "/redoc", "/static-offline-docs/redoc.standalone.js"):
    r = client.get(path)
    print(path, r.status_code, len(r.content))
    assert r.status_code == 200 and r.content, path
"""


def test_installed_package_serves_the_web_ui_and_docs_from_its_own_files(venv, tmp_path):
    """A non-editable install carries the templates and static files (package data) and the
    API docs' Swagger UI and ReDoc bundles: every page and asset is served with no network."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([str(venv / "bin" / "python"), "-c", WEB_CHECK], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def _free_port_8765() -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", 8765))
            return True
        except OSError:
            return False


def test_daemon_starts_on_the_embedded_defaults(venv, tmp_path):
    """As the systemd unit runs it: root, no config file. /var/lib is replaced, in a
    private mount namespace, by an empty directory, so the default state directory
    /var/lib/imalinkd (catalog, archive) is made there and the machine is not touched."""
    require_root("a private mount namespace")
    if shutil.which("unshare") is None:
        pytest.skip("no unshare")
    if not _free_port_8765():
        pytest.skip("port 8765 (the default API port) is in use on this machine")
    if Path("/etc/imalinkd/imalinkd.toml").exists():
        pytest.skip("a system config exists on this machine")
    varlib = tmp_path / "varlib"
    varlib.mkdir()
    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    notify.settimeout(60)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "NOTIFY_SOCKET": str(sock_path)}
    script = f'mount --bind "{varlib}" /var/lib && exec "{venv / "bin" / "imalinkd"}" run'
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        messages = b""
        deadline = time.monotonic() + 60
        while b"READY=1" not in messages and time.monotonic() < deadline and proc.poll() is None:
            try:
                messages += notify.recv(4096) + b"\n"
            except TimeoutError:
                break
        assert b"READY=1" in messages, (proc.poll(), messages)
        import urllib.request

        with urllib.request.urlopen("http://127.0.0.1:8765/import-sessions", timeout=10) as r:
            assert r.status == 200 and json.loads(r.read()) == []
        assert (varlib / "imalinkd" / "catalog.db").exists()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
            notify.close()
    assert proc.returncode == 0, proc.stdout.read()[-2000:]
