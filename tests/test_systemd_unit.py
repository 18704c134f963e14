"""The systemd unit: it verifies cleanly and keeps the service contract (DESIGN §4, §5)."""

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from mounts import require_tools

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "imalinkd.service"


def _require(tool):
    require_tools(tool)


def _directives():
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str
    parser.read_string(UNIT.read_text())
    return parser


@pytest.fixture
def testable_unit(tmp_path):
    """A copy whose ExecStart names an executable that exists here (verify checks it)."""
    exe = shutil.which("imalinkd") or "/bin/true"
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={exe}", UNIT.read_text())
    path = tmp_path / "imalinkd.service"
    path.write_text(text)
    return path


def test_unit_passes_systemd_analyze_verify_silently(testable_unit):
    _require("systemd-analyze")
    proc = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(testable_unit)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_security_exposure_is_low(testable_unit):
    _require("systemd-analyze")
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(testable_unit)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout[-500:] + proc.stderr
    assert float(match.group(1)) <= 4.0


def test_service_contract():
    service = _directives()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"].endswith("imalinkd run")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["Restart"] == "on-failure"
    assert service["WatchdogSec"].rstrip("s") == "30"
    assert service["StateDirectory"] == "imalinkd"
    assert service["ProtectSystem"] == "strict"
    assert service["NoNewPrivileges"] == "yes"
    assert service["PrivateTmp"] == "yes"
    caps = set(service["CapabilityBoundingSet"].split())
    assert caps <= {"CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_CHOWN", "CAP_FOWNER"}
    assert "AF_NETLINK" in service["RestrictAddressFamilies"].split()
    # HTTP clients must never exhaust the descriptors cards need (the API takes at most a quarter)
    assert int(service["LimitNOFILE"]) >= 8192


def test_card_and_archive_mount_areas_stay_visible():
    service = _directives()["Service"]
    # ProtectHome=yes or tmpfs would hide cards mounted for a desktop user; /media and
    # /run/media must not be made inaccessible.
    assert service.get("ProtectHome") in ("read-only", "no", None)
    hidden = service.get("InaccessiblePaths", "")
    assert "/media" not in hidden and "/run/media" not in hidden
    writable = service["ReadWritePaths"].split()
    assert {"-/media", "-/run/media"} <= set(writable)
