"""One import per source at a time, across processes: two ``import`` commands of one card
at once give one session, the second saying what it waits for; a lock left by a killed
process does not hold anyone up. Real processes; the first import is held in its first
file's copy until the second is seen waiting, so the two overlap on every run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from cards import make_card, tree_hashes
from test_daemon_e2e import make_card as make_exfat_card  # noqa: F401 - the fixture
from imalinkd import sourcelock
from imalinkd.sourcelock import Claim, SourceLock, claim_for
from imalinkd.storage import init_storage
from waiting import wait_until

REPO = Path(__file__).resolve().parents[1]




@pytest.fixture
def cfg(tmp_path) -> Path:
    init_storage(tmp_path / "archive")  # as 'imalinkd init-storage' does
    p = tmp_path / "imalinkd.toml"
    p.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/state/catalog.db"\n\n[storage]\nroot = "{tmp_path}/archive"\n\n'
                 f'[import]\nthumbnails = false\n\n[api]\nlisten = ""\n\n[daemon]\nstate_dir = "{tmp_path}/state"\n')
    from imalinkd import storage

    storage.init_storage(tmp_path / "archive")  # as 'imalinkd init-storage' does
    return p


# The command line's import; with argv[3] (a directory) it stops in its first file's copy
# (no catalog transaction open): it creates <dir>/paused, then waits for <dir>/go.
IMPORT = textwrap.dedent("""
    import os, sys, time
    if len(sys.argv) > 3:
        import imalinkd.durable as durable
        real = durable.copy_to_sinks
        def copy_to_sinks(*args, **kwargs):
            if not os.path.exists(os.path.join(sys.argv[3], "paused")):
                open(os.path.join(sys.argv[3], "paused"), "w").close()
                while not os.path.exists(os.path.join(sys.argv[3], "go")):
                    time.sleep(0.01)
            return real(*args, **kwargs)
        durable.copy_to_sinks = copy_to_sinks
    from imalinkd.cli import main
    raise SystemExit(main(["--config", sys.argv[1], "import", sys.argv[2], "--json"]))
""")


def start_import(cfg: Path, source: Path, err: Path, pause_dir: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", IMPORT, str(cfg), str(source), *([str(pause_dir)] if pause_dir else [])],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err.open("w"), text=True)


def sessions(cfg: Path) -> list[dict]:
    r = subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(cfg), "sessions", "--json"], cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, check=True)
    return json.loads(r.stdout)


@pytest.mark.parametrize("second_source", ["the card", "a folder of it"])
def test_the_same_card_imported_twice_at_once_gives_one_session(tmp_path, cfg, second_source):
    card = make_card(tmp_path / "card", shots=12, raw_kb=256)
    first = start_import(cfg, card.root, tmp_path / "first.err", pause_dir=tmp_path)
    second = None
    try:
        # the first import is copying its first file: hold it there
        wait_until(lambda: (tmp_path / "paused").exists() or first.poll() is not None, "the first import to start copying")
        assert first.poll() is None, first.communicate()
        source = card.root if second_source == "the card" else card.root / "DCIM"
        second = start_import(cfg, source, tmp_path / "second.err")
        wait_until(lambda: "waiting" in (tmp_path / "second.err").read_text() or second.poll() is not None,
                   "the second import to wait")
        said = (tmp_path / "second.err").read_text()
        assert second.poll() is None, said
        assert f"pid {first.pid}" in said and str(card.root) in said
        (tmp_path / "go").touch()
        out1, _ = first.communicate(timeout=120)
        out2, _ = second.communicate(timeout=120)
    finally:
        (tmp_path / "go").touch()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    r1, r2 = json.loads(out1), json.loads(out2)
    assert (first.returncode, r1["copy_status"], r1["total_files"]) == (0, "completed", len(card.files))
    assert second.returncode == 0 and r2["import_session_id"] is None  # nothing new: all archived by the first
    assert r2["duplicates_skipped"] == len([f for f in card.files if second_source == "the card" or f.startswith("DCIM/")])
    ss = sessions(cfg)
    assert len(ss) == 1
    archived = tree_hashes(Path(ss[0]["storage_path"]) / "files")
    assert archived == tree_hashes(card.root)


HOLDER = textwrap.dedent("""
    import sys, time
    from imalinkd.sourcelock import holding_source
    with holding_source(sys.argv[1], sys.argv[2]):
        print("held", flush=True)
        time.sleep(3600)
