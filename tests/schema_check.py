"""Every ``metadata.json`` and ``config.json`` marker that imalinkd writes while the tests
run is validated against the published JSON Schema (``imalinkd/schemas``).

An audit hook (``sys.addaudithook``) sees each ``os.replace``/``os.link`` that gives one of
these files its name, and validates the temporary file's content right then, when the
write comes from imalinkd's own writers (``manifest.write_manifest``,
``storage.init_storage``); files a test crafts on purpose (damaged, hostile) are not
imalinkd's and are left alone. In the test process the problems are collected in
``FAILURES``; in the processes a test starts (the CLI, the daemon) ``sitecustomize`` in
``tests/schema_hook`` installs the same hook, which appends them to the file named by
``SCHEMA_CHECK_FAILURES``. ``conftest`` fails the test that caused any."""

from __future__ import annotations

import json
import os
import sys
import threading

FAILURES: list[str] = []
ENV = "SCHEMA_CHECK_FAILURES"
_WRITERS = {("imalinkd.manifest", "write_manifest"): "metadata", ("imalinkd.storage", "init_storage"): "config"}
_NAMES = {"metadata.json": "metadata", "config.json": "config"}
_validators: dict = {}
_local = threading.local()
_installed = False


def _validator(kind: str):
    if kind not in _validators:
        import jsonschema

        from imalinkd import schemas

        _validators[kind] = jsonschema.Draft202012Validator(schemas.load(kind))
    return _validators[kind]


def _writer_kind() -> str | None:
    frame = sys._getframe(2)
    for _ in range(12):
        if frame is None:
            return None
        kind = _WRITERS.get((frame.f_globals.get("__name__"), frame.f_code.co_name))
        if kind:
            return kind
        frame = frame.f_back
    return None


def check_bytes(kind: str, raw: bytes, where: str) -> list[str]:
    """The schema violations of one file's content (an empty list when it is valid)."""
    try:
        data = json.loads(raw)
    except ValueError as e:
        return [f"{where}: not JSON ({e})"]
    return [f"{where}: {'/'.join(map(str, err.absolute_path)) or '(top)'}: {err.message}"
            for err in _validator(kind).iter_errors(data)]


def _hook(event: str, args: tuple) -> None:
    if event not in ("os.rename", "os.link") or getattr(_local, "busy", False):
        return
    try:
        src, dst = os.fsdecode(args[0]), os.fsdecode(args[1])
        kind = _NAMES.get(os.path.basename(dst))
        if kind is None or _writer_kind() != kind:
            return
        _local.busy = True
        try:
            with open(src, "rb") as f:
                problems = check_bytes(kind, f.read(), dst)
        finally:
            _local.busy = False
    except Exception as e:  # the hook must never break the code under test
        problems = [f"schema check itself failed: {type(e).__name__}: {e}"]
    if problems:
        _report(problems)


def _report(problems: list[str]) -> None:
    FAILURES.extend(problems)
    path = os.environ.get(ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write("".join(p.replace("\n", " ") + "\n" for p in problems))


def install() -> None:
    global _installed
    if not _installed:
        _installed = True
        sys.addaudithook(_hook)
