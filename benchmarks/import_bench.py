"""Import benchmark: imalinkd against cp, a manual verified copy and rsync, then at card speed.

Generates a card-like tree once (RAW-sized 20-30 MB and JPEG-sized 5-8 MB files of random
bytes in DCIM/1xxCANON folders, plus a few real JPEGs with EXIF so that thumbnails do real
work), then times, in the same run and on the same file system, with the page cache dropped
before every case and a fresh destination per case (deleted afterwards):

    a  cp -a SRC DST && sync
    b  manual verified copy: cp -a, sync, drop caches, sha256sum every file on both sides, compare
    c  rsync -a SRC/ DST/ && sync
    d  imalinkd import, verify = sha256 (read-back from disk), thumbnails off
    e  imalinkd import, verify = size, thumbnails off
    f  imalinkd import, verify = sha256, thumbnails on

Each imalinkd case runs the real CLI (``python -m imalinkd import``) as a subprocess with a
fresh SQLite catalog and storage root, so start-up, catalog migration and the final manifest
are all counted.

Then the card-speed case: the tree in an ext4 image on a read-only loop device, its reads
throttled to ``--throttle-mbps`` through a blkio cgroup; one plain read of the card (``cat``
of every file) against a verified imalinkd import from it, and against one that also feeds a
backup archive from the same read (two destinations, ``[storage] backups``; goal <= 1.15x).

Needs root (dropping caches, loop devices, cgroups), coreutils, rsync and e2fsprogs.

    sudo python3 benchmarks/import_bench.py [--size-gib 2] [--workdir DIR] [--throttle-mbps 250]
    sudo python3 benchmarks/import_bench.py --quick      # about 256 MiB, a smoke test
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1_000_000
MiB = 1024 * 1024
GiB = 1024 * MiB

# (name, target, what the time ratio is between); ratios are time / time
TARGETS = [
    ("imalinkd sha256 / cp+sync", 2.0, "d", "a"),
    ("imalinkd sha256 / manual verified copy", 0.5, "d", "b"),
    ("imalinkd size / cp+sync", 1.2, "e", "a"),
    ("thumbnails on / off (sha256)", 1.1, "f", "d"),
]
CARD_TARGET = 1.1
TWO_TARGET = 1.15  # the same read feeding the archive and a backup archive


class BenchError(Exception):
    """A precondition or a measured command failed; the message says which and why."""


@dataclass
class Case:
    key: str
    name: str
    seconds: float | None = None
    note: str = ""


# --- the card tree -----------------------------------------------------------------------------


def generate_tree(root: str, total_bytes: int, jpegs: int, seed: int = 1) -> tuple[int, int]:
    """Write the card tree below ``root``; returns (files, bytes). RAW+JPEG pairs, 40 files
    to a folder as cameras do, random content so that nothing compresses or deduplicates."""
    rng = random.Random(seed)
    dcim = os.path.join(root, "DCIM")
    files = size = 0
    shot = 1
    chunk = 4 * MiB
    while size < total_bytes:
        folder = os.path.join(dcim, f"{100 + (shot - 1) // 20}CANON")
        os.makedirs(folder, exist_ok=True)
        for ext, lo, hi in (("CR3", 20, 30), ("JPG", 5, 8)):
            n = rng.randint(lo * MB, hi * MB)
            with open(os.path.join(folder, f"IMG_{shot:04d}.{ext}"), "wb") as f:
                left = n
                while left:
                    k = min(chunk, left)
                    f.write(rng.randbytes(k))
                    left -= k
            files += 1
            size += n
        shot += 1
    f_, s_ = generate_jpegs(os.path.join(dcim, f"{100 + shot // 20 + 1}CANON"), jpegs, rng)
    return files + f_, size + s_


def generate_jpegs(folder: str, count: int, rng: random.Random) -> tuple[int, int]:
    """Real 3000x2000 JPEGs with camera EXIF (make, model, capture time, orientation)."""
    if count <= 0:
        return 0, 0
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        raise BenchError("Pillow is needed to generate the real JPEGs (pip install Pillow), or pass --jpegs 0") from None
    os.makedirs(folder, exist_ok=True)
    base = Image.radial_gradient("L").resize((3000, 2000))
    size = 0
    for i in range(count):
        img = Image.merge("RGB", (base, base.rotate(90 * (i % 4)).resize((3000, 2000)), Image.linear_gradient("L").resize((3000, 2000))))
        draw = ImageDraw.Draw(img)
        for _ in range(200):  # some edges, so the encoder has detail to work on
            x, y = rng.randrange(3000), rng.randrange(2000)
            draw.rectangle((x, y, x + rng.randrange(20, 300), y + rng.randrange(20, 300)),
                           fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        exif = Image.Exif()
        exif[0x010F] = "Canon"  # Make
        exif[0x0110] = "Canon EOS R5"  # Model
        exif[0x0112] = 1 if i % 5 else 6  # Orientation: some portrait shots
        exif[0x0132] = f"2026:01:02 10:{i // 60:02d}:{i % 60:02d}"
        exif.get_ifd(0x8769)[0x9003] = f"2026:01:02 10:{i // 60:02d}:{i % 60:02d}"  # DateTimeOriginal
        path = os.path.join(folder, f"IMG_{9000 + i:04d}.JPG")
        img.save(path, "JPEG", quality=92, exif=exif)
        size += os.path.getsize(path)
    return count, size


def tree_size(root: str) -> tuple[int, int]:
    files = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for n in names:
            files += 1
            size += os.lstat(os.path.join(dirpath, n)).st_size
    return files, size


# --- measuring ---------------------------------------------------------------------------------


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def timed(cmd: list[str] | str, what: str, env: dict | None = None, cgroup_procs: str | None = None) -> tuple[float, str]:
    """Run ``cmd`` after dropping caches; return (seconds, stdout). A shell string runs under
    ``sh -c``. With ``cgroup_procs`` the command joins that cgroup before it starts."""
    argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    if cgroup_procs:
        argv = ["sh", "-c", f'echo $$ > {shlex.quote(cgroup_procs)} && exec "$@"', "sh", *argv]
    drop_caches()
    t = time.monotonic()
    p = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    elapsed = time.monotonic() - t
    if p.returncode != 0:
        raise BenchError(f"{what} failed (exit {p.returncode}):\n  {' '.join(map(shlex.quote, argv))}\n{p.stderr.strip()[-2000:]}")
    return elapsed, p.stdout


def fresh_dir(workdir: str, name: str) -> str:
    d = os.path.join(workdir, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    return d


def manual_verified_copy(src: str, dst: str) -> str:
    """The shell pipeline a careful person would type; fails when any digest differs."""
    q = shlex.quote
    listing = "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum"
    return (
        f"cp -a {q(src)} {q(dst + '/card')} && sync && echo 3 > /proc/sys/vm/drop_caches && "
        f"(cd {q(src)} && {listing}) > {q(dst + '/src.sha256')} && "
        f"(cd {q(dst + '/card')} && {listing}) > {q(dst + '/dst.sha256')} && "
        f"cmp -s {q(dst + '/src.sha256')} {q(dst + '/dst.sha256')}"
    )


def imalinkd_command(case_dir: str, src: str, verify: str, thumbnails: bool, backup: bool = False) -> tuple[list[str], dict]:
    """The CLI import into a fresh catalog and storage root below ``case_dir`` (and, with
    ``backup``, a backup archive beside it), each made a storage root first, not timed."""
    cfg = os.path.join(case_dir, "imalinkd.toml")
    backups = f"backups = {json.dumps([os.path.join(case_dir, 'backup')])}\ncopies = 1\n" if backup else ""
    with open(cfg, "w") as f:
        f.write(
            f'[daemon]\nstate_dir = {json.dumps(os.path.join(case_dir, "state"))}\n'
            f'[storage]\nroot = {json.dumps(os.path.join(case_dir, "archive"))}\n{backups}'
            f"[import]\nverify = {json.dumps(verify)}\nthumbnails = {'true' if thumbnails else 'false'}\n"
        )
    base = [sys.executable, "-m", "imalinkd", "--config", cfg, "--log-level", "warning"]
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for root in ("archive", "backup") if backup else ("archive",):  # only init-storage makes a storage root
        subprocess.run([*base, "init-storage", os.path.join(case_dir, root)], env=env, check=True, capture_output=True)
    argv = [*base, "import", src, "--description", "bench", "--verify", verify, "--json"]
    if not thumbnails:
        argv.append("--no-thumbnails")
    return argv, env


def check_import(out: str, files: int, what: str) -> str:
    try:
        result = json.loads(out)
    except ValueError:
        raise BenchError(f"{what}: the CLI did not print JSON:\n{out[-2000:]}") from None
    if result.get("copy_status") != "completed" or result.get("total_files") != files:
        raise BenchError(f"{what}: import did not complete as expected "
                         f"(copy_status={result.get('copy_status')}, total_files={result.get('total_files')} of {files}, "
                         f"error={result.get('error')})")
    return f"{result.get('photos_created')} photos"


def run_imalinkd(workdir: str, key: str, src: str, verify: str, thumbnails: bool, files: int,
                 cgroup_procs: str | None = None, backup: bool = False) -> tuple[float, str]:
    d = fresh_dir(workdir, f"case-{key}")
    try:
        argv, env = imalinkd_command(d, src, verify, thumbnails, backup)
        secs, out = timed(argv, f"imalinkd ({verify}, thumbnails {'on' if thumbnails else 'off'})", env, cgroup_procs)
        note = check_import(out, files, f"case {key}")
        if thumbnails:
            thumbs = os.path.join(d, "archive")
            made = sum(1 for sd in glob.glob(os.path.join(thumbs, "*", "thumbnails"))
                       for _dp, _ds, ns in os.walk(sd) for n in ns if n.endswith(".jpg"))
            note += f", {made} thumbnails"
        return secs, note
    finally:
        shutil.rmtree(d, ignore_errors=True)


# --- the throttled card -------------------------------------------------------------------------


class Card:
    """The tree in an ext4 image, attached read-only to a loop device and mounted read-only.
    Cleans up (unmount, detach, delete) on exit, also after a failure."""

    def __init__(self, workdir: str, tree: str, tree_bytes: int) -> None:
        self.image = os.path.join(workdir, "card.img")
        self.mnt = os.path.join(workdir, "card-mnt")
        self.tree = tree
        self.tree_bytes = tree_bytes
        self.dev: str | None = None
        self.mounted = False

    def __enter__(self) -> "Card":
        size = int(self.tree_bytes * 1.1) + 128 * MiB
        with open(self.image, "wb") as f:
            f.truncate(size)
        sh(["mkfs.ext4", "-q", "-F", "-L", "BENCHCARD", "-d", self.tree, self.image], "mkfs.ext4 -d (building the card image)")
        try:
            self.dev = sh(["losetup", "--find", "--show", "--read-only", "--direct-io=on", self.image], "losetup").strip()
        except BenchError:  # older kernels: no direct I/O on loop; the cache drop still applies
            self.dev = sh(["losetup", "--find", "--show", "--read-only", self.image], "losetup").strip()
        os.makedirs(self.mnt, exist_ok=True)
        sh(["mount", "-o", "ro,noload", "-t", "ext4", self.dev, self.mnt], "mount of the card image")
        self.mounted = True
        return self

    @property
    def major_minor(self) -> str:
        rdev = os.stat(self.dev).st_rdev
        return f"{os.major(rdev)}:{os.minor(rdev)}"

    def __exit__(self, *exc) -> None:
        if self.mounted:
            subprocess.run(["umount", self.mnt], check=False)
        if self.dev:
            subprocess.run(["losetup", "-d", self.dev], check=False)
        shutil.rmtree(self.mnt, ignore_errors=True)
        try:
            os.unlink(self.image)
        except OSError:
            pass


class ReadThrottle:
    """A cgroup whose reads from one device are limited to ``bps`` bytes/s: cgroup v1
    ``blkio.throttle.read_bps_device`` or cgroup v2 ``io.max rbps=``. ``procs`` is the file a
    process writes its PID to in order to join. ``reason`` says why it could not be set up."""

    def __init__(self, major_minor: str, bps: int) -> None:
        self.path: str | None = None
        self.procs: str | None = None
        self.reason = ""
        self.kind = ""
        name = f"imalinkd-bench-{os.getpid()}"
        v1 = "/sys/fs/cgroup/blkio"
        if os.path.exists(os.path.join(v1, "blkio.throttle.read_bps_device")):
            try:
                self.path = os.path.join(v1, name)
                os.makedirs(self.path, exist_ok=True)
                write(os.path.join(self.path, "blkio.throttle.read_bps_device"), f"{major_minor} {bps}")
                self.procs, self.kind = os.path.join(self.path, "cgroup.procs"), "cgroup v1 blkio.throttle.read_bps_device"
                return
            except OSError as e:
                self.reason = f"cgroup v1 blkio: {e.strerror}"
                self.close()
        v2 = v2_mount()
        if v2 is None:
            self.reason = self.reason or "no cgroup v1 blkio hierarchy and no cgroup v2 mount"
            return
        try:
            if "io" not in read(os.path.join(v2, "cgroup.controllers")).split():
                self.reason += ("; " if self.reason else "") + "cgroup v2 without the io controller"
                return
            if "io" not in read(os.path.join(v2, "cgroup.subtree_control")).split():
                write(os.path.join(v2, "cgroup.subtree_control"), "+io")
            self.path = os.path.join(v2, name)
            os.makedirs(self.path, exist_ok=True)
            write(os.path.join(self.path, "io.max"), f"{major_minor} rbps={bps}")
            self.procs, self.kind = os.path.join(self.path, "cgroup.procs"), "cgroup v2 io.max rbps"
            self.reason = ""
        except OSError as e:
            self.reason += ("; " if self.reason else "") + f"cgroup v2 io.max: {e.strerror}"
            self.close()

    def close(self) -> None:
        if self.path and os.path.isdir(self.path):
            try:
                os.rmdir(self.path)
            except OSError:
                pass
        self.path = self.procs = None


def v2_mount() -> str | None:
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return parts[1]
    return None


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text + "\n")


def sh(argv: list[str], what: str) -> str:
    p = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise BenchError(f"{what} failed (exit {p.returncode}): {p.stderr.strip()}")
    return p.stdout


# --- the run -------------------------------------------------------------------------------------


def preconditions(card_case: bool) -> list[str]:
    """Refuse early with a clear message; returns warnings for optional parts."""
    if os.geteuid() != 0:
        raise BenchError("must run as root: every case starts with 'echo 3 > /proc/sys/vm/drop_caches', "
                         "and the card case needs a loop device and a cgroup")
    missing = [t for t in ("cp", "sync", "sha256sum", "find", "xargs", "sort", "cmp", "cat") if shutil.which(t) is None]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)} (coreutils, findutils, diffutils)")
    warnings = []
    if shutil.which("rsync") is None:
        warnings.append("rsync not found: case c skipped (install it: apt-get install rsync)")
    if card_case:
        lacking = [t for t in ("mkfs.ext4", "losetup", "mount", "umount") if shutil.which(t) is None]
        if lacking:
            raise BenchError(f"the card case needs {', '.join(lacking)} (e2fsprogs, util-linux); or pass --no-card")
    return warnings


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-gib", type=float, default=2.0, help="size of the card tree (default 2)")
    ap.add_argument("--quick", action="store_true", help="a smoke test: about 256 MiB")
    ap.add_argument("--workdir", help="where the tree and every destination go (default: the temp dir); "
                                      "all copies land on this one file system")
    ap.add_argument("--throttle-mbps", type=float, default=250, help="card read speed in MB/s (default 250, UHS-II)")
    ap.add_argument("--jpegs", type=int, default=20, help="real 3000x2000 JPEGs added to the tree (default 20)")
    ap.add_argument("--repeat", type=int, default=1, help="run every case N times and keep the fastest (default 1); "
                                                          "use 3 on a machine with noisy I/O")
    ap.add_argument("--no-card", action="store_true", help="skip the throttled loop-device case")
    ap.add_argument("--keep-tree", action="store_true", help="keep the generated tree (reused by a later run with the same --workdir)")
    args = ap.parse_args()
    size = int((0.25 if args.quick else args.size_gib) * GiB)
    try:
        return run(args, size)
    except BenchError as e:
        print(f"import_bench: {e}", file=sys.stderr)
        return 1


def run(args, size: int) -> int:
    for w in preconditions(not args.no_card):
        print(f"warning: {w}")
    workdir = tempfile.mkdtemp(prefix="imalinkd-import-bench-", dir=args.workdir) if not args.keep_tree else \
        os.path.abspath(os.path.join(args.workdir or tempfile.gettempdir(), "imalinkd-import-bench"))
    os.makedirs(workdir, exist_ok=True)
    src = os.path.join(workdir, "card")
    try:
        stamp = os.path.join(workdir, f"tree-{size}-{args.jpegs}.done")
        if os.path.exists(stamp):
            files, total = tree_size(src)
            print(f"reusing the card tree: {files} files, {total / MB:.0f} MB in {src}")
        else:
            shutil.rmtree(src, ignore_errors=True)
            t = time.monotonic()
            generate_tree(src, size - args.jpegs * 2 * MB, args.jpegs)
            files, total = tree_size(src)
            open(stamp, "w").close()
            print(f"generated the card tree: {files} files, {total / MB:.0f} MB in {time.monotonic() - t:.0f} s")
        fs = os.statvfs(workdir)
        if fs.f_bavail * fs.f_frsize < total * 2.5:
            raise BenchError(f"not enough room in {workdir}: each case needs a second copy of {total / MB:.0f} MB, "
                             "the card case a third")
        print(f"workdir {workdir}; caches dropped before every case\n")
        cases = measure(workdir, src, files, total, args.repeat)
        report(cases, total, args.repeat)
        if not args.no_card:
            card_case(workdir, src, files, total, args.throttle_mbps, args.repeat)
    finally:
        if args.keep_tree:
            for name in os.listdir(workdir):
                if name.startswith("case-"):
                    shutil.rmtree(os.path.join(workdir, name), ignore_errors=True)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def best_of(repeat: int, measure_once) -> tuple[float, str]:
    """The fastest of ``repeat`` runs (noise on a shared machine only ever adds time)."""
    runs = [measure_once() for _ in range(max(1, repeat))]
    return min(runs, key=lambda r: r[0])


def measure(workdir: str, src: str, files: int, total: int, repeat: int) -> dict[str, Case]:
    """Every case once per round, ``repeat`` rounds, keeping each case's fastest run: the
    cases take turns, so a slow patch of the shared machine does not land on one case only
    (noise only ever adds time)."""
    cases = {k: Case(k, n) for k, n in (
        ("a", "cp -a + sync"),
        ("b", "manual verified copy"),
        ("c", "rsync -a + sync"),
        ("d", "imalinkd sha256"),
        ("e", "imalinkd size"),
        ("f", "imalinkd sha256 + thumbnails"),
    )}
    q = shlex.quote

    def shell_case(key: str, command):
        def once() -> tuple[float, str]:
            d = fresh_dir(workdir, f"case-{key}")
            try:
                return timed(command(d), cases[key].name)[0], ""
            finally:
                shutil.rmtree(d, ignore_errors=True)
        return once

    runs = {
        "a": shell_case("a", lambda d: f"cp -a {q(src)} {q(d + '/card')} && sync"),
        "b": shell_case("b", lambda d: manual_verified_copy(src, d)),
    }
    if shutil.which("rsync"):
        runs["c"] = shell_case("c", lambda d: f"rsync -a {q(src + '/')} {q(d + '/card/')} && sync")
    else:
        cases["c"].note = "rsync not installed"
    for key, verify, thumbs in (("d", "sha256", False), ("e", "size", False), ("f", "sha256", True)):
        runs[key] = (lambda key=key, verify=verify, thumbs=thumbs: run_imalinkd(workdir, key, src, verify, thumbs, files))
    for rnd in range(max(1, repeat)):
        for key, once in runs.items():
            seconds, note = once()
            if cases[key].seconds is None or seconds < cases[key].seconds:
                cases[key].seconds, cases[key].note = seconds, note or cases[key].note
            print(f"  round {rnd + 1}: {cases[key].name}: {seconds:.2f} s", flush=True)
    print()
    return cases


def progress(case: Case, total: int) -> None:
    print(f"  done: {case.name}: {case.seconds:.2f} s", flush=True)


def report(cases: dict[str, Case], total: int, repeat: int) -> None:
    if repeat > 1:
        print(f"fastest of {repeat} runs per case")
    print(f"{'case':<36} {'seconds':>8} {'MB/s':>8}  note")
    for c in cases.values():
        if c.seconds is None:
            print(f"{c.key}) {c.name:<33} {'-':>8} {'-':>8}  {c.note}")
        else:
            print(f"{c.key}) {c.name:<33} {c.seconds:8.2f} {total / MB / c.seconds:8.1f}  {c.note}")
    print()
    print(f"{'ratio (time / time)':<40} {'value':>6} {'target':>8}")
    for name, target, num, den in TARGETS:
        a, b = cases[num].seconds, cases[den].seconds
        if a is None or b is None:
            print(f"{name:<40} {'-':>6}")
            continue
        r = a / b
        print(f"{name:<40} {r:6.2f} {'<= ' + format(target, '.1f'):>8}  {'met' if r <= target else 'MISSED'}")
    d, f = cases["d"].seconds, cases["f"].seconds
    if d and f:
        print(f"thumbnails on vs off, throughput: {d / f:.2f} of the throughput without thumbnails (issue 5: >= 0.90)")
    print()


def card_case(workdir: str, src: str, files: int, total: int, mbps: float, repeat: int) -> None:
    bps = int(mbps * MB)
    print(f"card-speed case: the tree on a read-only loop device, reads limited to {mbps:g} MB/s")
    with Card(workdir, src, total) as card:
        throttle = ReadThrottle(card.major_minor, bps)
        try:
            if throttle.procs is None:
                print(f"  WARNING: read throttling is impossible here ({throttle.reason}); "
                      "the ratio below is UNTHROTTLED (loop device at disk speed)")
            else:
                print(f"  throttle: {throttle.kind} {card.major_minor} {bps} on {card.dev}")
            q = shlex.quote
            plain, _ = best_of(repeat, lambda: timed(f"find {q(card.mnt)} -type f -exec cat {{}} + > /dev/null",
                                                     "plain read of the card", cgroup_procs=throttle.procs))
            print(f"  done: plain read: {plain:.2f} s", flush=True)
            imp, note = best_of(repeat, lambda: run_imalinkd(workdir, "card", card.mnt, "sha256", False, files,
                                                             cgroup_procs=throttle.procs))
            print(f"  done: imalinkd sha256 from the card: {imp:.2f} s", flush=True)
            two, _ = best_of(repeat, lambda: run_imalinkd(workdir, "card2", card.mnt, "sha256", False, files,
                                                          cgroup_procs=throttle.procs, backup=True))
            print(f"  done: imalinkd sha256 from the card to an archive and a backup: {two:.2f} s", flush=True)
        finally:
            throttle.close()
    print()
    print(f"{'card case':<36} {'seconds':>8} {'MB/s':>8}")
    print(f"{'plain read (cat every file)':<36} {plain:8.2f} {total / MB / plain:8.1f}")
    print(f"{'imalinkd sha256, thumbnails off':<36} {imp:8.2f} {total / MB / imp:8.1f}")
    print(f"{'imalinkd sha256, + backup archive':<36} {two:8.2f} {total / MB / two:8.1f}")
    r = imp / plain
    print(f"{'import / plain read':<36} {r:8.2f}   target <= {CARD_TARGET}  {'met' if r <= CARD_TARGET else 'MISSED'}"
          + ("" if throttle.kind else "  (UNTHROTTLED)"))
    r2 = two / plain
    print(f"{'two destinations / plain read':<36} {r2:8.2f}   target <= {TWO_TARGET}  {'met' if r2 <= TWO_TARGET else 'MISSED'}"
          + ("" if throttle.kind else "  (UNTHROTTLED)"))
    print(f"  load average during the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    if throttle.kind and total / MB / plain > mbps * 1.1:
        print(f"  WARNING: the plain read ran at {total / MB / plain:.0f} MB/s, above the {mbps:g} MB/s limit: "
              "the throttle did not take effect, so this is not card speed")


if __name__ == "__main__":
    sys.exit(main())
