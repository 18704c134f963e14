"""``imalinkd run`` in hostile surroundings, end to end: a slowloris against its real HTTP
server while a card is imported, a ``blkid`` that hangs when a card is plugged in, and a
config reloaded into a layout that cannot work. Real exFAT cards on loop devices."""

from __future__ import annotations

import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx

from test_daemon_e2e import Daemon, assert_archived, completed, make_card, wait_for, workdir, write_config  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _with_api(config: Path, port: int) -> Path:
    config.write_text(config.read_text().replace('listen = ""', f'listen = "127.0.0.1:{port}"', 1))
    return config


class Slowloris:
    """Holds ``count`` connections open with half-sent requests, trickling a header line
    into each every second and opening new ones for those the server closed."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.socks: list[socket.socket | None] = [None] * count
        self.stop = threading.Event()
        self.opened = 0
        self.thread = threading.Thread(target=self._run, name="slowloris", daemon=True)

    def _open(self) -> socket.socket | None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=0.5)
            s.sendall(b"GET /import-sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            self.opened += 1
            return s
        except OSError:
            return None

    def _run(self) -> None:
        top_up = len(self.socks)  # all at once at first, then at most 50 a round
        while not self.stop.is_set():
            for i, s in enumerate(self.socks):
                if s is None and top_up > 0:
                    self.socks[i] = self._open()
                    top_up -= 1
                elif s is not None:
                    try:
                        s.send(b"X-Keep: going\r\n")
                    except OSError:
                        s.close()
                        self.socks[i] = None
            top_up = 50
            self.stop.wait(1.0)

    def __enter__(self) -> "Slowloris":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(30)
        for s in self.socks:
            if s is not None:
                s.close()


def test_a_card_is_imported_while_a_slowloris_holds_hundreds_of_connections(workdir, make_card):
    port = _free_port()
    config = _with_api(write_config(workdir / "imalinkd.toml", workdir), port)
    card = make_card()
    d = Daemon(workdir, config).start()
    try:
        # systemd's default soft limit is 1024; a lower one makes "a few hundred" enough
        _soft, hard = resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(d.proc.pid, resource.RLIMIT_NOFILE, (256, hard))
        with Slowloris(port, 400) as attack:
            wait_for(lambda: attack.opened >= 400, 60, "400 connections opened")
            card.mount(workdir / "media" / "EOS_DIGITAL")
            [session] = wait_for(lambda: completed(config), 120, "the card imported during the attack", interval=0.5)
        assert_archived(session, card)
        assert session["source"]["label"] == "EOS_DIGITAL"
        assert d.has_event("api_connection_refused")
        # with the attack over, the API answers again
        r = wait_for(lambda: _get(f"http://127.0.0.1:{port}/health"), 60, "the API answering after the attack")
        assert r.status_code == 200
        # and the daemon's server refuses a rebound name like any other
        assert httpx.get(f"http://127.0.0.1:{port}/import-sessions", headers={"Host": "attacker.example"}).status_code == 421
        assert d.stop() < 10
    finally:
        d.close()


def _get(url: str):
    try:
        return httpx.get(url, timeout=5)
    except httpx.HTTPError:
        return None


def test_a_card_whose_first_look_hangs_in_blkid_is_examined_again(workdir, make_card, monkeypatch):
    real = shutil.which("blkid")
    fake = workdir / "bin"
    fake.mkdir()
    (fake / "blkid").write_text(f"""#!/bin/sh
# the first call hangs (a slow device); the ones after it are the real blkid
if mkdir "{workdir}/blkid-hung" 2>/dev/null; then exec sleep 600; fi
exec {real} "$@"
""")
    (fake / "blkid").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    config = write_config(workdir / "imalinkd.toml", workdir)
    card = make_card()
    d = Daemon(workdir, config).start()
    try:
        card.mount(workdir / "media" / "EOS_DIGITAL")
        [session] = wait_for(lambda: completed(config), 90, "the card imported", interval=0.5)
        assert (workdir / "blkid-hung").is_dir()  # the hang did happen
        fs_uuid = subprocess.run([real, "-o", "value", "-s", "UUID", str(card.path)], capture_output=True, text=True).stdout.strip()
        # imported as itself: identity from the second look, not an unnamed card
        assert session["source"]["label"] == "EOS_DIGITAL" and session["source"]["fs_uuid"] == fs_uuid
        failed = [e for e in d.log_events() if e["event"] == "mount_examination_failed"]
        assert failed and "blkid" in failed[0]["error"] and failed[0]["mount_point"].endswith("EOS_DIGITAL")
        assert_archived(session, card)
        assert d.stop() < 10
    finally:
        d.close()


def test_a_reload_into_an_impossible_layout_is_refused_and_a_start_with_it_fails(workdir):
    drop = workdir / "dropbox"
    drop.mkdir()
    config = write_config(workdir / "imalinkd.toml", workdir, f'[[drop_folder]]\npath = "{drop}"\n')
    good = config.read_text()
    d = Daemon(workdir, config).start()
    try:
        inside = workdir / "archive" / "incoming"
        inside.mkdir()
        config.write_text(good.replace(f'path = "{drop}"', f'path = "{inside}"'))
        d.signal(signal.SIGHUP)
        wait_for(lambda: d.has_event("config_reload_refused"), 10, "config_reload_refused in the log")
        refused = next(e for e in d.log_events() if e["event"] == "config_reload_refused")
        assert "drop_folder[0].path" in refused["error"] and "inside the storage root" in refused["error"]
        assert d.proc.poll() is None
        assert d.stop() < 10
    finally:
        d.close()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(config), "run"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert "drop_folder[0].path" in proc.stderr and "inside the storage root" in proc.stderr
