"""A seeded randomized loop of the worst moments of an import: the importer killed
(``kill -9``), the card pulled (``umount -l`` of the card) or the archive drive yanked
(``umount -l`` of the archive), each at a random point of a random import.

Every run imports a card (exFAT through FUSE, as a camera card is mounted) into an archive
on an ext4 loop image, with the command line. The importer is held at a chosen point (the
Nth file's copy, or the Nth file's commit: a file appears, the process waits) while the
blow is dealt, then let go, so a run is the same every time for a seed and no wall-clock
timing decides anything. After each run:

- nothing was written on the file system under the archive's (or the card's) bare mount
  point;
- every file the session's manifest lists as archived is byte-exact on the drive, and no
  file under a final name differs from its source; the rest is "not yet archived";
- after plugging back what was pulled, ``imalinkd resume`` completes the session, and every
  source file is in the archive byte-exact (``verify`` agrees).

Run it as part of the suite (``-m slow``, as root) or on its own with other seeds::

    sudo python3 tests/test_chaos_loop.py --runs 50 --seed 7
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # imalinkd itself, when run as a script

from cards import make_card, sha256_of, tree_hashes  # noqa: E402
from mounts import ext4_image, is_mounted, make_exfat_image, require_exfat, require_root, run, umount  # noqa: E402

from imalinkd import durable, storage  # noqa: E402
from imalinkd.config import load_config  # noqa: E402
from imalinkd.importer import verify_sessions  # noqa: E402
from imalinkd.manifest import read_manifest  # noqa: E402
from waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
RUNS = 20
SEED = 20261201
MODES = ("kill", "pull", "yank")

# The importer, held at a point: argv[3] names it ("copy" or "commit"), argv[4] the how
# manyth; on reaching it the process creates <argv[5]>/held and waits for <argv[5]>/go.
IMPORTER = textwrap.dedent("""
    import os, sys, threading, time
    import imalinkd.durable as durable
    point, nth, where = sys.argv[3], int(sys.argv[4]), sys.argv[5]
    seen, lock = [0], threading.Lock()
    def hold():
        with lock:
            seen[0] += 1
            here = seen[0] == nth
        if here:
            open(os.path.join(where, "held"), "w").close()
            while not os.path.exists(os.path.join(where, "go")):
                time.sleep(0.005)
    if point == "copy":
        real_copy = durable.copy_to_sinks
        def copy_to_sinks(*args, **kwargs):
            hold()
            return real_copy(*args, **kwargs)
        durable.copy_to_sinks = copy_to_sinks
    else:
        real_commit = durable.Sink.commit
        def commit(self):
            hold()
            return real_commit(self)
        durable.Sink.commit = commit
    from imalinkd.cli import main
    raise SystemExit(main(["--config", sys.argv[1], "import", sys.argv[2], "--json"]))
""")


def imalinkd(cfg: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(cfg), *args], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=timeout)




@dataclass
class Plan:
    run: int
    mode: str
    point: str  # copy | commit
    nth: int
    shots: int
    card_seed: int

    def __str__(self) -> str:
        return f"run {self.run}: {self.mode} at the {self.point} of file {self.nth} (card of {self.shots} shots, seed {self.card_seed})"


def plans(runs: int, seed: int) -> list[Plan]:
    rng = random.Random(seed)
    out = []
    for i in range(runs):
        shots = rng.randint(3, 8)
        files = shots + (shots + 1) // 2
        out.append(Plan(i, MODES[i % len(MODES)], rng.choice(("copy", "commit")), rng.randint(1, files), shots, rng.randint(1, 1 << 30)))
    return out


class Bench:
    """One run's drives: the card (exFAT image, FUSE) and the archive (ext4 image)."""

    def __init__(self, base: Path, plan: Plan) -> None:
        self.base = base
        self.plan = plan
        self.card = make_card(base / "card-tree", shots=plan.shots, raw_kb=96, seed=plan.card_seed)
        self.card_image = make_exfat_image(base / "card.img", label="EOS_DIGITAL", size_mb=16, tree=self.card.root)
        self.card_mnt = base / "card"
        self.archive_mnt = base / "archive"
        self.archive_image = base / "archive.img"
        self.loops: list[str] = []
        self.cfg = base / "imalinkd.toml"
        self.root = self.archive_mnt / "photos"
        self.cfg.write_text(f'[catalog]\nurl = "sqlite:///{base}/state/catalog.db"\n\n[storage]\nroot = "{self.root}"\n\n'
                            f'[import]\nthumbnails = false\ncheckpoint_seconds = 0.0\n\n[api]\nlisten = ""\n\n'
                            f'[daemon]\nstate_dir = "{base}/state"\n')

    # drives ------------------------------------------------------------------------------

    def plug_card(self) -> None:
        self.card_mnt.mkdir(exist_ok=True)
        dev = run("losetup", "-f", "--show", str(self.card_image))
        self.loops.append(dev)
        run("mount.exfat-fuse", "-o", "ro", dev, str(self.card_mnt))

    def plug_archive(self) -> None:
        self.archive_mnt.mkdir(exist_ok=True)
        run("mount", "-o", "loop", str(self.archive_image), str(self.archive_mnt))

    def pull(self, mount_point: Path) -> None:
        subprocess.run(["umount", "-l", str(mount_point)], check=True, capture_output=True)

    def close(self) -> None:
        for mp in (self.card_mnt, self.archive_mnt):
            while is_mounted(mp):
                umount(mp)
        for dev in self.loops:
            subprocess.run(["losetup", "-d", dev], capture_output=True)

    # checks ------------------------------------------------------------------------------

    def bare(self, mount_point: Path) -> list[str]:
        """What lies on the file system under ``mount_point`` (it must not be mounted)."""
        assert not is_mounted(mount_point)
        return sorted(str(p.relative_to(mount_point)) for p in mount_point.rglob("*"))

    def session_dirs(self) -> list[Path]:
        return sorted(p for p in self.root.iterdir() if p.is_dir() and "_import_" in p.name)


