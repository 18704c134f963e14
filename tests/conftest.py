"""Shared test set-up: every test runs with HOME, the XDG directories and IMALINKD_*
variables isolated in its own temporary directory, so nothing reads or writes the real
/etc/imalinkd, /var/lib/imalinkd or the user's files."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "exif-samples"

TEST_COMMAND = "python3 -m venv .venv && .venv/bin/pip install '.[test]' && .venv/bin/python -m pytest"


def pytest_configure(config):
    """Without the project's dependencies every test module fails to import: say once what
    to run instead of printing dozens of import errors."""
    import importlib.util

    missing = [m for m in ("sqlalchemy", "structlog", "fastapi", "httpx", "PIL", "psutil")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.exit(f"the test dependencies are not installed in {sys.executable} (missing: "
                    f"{', '.join(missing)}). Run the tests as the README says: {TEST_COMMAND}", returncode=2)


@pytest.fixture(autouse=True, scope="session")
def schema_checked_writes(tmp_path_factory):
    """Every metadata.json and config.json marker imalinkd writes during the run, in this
    process and in those the tests start, is validated against its JSON Schema
    (``schema_check``); ``manifests_match_their_schema`` fails the test that wrote one that
    does not match."""
    import schema_check

    log = tmp_path_factory.getbasetemp() / "schema-check-failures.txt"
    log.touch()
    saved = {k: os.environ.get(k) for k in (schema_check.ENV, "PYTHONPATH")}
    os.environ[schema_check.ENV] = str(log)
    hook_dir = str(Path(__file__).parent / "schema_hook")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (hook_dir, saved["PYTHONPATH"]) if p)
    schema_check.install()
    yield log
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(autouse=True)
def manifests_match_their_schema(schema_checked_writes):
    """Set up before, torn down after every other fixture of a test (its daemons stopped,
    its drives unmounted): the schema problems of what it made imalinkd write."""
    import schema_check

    before = schema_checked_writes.stat().st_size
    yield
    with open(schema_checked_writes, encoding="utf-8") as f:
        f.seek(before)
        problems = f.read().splitlines()
    schema_check.FAILURES.clear()
    if problems:
        pytest.fail("imalinkd wrote files that do not match their JSON Schema:\n" + "\n".join(problems[:20]), pytrace=False)


@pytest.fixture
def samples() -> Path:
    """The shared real-camera samples (../shared/testdata/exif-samples), by path."""
    if not SAMPLES.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"test data missing under CI: {SAMPLES}")
        pytest.skip("../shared/testdata/exif-samples is not present")
    return SAMPLES


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    for name in list(os.environ):
        if name.startswith("IMALINKD_") or name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    for var, sub in (("XDG_CONFIG_HOME", ".config"), ("XDG_DATA_HOME", ".local/share"),
                     ("XDG_STATE_HOME", ".local/state"), ("XDG_CACHE_HOME", ".cache")):
        monkeypatch.setenv(var, str(home / sub))
    yield home


def _mounts_below(base: str) -> list[str]:
    base = os.path.realpath(base)
    with open("/proc/self/mountinfo") as f:
        return [mp for mp in (line.split()[4] for line in f) if mp.startswith(base + "/")]


@pytest.fixture(autouse=True, scope="session")
def no_leaked_mounts(tmp_path_factory):
    """After the whole run, no mount a test made (all live below this run's temporary
    directory) may be left behind."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    leaked = sorted(_mounts_below(base))
    assert not leaked, f"tests left mounts behind: {leaked}"
