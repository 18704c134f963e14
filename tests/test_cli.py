"""The real `imalinkd` command, run as a subprocess: JSON shapes and exit codes of DESIGN §6,
config errors, and kill -9 at several instants followed by `resume`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cards import make_card, tree_hashes
from imalinkd.storage import init_storage


def imalinkd(*args: str, cfg: Path | None = None, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "imalinkd"]
    if cfg is not None:
        cmd += ["--config", str(cfg)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture
def cfg(tmp_path) -> Path:
    p = tmp_path / "imalinkd.toml"
    init_storage(tmp_path / "archive")  # as 'imalinkd init-storage' does
    p.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/catalog.db"\n\n[storage]\nroot = "{tmp_path}/archive"\n\n'
                 '[import]\nthumbnails = false\n\n[api]\nlisten = ""\n')
    return p


def test_import_json_has_the_stable_fields_and_exit_0(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=3, hostile=True)
    r = imalinkd("import", str(card.root), "--description", "Test Card/ø", "--json", cfg=cfg)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    for key in ("import_session_id", "storage_directory_name", "storage_path", "copy_status", "total_files",
                "total_size_bytes", "photos_created", "duplicates_skipped"):
        assert key in out
    assert out["copy_status"] == "completed" and out["total_files"] == len(card.files)
    assert out["storage_directory_name"].startswith(time.strftime("%Y", time.gmtime()))
    assert "_import_Test_Card__ø_" in out["storage_directory_name"] or "_import_Test_Card_" in out["storage_directory_name"]
    assert "symlink" in r.stderr  # each skipped entry is named


def test_sessions_status_verify_and_rollback(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=3)
    out = json.loads(imalinkd("import", str(card.root), "--json", cfg=cfg).stdout)
    sid = out["import_session_id"]
    ss = json.loads(imalinkd("sessions", "--json", cfg=cfg).stdout)
    assert [s["import_session_id"] for s in ss] == [sid]
    st = json.loads(imalinkd("status", sid[:8], "--json", cfg=cfg).stdout)
    assert st["storage_accessible"] is True and st["files_accessible"] == st["total_files"] == len(card.files)
    assert st["storage_path"] == out["storage_path"]
    v = imalinkd("verify", out["storage_directory_name"], "--json", cfg=cfg)
    assert v.returncode == 0 and json.loads(v.stdout)["ok"] is True
    victim = Path(out["storage_path"]) / "files" / sorted(card.files)[0]
    data = bytearray(victim.read_bytes())
    data[100] ^= 0xFF
    victim.write_bytes(bytes(data))
    v = imalinkd("verify", "--all", "--json", cfg=cfg)
    assert v.returncode == 1
    assert json.loads(v.stdout)["damaged"] == ["files/" + sorted(card.files)[0]]
    r = imalinkd("rollback", sid, cfg=cfg)
    assert r.returncode == 1 and "--force" in r.stderr
    r = imalinkd("rollback", sid, "--force", "--json", cfg=cfg)
    assert r.returncode == 0 and not Path(out["storage_path"]).exists()
    assert json.loads(imalinkd("sessions", "--json", cfg=cfg).stdout) == []


def test_unknown_session_is_an_error_with_exit_1(cfg):
    r = imalinkd("status", "deadbeef", cfg=cfg)
    assert r.returncode == 1 and "No import session matches 'deadbeef'" in r.stderr


def test_usage_error_exits_2(cfg):
    r = imalinkd("import", cfg=cfg)
    assert r.returncode == 2 and "required" in r.stderr
    r = imalinkd("verify", cfg=cfg)
    assert r.returncode == 2 and "SESSION or --all" in r.stderr


@pytest.mark.parametrize("text, expected", [
    ("[storage]\nrooot = '/x'\n", "storage.rooot: unknown key"),
    ("[import]\nverify = 'md5'\n", "import.verify: 'md5' is not one of size, sha256, paranoid"),
    ("[import]\nworkers = 'two'\n", "import.workers: must be a whole number"),
    ("[api]\nlisten = 'localhost'\n", "api.listen"),
    ("[[card]]\nafter_import = 'explode'\n", "card[0].after_import"),
    ("[storage\nroot=1", "not valid TOML"),
    ("[storage]\nstorage_id = 'not-a-uuid'\n", "storage.storage_id"),
])
def test_bad_config_names_the_key_and_exits_2(tmp_path, text, expected):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    r = imalinkd("check-config", cfg=p)
    assert r.returncode == 2
    assert expected in r.stderr and str(p) in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_config_file_is_a_config_error(tmp_path):
    r = imalinkd("check-config", cfg=tmp_path / "nope.toml")
    assert r.returncode == 2 and "file not found" in r.stderr


def test_embedded_defaults_without_any_config(tmp_path):
    r = imalinkd("check-config", "--json", env={**os.environ, "IMALINKD_CONFIG": ""})
    if Path("/etc/imalinkd/imalinkd.toml").exists():
        pytest.skip("a system config exists on this machine")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["source"] == "embedded defaults"
    assert out["catalog_url_in_effect"].startswith("sqlite:///") and out["catalog_url_in_effect"].endswith("catalog.db")
    assert out["api"]["listen"] == "127.0.0.1:8765"


def test_config_from_environment_variable(tmp_path, cfg):
    r = imalinkd("check-config", "--json", env={**os.environ, "IMALINKD_CONFIG": str(cfg)})
    assert r.returncode == 0 and json.loads(r.stdout)["source"] == str(cfg)


def test_init_storage_writes_the_marker(tmp_path, cfg):
    r = imalinkd("init-storage", str(tmp_path / "t7"), "--label", "T7", "--json", cfg=cfg)
    assert r.returncode == 0, r.stderr
    marker = json.loads((tmp_path / "t7" / "config.json").read_text())
    assert marker["format"] == "imalink-storage" and marker["label"] == "T7"
    assert json.loads(r.stdout)["storage_id"] == marker["storage_id"]


def _wait_for_files(archive: Path, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in archive.glob("2*/files/DCIM/*/*") if not p.name.startswith(".")]
        if len(found) >= n:
            return
        time.sleep(0.002)
    raise AssertionError(f"fewer than {n} files appeared")


@pytest.mark.parametrize("kill_after", [0, 3, 12])
def test_kill_9_at_any_instant_then_resume_completes_without_recopying(tmp_path, cfg, kill_after):
    card = make_card(tmp_path / "card", shots=16, raw_kb=1536, seed=kill_after)
    proc = subprocess.Popen([sys.executable, "-m", "imalinkd", "--config", str(cfg), "import", str(card.root), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        if kill_after:
            _wait_for_files(tmp_path / "archive", kill_after)
        else:
            time.sleep(0.3)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    ss = json.loads(imalinkd("sessions", "--json", cfg=cfg).stdout)
    if not ss:  # killed before the session existed: a fresh import simply works
        r = imalinkd("import", str(card.root), "--json", cfg=cfg)
        assert r.returncode == 0
        ss = json.loads(imalinkd("sessions", "--json", cfg=cfg).stdout)
    s = ss[0]
    files = Path(s["storage_path"]) / "files"
    for rel, sha in tree_hashes(files).items():  # nothing wrong under a final name
        assert os.path.basename(rel).startswith(".imalinkd-partial-") or card.files[rel] == sha
    if s["copy_status"] != "completed":
        assert s["copy_status"] == "failed"  # in_progress with its importer dead
        committed = {rel: os.stat(files / rel).st_ino for rel in card.files if (files / rel).exists()}
        r = imalinkd("resume", s["import_session_id"], "--json", cfg=cfg)
        assert r.returncode == 0, r.stderr
        assert all(os.stat(files / rel).st_ino == ino for rel, ino in committed.items()), "resume re-copied a committed file"
    assert tree_hashes(files) == card.files
    meta = json.loads((Path(s["storage_path"]) / "metadata.json").read_text())
    assert meta["copy_status"] == "completed" and len(meta["file_manifest"]) == len(card.files)
    assert imalinkd("verify", s["import_session_id"], cfg=cfg).returncode == 0


def test_sigterm_during_import_leaves_a_resumable_session(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=40, raw_kb=4096)  # still copying when the signal lands
    proc = subprocess.Popen([sys.executable, "-m", "imalinkd", "--config", str(cfg), "import", str(card.root), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_files(tmp_path / "archive", 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    result = json.loads(out)
    assert result["copy_status"] == "failed" and "interrupted" in result["error"]
    r = imalinkd("resume", result["import_session_id"][:8], cfg=cfg)
    assert r.returncode == 0, r.stderr
    assert tree_hashes(Path(result["storage_path"]) / "files") == card.files


@pytest.mark.parametrize("what", ["missing", "a file", "storage is a file"])
def test_bad_paths_get_one_clear_line_and_exit_1(tmp_path, cfg, what):
    (tmp_path / "plain").write_text("x")
    card = make_card(tmp_path / "card", shots=1)
    args = {"missing": [str(tmp_path / "nope")], "a file": [str(tmp_path / "plain")],
            "storage is a file": [str(card.root), "--storage", str(tmp_path / "plain")]}[what]
    r = imalinkd("import", *args, cfg=cfg)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert {"missing": "No such file", "a file": "not a directory", "storage is a file": "not a directory"}[what] in r.stderr


def _run_on_a_terminal(args: list[str], timeout: float = 60) -> str:
    """Run the CLI with a pseudo-terminal as stdout and stderr; return what it printed."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "imalinkd", *args], stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, env={**os.environ, "COLUMNS": "160", "TERM": "xterm"})
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: the process has ended
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    proc.wait(timeout=10)
    os.close(master)
    return out.decode("utf-8", "replace")


