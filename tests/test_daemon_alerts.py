"""The daemon tells the user: ``imalinkd run`` as a subprocess with real exFAT cards, and a
real local HTTP receiver taking apprise's JSON webhook. A notification that cannot be
delivered never holds up an import."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from mounts import ext4_image
from receiver import Receiver
from test_daemon_e2e import Daemon, _big_card, completed, imalinkd, make_card, sessions, wait_for, workdir, write_config  # noqa: F401

pytestmark = pytest.mark.slow


def _notify(*urls: str, events: str = "") -> str:
    quoted = ", ".join(f'"{u}"' for u in urls)
    return f"\n[notify]\nurls = [{quoted}]\ntimeout_seconds = 60\n{events}"


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def receiver():
    with Receiver() as rx:
        yield rx


def test_a_card_imported_is_told_completed_the_source_no_longer_needed(workdir, make_card, receiver):
    config = write_config(workdir / "imalinkd.toml", workdir, _notify(receiver.url("imalinkd")))
    card = make_card()
    d = Daemon(workdir, config).start()
    try:
        card.mount(workdir / "media" / "EOS_DIGITAL")
        post = receiver.wait_for(lambda p: "completed" in p["title"], what="the completed notification")
        [session] = completed(config)
        assert post["path"] == "/imalinkd" and post["type"] == "success"
        assert "EOS_DIGITAL" in post["title"]
        assert "the source is no longer needed" in post["message"] and session["storage_path"] in post["message"]
        assert d.has_event("notification_sent", kind="import_completed")
    finally:
        d.stop()
        d.close()


def test_a_failing_import_is_told_failed_with_the_next_step(workdir, make_card, receiver):
    # The archive drive is too small for the card: the import is refused before copying.
    with ext4_image(workdir / "archive", size_mb=8):
        config = write_config(workdir / "imalinkd.toml", workdir, _notify(receiver.url()))
        proc = imalinkd(config, "init-storage", str(workdir / "archive"))
        assert proc.returncode == 0, proc.stderr
        card = make_card(shots=4, mb_per_file=3)
        d = Daemon(workdir, config).start()
        try:
            card.mount(workdir / "media" / "EOS_DIGITAL")
            post = receiver.wait_for(lambda p: "failed" in p["title"], what="the failed notification")
            assert post["type"] == "failure"
            assert "too little room" in post["message"]
            assert f"Next step: fix the cause above, then plug the card in again or run 'imalinkd import {workdir}/media/EOS_DIGITAL'" in post["message"]
            assert completed(config) == []
        finally:
            d.stop()
            d.close()


def test_a_card_pulled_mid_copy_is_told_failed_with_the_resume_command(workdir, make_card, receiver):
    config = write_config(workdir / "imalinkd.toml", workdir)
    card = _big_card(make_card, type("D", (), {"config": config}), workdir)
    config.write_text(config.read_text() + _notify(receiver.url()))
    d = Daemon(workdir, config).start()
    try:
        mp = workdir / "media" / "EOS_DIGITAL"
        card.mount(mp)
        wait_for(lambda: d.has_event("import_started"), 30, "the import to start", interval=0.05)
        card.unmount(mp, lazy=True)
        post = receiver.wait_for(lambda p: "failed" in p["title"], what="the failed notification")
        [parked] = sessions(config)
        assert "removed during the import" in post["message"]
        assert f"imalinkd resume {parked['import_session_id']}" in post["message"]
    finally:
        d.stop()
        d.close()


def test_a_hanging_or_unreachable_notification_url_does_not_hold_up_imports(workdir, make_card, receiver):
    receiver.hang()  # accepts the delivery and never answers, until released
    refused = f"json://127.0.0.1:{_closed_port()}/down"
    config = write_config(workdir / "imalinkd.toml", workdir, _notify(refused, receiver.url()))
    first, second = make_card("CARD_A", seed=1), make_card("CARD_B", seed=2)
    d = Daemon(workdir, config).start()
    try:
        first.mount(workdir / "media" / "CARD_A")
        wait_for(lambda: len(completed(config)) == 1, 60, "the first card's session", interval=0.5)
        wait_for(lambda: receiver.held == 1, 60, "the first notification to hang at the receiver")
        wait_for(lambda: d.has_event("notification_failed", kind="import_completed", url="urls[0] (json)"), 60,
                 "the unreachable URL to be logged")
        second.mount(workdir / "media" / "CARD_B")
        wait_for(lambda: len(completed(config)) == 2, 60, "the second card's session while a notification hangs",
                 interval=0.5)
        assert receiver.held == 1 and receiver.posts == []  # still hanging: the import did not wait for it
        receiver.release()
        receiver.wait_for(lambda p: "CARD_B" in p["title"], what="the second card's notification")
        log = d.log_text()
        assert refused not in log and receiver.url() not in log and "/down" not in log  # URLs may hold tokens
    finally:
        d.stop()
        d.close()
