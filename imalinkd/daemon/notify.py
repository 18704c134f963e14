"""systemd's notification protocol (sd_notify(3)) without libsystemd.

A message is one datagram of newline-separated ``KEY=value`` lines sent to the AF_UNIX
socket named by ``$NOTIFY_SOCKET``: a filesystem path, or an abstract socket written as
``@name``. Without the variable (not started by systemd) every call does nothing, so the
daemon code never asks whether it runs under systemd.

Sending never raises: a lost notification must not take the daemon down. (If systemd
misses READY=1 it fails the start, which is visible; that is better than crashing here.)
"""

from __future__ import annotations

import os
import socket
import time

import structlog

log = structlog.get_logger()


def _address(name: str) -> str | bytes:
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name


class SystemdNotifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._socket_name = env.get("NOTIFY_SOCKET") or None
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._socket_name is not None

    def notify(self, *lines: str) -> bool:
        """Send one message; True if it was handed to the socket."""
        if self._socket_name is None:
            return False
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, _address(self._socket_name))
            return True
        except OSError as e:
            if not self._warned:  # once: a dead socket would otherwise flood the log
                log.warning("sd_notify_failed", socket=self._socket_name, error=str(e))
                self._warned = True
            return False

    def ready(self, status: str | None = None) -> bool:
        lines = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self.notify(*lines)

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        """RELOADING=1 with the CLOCK_MONOTONIC timestamp newer systemd asks for; READY=1
        ends the reload."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"]
        if status:
            lines.append(f"STATUS={_one_line(status)}")
        return self.notify(*lines)

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of ``$WATCHDOG_USEC`` as sd_watchdog_enabled(3)
        advises, or None when systemd did not ask this process for them (no variable, a
        bad value, or ``$WATCHDOG_PID`` naming another process)."""
        if not self._watchdog_usec:
            return None
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 2 / 1_000_000

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())
