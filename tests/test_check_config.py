"""``imalinkd check-config`` as a subprocess: it connects to the catalog (SQLite files and a
real PostgreSQL server) and says whether it could, never prints a password, and refuses
layouts that cannot work; secrets stay out of every message and log line."""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import structlog

from test_cli import imalinkd

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Pa55"
REFUSED_URL = f"postgresql+psycopg://photo:{SECRET}@127.0.0.1:1/imalink"  # port 1: nothing listens


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "imalinkd.toml"
    p.write_text(f'[daemon]\nstate_dir = "{tmp_path}/state"\n\n[api]\nlisten = ""\n\n' + text)
    return p


# --- the catalog: connected to, and said so ---------------------------------------------------


def test_a_refused_catalog_connection_is_named_without_the_password(tmp_path):
    cfg = write(tmp_path, f'[catalog]\nurl = "{REFUSED_URL}"\n\n[storage]\nroot = "{tmp_path}/archive"\n')
    r = imalinkd("check-config", cfg=cfg)
    assert r.returncode == 1, r.stderr
    assert "Connection refused" in r.stderr and "127.0.0.1" in r.stderr and "photo:***@" in r.stderr
    assert SECRET not in r.stdout + r.stderr
    j = imalinkd("check-config", "--json", cfg=cfg)
    assert j.returncode == 1 and SECRET not in j.stdout + j.stderr
    out = json.loads(j.stdout)
    assert out["catalog_check"]["ok"] is False and "Connection refused" in out["catalog_check"]["message"]
    assert out["catalog"]["url"] == out["catalog_url_in_effect"] == "postgresql+psycopg://photo:***@127.0.0.1:1/imalink"


def test_every_command_and_the_daemon_keep_the_catalog_password_out_of_their_output(tmp_path):
    cfg = write(tmp_path, f'[catalog]\nurl = "{REFUSED_URL}"\n\n[storage]\nroot = "{tmp_path}/archive"\n')
    r = imalinkd("sessions", cfg=cfg)
    assert r.returncode != 0 and "Catalog postgresql+psycopg://photo:***@127.0.0.1:1/imalink" in r.stderr
    assert SECRET not in r.stdout + r.stderr
    run = imalinkd("run", cfg=cfg, timeout=60)  # the daemon cannot start without its catalog
    assert run.returncode != 0 and "catalog_unavailable" in run.stderr
    assert SECRET not in run.stdout + run.stderr


def test_sqlite_catalog_is_opened_read_only_and_reported(tmp_path):
    cfg = write(tmp_path, f'[catalog]\nurl = "sqlite:///{tmp_path}/cat/catalog.db"\n\n[storage]\nroot = "{tmp_path}/archive"\n')
    r = imalinkd("check-config", cfg=cfg)
    assert r.returncode == 0, r.stderr
    assert "does not exist yet" in r.stdout
    assert not (tmp_path / "cat").exists()  # checking creates nothing
    assert imalinkd("sessions", cfg=cfg).returncode == 0  # now it exists, with its schema
    r = imalinkd("check-config", "--json", cfg=cfg)
    assert r.returncode == 0 and json.loads(r.stdout)["catalog_check"]["message"].startswith(f"connected to {tmp_path}/cat/catalog.db (schema revision")


def test_a_catalog_file_that_is_no_database_is_a_problem(tmp_path):
    (tmp_path / "catalog.db").write_bytes(b"this is not SQLite" * 100)
    cfg = write(tmp_path, f'[catalog]\nurl = "sqlite:///{tmp_path}/catalog.db"\n\n[storage]\nroot = "{tmp_path}/archive"\n')
    r = imalinkd("check-config", cfg=cfg)
    assert r.returncode == 1
    assert f"{tmp_path}/catalog.db cannot be read as a catalog" in r.stderr


