"""Commands that look after archives for the long run: ``write-checksums`` and ``scrub``.

Kept apart from :mod:`imalinkd.cli`, which registers them (``add_commands``, ``COMMANDS``);
same conventions: exit 0 success, 1 a problem found, 2 usage; ``--json`` for scripts."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from imalinkd.errors import UsageError

EXIT_OK, EXIT_FAILED = 0, 1


def add_commands(add: Callable[..., argparse.ArgumentParser], js: argparse.ArgumentParser) -> None:
    c = add("write-checksums", "write each session's manifest-sha256.txt (for sha256sum -c) from its metadata.json", js)
    c.add_argument("path", nargs="?", help="a storage root or a mount point holding one")
    c.add_argument("--all", action="store_true", help="every reachable storage root")

    c = add("scrub", "re-verify a slice of an archive drive's files (oldest-verified first) and record the results", js)
    c.add_argument("path", nargs="?", help="a storage root or a mount point holding one")
    c.add_argument("--all", action="store_true", help="every reachable storage root")
    c.add_argument("--budget", default="pass", help='how much to read: "10%%" of the drive\'s bytes, "20GB", "30m", '
                                                    'or "pass" (default: the rest of the current pass)')


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _roots(config, path: str | None, every: bool) -> list[tuple[str, str]]:
    """``(path, storage_id)`` of the roots a command works on: those at or below ``path``,
    or with ``every`` each one reachable now."""
    from imalinkd import locate
    from imalinkd.catalog import Catalog

    if path is None and not every:
        raise UsageError("give a PATH (a storage root or a mount point) or --all")
    if path is not None:
        path = os.path.abspath(path)
        if not os.path.isdir(path):
            raise UsageError(f"{path} is not a directory: give a storage root or a mount point")
        found, _bad = locate.discover_roots(path, config.storage.search_depth)
        if not found:
            raise UsageError(f"no storage root at {path} or below it (no config.json marker)")
        return [(f.path, f.marker.storage_id) for f in found]
    catalog = Catalog.open(config)
    try:
        return [(loc["path"], loc["storage_id"]) for loc in locate.scan_locations(config, catalog)]
    finally:
        catalog.close()


def cmd_write_checksums(config, args) -> int:
    from imalinkd import checksums

    results = []
    for root, storage_id in _roots(config, args.path, args.all):
        results.append({"path": root, "storage_id": storage_id, **checksums.write_for_root(root)})
    if args.json:
        _print_json(results)
    else:
        if not results:
            print("no storage root reachable")
        for r in results:
            print(f"{r['path']}: {len(r['written'])} written, {len(r['unchanged'])} already in step, "
                  f"{len(r['busy'])} being imported (left to the import)")
    bad = False
    for r in results:
        for item in r["rejected"]:
            print(f"imalinkd: rejected {os.path.join(r['path'], item)}", file=sys.stderr)
            bad = True
    return EXIT_FAILED if bad else EXIT_OK


def cmd_scrub(config, args) -> int:
    from imalinkd import storage
    from imalinkd.catalog import Catalog
    from imalinkd.scrub.budget import BudgetError, parse_budget
    from imalinkd.scrub.engine import lower_io_priority, scrub_root

    try:
        budget = parse_budget(args.budget)
    except BudgetError as e:
        raise UsageError(str(e)) from None
    roots = _roots(config, args.path, args.all)
    lower_io_priority()
    cancel = _cancel_on_signals()
    catalog = Catalog.open(config)
    reports = []
    try:
        for root, _sid in roots:
            marker = storage.read_marker(root)
            if marker is None or cancel.is_set():
                continue
            reports.append(scrub_root(catalog, root, marker, budget, cancel=cancel))
    finally:
        catalog.close()
    if args.json:
        _print_json([r.as_json() for r in reports])
    else:
        _say_scrubs(reports)
    return EXIT_FAILED if any(r.findings for r in reports) else EXIT_OK


def _say_scrubs(reports) -> None:
    if not reports:
        print("no storage root reachable")
    for r in reports:
        if not r.files_on_drive:
            print(f"{r.root}: the catalog knows no files on this drive; run 'imalinkd reindex {r.root}' first")
            continue
        state = "pass complete" if r.pass_completed else f"{r.left_in_pass} files left in this pass"
        print(f"{r.root} ({r.label!r}): checked {r.checked} of {r.files_on_drive} files "
              f"({r.bytes_checked} of {r.bytes_on_drive} bytes), {len(r.findings)} not intact; {state}")
        for f in r.findings:
            where = "; ".join(f"{c['label'] or c['storage_id']}: {c['path']} ({c['last_check']})" for c in f.other_copies)
            print(f"  {f.result.upper()}: {f.directory_name}/{f.path}" + (f" ({f.detail})" if f.detail else ""))
            print(f"    another copy: {where}" if where else "    no other copy is known")


def _cancel_on_signals():
    """SIGINT/SIGTERM: stop after the file being read (which is then not recorded)."""
    import signal
    import threading

    cancel = threading.Event()

    def handler(signum, _frame):
        print(f"imalinkd: {signal.Signals(signum).name}: stopping the scrub", file=sys.stderr)
        cancel.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return cancel


def scrub_overview(catalog) -> dict:
    """The scrub part of ``imalinkd status``: each drive's pass, the files not intact."""
    from imalinkd.scrub.findings import scrub_status

    return scrub_status(catalog)


def say_scrub_overview(scrub: dict) -> None:
    for d in scrub["drives"]:
        if d["last_scrub_at"]:
            print(f"scrub of {d['label']!r}: last {d['last_scrub_at']}, {d['passes_completed']} full passes, "
                  f"{d['checked_in_current_pass']} files checked in the current one")
    for f in scrub["damaged"]:
        where = "; ".join(f"{c['label'] or c['storage_id']}: {c['path']}" for c in f["other_copies"]) or "no other copy known"
        print(f"  {f['result'].upper()} on {f['label']!r}: {f['storage_directory_name']}/{f['file']} "
              f"(session {f['session_id'][:8]}, checked {f['checked_at']}); another copy: {where}")


COMMANDS: dict[str, Callable[[Any, argparse.Namespace], int]] = {
    "write-checksums": cmd_write_checksums,
    "scrub": cmd_scrub,
}
