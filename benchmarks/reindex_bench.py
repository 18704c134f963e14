"""Reindex benchmark: an archive of 100,000 small files in 1,000 sessions.

Builds the archive (files plus a manifest per session) in a temporary directory, then times
``find ROOT -type f | wc -l`` and ``reindex_path`` into a fresh SQLite catalog on the same
tree, in the same run, and prints both and their ratio (the target is at most 3x):

- warm: the page cache holds the tree (one untimed ``find`` first);
- cold: the page cache is dropped before each timed run, as for a drive just plugged in
  (root only; it affects the whole machine's cache for a moment; ``--warm-only`` skips it);
- then, warm again, the time of each stage on a third fresh catalog: reading the drive,
  planning, and writing the catalog.

    python benchmarks/reindex_bench.py [--sessions 1000] [--files 100] [--dir DIR] [--keep] [--warm-only]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from imalinkd import manifest as mf, storage  # noqa: E402
from imalinkd.catalog import Catalog  # noqa: E402
from imalinkd.config import parse_config  # noqa: E402
from imalinkd.reindex import apply_plan, load_catalog_state, plan_reindex, read_drive, reindex_path  # noqa: E402

TARGET = 3.0


def build(root: str, sessions: int, files: int) -> int:
    marker = storage.init_storage(root, "bench")
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    n = 0
    for i in range(sessions):
        sid = str(uuid.UUID(int=i + 1, version=4))
        when = start + timedelta(hours=i)
        sdir = os.path.join(root, storage.session_dir_name(when, f"card{i}", sid))
        entries = []
        for j in range(files):
            # RAW+JPEG pairs, 50 files to a camera folder
            rel = f"DCIM/{100 + j // 50}CANON/IMG_{j // 2:04d}.{'CR3' if j % 2 else 'JPG'}"
            data = f"{i}:{j}".encode()
            path = os.path.join(sdir, "files", rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
            entries.append(mf.FileEntry(rel, "files/" + rel, len(data), hashlib.sha256(data).hexdigest(),
                                        storage.iso(when), media={"camera_make": "Canon", "camera_model": "EOS R5",
                                                                  "taken_at": "2026-01-01T10:00:00", "width": 8192,
                                                                  "height": 5464}))
            n += 1
        m = mf.SessionManifest(sid, marker.storage_id, storage.iso(when) or "", "/media/card", f"card{i}",
                               {"kind": "card", "label": f"CARD{i}"}, "completed", storage.iso(when),
                               storage.iso(when), photos_created=(files + 1) // 2, file_manifest=entries)
        with open(os.path.join(sdir, mf.FILENAME), "w") as f:  # plain write: setup speed only
            import json

            json.dump(m.as_json(), f)
    return n


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def time_find(root: str) -> tuple[float, str]:
    t = time.monotonic()
    out = subprocess.run(f"find '{root}' -type f | wc -l", shell=True, check=True, capture_output=True, text=True)
    return time.monotonic() - t, out.stdout.strip()


def fresh_catalog(base: str, name: str, root: str):
    config = parse_config({"catalog": {"url": f"sqlite:///{base}/{name}.db"}, "storage": {"root": root}})
    return config, Catalog.open(config)


def time_reindex(base: str, name: str, root: str):
    config, catalog = fresh_catalog(base, name, root)
    t = time.monotonic()
    report = reindex_path(config, catalog, root)
    seconds = time.monotonic() - t
    return config, catalog, report, seconds


def stages(base: str, root: str) -> dict[str, float]:
    """Each stage of one root's reindex, timed apart (warm cache, fresh catalog)."""
    _config, catalog = fresh_catalog(base, "catalog-stages", root)
    marker = storage.read_marker(root)
    times: dict[str, float] = {}
    t = time.monotonic()
    drive, _rejected = read_drive(root, marker)
    times["read the drive (manifests + file sizes)"] = time.monotonic() - t
    with catalog.session() as s:
        t = time.monotonic()
        plan = plan_reindex(drive, load_catalog_state(s, drive))
        times["plan (catalog state + diff)"] = time.monotonic() - t
        t = time.monotonic()
        apply_plan(s, plan, storage.utcnow())
        t_apply = time.monotonic() - t
        t = time.monotonic()
    times["write the catalog (inserts + commit)"] = t_apply + time.monotonic() - t
    catalog.close()
    return times


def verdict(ratio: float) -> str:
    return f"{ratio:.2f}x (target <= {TARGET:.0f}x) {'OK' if ratio <= TARGET else 'OVER TARGET'}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--files", type=int, default=100, help="files per session")
    ap.add_argument("--dir", help="where to build the archive (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the archive and catalogs afterwards")
    ap.add_argument("--warm-only", action="store_true", help="skip the cold-cache runs (they need root)")
    args = ap.parse_args()
    cold = not args.warm_only and os.geteuid() == 0
    base = tempfile.mkdtemp(prefix="imalinkd-bench-", dir=args.dir)
    root = os.path.join(base, "archive")
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    try:
        t = time.monotonic()
        n = build(root, args.sessions, args.files)
        print(f"built {n} files in {args.sessions} sessions in {time.monotonic() - t:.1f} s")
        ok = True

        # warm: one untimed find fills the cache the same way for both
        time_find(root)
        t_find, count = time_find(root)
        config, catalog, report, t_reindex = time_reindex(base, "catalog-warm", root)
        added = sum(r.images_added for r in report.roots)
        t = time.monotonic()
        again = reindex_path(config, catalog, root)
        t_again = time.monotonic() - t
        catalog.close()
        warm = t_reindex / t_find if t_find else float("inf")
        ok = ok and warm <= TARGET and added == n
        print("\n== warm page cache ==")
        print(f"find ROOT -type f | wc -l: {count} files in {t_find:.3f} s")
        print(f"reindex_path (fresh catalog): {added} images in {t_reindex:.3f} s, rejected {len(report.rejected)}")
        print(f"reindex_path (unchanged, second run): {t_again:.3f} s, rejected {len(again.rejected)}")
        print(f"warm ratio reindex/find: {verdict(warm)}")

        print("\n== cold page cache (dropped before each timed run) ==")
        if cold:
            drop_caches()
            c_find, count = time_find(root)
            drop_caches()
            _config, catalog, report, c_reindex = time_reindex(base, "catalog-cold", root)
            catalog.close()
            c_added = sum(r.images_added for r in report.roots)
            ratio = c_reindex / c_find if c_find else float("inf")
            ok = ok and ratio <= TARGET and c_added == n
            print(f"find ROOT -type f | wc -l: {count} files in {c_find:.3f} s")
            print(f"reindex_path (fresh catalog): {c_added} images in {c_reindex:.3f} s, rejected {len(report.rejected)}")
            print(f"cold ratio reindex/find: {verdict(ratio)}")
        else:
            print("skipped (" + ("--warm-only" if args.warm_only else "dropping the page cache needs root") + ")")

        print("\n== stages of a fresh reindex (warm page cache) ==")
        times = stages(base, root)
        for name, seconds in times.items():
            print(f"{name:<42} {seconds:6.3f} s  {seconds / t_find:6.1f}x find")
        print(f"{'total':<42} {sum(times.values()):6.3f} s")
        return 0 if ok else 1
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
