"""The ``Host`` header check: the API answers only to names it is reachable as.

Why: DNS rebinding. A web page the user visits can point its own name at 127.0.0.1 after
loading; the browser then sends that page's requests to the API with ``Host:
attacker.example`` and lets the page read the answers. Reads are open on loopback, so without
this check any page could read the whole archive. A request naming another host gets
**421 Misdirected Request** (400 when it names none), before any endpoint runs.

The names allowed (:func:`host_policy`):

- the listen address itself (``127.0.0.1``, ``[::1]``, ``192.168.1.5``, a host name);
- for a loopback or wildcard listen address: ``localhost``, ``127.0.0.1`` and ``::1``;
- for a wildcard listen address (``0.0.0.0``, ``::``): any IP address literal (a rebinding
  page always uses a DNS name; a request naming an IP address came to that address) and
  this machine's host name;
- every entry of ``[api] allowed_hosts``: a name, ``*.domain`` for its subdomains, or ``*``
  to switch the check off (behind a reverse proxy that checks names itself).

A Unix socket is not checked: no browser can open one. The port in the header is not
compared (a proxy may forward from another port). No CORS headers are ever sent, so no
other web origin may read an answer either.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import time
from dataclasses import dataclass
from typing import Any

import structlog

from imalinkd.netaddr import ListenAddress, host_of

log = structlog.get_logger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")
LOG_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True)
class HostPolicy:
    names: frozenset[str]
    suffixes: tuple[str, ...] = ()  # from "*.domain": ".domain"
    any_ip: bool = False
    any_host: bool = False

    def allows(self, host: str) -> bool:
        """Whether a request whose Host header names ``host`` (lower case, no port, IPv6
        without brackets) may be answered."""
        if self.any_host or host in self.names or any(host.endswith(s) for s in self.suffixes):
            return True
        if self.any_ip:
            try:
                ipaddress.ip_address(host)
                return True
            except ValueError:
                return False
        return False


def host_policy(listen: ListenAddress, allowed_hosts: tuple[str, ...] = ()) -> HostPolicy | None:
    """The names the API answers to when listening on ``listen``; None: no check (Unix socket)."""
    if listen.unix_path:
        return None
    host = (listen.host or "").lower()
    names = {host} - {""}
    wildcard = host in WILDCARDS
    if listen.is_loopback or wildcard:
        names.update(LOOPBACK_NAMES)
    if not listen.is_loopback:
        names.add(socket.gethostname().lower())
    suffixes = []
    for pattern in allowed_hosts:
        pattern = pattern.lower()
        if pattern.startswith("*."):
            suffixes.append(pattern[1:])
        elif pattern != "*":
            names.add(pattern.strip("[]"))
    return HostPolicy(frozenset(names), tuple(suffixes), any_ip=wildcard, any_host="*" in allowed_hosts)


class HostCheck:
    """ASGI middleware refusing requests whose ``Host`` is not allowed by ``policy``.

    Starlette's ``TrustedHostMiddleware`` does the same matching but answers a plain-text
    400 and cannot allow IP literals; this answers the API's JSON ``{"detail": …}`` with the
    status that says what happened (421: this server is not the host you named)."""

    def __init__(self, app: Any, policy: HostPolicy | None) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope, receive, send) -> None:
        if self.policy is None or self.policy.any_host or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw = [v for k, v in scope.get("headers", ()) if k == b"host"]
        header = raw[0].decode("latin-1") if len(raw) == 1 else None
        host = host_of(header) if header else None
        if host is not None and self.policy.allows(host):
            await self.app(scope, receive, send)
            return
        if header is None:
            status, detail = 400, "exactly one Host header is needed"
        else:
            status = 421
            detail = (f"this server does not answer to the host name {header[:100]!r}; "
                      "if that name is right, add it to [api] allowed_hosts")
        self._log_refused(header, scope)
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


    _last_logged = 0.0
    _unlogged = 0

    def _log_refused(self, header: str | None, scope) -> None:
        """One warning per refused request, but at most one every 10 s (a page retrying
        in a loop must not flood the journal); the count of those left out goes with it."""
        now = time.monotonic()
        if now - self._last_logged < LOG_INTERVAL_SECONDS and self._last_logged:
            self._unlogged += 1
            return
        log.warning("api_host_refused", host=(header or "")[:100], path=scope.get("path"), client=_client(scope),
                    refused_since_last_line=self._unlogged)
        self._last_logged, self._unlogged = now, 0


def _client(scope) -> str | None:
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else None
