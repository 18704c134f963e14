"""The ``imalinkd`` command line: a thin layer over the engine.

Exit codes (DESIGN §6): 0 success; 1 the operation failed or found a problem; 2 usage or
configuration error. Read commands take ``--json`` for scripts; human output goes to
stdout, logs and progress to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from typing import Any, Callable

from imalinkd import __version__, cli_archive, cli_backups, cli_camera
from imalinkd.errors import ImalinkError, UsageError, human_bytes

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with one clear line
        self.print_usage(sys.stderr)
        print(f"imalinkd: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", "-c", metavar="FILE", default=argparse.SUPPRESS,
                        help="config file (default: $IMALINKD_CONFIG, then /etc/imalinkd/imalinkd.toml, then built-in defaults)")
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=argparse.SUPPRESS,
                        help="log level for this command (logs go to stderr)")
    js = argparse.ArgumentParser(add_help=False)
    js.add_argument("--json", action="store_true", help="machine-readable JSON on stdout")

    p = _Parser(prog="imalinkd", description="Photo-ingest daemon: cards copied, verified and catalogued into a portable archive.",
                parents=[common], epilog="Exit codes: 0 success, 1 operation failed or found a problem, 2 usage or configuration error.")
    p.add_argument("--version", action="version", version=f"imalinkd {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, parents=[common, *parents])

    c = add("run", "run the daemon: watch mounts and drop folders, import cards, serve the API and the web UI")
    c.add_argument("--log-format", choices=["auto", "console", "json"], default="auto",
                   help="log lines: readable on a terminal, JSON under systemd or when piped (auto, the default)")

    c = add("import", "import a folder or a mounted card as one new session", js)
    c.add_argument("source", help="folder or mount point to import (only read, never written)")
    c.add_argument("--storage", metavar="ROOT", help="storage root to import into (default: [storage] root)")
    c.add_argument("--description", "-d", help="session description (goes into the directory name)")
    c.add_argument("--verify", choices=["size", "sha256", "paranoid"], help="verification level (default: [import] verify)")
    c.add_argument("--no-thumbnails", action="store_true", help="do not generate thumbnails")
    c.add_argument("--in-place", action="store_true", help="catalogue the files where they are, without copying (a legacy session)")

    c = add("init-storage", "make PATH a storage root (writes its config.json marker)", js)
    c.add_argument("path")
    c.add_argument("--label", help="human name of the archive (default: the directory name)")

    c = add("sessions", "list import sessions, newest first", js)
    c.add_argument("--status", choices=["not_started", "in_progress", "completed", "failed"], help="only sessions with this status")
    c.add_argument("--limit", type=_positive, metavar="N", help="at most N sessions (default: all)")
    c.add_argument("--offset", type=_not_negative, default=0, metavar="K", help="skip the K newest first (default: 0)")

    c = add("status", "storage status of a session, or an overview without SESSION", js)
    c.add_argument("session", nargs="?", help="UUID, its 8-character prefix, or the directory name")

    c = add("verify", "re-hash archived files against their recorded sha256", js)
    c.add_argument("session", nargs="?")
    c.add_argument("--all", action="store_true", help="verify every session")

    c = add("resume", "finish a failed or interrupted session without re-copying committed files", js)
    c.add_argument("session")
    c.add_argument("--source", help="where the source is now (the card mounted at another path)")

    c = add("rollback", "remove a failed session's directory and catalog rows", js)
    c.add_argument("session")
    c.add_argument("--force", action="store_true", help="also for a completed session (deletes archived files)")

    c = add("reindex", "reconcile the catalog with the archive drives (from their manifests)", js)
    c.add_argument("path", nargs="?", help="a mount point or storage root (default: every reachable root)")
    c.add_argument("--verify", action="store_true", help="also re-hash every file")

    add("scan-locations", "list every reachable storage root", js)

    c = add("update-storage-path", "tell the catalog where a session's storage root is now (manual override)", js)
    c.add_argument("session")
    c.add_argument("path", help="the storage root (or the session directory) at its new path")

    c = add("adopt", "copy a legacy (in-place) session into the storage root, with verification", js)
    c.add_argument("session")

    add("check-config", "validate the config and print the settings in effect", js)
    cli_archive.add_commands(add, js)
    cli_camera.add_commands(add, js)
    cli_backups.add_commands(add, js)
    return p


def _positive(text: str) -> int:
    n = _not_negative(text)
    if n == 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text!r}")
    return n


def _not_negative(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, not {text!r}")
    return n


# --- output helpers -----------------------------------------------------------------------


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _say(text: str) -> None:
    print(text)


class _ProgressBar:
    """A rich progress bar on a terminal, nothing otherwise. ``transfer``: an import's
    (files, bytes, MB/s, current file); else a count of ``p.unit`` with the bytes when there
    are any (a reindex: session directories read, files and bytes verified)."""

    def __init__(self, enabled: bool, transfer: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.transfer = transfer
        self.bar = None
        self.task = None
        self._lock = threading.Lock()

    def __enter__(self) -> "_ProgressBar":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

            amounts = (DownloadColumn(), TransferSpeedColumn()) if self.transfer else (TextColumn("{task.fields[amount]}"),)
            self.bar = Progress(
                TextColumn("{task.description}"), BarColumn(), *amounts,
                TextColumn("{task.fields[files]}"), TimeRemainingColumn(), TextColumn("{task.fields[current]}"),
                console=Console(stderr=True), transient=False,
            )
            self.bar.__enter__()
            self.task = self.bar.add_task("scanning" if self.transfer else "reading", total=None, files="", current="", amount="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def update(self, p) -> None:
        if self.bar is None:
            return
        from imalinkd.paths import display

        with self._lock:
            current = display(p.current_file)[-40:] if p.current_file else ""
            files = f"{p.files_done}/{p.files_total} {getattr(p, 'unit', 'files')}"
            if self.transfer or p.bytes_total:
                total, done = p.bytes_total or None, p.bytes_done
            else:
                total, done = p.files_total or None, p.files_done
            amount = f"{human_bytes(p.bytes_done)}/{human_bytes(p.bytes_total)}" if p.bytes_total else ""
            self.bar.update(self.task, description=p.phase.replace("_", " "), total=total, completed=done,
                            files=files, current=current, amount=amount)


# --- commands ------------------------------------------------------------------------------


def _import_result_out(result, as_json: bool) -> int:
    if as_json:
        _print_json(result.as_json())
    else:
        if result.session_uuid is None:
            _say(result.message or "nothing to import")
        else:
            _say(f"session {result.session_uuid} ({result.storage_directory_name}): {result.copy_status}")
            _say(f"  {result.total_files} files, {human_bytes(result.total_size_bytes)}, {result.photos_created} photos, "
                 f"{result.other_files} other files, "
                 f"{result.duplicates_skipped} duplicates skipped, {sum(1 for s in result.skipped if not s.duplicate_of)} other entries skipped")
            if result.storage_path:
                _say(f"  at {result.storage_path}")
            if result.message:
                _say(f"  {result.message}")
    from imalinkd.paths import display

    for s in result.skipped:
        if not s.duplicate_of:
            print(f"imalinkd: skipped {display(s.original_path)}: {s.reason}", file=sys.stderr)
    if result.copy_status != "completed":
        print(f"imalinkd: import failed: {result.error}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _cancel_on_signals() -> threading.Event:
    """SIGINT/SIGTERM during an import: stop after the files in flight are parked, leaving a
    failed session that 'imalinkd resume' completes."""
    import signal

    cancel = threading.Event()

    def handler(signum, _frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        print(f"imalinkd: {signal.Signals(signum).name}: stopping after the files in flight", file=sys.stderr)
        cancel.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return cancel


def cmd_import(config, args) -> int:
    if args.in_place:
        from imalinkd import legacy

        result = legacy.import_in_place(config, _catalog(config), args.source, args.description)
        if args.json:
            _print_json(result.as_json())
        else:
            _say(f"legacy session {result.as_json().get('import_session_id')}: files catalogued in place")
        return EXIT_OK
    from imalinkd.importer import import_source

    with _ProgressBar(not args.json) as bar:
        result = import_source(config, args.source, description=args.description, storage_root=args.storage, verify=args.verify,
                               thumbnails=False if args.no_thumbnails else None, progress=bar.update, cancel=_cancel_on_signals(),
                               on_source_wait=_say_waiting)
    return _import_result_out(result, args.json)


def _say_waiting(holder) -> None:
    print(f"imalinkd: waiting: another import holds this source: {holder.describe()}; this one goes on when that "
          "one ends (Ctrl-C gives up)", file=sys.stderr, flush=True)


def cmd_resume(config, args) -> int:
    from imalinkd.importer import resume_session

    with _ProgressBar(not args.json) as bar:
        result = resume_session(config, args.session, source=args.source, progress=bar.update, cancel=_cancel_on_signals(),
                                on_source_wait=_say_waiting)
    return _import_result_out(result, args.json)


def cmd_init_storage(config, args) -> int:
    from imalinkd import storage
    from imalinkd.catalog import Catalog
    from imalinkd.importer import record_root

    marker = storage.init_storage(args.path, args.label)
    record_root(Catalog.open(config), os.path.abspath(args.path), marker)
    out = {"path": os.path.abspath(args.path), **marker.as_json()}
    if args.json:
        _print_json(out)
    else:
        _say(f"storage root {out['path']}: storage_id {marker.storage_id}, label {marker.label!r}")
    return EXIT_OK


def _catalog(config):
    from imalinkd.catalog import Catalog

    return Catalog.open(config)


def cmd_sessions(config, args) -> int:
    from imalinkd import session_list
    from imalinkd.sessions import session_json
    from imalinkd.verdict import session_fields

    catalog = _catalog(config)
    page = session_list.page(catalog, args.status, args.limit, args.offset)
    where = session_list.locations(config, catalog, page.rows)
    out = [session_json(r, where[r.id], session_fields(config, catalog, r)) for r in page.rows]
    if args.json:
        _print_json(out)
        return EXIT_OK
    if not out:
        _say("no import sessions yet" if not page.total else f"no sessions past the first {args.offset} of {page.total}")
    elif len(out) < page.total:
        _say(f"sessions {args.offset + 1}-{args.offset + len(out)} of {page.total} (--limit, --offset for others)")
    for o in out:
        where = o["storage_path"] or "(storage not reachable)"
        _say(f"{o['import_session_id'][:8]}  {o['copy_status']:<11} {o['total_files']:>6} files  {human_bytes(o['total_size_bytes']):>10}  {o['storage_directory_name']}  {where}")
    return EXIT_OK


def cmd_status(config, args) -> int:
    from sqlalchemy import func, select

    from imalinkd import locate
    from imalinkd.catalog import ImportSession, StorageRoot, find_session

    catalog = _catalog(config)
    if args.session:
        with catalog.session() as s:
            row = find_session(s, args.session)
        from imalinkd.verdict import session_fields

        st = locate.storage_status(config, catalog, row)
        st.update(session_fields(config, catalog, row))
        if args.json:
            _print_json(st)
        else:
            state = "accessible" if st["storage_accessible"] else "NOT accessible (drive not connected?)"
            _say(f"session {row.storage_uuid} ({row.storage_directory_name}): {st.get('copy_status')}")
            _say(f"  storage {state}{': ' + st['storage_path'] if st['storage_path'] else ''}")
            _say(f"  {st['files_accessible']}/{st['total_files']} files accessible")
            _say(f"  verified: {describe_verification(st['verification'], st['readback'])}")
            _say(f"  {st['verdict']}")
        return EXIT_OK
    with catalog.session() as s:
        counts = dict(s.execute(select(ImportSession.copy_status, func.count()).group_by(ImportSession.copy_status)).all())
        roots = list(s.scalars(select(StorageRoot)))
    out = {"catalog": config.catalog_url.split("///")[-1] if config.catalog_url.startswith("sqlite") else "(database)",
           "sessions_by_status": counts,
           "storage_roots": [{"storage_id": r.storage_id, "label": r.label, "last_seen_path": r.last_seen_path,
                              "free_bytes": r.free_bytes, "total_bytes": r.total_bytes} for r in roots]}
    out["scrub"] = cli_archive.scrub_overview(catalog)
    if args.json:
        _print_json(out)
    else:
        _say(f"sessions: {', '.join(f'{v} {k}' for k, v in counts.items()) or 'none'}")
        for r in out["storage_roots"]:
            _say(f"storage {r['label']!r} ({r['storage_id']}) last seen at {r['last_seen_path']}")
        cli_archive.say_scrub_overview(out["scrub"])
    return EXIT_OK


def describe_verification(level: str | None, readback: str | None) -> str:
    """One line on how a session's copies were verified, saying what the check was worth."""
    if level == "size":
        return "by size only (no re-read)"
    what = f"{level or 'sha256'}"
    if readback == "from-disk":
        return f"{what}, re-read from the disk"
    if readback == "page-cache-possible":
        return (f"{what}, re-read through a cache that may still hold the data (FUSE or network file system): "
                "not proof of what the disk holds; 'imalinkd verify' as root reads past it")
    return f"{what} (how the copies were re-read was not recorded)"


