"""End to end: ``imalinkd run`` as a subprocess with a private config, real exFAT cards on
loop devices mounted through FUSE, a real drop folder, and a notify socket we bind."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imalinkd.storage import init_storage
from mounts import require_exfat as require_loop_mounts
from waiting import wait_for

REPO = Path(__file__).resolve().parent.parent




def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()




# --- cards -------------------------------------------------------------------------------------


class Card:
    """An exFAT card image with a DCIM tree; mounted read-only through FUSE on a loop device."""

    def __init__(self, path: Path, label: str, files: dict[str, bytes], size_mb: int = 64) -> None:
        self.path = path
        self.label = label
        self.files = {rel: hashlib.sha256(data).hexdigest() for rel, data in files.items()}
        self.mounts: dict[Path, str] = {}
        with open(path, "wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        subprocess.run(["mkfs.exfat", "-L", label, str(path)], check=True, capture_output=True)
        fill = path.with_suffix(".fill")
        self.mount(fill, readonly=False)
        try:
            for rel, data in files.items():
                (fill / rel).parent.mkdir(parents=True, exist_ok=True)
                (fill / rel).write_bytes(data)
        finally:
            self.unmount(fill)
            fill.rmdir()

    def mount(self, mount_point: Path, readonly: bool = True) -> None:
        dev = subprocess.run(
            ["losetup", "-f", "--show", str(self.path)], check=True, capture_output=True, text=True
        ).stdout.strip()
        mount_point.mkdir(parents=True, exist_ok=True)
        opts = ["-o", "ro"] if readonly else []
        proc = subprocess.run(["mount.exfat-fuse", *opts, dev, str(mount_point)], capture_output=True, text=True)
        if proc.returncode != 0:
            subprocess.run(["losetup", "-d", dev], capture_output=True)
            raise RuntimeError(f"mount.exfat-fuse failed: {proc.stderr}")
        self.mounts[mount_point] = dev

    def unmount(self, mount_point: Path, lazy: bool = False) -> None:
        dev = self.mounts.pop(mount_point)
        if lazy or subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)
        # A lazily unmounted FUSE filesystem lets go of the loop device once its daemon exits.
        for _ in range(50):
            if subprocess.run(["losetup", "-d", dev], capture_output=True).returncode == 0:
                break
            time.sleep(0.1)

    def cleanup(self) -> None:
        for mp in list(self.mounts):
            self.unmount(mp, lazy=True)


@pytest.fixture
def make_card(tmp_path):
    require_loop_mounts()
    cards: list[Card] = []

    def make(label: str = "EOS_DIGITAL", *, shots: int = 4, mb_per_file: float = 0.5, seed: int = 1, size_mb: int = 64) -> Card:
        rng = random.Random(seed)
        files = {}
        for i in range(shots):
            folder = "DCIM/100CANON" if i % 2 == 0 else "DCIM/101CANON"
            files[f"{folder}/IMG_{i + 1:04d}.CR2"] = rng.randbytes(int(mb_per_file * 1024 * 1024) + i)
            files[f"{folder}/IMG_{i + 1:04d}.JPG"] = rng.randbytes(20_000 + i)
        card = Card(tmp_path / f"{label}-{seed}.img", label, files, size_mb)
        cards.append(card)
        return card

    yield make
    for card in cards:
        card.cleanup()


# --- the daemon --------------------------------------------------------------------------------


class Daemon:
    """``imalinkd run`` in a subprocess, with a notify socket collecting its messages."""

    def __init__(self, workdir: Path, config: Path) -> None:
        self.workdir = workdir
        self.config = config
        self.log_path = workdir / "daemon.log"
        self.messages: list[str] = []
        self.proc: subprocess.Popen | None = None
        self._sock_path = workdir / "notify.sock"
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None

    def start(self, ready_timeout: float = 30) -> "Daemon":
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.bind(str(self._sock_path))
            self._sock.settimeout(0.2)
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        self.messages.clear()
        env = dict(os.environ)
        env.update(
            NOTIFY_SOCKET=str(self._sock_path),
            WATCHDOG_USEC="1000000",
            PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        )
        env.pop("WATCHDOG_PID", None)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imalinkd", "--config", str(self.config), "run"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
        )
        wait_for(lambda: "READY=1" in self.messages or self.proc.poll() is not None, ready_timeout, "READY=1")
        assert self.proc.poll() is None, f"daemon exited at start:\n{self.log_text()[-2000:]}"
        return self

    def _read(self) -> None:
        while self._sock is not None:
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            self.messages.extend(data.decode(errors="replace").split("\n"))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def has_event(self, name: str, **fields) -> bool:
        return any(e.get("event") == name and all(e.get(k) == v for k, v in fields.items()) for e in self.log_events())

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> float:
        """SIGTERM; returns how long the process took to exit. A daemon that does not exit
        within the (generous) timeout fails the test: a stop that hangs, never a slow one."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon did not exit within {timeout}s of SIGTERM")
        self._log.close()
        return time.monotonic() - t0

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