""")


def test_a_lock_left_by_a_killed_import_holds_nobody_up(tmp_path):
    locks, source = tmp_path / "locks", tmp_path / "card"
    source.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(locks), str(source)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        waited: list[Claim] = []
        cancel = threading.Event()
        blocked = SourceLock(locks, claim_for(str(source)))
        cancel.set()  # held: the wait ends at once, having said what it waits for
        with pytest.raises(sourcelock.SourceWaitCancelled):
            blocked.acquire(cancel, waited.append)
        assert [c.pid for c in waited] == [holder.pid]
    finally:
        holder.kill()
        holder.wait()
    lock = SourceLock(locks, claim_for(str(source)))
    lock.acquire(None, waited.append)  # the killed one's claim is stale: no wait
    assert len(waited) == 1
    assert [p.name for p in locks.glob("import-*.json")] == [lock.path.name]
    lock.release()
    assert not list(locks.glob("import-*.json"))


def claim(path: str, dev: int = 1, fs_uuid: str | None = None) -> Claim:
    return Claim(source=path, fs_path=path, dev=dev, fs_uuid=fs_uuid, pid=1, host="h", command="c", since="s")


def test_which_sources_are_one_source():
    card = claim("/", dev=7, fs_uuid="1234-ABCD")
    assert card.conflicts_with(claim("/DCIM", dev=7))  # a folder of the card, same mount
    assert card.conflicts_with(claim("/", dev=9, fs_uuid="1234-abcd"))  # the card mounted a second time
    assert not card.conflicts_with(claim("/", dev=9, fs_uuid="5678-0000"))  # another card
    assert not claim("/home/a/photos", dev=2).conflicts_with(claim("/home/a/photos2", dev=2))
    assert claim("/home/a/photos", dev=2).conflicts_with(claim("/home/a", dev=2))
    assert not claim("/srv/x", dev=2).conflicts_with(claim("/srv/x", dev=3))


@pytest.mark.slow
@pytest.mark.root
def test_a_card_the_command_line_is_importing_makes_the_daemon_wait(tmp_path, make_exfat_card):
    """The card is mounted twice (as a desktop and the daemon's automounter might): the
    command line imports it from one mount point, the daemon sees the other. The daemon's
    job waits for the command line (same file system UUID) and then finds nothing new."""
    from test_daemon_e2e import Daemon, sessions, wait_for

    card = make_exfat_card("EOS_DIGITAL", shots=6, mb_per_file=0.3)
    (tmp_path / "media").mkdir()
    cfg = tmp_path / "imalinkd.toml"
    cfg.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/catalog.db"\n\n[storage]\nroot = "{tmp_path}/archive"\n\n'
                   f'[api]\nlisten = ""\n\n[daemon]\nstate_dir = "{tmp_path}/state"\nmount_paths = ["{tmp_path}/media"]\n\n'
                   '[import]\nthumbnails = false\n')
    from imalinkd import storage

    storage.init_storage(tmp_path / "archive")
    card.mount(tmp_path / "desktop")  # not the daemon's business (outside its mount_paths)
    first = start_import(cfg, tmp_path / "desktop", tmp_path / "first.err", pause_dir=tmp_path)
    daemon = Daemon(tmp_path, cfg)
    try:
        wait_until(lambda: (tmp_path / "paused").exists() or first.poll() is not None, "the command line to start copying")
        assert first.poll() is None, first.communicate()
        daemon.start()
        card.mount(tmp_path / "media" / "EOS_DIGITAL")
        wait_for(lambda: daemon.has_event("import_waiting_for_source"), 60, "the daemon's job to wait for the command line")
        waited = next(e for e in daemon.log_events() if e.get("event") == "import_waiting_for_source")
        assert f"pid {first.pid}" in waited["held_by"]
        (tmp_path / "go").touch()
        out, _ = first.communicate(timeout=120)
        assert first.returncode == 0 and json.loads(out)["copy_status"] == "completed"
        wait_for(lambda: daemon.has_event("card_already_imported"), 60, "the daemon to find the card imported")
        ss = sessions(cfg)
        assert len(ss) == 1 and ss[0]["total_files"] == len(card.files)
        daemon.stop()
    finally:
        (tmp_path / "go").touch()
        if first.poll() is None:
            first.kill()
            first.communicate()
        daemon.close()
