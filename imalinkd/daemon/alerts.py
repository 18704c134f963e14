"""Telling the user what happened, since nobody is at the screen: notifications through
apprise (desktop over D-Bus, ntfy, mail, a JSON webhook, … — any apprise URL).

Shape: the daemon builds an :class:`Alert` (a plain value: kind, title, body, level) with
the functions below and hands it to :meth:`Alerts.send`, which only puts it on a bounded
queue. One sender thread of its own delivers it to each configured URL with bounded
connect/read timeouts. A notification that cannot be delivered (refused, timed out, queue
full) is logged and dropped: it never blocks, slows down or fails an import.

Kinds (``[notify] events`` chooses among them):

- ``import_completed``: a card's import ended completed (or found nothing new). The body
  says whether the card is still needed; :func:`source_verdict` is the one place that
  decides it;
- ``import_failed``: an import failed or the card was pulled mid-copy, with the next step;
- ``waiting_for_archive``: a card waits because no archive drive is reachable;
- ``damage_found``: a scrub found an archived file not intact;
- ``backup_caught_up``: the backups' catch-up copied (verified) what a backup drive was
  missing.

URLs carry tokens and passwords: they are never logged; a URL is named by its position in
``[notify] urls`` and its scheme only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import structlog

from imalinkd.config import ALERT_KINDS as KINDS  # the config chooses among them

log = structlog.get_logger()

LEVELS = ("info", "success", "warning", "failure")  # apprise's notify types
QUEUE_SIZE = 100  # alerts waiting for the sender; more are dropped (and logged)
STOP_DRAIN_SECONDS = 2.0  # at stop: how long what is queued may still be sent


@dataclass(frozen=True)
class Alert:
    kind: str  # one of KINDS
    title: str
    body: str
    level: str = "info"  # one of LEVELS


def scheme_of(url: str) -> str:
    """``json`` for ``json://host/path``: how a URL is named in logs (never the whole URL)."""
    head, sep, _rest = url.partition("://")
    return head if sep and head.replace("+", "").replace("-", "").isalnum() else "?"


# --- what the user is told ---------------------------------------------------------------------


def source_verdict(result: Any) -> tuple[bool, str]:
    """Whether the card may be formatted, and the sentence that says so. The one place the
    answer is decided: the copies verdict the import carries (``imalinkd.verdict``: every
    file with ``[storage] copies`` verified copies on distinct drives); without one, the
    import's own "the source is no longer needed" (every file copied and verified, every
    duplicate checked on a drive plugged in now)."""
    v = getattr(result, "verdict", None) or {}
    if v:
        safe = bool(v.get("safe_to_format"))
        text = v.get("verdict") or ("safe to format" if safe else "not yet safe to format; keep the card")
        return safe, f"{text}; the source is no longer needed" if safe else text
    if getattr(result, "source_no_longer_needed", False):
        return True, "completed: the source is no longer needed"
    return False, ("completed, but keep the card: some files were counted as duplicates of copies "
                   "on drives that are not plugged in, so they were not checked")


def card_finished(name: str, result: Any, outcome: str) -> Alert:
    """A card's import ended ``completed`` or ``nothing_new``."""
    no_longer_needed, verdict = source_verdict(result)
    where = getattr(result, "storage_path", None)
    if outcome == "nothing_new":
        what = "already imported, nothing new to copy"
    else:
        what = f"{getattr(result, 'new_files', 0) or 0} new files copied and verified"
        if where:
            what += f" to {where}"
    return Alert("import_completed", f"{name}: import completed", f"{name}: {what}; {verdict}.",
                 "success" if no_longer_needed else "warning")


def card_failed(name: str, mount_point: Path, *, error: str | None = None, session: str | None = None,
                removed: bool = False) -> Alert:
    """A card's import did not complete: what went wrong and the next step."""
    if removed:
        why = "the card was removed during the import"
    else:
        why = error or "the import failed (the daemon's log names the file and the error)"
    if session:
        step = (f"plug the card in again: the import resumes where it stopped; or run "
                f"'imalinkd resume {session}' with the card mounted")
    elif removed:
        step = "plug the card in again: its import starts over"
    else:
        step = f"fix the cause above, then plug the card in again or run 'imalinkd import {mount_point}'"
    return Alert("import_failed", f"{name}: import failed", f"{name}: {why.rstrip('.')}. Next step: {step}.", "failure")


def card_waiting(name: str, reason: str) -> Alert:
    return Alert("waiting_for_archive", f"{name}: waiting for the archive",
                 f"{name} is waiting: {reason.rstrip('.')}. It is imported as soon as the archive drive is plugged in; "
                 "leave the card in.", "warning")


