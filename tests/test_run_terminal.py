"""`imalinkd run` as a person meets it in a terminal, and as systemd runs it: readable log
lines on a TTY, JSON under systemd (JOURNAL_STREAM) or when asked; a port already in use
stops the daemon with a message saying what to do, unless the API is optional; and
`check-config` shows the card rules, mount paths and state directory in effect."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_config(tmp: Path, listen: str = "", extra: str = "") -> Path:
    cfg = tmp / "imalinkd.toml"
    cfg.write_text(f"""
[catalog]
url = "sqlite:///{tmp / 'catalog.db'}"

[storage]
root = "{tmp / 'archive'}"

[api]
listen = "{listen}"
{extra}

[daemon]
state_dir = "{tmp / 'state'}"
mount_paths = ["{tmp / 'mounts'}/*"]
""")
    return cfg


def env_for(**more: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET", "IMALINKD_CONFIG")}
    return {**env, "PYTHONPATH": str(REPO), **more}


def run_on_terminal(cfg: Path, *args: str, env: dict, until: bytes = b"daemon_ready") -> str:
    """Start `imalinkd run` with a pseudo-terminal as its stdin/stdout/stderr, read until
    ``until`` appears, stop it with SIGTERM and return everything it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "imalinkd", "--config", str(cfg), "run", *args],
                            stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cfg.parent, close_fds=True)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 60
        while until not in out and time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    out += os.read(master, 65536)
                except OSError:
                    break
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        while True:  # what it wrote while stopping
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        os.close(master)
    text = out.decode("utf-8", "replace")
    assert until.decode() in text, text[-3000:]
    return text


def ready_line(text: str) -> str:
    return next(line for line in text.splitlines() if "daemon_ready" in line)


def test_run_on_a_terminal_logs_readable_lines(tmp_path):
    text = run_on_terminal(write_config(tmp_path), env=env_for())
    line = re.sub(r"\x1b\[[0-9;]*m", "", ready_line(text))  # coloured on a terminal
    assert not line.lstrip().startswith("{"), line
    assert "[info" in line and "daemon_ready" in line and "pid=" in line


def test_run_under_systemd_or_when_asked_logs_json(tmp_path):
    cfg = write_config(tmp_path)
    for args, env in (((), env_for(JOURNAL_STREAM="8:12345")), (("--log-format", "json"), env_for())):
        line = ready_line(run_on_terminal(cfg, *args, env=env))
        record = json.loads(line.strip())
        assert record["event"] == "daemon_ready" and record["level"] == "info"


def test_a_port_in_use_stops_the_daemon_with_a_clear_message(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = write_config(tmp_path, listen=f"127.0.0.1:{port}")
        r = subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(cfg), "run"], env=env_for(),
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert r.returncode == 1, r.stderr[-2000:]
        message = next(line for line in r.stderr.splitlines() if line.startswith("imalinkd: "))
        assert f"cannot listen on 127.0.0.1:{port}" in message and "already in use" in message
        assert "[api] optional = true" in message
        assert "daemon_ready" not in r.stderr

        # with the API optional the daemon runs on without it
        cfg = write_config(tmp_path, listen=f"127.0.0.1:{port}", extra="optional = true")
        text = run_on_terminal(cfg, env=env_for())
        assert "api_unavailable" in text and "running without the HTTP API" in text


def test_check_config_shows_the_rules_mount_paths_and_state_directory_in_effect(tmp_path):
    cfg = write_config(tmp_path)
    cfg.write_text(cfg.read_text() + '\n[[card]]\nlabel = "EOS_*"\ndescription = "{label} {date}"\nverify = "paranoid"\n')
    run = [sys.executable, "-m", "imalinkd", "--config", str(cfg), "check-config"]
    r = subprocess.run(run, env=env_for(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert f"state directory: {tmp_path / 'state'}" in r.stdout
    assert f"mount paths examined: {tmp_path / 'mounts'}/*" in r.stdout
    assert "1: label 'EOS_*': description '{label} {date}', verify paranoid" in r.stdout
    assert "default: any other camera card (DCIM/ or another camera layout): description '{label}', verify sha256" in r.stdout
    data = json.loads(subprocess.run(run + ["--json"], env=env_for(), capture_output=True, text=True, timeout=60).stdout)
    assert [r["rule"] for r in data["card_rules_in_effect"]] == ["1", "default"]
    assert data["mount_paths_in_effect"] == [f"{tmp_path / 'mounts'}/*"]
    assert data["state_dir_in_effect"] == str(tmp_path / "state")
    assert data["cameras_in_effect"]["staging_dir"] == str(tmp_path / "state" / "cameras")
