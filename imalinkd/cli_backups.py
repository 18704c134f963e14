"""Commands about backup archives and the verdict: ``safe`` and ``replicate`` (DESIGN §8).

Registered by :mod:`imalinkd.cli` (``add_commands``, ``COMMANDS``); same conventions: exit
0 success, 1 a problem found (not safe, a copy failed), 2 usage; ``--json`` for scripts."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from imalinkd.errors import UsageError

EXIT_OK, EXIT_FAILED = 0, 1


def add_commands(add: Callable[..., argparse.ArgumentParser], js: argparse.ArgumentParser) -> None:
    c = add("safe", "can this card or folder be formatted? (verified copies on distinct drives, from the catalog; "
                    "the source is only read)", js)
    c.add_argument("source", help="a mounted card or a folder")

    c = add("replicate", "copy what the backup archives are short of from the primary archive (verified)", js)
    c.add_argument("session", nargs="?", help="UUID, its 8-character prefix, or the directory name")
    c.add_argument("--all", action="store_true", help="every session")


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _catalog(config):
    from imalinkd.catalog import Catalog

    return Catalog.open(config)


def _where(item: dict) -> str:
    on = ", ".join(f"{o['label']} ({o['storage_id'][:8]})" for o in item["on"]) or "nowhere"
    reason = f" — {item['reason']}" if item.get("reason") else ""
    return f"{item['path']}: {item['copies']} cop{'y' if item['copies'] == 1 else 'ies'}, on {on}{reason}"


def cmd_safe(config, args) -> int:
    from imalinkd.verdict import source_verdict

    if not os.path.isdir(args.source):
        raise UsageError(f"{args.source} is not a directory: give a mounted card or a folder")
    catalog = _catalog(config)
    try:
        v = source_verdict(config, catalog, args.source)
    finally:
        catalog.close()
    if args.json:
        _print_json(v)
    else:
        print(f"{v['source']}: {v['verdict']}")
        if v["safe_to_format"]:
            print("  the source is no longer needed")
        for item in v["short_files"]:
            print(f"  short: {_where(item)}")
        if v["short_count"] > len(v["short_files"]):
            print(f"  … and {v['short_count'] - len(v['short_files'])} more")
    return EXIT_OK if v["safe_to_format"] else EXIT_FAILED


def cmd_replicate(config, args) -> int:
    from imalinkd.replicate import replicate

    if not args.all and not args.session:
        raise UsageError("replicate needs a SESSION or --all")
    if not config.storage.backups:
        raise UsageError("no backup archives are configured ([storage] backups)")
    catalog = _catalog(config)
    try:
        report = replicate(config, catalog, None if args.all else [args.session])
    finally:
        catalog.close()
    if args.json:
        _print_json(report.as_json())
    else:
        print(f"copied {report.copied} file(s) to backup archives")
        for a in report.absent:
            print(f"  backup {a['backup']} not reachable: {a['reason']}")
        for p in report.problems:
            print(f"  problem: {p}")
    return EXIT_OK if report.ok else EXIT_FAILED


COMMANDS: dict[str, Callable[[Any, argparse.Namespace], int]] = {
    "safe": cmd_safe,
    "replicate": cmd_replicate,
}