def damage_found(label: str | None, directory: str, path: str, result: str) -> Alert:
    return Alert("damage_found", f"damage found on {label or 'an archive drive'}",
                 f"A scrub found {directory}/{path} on {label or 'an archive drive'} {result}. "
                 "Run 'imalinkd scrub' and 'imalinkd status' for the details; restore it from another copy.",
                 "failure")


def backup_caught_up(drive: str | None, sessions: int, files: int) -> Alert:
    """A backup drive received (verified) the copies it was missing."""
    name = f"backup {drive}" if drive else "the backup drive"
    return Alert("backup_caught_up", f"{name} caught up",
                 f"{name[0].upper()}{name[1:]} now holds verified copies of {files} more files from {sessions} sessions; "
                 "cards left mounted until then are safe to format once their verdict says so.", "success")


# --- delivery ----------------------------------------------------------------------------------


def build_targets(urls: tuple[str, ...], timeout: float) -> list[tuple[str, Any]]:
    """One apprise plugin per URL, with connect/read timeouts of ``timeout`` seconds. A URL
    apprise cannot use is logged (by position and scheme) and left out."""
    import apprise

    logging.getLogger("apprise").propagate = False  # its lines reach our log through deliver()
    targets = []
    for i, url in enumerate(urls):
        obj = apprise.Apprise()
        name = f"urls[{i}] ({scheme_of(url)})"
        if not obj.add(url) or len(obj) != 1:
            log.error("notify_url_unusable", url=name, hint="not an apprise URL this installation supports")
            continue
        plugin = obj[0]
        plugin.socket_connect_timeout = timeout
        plugin.socket_read_timeout = timeout
        targets.append((name, plugin))
    return targets


def deliver(targets: list[tuple[str, Any]], alert: Alert) -> int:
    """Send ``alert`` to every target; returns how many took it. Failures are logged, with
    what apprise said about them (masked of the configured URLs)."""
    import apprise

    from imalinkd import redact

    sent = 0
    for name, plugin in targets:
        with apprise.LogCapture(level=logging.WARNING) as said:
            try:
                ok = plugin.notify(body=alert.body, title=alert.title, notify_type=apprise.NotifyType(alert.level))
                why = _last_line(said.getvalue())
            except Exception as e:  # a plugin's bug must not end the sender
                ok, why = False, f"{type(e).__name__}: {e}"
        if ok:
            sent += 1
            log.info("notification_sent", kind=alert.kind, url=name)
        else:
            log.warning("notification_failed", kind=alert.kind, url=name, error=redact.text(why or "refused"))
    return sent


def _last_line(captured: str) -> str:
    lines = [line.split(" - ", 2)[-1] for line in captured.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class Alerts:
    """The daemon's notification channel: ``send`` queues, a thread delivers."""

    def __init__(self, urls: tuple[str, ...], events: tuple[str, ...], timeout: float,
                 build: Callable[[tuple[str, ...], float], list[tuple[str, Any]]] = build_targets) -> None:
        self.events = frozenset(events)
        self._urls, self._timeout, self._build = urls, timeout, build
        self._queue: "queue.Queue[Alert | None]" = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(cls, config: Any) -> "Alerts":
        n = config.notify
        return cls(n.urls, n.events, n.timeout_seconds)

    @property
    def enabled(self) -> bool:
        return bool(self._urls)

    def start(self) -> None:
        if not self.enabled:
            return
        self._thread = threading.Thread(target=self._run, name="notify", daemon=True)
        self._thread.start()
        log.info("notifications_on", urls=[f"urls[{i}] ({scheme_of(u)})" for i, u in enumerate(self._urls)],
                 events=sorted(self.events))

    def send(self, alert: Alert) -> None:
        """Queue ``alert`` if its kind is wanted; never blocks."""
        if self._thread is None or alert.kind not in self.events:
            return
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            log.warning("notification_dropped", kind=alert.kind, reason=f"{QUEUE_SIZE} notifications still unsent")

    def stop(self) -> None:
        """Let what is queued go out for a moment; a sender stuck in a slow URL is abandoned."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        deadline = time.monotonic() + STOP_DRAIN_SECONDS
        try:
            self._queue.put(None, timeout=STOP_DRAIN_SECONDS)
        except queue.Full:
            pass
        thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        targets = self._build(self._urls, self._timeout)
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            deliver(targets, alert)


def for_card_outcome(name: str, mount_point: Path, result: Any, outcome: str, *, stopping: bool) -> Alert | None:
    """The alert for how a card job ended (None: nothing to tell, e.g. the daemon stops)."""
    session = getattr(result, "session_uuid", None)
    if outcome in ("completed", "nothing_new"):
        return card_finished(name, result, outcome)
    if outcome == "cancelled":
        return None if stopping else card_failed(name, mount_point, session=session, removed=True)
    if outcome == "failed":
        return card_failed(name, mount_point, error=getattr(result, "error", None), session=session)
    return None