def check_archived_or_named(bench: Bench, out: str) -> str | None:
    """Every file the drive's manifest lists is byte-exact; nothing under a final name
    differs from its source. Returns the session id (None: no session was begun)."""
    dirs = bench.session_dirs()
    assert len(dirs) <= 1, dirs
    if not dirs:
        return None
    sdir = dirs[0]
    manifest = read_manifest(sdir)
    listed = set()
    for e in manifest.file_manifest:
        assert bench.card.files.get(e.original_path) == e.sha256, f"{e.original_path}: the manifest's sha256 is not the source's"
        assert sha256_of(sdir / e.storage_path) == e.sha256, f"{e.storage_path}: not byte-exact on the drive"
        listed.add(e.original_path)
    for rel, sha in tree_hashes(sdir / "files").items():
        if durable.is_partial_name(os.path.basename(rel)):
            continue
        assert bench.card.files.get(rel) == sha, f"files/{rel}: under a final name, but not its source's bytes"
    if manifest.copy_status == "completed":
        assert listed == set(bench.card.files), "completed without every file"
    else:
        assert manifest.copy_status in ("in_progress", "failed")
    if out.strip():  # what the importer said, when it lived to say it
        said = json.loads(out)
        if said["copy_status"] == "completed":
            assert manifest.copy_status == "completed" and listed == set(bench.card.files)
            assert "no longer needed" in (said.get("message") or "")
        else:
            assert "no longer needed" not in (said.get("message") or "")
    return manifest.import_session_id


def one_run(base: Path, plan: Plan) -> None:
    bench = Bench(base, plan)
    try:
        with ext4_image(bench.archive_mnt, size_mb=48, image=bench.archive_image):
            storage.init_storage(bench.root)
        bench.plug_archive()
        bench.plug_card()
        held = base / "hold"
        held.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", IMPORTER, str(bench.cfg), str(bench.card_mnt), plan.point, str(plan.nth),
                                 str(held)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: (held / "held").exists() or proc.poll() is not None, "the importer to reach its point")
            if plan.mode == "kill":
                proc.kill()
            elif plan.mode == "pull":
                bench.pull(bench.card_mnt)
            else:
                bench.pull(bench.archive_mnt)
            (held / "go").touch()
            out, err = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        if plan.mode == "yank":
            bare = bench.bare(bench.archive_mnt)
            assert bare == [], f"written under the bare mount point of the yanked archive: {bare[:6]}"
            bench.plug_archive()
        if plan.mode == "pull":
            assert bench.bare(bench.card_mnt) == []
            bench.plug_card()
        sid = check_archived_or_named(bench, out if plan.mode != "kill" else "")
        if sid is None:  # stopped before a session was begun: a new import simply works
            r = imalinkd(bench.cfg, "import", str(bench.card_mnt), "--json")
            assert r.returncode == 0, r.stderr
            sid = json.loads(r.stdout)["import_session_id"]
        else:
            r = imalinkd(bench.cfg, "resume", sid[:8], "--json")
            assert r.returncode == 0 and json.loads(r.stdout)["copy_status"] == "completed", r.stdout + r.stderr
        (sdir,) = bench.session_dirs()
        archived = {rel: sha for rel, sha in tree_hashes(sdir / "files").items()}
        assert archived == bench.card.files, "after resume the archive is not the card, byte for byte"
        report = verify_sessions(load_config(bench.cfg), [sid])
        assert report.ok, report.as_json()
    finally:
        bench.close()
    assert bench.bare(bench.archive_mnt) == [] and bench.bare(bench.card_mnt) == []


def run_loop(base: Path, runs: int = RUNS, seed: int = SEED, modes: tuple[str, ...] = MODES) -> list[tuple[Plan, str]]:
    """All runs; returns the failed ones with what failed (a run's failure does not stop the loop)."""
    failed = []
    for plan in plans(runs, seed):
        if plan.mode not in modes:
            continue
        here = base / f"run{plan.run:03d}"
        here.mkdir(parents=True)
        try:
            one_run(here, plan)
        except Exception as e:  # noqa: BLE001 - reported with the run that failed
            failed.append((plan, f"{e.__class__.__name__}: {e}"))
    return failed


@pytest.mark.slow
@pytest.mark.root
@pytest.mark.parametrize("mode", MODES)
def test_kill_pull_and_yank_at_random_points_lose_nothing(tmp_path, mode):
    require_root()
    require_exfat()
    failed = run_loop(tmp_path, RUNS, SEED, (mode,))
    assert not failed, "\n".join(f"{plan}: {why}" for plan, why in failed)


def main() -> int:
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="The seeded kill/pull/yank loop (root).")
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--mode", choices=MODES, action="append", help="only these modes (default: all)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imalinkd-chaos-") as tmp:
        failed = run_loop(Path(tmp), args.runs, args.seed, tuple(args.mode or MODES))
    for plan, why in failed:
        print(f"FAILED {plan}: {why}")
    print(f"{args.runs} runs, seed {args.seed}: {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
