"""The daemon next to hostile archive drives: ``imalinkd run`` in a private mount namespace
(tests/namespaces.py), drives and exFAT cards mounted there while it runs. Whatever a drive
does, a card plugged in afterwards is imported."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cards import make_card, sha256_of
from mounts import make_exfat_image, require_exfat, require_tools
from namespaces import MountNamespace
from test_hostile_drives import ext4_from_tree
from test_reindex import make_root, make_session

from imalinkd import manifest as mf
from waiting import wait_for

REPO = Path(__file__).resolve().parent.parent




def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))


class Daemon:
    """``imalinkd run`` in the namespace, its JSON log lines in a file."""

    def __init__(self, ns: MountNamespace, workdir: Path, watched: tuple[str, ...] = ("",), daemon_keys: str = "",
                 storage_keys: str = "", extra: str = "") -> None:
        self.workdir = workdir
        self.config = workdir / "imalinkd.toml"
        self.config.write_text(f"""
[catalog]
url = "sqlite:///{workdir}/catalog.db"

[storage]
root = "{workdir}/archive"
{storage_keys}

[api]
listen = ""

[daemon]
state_dir = "{workdir}/state"
watchdog = false
# only the mounts below this test's directory
mount_paths = {json.dumps([str(workdir / w).rstrip("/") for w in watched])}
{daemon_keys}