def _pg_tool(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL's {name} is not installed")
        pytest.skip(f"PostgreSQL's {name} is not installed")
    return found


@pytest.fixture
def postgres():
    """A throwaway PostgreSQL server on a loopback port with password authentication, run
    as the ``postgres`` user (the server refuses root). Yields its port."""
    from mounts import require_root

    require_root("running PostgreSQL as its own user")
    initdb, pg_ctl = _pg_tool("initdb"), _pg_tool("pg_ctl")
    base = tempfile.mkdtemp(prefix="imalinkd-pg-")
    os.chmod(base, 0o755)
    data = os.path.join(base, "data")
    pwfile = os.path.join(base, "pw")
    Path(pwfile).write_text(SECRET + "\n")
    shutil.chown(base, "postgres")
    shutil.chown(pwfile, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_pg = ["runuser", "-u", "postgres", "--"]
    try:
        subprocess.run([*as_pg, initdb, "-D", data, "-U", "postgres", "--auth=scram-sha-256", f"--pwfile={pwfile}"],
                       check=True, capture_output=True)
        subprocess.run([*as_pg, pg_ctl, "-D", data, "-w", "-t", "60", "-l", os.path.join(base, "log"),
                        "-o", f"-p {port} -c listen_addresses=127.0.0.1 -k {base}", "start"], check=True, capture_output=True)
        yield port
    finally:
        subprocess.run([*as_pg, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_a_postgresql_catalog_is_connected_to_and_a_wrong_password_is_named(tmp_path, postgres):
    url = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:{postgres}/postgres"
    cfg = write(tmp_path, f'[catalog]\nurl = "{url}"\n\n[storage]\nroot = "{tmp_path}/archive"\n')
    r = imalinkd("check-config", cfg=cfg)
    assert r.returncode == 0, r.stderr
    assert f"postgresql+psycopg://postgres:***@127.0.0.1:{postgres}/postgres: connected" in r.stdout
    assert SECRET not in r.stdout + r.stderr
    wrong = "wrong-" + SECRET
    cfg = write(tmp_path, f'[catalog]\nurl = "{url.replace(SECRET, wrong)}"\n\n[storage]\nroot = "{tmp_path}/archive"\n')
    r = imalinkd("check-config", cfg=cfg)
    assert r.returncode == 1
    assert "password authentication failed" in r.stderr
    assert SECRET not in r.stdout + r.stderr


# --- secrets in log lines and tracebacks -------------------------------------------------------


def test_log_lines_and_tracebacks_never_show_a_registered_secret_or_a_url_password():
    from imalinkd import redact
    from imalinkd.logsetup import configure_logging

    token = "tok-" + "q" * 40
    redact.remember(token)
    redact.remember_url("postgresql://u:p%40ss-word@db/x")
    out = io.StringIO()
    configure_logging("debug", json=True, stream=out)
    log = structlog.get_logger("test")
    try:
        log.error("catalog_failed", url="postgresql://u:p%40ss-word@db/x", detail=["bearer " + token])
        try:
            raise RuntimeError(f"cannot reach mysql://admin:hunter22@db/x with p@ss-word and {token}")
        except RuntimeError:
            log.exception("boom")
        logging.getLogger("uvicorn.error").error("peer sent %s", "Bearer " + token)  # a library's own logger
    finally:
        structlog.reset_defaults()
        configure_logging("warning", json=False)  # logging's handlers back on stderr
    text = out.getvalue()
    for secret in (token, "p%40ss-word", "p@ss-word", "hunter22"):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert lines[0]["url"] == "postgresql://u:***@db/x" and "RuntimeError" in lines[1]["exception"]
    assert "uvicorn.error: ERROR: peer sent Bearer ***" in text


def test_an_uncaught_exception_is_printed_without_the_password(tmp_path):
    code = """
import threading
from imalinkd.logsetup import configure_logging
configure_logging()
def fail():
    raise OSError("mysql://a:hunter2222@db/x")
t = threading.Thread(target=fail)
t.start()
t.join()
raise RuntimeError("cannot open postgresql://u:hunter2222@h/d")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1
    assert "RuntimeError: cannot open postgresql://u:***@h/d" in r.stderr
    assert "OSError: mysql://a:***@db/x" in r.stderr
    assert "hunter2222" not in r.stderr


# --- layouts that cannot work --------------------------------------------------------------------


@pytest.mark.parametrize("layout, key, reason", [
    ('[storage]\nroot = "{t}/archive"\n[[drop_folder]]\npath = "{t}/archive"\n', "drop_folder[0].path", "is the storage root"),
    ('[storage]\nroot = "{t}/archive"\n[[drop_folder]]\npath = "{t}/archive/incoming"\n', "drop_folder[0].path",
     "is inside the storage root"),
    ('[storage]\nroot = "{t}/drop/archive"\n[[drop_folder]]\npath = "{t}/drop"\n', "drop_folder[0].path",
     "is inside the drop folder"),
    ('[storage]\nroot = "{t}/archive"\n[[drop_folder]]\npath = "{t}/link-to-archive"\n', "drop_folder[0].path",
     "is the storage root"),  # a symlink to the root is the root
    ('[storage]\nroot = "{t}/archive"\n[[drop_folder]]\npath = "{t}/a"\n[[drop_folder]]\npath = "{t}/a/b"\n',
     "drop_folder[1].path", "imported twice"),
    ('[storage]\nroot = "{t}/media/big/archive"\n[[card]]\npath = "{t}/media/*"\n', "card[0].path",
     "imported as a card"),
    ('[storage]\nroot = "{t}/archive"\n[daemon]\nmount_paths = ["/run/media"]\n[[card]]\npath = "/media/*"\n',
     "card[0].path", "outside every [daemon] mount_paths"),
])
def test_check_config_refuses_a_layout_that_cannot_work(tmp_path, layout, key, reason):
    (tmp_path / "archive").mkdir()
    (tmp_path / "link-to-archive").symlink_to(tmp_path / "archive")
    p = tmp_path / "layout.toml"
    p.write_text('[api]\nlisten = ""\n' + layout.format(t=tmp_path))
    r = imalinkd("check-config", cfg=p)
    assert r.returncode == 2, r.stdout
    assert key in r.stderr and reason in r.stderr and str(p) in r.stderr
    assert "Traceback" not in r.stderr


def test_layouts_that_only_look_alike_are_fine(tmp_path):
    p = tmp_path / "layout.toml"
    p.write_text(f'[api]\nlisten = ""\n[catalog]\nurl = "sqlite:///{tmp_path}/c.db"\n'
                 f'[storage]\nroot = "{tmp_path}/archive"\n'
                 f'[daemon]\nmount_paths = ["/media", "/run/media/*"]\n'
                 f'[[card]]\npath = "/run/media/*/EOS*"\n'
                 f'[[drop_folder]]\npath = "{tmp_path}/archive-drop"\n'  # a sibling whose name starts alike
                 f'[[drop_folder]]\npath = "{tmp_path}/ab"\n[[drop_folder]]\npath = "{tmp_path}/a"\n')
    r = imalinkd("check-config", cfg=p)
    assert r.returncode == 0, r.stderr
