"""Serving the API from inside the daemon: uvicorn in a background thread.

``start_api_server`` binds the socket itself, before it returns, so a busy port or a bad
address is reported at start (as an ``ImalinkError``) rather than lost in a thread. uvicorn
installs signal handlers only when it runs in the main thread; here it never does, so the
daemon's own SIGTERM/SIGHUP handling is untouched. ``ApiServer.stop()`` ends open event
streams, asks running API imports to park, and returns within about two seconds.

A ``unix:/path`` listen address makes a socket of mode 0600: only the service user (and
root) can connect, and such peers need no token. Each connection's peer is also checked by
its credentials (``SO_PEERCRED``): a process of another user is turned away even if the
socket's mode or directory were loosened by hand.
"""

from __future__ import annotations

import errno
import os
import resource
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from imalinkd.api.app import create_app
from imalinkd.api.bounded import bounded_protocol
from imalinkd.api.hub import ProgressHub
from imalinkd.errors import ImalinkError
from imalinkd.netaddr import ListenAddress, parse_listen

log = structlog.get_logger(__name__)

STOP_SECONDS = 2.0


@dataclass
class ApiServer:
    """A running (or disabled) API server; ``stop()`` is safe to call more than once."""

    listen: str = ""
    url: str | None = None
    app: Any = None
    _server: Any = None
    _thread: threading.Thread | None = None
    _unix_path: str | None = None
    _stopped: bool = field(default=False)

    @property
    def enabled(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int | None:
        if self.url and self.url.startswith("http://"):
            return int(self.url.rsplit(":", 1)[1])
        return None

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        if self._server is None or self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + timeout
        self.app.state.closing.set()
        self.app.state.jobs.cancel_all(wait=0.0)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(max(0.1, deadline - time.monotonic() - 0.3))
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(0.5)
            if self._thread.is_alive():
                log.warning("api_server_stop_slow", listen=self.listen)
        if self._unix_path:
            try:
                if stat.S_ISSOCK(os.lstat(self._unix_path).st_mode):
                    os.unlink(self._unix_path)
            except OSError:
                pass
        log.info("api_server_stopped", listen=self.listen)


class _OwnUserSocket(socket.socket):
    """A listening unix socket that hands over only connections whose peer runs as this
    process's user or as root (``SO_PEERCRED``); any other is closed at once and logged.
    asyncio calls ``accept`` on the listening socket it is given, so the check sits there."""

    def accept(self):
        conn, addr = super().accept()
        try:
            pid, uid, _gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        except OSError:
            pid, uid = -1, -1
        if uid not in (0, os.geteuid()):
            conn.close()
            log.warning("api_peer_refused", pid=pid, uid=uid, reason="another user's process on the unix socket")
            raise ConnectionAbortedError("peer of another user")
        return conn, addr


def _bind(addr: ListenAddress) -> socket.socket:
    if addr.unix_path:
        path = addr.unix_path
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)  # stale socket of an earlier run
        except FileNotFoundError:
            pass
        os.makedirs(os.path.dirname(path) or "/", mode=0o755, exist_ok=True)
        # bind under a temporary name, restrict it, then move it into place: the socket is
        # never reachable with looser permissions
        tmp = f"{path}.{os.getpid()}.tmp"
        sock = _OwnUserSocket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            sock.bind(tmp)
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            sock.close()
            raise
    else:
        host = addr.host or "127.0.0.1"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, addr.port or 0))
        except BaseException:
            sock.close()
            raise
    sock.listen(128)
    sock.set_inheritable(False)
    return sock


def connection_limit(configured: int) -> int:
    """``[api] max_connections``, lowered to a quarter of this process's file descriptor
    limit when that is smaller: the descriptors left are for cards, archives, the catalog
    and ``blkid``, which must never fail because HTTP clients hold them all."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or configured <= soft // 4:
        return configured
    limit = max(1, soft // 4)
    log.warning("api_connections_limited", max_connections=configured, limit=limit, nofile=soft,
                message="[api] max_connections lowered to a quarter of the open file limit (LimitNOFILE)")
    return limit


def _cannot_listen(listen: str, addr: ListenAddress, e: OSError) -> str:
    """What to tell the user when the API's address cannot be bound, and what to do."""
    fix = "Choose another [api] listen, or set [api] optional = true to run without the API and the web UI."
    if e.errno == errno.EADDRINUSE and not addr.unix_path:
        return (f"the HTTP API cannot listen on {listen}: the port is already in use (another imalinkd, or another "
                f"program: 'ss -ltnp sport = :{addr.port}' names it). Stop it, or: {fix}")
    if e.errno == errno.EADDRNOTAVAIL:
        return f"the HTTP API cannot listen on {listen}: that address is not one of this machine's. {fix}"
    if e.errno == errno.EACCES:
        return f"the HTTP API cannot listen on {listen}: permission denied (ports below 1024 need root). {fix}"
    return f"the HTTP API cannot listen on {listen}: {e.strerror or e}. {fix}"


def start_api_server(config, catalog, hub: ProgressHub | None = None, *, token: str | None = None,
                     start_timeout: float = 10.0) -> ApiServer:
    """Start serving ``create_app(config, catalog, hub)`` on ``[api] listen``.

    Returns a disabled ``ApiServer`` (whose ``stop()`` does nothing) when ``listen`` is
    empty. Raises ImalinkError when the address cannot be bound or the server does not
    come up."""
    import uvicorn

    listen = config.api.listen
    if not listen:
        log.info("api_disabled", reason="[api] listen is empty")
        return ApiServer()
    addr = parse_listen(listen)
    try:
        sock = _bind(addr)
    except OSError as e:
        raise ImalinkError(_cannot_listen(listen, addr, e)) from None
    if addr.unix_path:
        url = f"unix:{addr.unix_path}"
    else:
        host, port = sock.getsockname()[:2]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if not addr.is_loopback:
        log.warning("api_not_loopback", listen=listen,
                    message="the HTTP API listens beyond this machine; every endpoint then needs the bearer token")
    app = create_app(config, catalog, hub, token=token)
    protocol = bounded_protocol(connection_limit(config.api.max_connections), config.api.request_timeout_seconds)
    uv_config = uvicorn.Config(
        app, lifespan="off", log_config=None, log_level="warning", access_log=False, http=protocol,
        timeout_graceful_shutdown=1, timeout_keep_alive=config.api.idle_timeout_seconds,
        server_header=False, proxy_headers=False,
    )
    server = uvicorn.Server(uv_config)

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as e:  # the API dying must not take the daemon with it
            log.error("api_server_crashed", listen=listen, error=f"{type(e).__name__}: {e}")
        finally:
            sock.close()

    thread = threading.Thread(target=run, name="api server", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    api = ApiServer(listen=listen, url=url, app=app, _server=server, _thread=thread, _unix_path=addr.unix_path)
    if not server.started:
        api.stop()
        raise ImalinkError(f"the HTTP API on {listen} did not start")
    log.info("api_server_started", listen=listen, url=url)
    return api
