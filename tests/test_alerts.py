"""Notifications (imalinkd.daemon.alerts): the [notify] config, what the user is told, and
delivery through apprise's JSON webhook to a real local HTTP receiver."""

import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from receiver import Receiver

from imalinkd.config import ALERT_KINDS, parse_config
from imalinkd.daemon import alerts
from imalinkd.daemon.alerts import Alert, Alerts
from imalinkd.errors import ConfigError


def test_notify_section_defaults_and_checks():
    config = parse_config({})
    assert config.notify.urls == () and config.notify.events == ALERT_KINDS
    config = parse_config({"notify": {"urls": ["ntfy://ntfy.sh/my-topic-s3cret"], "events": ["import_failed"]}})
    assert config.notify.events == ("import_failed",)
    with pytest.raises(ConfigError, match="notify.events"):
        parse_config({"notify": {"events": ["card_eaten"]}})
    with pytest.raises(ConfigError, match=r"notify.urls\[0\]") as e:
        parse_config({"notify": {"urls": ["s3cret-token-not-a-url"]}})
    assert "s3cret-token-not-a-url" not in str(e.value)  # a URL may hold a token: never repeated
    with pytest.raises(ConfigError, match="notify.timeout_seconds"):
        parse_config({"notify": {"timeout_seconds": 0}})


def test_completed_says_no_longer_needed_only_when_the_import_says_so():
    result = SimpleNamespace(source_no_longer_needed=True, new_files=3, storage_path="/a/s1")
    alert = alerts.for_card_outcome("card EOS", Path("/m"), result, "completed", stopping=False)
    assert alert.kind == "import_completed" and "the source is no longer needed" in alert.body
    result.source_no_longer_needed = False
    alert = alerts.for_card_outcome("card EOS", Path("/m"), result, "completed", stopping=False)
    assert "no longer needed" not in alert.body and "keep the card" in alert.body
    # the copies verdict the import carries decides instead
    result.verdict = {"safe_to_format": False, "verdict": "not yet safe: 1 of 2 copies (3 file(s) short); keep the source"}
    assert alerts.source_verdict(result) == (False, "not yet safe: 1 of 2 copies (3 file(s) short); keep the source")
    result.verdict = {"safe_to_format": True, "verdict": "safe to format: every file has 2 verified copies on distinct drives"}
    assert alerts.source_verdict(result)[1].endswith("distinct drives; the source is no longer needed")


def test_failed_names_the_next_step():
    failed = alerts.for_card_outcome("card EOS", Path("/m/EOS"), SimpleNamespace(session_uuid="u-1", error="read error"),
                                     "failed", stopping=False)
    assert failed.kind == "import_failed" and "imalinkd resume u-1" in failed.body and "read error" in failed.body
    early = alerts.card_failed("card EOS", Path("/m/EOS"), error="Storage /a has too little room.")
    assert "Next step:" in early.body and "imalinkd import /m/EOS" in early.body
    pulled = alerts.for_card_outcome("card EOS", Path("/m"), SimpleNamespace(session_uuid="u-2"), "cancelled", stopping=False)
    assert "removed" in pulled.body and "imalinkd resume u-2" in pulled.body
    assert alerts.for_card_outcome("card EOS", Path("/m"), None, "cancelled", stopping=True) is None


def test_alerts_reach_a_json_webhook_and_unwanted_kinds_are_not_sent():
    with Receiver() as rx:
        sender = Alerts((rx.url("imalinkd"),), ("import_failed", "damage_found"), timeout=10)
        sender.start()
        try:
            sender.send(Alert("import_completed", "t0", "not wanted"))
            sender.send(alerts.damage_found("ARCHIVE", "2026-01-01_card", "files/IMG_1.JPG", "mismatch"))
            post = rx.wait_for(lambda p: "damage" in p.get("title", ""))
            assert post["path"] == "/imalinkd" and post["type"] == "failure"
            assert "IMG_1.JPG" in post["message"]
        finally:
            sender.stop()
        assert not any(p["message"] == "not wanted" for p in rx.posts)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _wait(predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_hanging_or_refusing_url_never_blocks_the_caller_nor_the_other_urls():
    with Receiver() as slow, Receiver() as good, capture_logs() as logs:
        slow.hang()
        urls = (slow.url(), f"json://127.0.0.1:{_closed_port()}/x", good.url())
        sender = Alerts(urls, ALERT_KINDS, timeout=60)
        sender.start()
        try:
            for i in range(3 * alerts.QUEUE_SIZE):  # far more than the queue holds: send() returns
                sender.send(Alert("import_failed", f"t{i}", "b"))
            _wait(lambda: slow.held == 1, "the sender to be stuck at the hanging URL")
            assert any(e["event"] == "notification_dropped" for e in logs)
            slow.release()
            good.wait_for(lambda p: p["title"] == "t0", what="the first alert at the working URL")
            _wait(lambda: any(e["event"] == "notification_failed" and e["url"] == "urls[1] (json)" for e in logs),
                  "the refused URL to be logged")
        finally:
            sender.stop()
        assert not any(url in str(e) for e in logs for url in urls)  # URLs (they may hold tokens) are never logged


def test_a_delivery_is_given_up_after_the_timeout():
    with Receiver() as slow, capture_logs() as logs:
        slow.hang()
        sender = Alerts((slow.url(),), ALERT_KINDS, timeout=1)
        sender.start()
        try:
            sender.send(Alert("import_failed", "t", "b"))
            _wait(lambda: any(e["event"] == "notification_failed" for e in logs), "the timed-out delivery to be logged")
        finally:
            sender.stop()


def test_check_config_never_prints_a_notification_url(tmp_path):
    import json
    import os
    import subprocess
    import sys

    url = "ntfys://ntfy.sh/private-topic-0f9c2b"
    config = tmp_path / "imalinkd.toml"
    config.write_text(f'[catalog]\nurl = "sqlite:///{tmp_path}/c.db"\n[notify]\nurls = ["{url}"]\n')
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "imalinkd", "--config", str(config), "check-config", "--json"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "private-topic" not in proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["notify"]["urls"] == ["***"]


def test_backup_caught_up_says_how_much():
    alert = alerts.backup_caught_up(None, 2, 37)
    assert alert.kind == "backup_caught_up" and "37 more files from 2 sessions" in alert.body