def cmd_verify(config, args) -> int:
    from imalinkd.importer import verify_sessions

    if not args.all and not args.session:
        raise UsageError("verify needs a SESSION or --all")
    report = verify_sessions(config, None if args.all else [args.session])
    if args.json:
        _print_json(report.as_json())
    else:
        _say(f"checked {report.checked} files: " + ("all match their sha256" if report.ok else "PROBLEMS FOUND"))
        for d in report.damaged:
            _say(f"  damaged: {d}")
        for m in report.missing:
            _say(f"  missing: {m}")
        for sid in report.inaccessible:
            _say(f"  storage not reachable for session {sid}")
        if report.readback == "page-cache-possible":
            _say("  note: some files were re-read through a cache that may hold them (a FUSE file system whose device "
                 "imalinkd may not read, a network file system): not a check of the disk itself")
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_rollback(config, args) -> int:
    from imalinkd.importer import rollback_session

    out = rollback_session(config, args.session, force=args.force)
    if args.json:
        _print_json(out)
    else:
        _say(f"rolled back session {out['import_session_id']}" + (f"; removed {out['removed_directory']}" if out["removed_directory"] else ""))
    return EXIT_OK


def cmd_reindex(config, args) -> int:
    from imalinkd import reindex

    catalog = _catalog(config)
    with _ProgressBar(not args.json, transfer=False) as bar:
        if args.path:
            report = reindex.reindex_path(config, catalog, args.path, verify=args.verify, progress=bar.update)
        else:
            report = reindex.reindex_all(config, catalog, verify=args.verify, progress=bar.update)
    data = report.as_json()
    if args.json:
        _print_json(data)
    else:
        if not data.get("roots"):
            _say("no storage root found" + (f" at or below {args.path}" if args.path else " on any mounted file system"))
        for r in data.get("roots", []):
            _say(f"{r['path']} ({r.get('label')!r}): {r.get('sessions_on_drive', 0)} sessions on the drive, "
                 f"{r.get('sessions_added', 0)} added ({r.get('images_added', 0)} files), {r.get('sessions_missing', 0)} missing, "
                 f"{r.get('sessions_back', 0)} back, {r.get('replicas', 0)} replicas, {r.get('size_mismatches', 0)} size mismatches")
            for n in r.get("notes", []):
                _say(f"  {n.get('session')}: {n.get('note')}")
        for d in data.get("damaged", []):
            _say(f"  damaged: {d.get('path')}: {d.get('reason')}")
    for item in data.get("rejected") or []:
        if isinstance(item, dict):
            item = f"{item.get('path')}: {item.get('reason')}"
        print(f"imalinkd: rejected {item}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FAILED


def cmd_scan_locations(config, args) -> int:
    from imalinkd import locate

    out = locate.scan_locations(config, _catalog(config))
    if args.json:
        _print_json(out)
    else:
        if not out:
            _say("no storage root reachable")
        for loc in out:
            _say(f"{loc['path']}  {loc.get('label')!r}  {loc['session_count']} sessions  storage_id {loc['storage_id']}")
    return EXIT_OK


def cmd_update_storage_path(config, args) -> int:
    from imalinkd import locate

    out = locate.update_storage_path(_catalog(config), args.session, args.path)
    if args.json:
        _print_json(out)
    else:
        _say(f"storage path updated: {out}")
    return EXIT_OK


def cmd_adopt(config, args) -> int:
    from imalinkd import legacy

    result = legacy.adopt(config, _catalog(config), args.session)
    data = result.as_json() if hasattr(result, "as_json") else result
    if args.json:
        _print_json(data)
    else:
        _say(f"adopted: {data}")
    return EXIT_OK if getattr(result, "ok", True) else EXIT_FAILED


def cmd_check_config(config, args) -> int:
    import dataclasses

    from imalinkd import config_view

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name.rstrip("_"): plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v if isinstance(v, (str, int, float, bool, type(None))) else str(v)

    from imalinkd import redact
    from imalinkd.configcheck import catalog_reachable

    out = redact.value(plain(config))
    out["catalog"]["url"] = redact.url(config.catalog.url)
    out["catalog_url_in_effect"] = redact.url(config.catalog_url)
    out["storage_root_in_effect"] = str(config.storage_root) if config.storage_root else None
    catalog = catalog_reachable(config.catalog_url)
    out["catalog_check"] = catalog.as_json()
    out.update(config_view.summary(config))
    if args.json:
        _print_json(out)
    else:
        _say(f"config OK ({config.source})")
        _say(f"  catalog: {catalog.url}: {catalog.message}")
        _say(f"  storage: {config.storage_root or 'storage_id ' + str(config.storage.storage_id)}")
        _say(f"  api: {config.api.listen or 'disabled'}; card rules: {len(config.cards)}; drop folders: {len(config.drop_folders)}")
        for line in config_view.describe(config):
            _say(line)
    if not catalog.ok:
        print(f"imalinkd: the catalog cannot be used: {catalog.url}: {catalog.message}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def cmd_run(config, args) -> int:
    from imalinkd.daemon.service import run_daemon

    return run_daemon(getattr(args, "config", None), args.log_format)


COMMANDS: dict[str, Callable[[Any, argparse.Namespace], int]] = {
    "run": cmd_run, "import": cmd_import, "init-storage": cmd_init_storage, "sessions": cmd_sessions, "status": cmd_status,
    "verify": cmd_verify, "resume": cmd_resume, "rollback": cmd_rollback, "reindex": cmd_reindex,
    "scan-locations": cmd_scan_locations, "update-storage-path": cmd_update_storage_path, "adopt": cmd_adopt,
    "check-config": cmd_check_config,
    **cli_archive.COMMANDS,
    **cli_camera.COMMANDS,
    **cli_backups.COMMANDS,
}


def main(argv: list[str] | None = None) -> int:
    from imalinkd.config import load_config
    from imalinkd.logsetup import configure_logging

    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None)
    try:
        config = load_config(getattr(args, "config", None))
    except ImalinkError as e:
        print(f"imalinkd: {e}", file=sys.stderr)
        return e.exit_code
    if args.command != "run":
        configure_logging(level or "warning", json=False)
    try:
        return COMMANDS[args.command](config, args)
    except ImalinkError as e:
        print(f"imalinkd: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("imalinkd: interrupted", file=sys.stderr)
        return EXIT_FAILED
