"""Catalog-scale benchmark: read commands and API pages on a catalog of many sessions.

Fills a SQLite catalog (in a temporary directory) with N sessions holding M images between
them (default 10,000 / 1,000,000; ``--small``: 1,000 / 100,000), written straight through
SQLite after the catalog is created at the newest schema. Then times, in rounds that take
turns case by case, and prints each case's median:

- ``sessions --json`` (the whole list, as before pagination) and ``sessions --json --limit 50``,
  each a whole command in a new process;
- ``status --json``, a whole command;
- one API page, ``GET /import-sessions?limit=50``, and ``GET /metrics``, through a real
  server on 127.0.0.1 (the process's start-up not counted);
- CLI start-up: ``sessions --json`` on an empty catalog, a whole command.

The sessions' drive is not plugged in (their ``storage_id`` names no mounted root), as for
an archive drive on a shelf: every listing still looks for it. The load average is printed
with the figures; compare runs only on a machine in the same state.

    python benchmarks/catalog_bench.py [--small] [--sessions N] [--images M] [--rounds 5] [--dir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(HERE))


def write_config(base: Path, name: str, listen: str = "") -> Path:
    cfg = base / f"{name}.toml"
    cfg.write_text(f'[catalog]\nurl = "sqlite:///{base / (name + ".db")}"\n\n[storage]\nroot = "{base / "archive"}"\n\n'
                   f'[daemon]\nstate_dir = "{base / "state"}"\n\n[api]\nlisten = "{listen}"\n')
    return cfg


def fill(db: Path, sessions: int, images: int) -> None:
    """``sessions`` completed sessions on one drive (not plugged in), ``images`` files among them."""
    from imalinkd.catalog import Catalog

    Catalog.open(f"sqlite:///{db}").close()  # the schema, migrated to the newest revision
    drive = str(uuid.uuid4())
    per = max(1, images // sessions)
    con = sqlite3.connect(db)
    con.execute("PRAGMA synchronous=OFF")
    con.executemany(
        "INSERT INTO import_sessions (id, storage_uuid, storage_id, storage_directory_name, created_at, copy_status, "
        "storage_size_mb, copy_files, total_files, total_size_bytes, photos_created, duplicates_skipped, skipped_count, "
        "planned_files, planned_bytes, missing) VALUES (?, ?, ?, ?, ?, 'completed', 0, 1, ?, ?, ?, 0, 0, 0, 0, 0)",
        ((i + 1, u, drive, f"2026{1 + i % 12:02d}01_import_card_{u.replace('-', '')[:8]}",
          f"2026-{1 + i % 12:02d}-01 {i % 24:02d}:{i % 60:02d}:00.000000", per, per * 25_000_000, per)
         for i, u in ((i, str(uuid.UUID(int=i + 1))) for i in range(sessions))))
    con.commit()
    rows = ((1 + n % sessions, f"DCIM/100CANON/IMG_{n:07d}.CR3", 25_000_000 + n % 7,
             hashlib.sha256(n.to_bytes(8, "little")).hexdigest()) for n in range(images))
    con.executemany("INSERT INTO images (session_id, storage_relative_path, file_size, sha256, size_mismatch) "
                    "VALUES (?, ?, ?, ?, 0)", rows)
    con.commit()
    con.close()


def command(cfg: Path, *args: str):
    def run() -> None:
        r = subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(cfg), *args], cwd=HERE,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise SystemExit(f"imalinkd {' '.join(args)} failed: {r.stderr.strip()}")
    return run


def request(client, path: str):
    def run() -> None:
        r = client.get(path)
        if r.status_code != 200:
            raise SystemExit(f"GET {path}: {r.status_code} {r.text[:200]}")
    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="1,000 sessions / 100,000 images")
    ap.add_argument("--sessions", type=int)
    ap.add_argument("--images", type=int)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--dir", help="where to build the catalogs (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the catalogs")
    a = ap.parse_args()
    sessions = a.sessions or (1_000 if a.small else 10_000)
    images = a.images or (100_000 if a.small else 1_000_000)
    base = Path(tempfile.mkdtemp(prefix="catalog-bench-", dir=a.dir))
    try:
        return bench(base, sessions, images, a.rounds)
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)


def bench(base: Path, sessions: int, images: int, rounds: int) -> int:
    import httpx

    from imalinkd.api import start_api_server
    from imalinkd.catalog import Catalog
    from imalinkd.config import load_config

    (base / "archive").mkdir()
    big, empty = write_config(base, "big", "127.0.0.1:0"), write_config(base, "empty")
    t0 = time.perf_counter()
    fill(base / "big.db", sessions, images)
    Catalog.open(f"sqlite:///{base / 'empty.db'}").close()
    print(f"catalog of {sessions:,} sessions / {images:,} images filled in {time.perf_counter() - t0:.1f} s", flush=True)
    config = load_config(str(big))
    catalog = Catalog.open(config)
    server = start_api_server(config, catalog, token="bench-token")
    client = httpx.Client(base_url=server.url, timeout=600)
    cases = {
        "sessions --json (all)": command(big, "sessions", "--json"),
        "sessions --json --limit 50": command(big, "sessions", "--json", "--limit", "50"),
        "status --json": command(big, "status", "--json"),
        "GET /import-sessions?limit=50": request(client, "/import-sessions?limit=50"),
        "GET /metrics": request(client, "/metrics"),
        "start-up: sessions --json, empty catalog": command(empty, "sessions", "--json"),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for name, run in cases.items():  # one untimed round: caches warm, as for a user's second command
            run()
        for _ in range(rounds):
            for name, run in cases.items():
                t = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - t)
    finally:
        client.close()
        server.stop()
        catalog.close()
    load = os.getloadavg()
    print(f"\n{'case':<44} {'median s':>9} {'min s':>8} {'max s':>8}   ({rounds} interleaved rounds)")
    for name, ts in times.items():
        print(f"{name:<44} {statistics.median(ts):>9.3f} {min(ts):>8.3f} {max(ts):>8.3f}")
    print(f"\nload average after the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