def imalinkd(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "imalinkd", "--config", str(config), *args],
        capture_output=True, text=True, env=env, timeout=120,
    )


def sessions(config: Path) -> list[dict]:
    proc = imalinkd(config, "sessions", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def write_config(path: Path, workdir: Path, extra: str = "") -> Path:
    path.write_text(
        f"""
[catalog]
url = "sqlite:///{workdir}/catalog.db"

[storage]
root = "{workdir}/archive"

[api]
listen = ""

[daemon]
state_dir = "{workdir}/state"
settle_seconds = 0.5
# Only mounts below this test's directory: cards and archives mounted on this machine
# meanwhile (other tests, benchmarks) are none of this daemon's business.
mount_paths = ["{workdir}"]

[import]
thumbnails = false
{extra}
"""
    )
    return path


@pytest.fixture
def workdir(tmp_path):
    init_storage(tmp_path / "archive")  # as 'imalinkd init-storage' does
    return tmp_path


@pytest.fixture
def daemon(workdir):
    d = Daemon(workdir, write_config(workdir / "imalinkd.toml", workdir))
    yield d
    d.close()


def assert_archived(session: dict, card: Card) -> None:
    files = Path(session["storage_path"]) / "files"
    for rel, digest in card.files.items():
        assert sha256(files / rel) == digest, rel


def completed(config: Path) -> list[dict]:
    return [s for s in sessions(config) if s["copy_status"] == "completed"]


# --- without mounts ----------------------------------------------------------------------------


def test_ready_status_and_watchdog_pings_reach_the_notify_socket(daemon):
    daemon.start()
    assert any(m.startswith("STATUS=") for m in daemon.messages)
    wait_for(lambda: daemon.messages.count("WATCHDOG=1") >= 2, 5, "two watchdog pings")
    daemon.stop()
    assert "STOPPING=1" in daemon.messages
    assert daemon.proc.returncode == 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _settled_cpu_seconds(pid: int, timeout: float = 60) -> float:
    """The process's CPU time once it stopped growing over a half-second look."""
    deadline = time.monotonic() + timeout
    last = _cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = _cpu_seconds(pid)
        if now - last <= 0.01:
            return now
        last = now
    raise AssertionError(f"the daemon kept using CPU for {timeout}s after start-up")


def test_idle_daemon_uses_no_cpu_and_little_memory(workdir):
    drop = workdir / "dropbox"
    drop.mkdir()
    config = write_config(workdir / "imalinkd.toml", workdir, f'[[drop_folder]]\npath = "{drop}"\n')
    d = Daemon(workdir, config).start()
    try:
        wait_for(lambda: d.has_event("drop_folders_watching") and d.has_event("daemon_ready"), 60, "the daemon ready")
        before = _settled_cpu_seconds(d.proc.pid)  # start-up work (the first mount examination) over
        time.sleep(3.0)
        assert _cpu_seconds(d.proc.pid) - before <= 0.05  # watchdog pings twice a second included
        rss_kib = int(next(l for l in Path(f"/proc/{d.proc.pid}/status").read_text().splitlines() if l.startswith("VmRSS")).split()[1])
        assert rss_kib < 200 * 1024
    finally:
        d.stop()
        d.close()


def test_sighup_with_broken_config_keeps_the_old_config(workdir):
    drop = workdir / "dropbox"
    drop.mkdir()
    config = write_config(workdir / "imalinkd.toml", workdir, f'[[drop_folder]]\npath = "{drop}"\n')
    d = Daemon(workdir, config).start()
    try:
        good = config.read_text()
        query = workdir / "query.toml"  # the CLI must not read the broken file
        query.write_text(good)
        config.write_text(good + "\n[[card]]\nlabel = 42\n")
        d.signal(signal.SIGHUP)
        wait_for(lambda: d.has_event("config_reload_refused"), 5, "config_reload_refused in the log")
        refused = next(e for e in d.log_events() if e["event"] == "config_reload_refused")
        assert "imalinkd.toml" in refused["error"]
        assert d.proc.poll() is None
        # The old config, with its drop folder, still works.
        (drop / "IMG_1.JPG").write_bytes(os.urandom(5000))
        wait_for(lambda: completed(query), 20, "a session from the drop folder", interval=0.5)
        # A good config is taken on the next SIGHUP.
        config.write_text(good)
        d.signal(signal.SIGHUP)
        wait_for(lambda: d.has_event("config_reloaded"), 5, "config_reloaded in the log")
        d.stop()
    finally:
        d.close()


def test_drop_folder_slow_writer_is_imported_only_once_complete(workdir):
    drop = workdir / "dropbox"
    drop.mkdir()
    config = write_config(workdir / "imalinkd.toml", workdir, f'[[drop_folder]]\npath = "{drop}"\nsettle_seconds = 0.5\n')
    d = Daemon(workdir, config).start()
    try:
        chunks = [os.urandom(256 * 1024) for _ in range(8)]
        with open(drop / "VID_0001.MOV", "wb") as f:
            for chunk in chunks:
                f.write(chunk)
                f.flush()
                time.sleep(0.3)
            (drop / "VID_0001.MOV.part").write_bytes(b"partial download")
            assert not d.has_event("drop_batch_settled")  # open for writing: never settled, however long
        wait_for(lambda: completed(config), 20, "the drop folder session", interval=0.5)
        time.sleep(1.5)
        ss = sessions(config)
        assert len(ss) == 1
        archived = Path(ss[0]["storage_path"]) / "files" / "VID_0001.MOV"
        assert sha256(archived) == hashlib.sha256(b"".join(chunks)).hexdigest()
        assert ss[0]["total_files"] == 1  # the .part file was left alone
        assert (drop / "VID_0001.MOV").exists()  # after_import = "keep"
    finally:
        d.stop()
        d.close()


# --- with real cards ---------------------------------------------------------------------------


def test_card_becomes_a_completed_session_and_the_same_card_again_makes_none(daemon, make_card, workdir):
    card = make_card()
    daemon.start()
    mp = workdir / "media" / "EOS_DIGITAL"
    card.mount(mp)
    [session] = wait_for(lambda: completed(daemon.config), 30, "a completed session", interval=0.5)
    assert any(m.startswith("STATUS=importing card EOS_DIGITAL") for m in daemon.messages)
    assert "EOS_DIGITAL" in session["storage_directory_name"]
    assert session["source"]["label"] == "EOS_DIGITAL"
    fs_uuid = subprocess.run(["blkid", "-o", "value", "-s", "UUID", str(card.path)], capture_output=True, text=True).stdout.strip()
    assert session["source"]["fs_uuid"] == fs_uuid
    meta = json.loads((Path(session["storage_path"]) / "metadata.json").read_text())
    assert meta["source"]["label"] == "EOS_DIGITAL" and meta["source"]["fs_uuid"] == fs_uuid
    assert_archived(session, card)
    card.unmount(mp)
    card.mount(workdir / "media" / "elsewhere")
    wait_for(lambda: daemon.has_event("card_already_imported"), 30, "card_already_imported")
    note = next(e for e in daemon.log_events() if e["event"] == "card_already_imported")["message"]
    assert note == f"card EOS_DIGITAL: already imported in session {session['import_session_id'][:8]}; 0 new files"
    wait_for(lambda: any(note in m for m in daemon.messages), 5, "the STATUS= line naming the session")
    assert len(sessions(daemon.config)) == 1
    daemon.stop()


def test_two_cards_at_once_make_two_sessions(daemon, make_card, workdir):
    a = make_card("CARD_A", seed=1)
    b = make_card("CARD_B", seed=2)
    daemon.start()
    a.mount(workdir / "media" / "a")
    b.mount(workdir / "media" / "b")
    done = wait_for(lambda: len(completed(daemon.config)) == 2 and completed(daemon.config), 40, "two sessions", interval=0.5)
    by_label = {s["source"]["label"]: s for s in done}
    assert set(by_label) == {"CARD_A", "CARD_B"}
    assert_archived(by_label["CARD_A"], a)
    assert_archived(by_label["CARD_B"], b)
    daemon.stop()


def test_card_present_at_start_is_imported(daemon, make_card, workdir):
    card = make_card()
    card.mount(workdir / "media" / "EOS_DIGITAL")
    daemon.start()
    [session] = wait_for(lambda: completed(daemon.config), 30, "a completed session", interval=0.5)
    assert_archived(session, card)


def _big_card(make_card, daemon, workdir):
    """A card whose import is still running when the test interrupts it: enough bytes, and
    a daemon that copies one file at a time and re-reads the source (paranoid), so that a
    fast machine does not finish before the signal lands."""
    write_config(daemon.config, workdir, extra='readers = 1\nworkers = 1\nverify = "paranoid"')
    return make_card(shots=32, mb_per_file=4, size_mb=200, seed=7)


def test_sigterm_mid_copy_exits_quickly_and_the_session_resumes(daemon, make_card, workdir):
    card = _big_card(make_card, daemon, workdir)
    daemon.start()
    mp = workdir / "media" / "EOS_DIGITAL"
    card.mount(mp)
    wait_for(lambda: daemon.has_event("import_started"), 30, "the import to start", interval=0.05)
    took = daemon.stop(timeout=10)
    assert took < 10
    assert daemon.proc.returncode == 0
    [session] = sessions(daemon.config)
    assert session["copy_status"] in ("failed", "in_progress"), session
    # The card is still in the reader: the daemon resumes the session when it starts again.
    daemon.start()
    [done] = wait_for(lambda: completed(daemon.config), 60, "the resumed session", interval=0.5)
    assert done["import_session_id"] == session["import_session_id"]
    assert daemon.has_event("card_resume_started")
    assert_archived(done, card)


def test_card_pulled_mid_copy_resumes_when_it_returns(daemon, make_card, workdir):
    card = _big_card(make_card, daemon, workdir)
    daemon.start()
    mp = workdir / "media" / "EOS_DIGITAL"
    card.mount(mp)
    wait_for(lambda: daemon.has_event("import_started"), 30, "the import to start", interval=0.05)
    card.unmount(mp, lazy=True)
    wait_for(lambda: daemon.has_event("job_finished"), 30, "the job to end")
    [failed] = sessions(daemon.config)
    assert failed["copy_status"] == "failed", failed
    card.mount(workdir / "media" / "back_again")
    [done] = wait_for(lambda: completed(daemon.config), 60, "the resumed session", interval=0.5)
    assert done["import_session_id"] == failed["import_session_id"]
    assert len(sessions(daemon.config)) == 1
    assert_archived(done, card)
    daemon.stop()


def test_card_waits_for_the_archive_and_starts_when_it_is_mounted(workdir, make_card):
    spare = workdir / "archive_drive"
    spare.mkdir()
    other = workdir / "other"
    other.mkdir()
    # Made elsewhere (another catalog): the daemon's catalog does not know where it is.
    proc = imalinkd(write_config(other / "other.toml", other), "init-storage", str(spare), "--json")
    assert proc.returncode == 0, proc.stderr
    storage_id = json.loads((spare / "config.json").read_text())["storage_id"]
    config = write_config(workdir / "imalinkd.toml", workdir)
    text = config.read_text().replace(f'root = "{workdir}/archive"', f'storage_id = "{storage_id}"')
    config.write_text(text)
    card = make_card()
    d = Daemon(workdir, config).start()
    plugged = workdir / "drives" / "ARCHIVE"
    plugged.mkdir(parents=True)
    try:
        card.mount(workdir / "media" / "EOS_DIGITAL")
        wait_for(lambda: any("waiting for the archive" in m for m in d.messages), 30, "STATUS saying it waits")
        assert sessions(config) == []
        # The archive drive is plugged in (a bind mount stands in for it).
        subprocess.run(["mount", "--bind", str(spare), str(plugged)], check=True)
        [session] = wait_for(lambda: completed(config), 30, "the session once the archive is there", interval=0.5)
        assert session["storage_path"].startswith(str(plugged))
        assert_archived(session, card)
        assert d.has_event("archive_mounted")
    finally:
        d.stop()
        d.close()
        subprocess.run(["umount", str(plugged)], capture_output=True)


def test_card_put_back_at_once_elsewhere_still_ends_in_one_complete_session(daemon, make_card, workdir):
    card = _big_card(make_card, daemon, workdir)
    daemon.start()
    first = workdir / "media" / "slot1"
    card.mount(first)
    wait_for(lambda: daemon.has_event("import_started"), 30, "the import to start", interval=0.05)
    card.unmount(first, lazy=True)
    card.mount(workdir / "media" / "slot2")  # before the first job has necessarily noticed
    [done] = wait_for(lambda: completed(daemon.config), 60, "a completed session", interval=0.5)
    assert len(sessions(daemon.config)) == 1
    assert_archived(done, card)
    daemon.stop()


def test_drop_folder_delete_removes_only_what_was_archived(workdir):
    drop = workdir / "dropbox"
    (drop / "sub").mkdir(parents=True)
    config = write_config(workdir / "imalinkd.toml", workdir, f'[[drop_folder]]\npath = "{drop}"\nafter_import = "delete"\n')
    data = {"IMG_1.JPG": os.urandom(30_000), "sub/IMG_2.JPG": os.urandom(40_000)}
    d = Daemon(workdir, config).start()
    try:
        for rel, payload in data.items():
            (drop / rel).write_bytes(payload)
        (drop / "notes.txt.part").write_bytes(b"still downloading")
        [session] = wait_for(lambda: completed(config), 20, "the drop folder session", interval=0.5)
        wait_for(lambda: not (drop / "IMG_1.JPG").exists() and not (drop / "sub" / "IMG_2.JPG").exists(), 5, "the deletes")
        files = Path(session["storage_path"]) / "files"
        for rel, payload in data.items():
            assert sha256(files / rel) == hashlib.sha256(payload).hexdigest()
        assert (drop / "notes.txt.part").exists()
    finally:
        d.stop()
        d.close()


def test_sigterm_mid_copy_then_resume_from_the_command_line(daemon, make_card, workdir):
    card = _big_card(make_card, daemon, workdir)
    daemon.start()
    card.mount(workdir / "media" / "EOS_DIGITAL")
    wait_for(lambda: daemon.has_event("import_started"), 30, "the import to start", interval=0.05)
    daemon.stop()
    [parked] = sessions(daemon.config)
    assert parked["copy_status"] in ("failed", "in_progress")
    proc = imalinkd(daemon.config, "resume", parked["import_session_id"], "--json")
    assert proc.returncode == 0, proc.stderr
    [done] = completed(daemon.config)
    assert done["import_session_id"] == parked["import_session_id"]
    assert_archived(done, card)