def test_progress_bar_on_a_terminal_and_none_otherwise(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=6, raw_kb=512)
    shown = _run_on_a_terminal(["--config", str(cfg), "import", str(card.root)])
    assert "files" in shown and ("MB/s" in shown or "kB/s" in shown) and "━" in shown  # files, bytes, speed
    assert "completed" in shown
    (card.root / "DCIM/100CANON/NEW.CR2").write_bytes(os.urandom(10000))
    r = imalinkd("import", str(card.root), cfg=cfg)  # pipes, not a terminal
    assert r.returncode == 0 and "/s" not in r.stderr and "━" not in r.stderr
    (card.root / "DCIM/100CANON/NEW2.CR2").write_bytes(os.urandom(10000))
    json_on_tty = _run_on_a_terminal(["--config", str(cfg), "import", str(card.root), "--json"])
    assert "━" not in json_on_tty and json_on_tty.lstrip().startswith("{")


def test_reindex_shows_progress_on_a_terminal_only(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=2)
    assert imalinkd("import", str(card.root), cfg=cfg).returncode == 0
    shown = _run_on_a_terminal(["--config", str(cfg), "reindex", str(tmp_path / "archive"), "--verify"])
    # the last frame is drawn when the bar stops: the last phase, its count
    assert "writing catalog" in shown and "1/1 sessions" in shown and "━" in shown and "1 sessions on the drive" in shown
    r = imalinkd("reindex", str(tmp_path / "archive"), "--verify", cfg=cfg)
    assert r.returncode == 0 and "━" not in r.stderr and "verifying" not in r.stderr


def test_reindex_names_a_damaged_manifest_and_exits_1(tmp_path, cfg):
    card = make_card(tmp_path / "card", shots=2)
    out = json.loads(imalinkd("import", str(card.root), "--json", cfg=cfg).stdout)
    r = imalinkd("reindex", str(tmp_path / "archive"), cfg=cfg)
    assert r.returncode == 0 and "1 sessions on the drive" in r.stdout
    manifest = Path(out["storage_path"]) / "metadata.json"
    manifest.write_text(manifest.read_text()[:100])  # truncated
    r = imalinkd("reindex", str(tmp_path / "archive"), cfg=cfg)
    assert r.returncode == 1
    assert str(manifest) in r.stderr and "truncated or damaged" in r.stderr and "Traceback" not in r.stderr
