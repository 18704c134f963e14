"""Reindex benchmark: an archive of 100,000 small files in 1,000 sessions.

Builds the archive (files plus a manifest per session) in a temporary directory, then times
``find ROOT -type f | wc -l`` and ``reindex_path`` into a fresh SQLite catalog on the same
tree, in the same run, and prints both and their ratio (the target is at most 3x).

    python benchmarks/reindex_bench.py [--sessions 1000] [--files 100] [--dir DIR] [--keep] [--cold]

By default both are timed with a warm page cache (an untimed ``find`` first). ``--cold``
(root only) drops the page cache before each timed run instead, as for a drive just
plugged in; it affects the whole machine's cache for a moment.
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
from imalinkd.reindex import reindex_path  # noqa: E402

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--files", type=int, default=100, help="files per session")
    ap.add_argument("--dir", help="where to build the archive (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the archive and catalog afterwards")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each timed run (root only)")
    args = ap.parse_args()
    base = tempfile.mkdtemp(prefix="imalinkd-bench-", dir=args.dir)
    root = os.path.join(base, "archive")
    try:
        t = time.monotonic()
        n = build(root, args.sessions, args.files)
        print(f"built {n} files in {args.sessions} sessions in {time.monotonic() - t:.1f} s")
        if args.cold:
            drop_caches()
        else:  # warm the cache the same way for both: one untimed find
            subprocess.run(f"find '{root}' -type f | wc -l", shell=True, check=True, capture_output=True)
        t = time.monotonic()
        out = subprocess.run(f"find '{root}' -type f | wc -l", shell=True, check=True, capture_output=True, text=True)
        t_find = time.monotonic() - t
        config = parse_config({"catalog": {"url": f"sqlite:///{base}/catalog.db"}, "storage": {"root": root}})
        catalog = Catalog.open(config)
        import logging

        import structlog

        structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
        if args.cold:
            drop_caches()
        t = time.monotonic()
        report = reindex_path(config, catalog, root)
        t_reindex = time.monotonic() - t
        added = sum(r.images_added for r in report.roots)
        t = time.monotonic()
        again = reindex_path(config, catalog, root)
        t_again = time.monotonic() - t
        catalog.close()
        ratio = t_reindex / t_find if t_find else float("inf")
        print(f"page cache: {'cold (dropped before each timed run)' if args.cold else 'warm'}")
        print(f"find ROOT -type f | wc -l: {out.stdout.strip()} files in {t_find:.3f} s")
        print(f"reindex_path (fresh catalog): {added} images in {t_reindex:.3f} s, rejected {len(report.rejected)}")
        print(f"reindex_path (unchanged, second run): {t_again:.3f} s, rejected {len(again.rejected)}")
        print(f"ratio reindex/find: {ratio:.2f}x (target <= {TARGET:.0f}x) {'OK' if ratio <= TARGET else 'OVER TARGET'}")
        return 0 if ratio <= TARGET and added == n else 1
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
