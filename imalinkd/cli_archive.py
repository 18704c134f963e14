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


COMMANDS: dict[str, Callable[[Any, argparse.Namespace], int]] = {
    "write-checksums": cmd_write_checksums,
}