[import]
thumbnails = false
{extra}
""")
        make_root(workdir / "archive")  # as 'imalinkd init-storage' does
        self.log_path = workdir / "daemon.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(ns.command(sys.executable, "-m", "imalinkd", "--config", self.config, "run"),
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env(), cwd=workdir)
        wait_for(lambda: self.has_event("daemon_ready") or self.proc.poll() is not None, 60, "daemon_ready")
        assert self.proc.poll() is None, self.log_path.read_text()[-3000:]

    def events(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def has_event(self, name: str, **fields) -> bool:
        return any(e.get("event") == name and all(e.get(k) == v for k, v in fields.items()) for e in self.events())

    def completed_sessions(self) -> list[dict]:
        r = subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(self.config), "sessions", "--json"],
                           capture_output=True, text=True, env=env(), timeout=120)
        assert r.returncode == 0, r.stderr
        return [s for s in json.loads(r.stdout) if s["copy_status"] == "completed"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def namespace():
    ns = MountNamespace()
    yield ns
    ns.close()


def card_image(tmp_path: Path, label: str = "EOS_DIGITAL", seed: int = 1):
    require_exfat()
    card = make_card(tmp_path / f"{label}-tree", shots=3, seed=seed)
    return card, make_exfat_image(tmp_path / f"{label}.img", label=label, tree=card.root)


def archive_tree(tree: Path) -> tuple[str, str]:
    """A spare archive's storage root with a good session and one whose metadata.json is a
    FIFO; returns (good session id, the FIFO's path relative to the tree)."""
    root = tree / "photos"
    marker = make_root(root)
    good, _ = make_session(root, marker, description="good")
    _, sdir = make_session(root, marker, description="fifo")
    fifo = os.path.join(sdir, mf.FILENAME)
    os.unlink(fifo)
    os.mkfifo(fifo)
    return good, os.path.relpath(fifo, tree)


def test_a_drive_whose_manifest_is_a_fifo_does_not_stop_a_card_plugged_in_after_it(tmp_path, namespace):
    good, fifo = archive_tree(tmp_path / "tree")
    drive_image = ext4_from_tree(tmp_path / "spare.img", tmp_path / "tree")
    card, image = card_image(tmp_path)
    daemon = Daemon(namespace, tmp_path)
    try:
        spare = tmp_path / "drives" / "SPARE"
        namespace.mount_loop(drive_image, spare)
        wait_for(lambda: daemon.has_event("archive_mounted"), 60, "the spare drive examined")
        namespace.mount_exfat(image, tmp_path / "media" / "EOS_DIGITAL")
        # the spare drive's own good session may be indexed first: wait for the card's one
        def card_session():
            return [s for s in daemon.completed_sessions() if s["import_session_id"] != good]
        [session] = wait_for(card_session, 120, "the card's session")
        files = Path(session["storage_path"]) / "files"
        assert card.files == {rel: sha256_of(files / rel) for rel in card.files}
        # the drive is indexed but for its FIFO, named
        wait_for(lambda: daemon.has_event("archive_reindexed"), 120, "the spare drive reindexed")
        text = daemon.log_path.read_text(errors="replace")
        assert str(spare / fifo) in text and "FIFO" in text
        assert good in {s["import_session_id"] for s in daemon.completed_sessions()}
    finally:
        daemon.stop()


# --- a drive that stops answering -------------------------------------------------------------------


def fuse_drivers(device: str) -> list[int]:
    """The pids of the exfat-fuse drivers serving ``device``."""
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if any(b"exfat" in c for c in cmd[:1]) and os.fsencode(device) in cmd:
            out.append(int(pid))
    return out


def reindex_children(root: Path) -> list[int]:
    """The reindex processes of ``root`` running now."""
    out = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if b"reindex" in cmd and os.fsencode(root) in cmd:
            out.append(int(pid))
    return out


class HungDrive:
    """A spare archive drive one of whose session directories is served by a file system
    whose driver stops answering (a FUSE driver stopped: every read there waits, as on a
    dying disk or a hung network share). The daemon's look at the new mount does not read
    there; its reindex does, and waits for ever. Assembled where the daemon does not look,
    then bound in at ``drives/SPARE`` at once."""

    def __init__(self, tmp_path: Path, ns: MountNamespace) -> None:
        self.tmp_path, self.ns = tmp_path, ns
        tree = tmp_path / "tree"
        root = tree / "photos"
        marker = make_root(root)
        make_session(root, marker, description="good")
        _, sdir = make_session(root, marker, description="hung")
        subprocess.run(["rm", "-rf", *(os.path.join(sdir, n) for n in os.listdir(sdir))], check=True)
        self.hung_dir = os.path.relpath(sdir, tree)
        self.image = ext4_from_tree(tmp_path / "spare.img", tree)
        inner = tmp_path / "inner-tree"
        inner.mkdir()
        (inner / "metadata.json").write_text("{}")
        self.inner_image = make_exfat_image(tmp_path / "inner.img", label="INNER", tree=inner)
        self.stopped: list[int] = []
        self.spare = tmp_path / "drives" / "SPARE"

    def stop_answering(self) -> None:
        hidden = self.tmp_path / "hidden"
        self.ns.mount_loop(self.image, hidden, "ro")
        device = self.ns.mount_exfat(self.inner_image, self.tmp_path / "inner")
        self.ns.run("mount", "--bind", self.tmp_path / "inner", hidden / self.hung_dir)
        self.stopped = fuse_drivers(device)
        assert self.stopped, "no exfat-fuse driver found"
        for pid in self.stopped:
            os.kill(pid, signal.SIGSTOP)

    def plug_in(self) -> None:
        self.spare.mkdir(parents=True)
        self.ns.run("mount", "--rbind", self.tmp_path / "hidden", self.spare)

    def answer_again(self) -> None:
        for pid in self.stopped:
            os.kill(pid, signal.SIGCONT)


def test_a_drive_that_stops_answering_during_its_reindex_does_not_stop_a_card(tmp_path, namespace):
    drive = HungDrive(tmp_path, namespace)
    card, image = card_image(tmp_path)
    daemon = None
    try:
        drive.stop_answering()
        daemon = Daemon(namespace, tmp_path, watched=("drives", "media"))
        drive.plug_in()
        wait_for(lambda: reindex_children(drive.spare / "photos"), 120, "the drive's reindex")
        namespace.mount_exfat(image, tmp_path / "media" / "EOS_DIGITAL")
        [session] = wait_for(lambda: daemon.completed_sessions(), 120, "the card's session")
        files = Path(session["storage_path"]) / "files"
        assert card.files == {rel: sha256_of(files / rel) for rel in card.files}
        assert daemon.has_event("drive_job_preempted")
    finally:
        drive.answer_again()
        if daemon is not None:
            daemon.stop()


def test_a_drive_job_over_its_time_is_stopped_and_not_run_again(tmp_path, namespace):
    drive = HungDrive(tmp_path, namespace)
    daemon = None
    try:
        drive.stop_answering()
        daemon = Daemon(namespace, tmp_path, watched=("drives", "media"), daemon_keys="drive_job_seconds = 1")
        drive.plug_in()
        wait_for(lambda: daemon.has_event("drive_job_timed_out", mount_point=str(drive.spare)), 120, "the time limit")
        wait_for(lambda: not reindex_children(drive.spare / "photos"), 60, "the reindex to be gone")
        assert [e["outcome"] for e in daemon.events() if e.get("event") == "job_finished"] == ["timed_out"]
        assert [e["kind"] for e in daemon.events() if e.get("event") == "job_started"] == ["reindex"]
    finally:
        drive.answer_again()
        if daemon is not None:
            daemon.stop()
