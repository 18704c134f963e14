"""Parsing of ``[api] listen`` values (``host:port``, ``[v6]:port`` or ``unix:/path``) and of
Host header values and ``[api] allowed_hosts`` entries."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit
from dataclasses import dataclass


@dataclass(frozen=True)
class ListenAddress:
    host: str | None = None
    port: int | None = None
    unix_path: str | None = None

    @property
    def is_loopback(self) -> bool:
        if self.unix_path:
            return True
        if self.host in ("localhost",):
            return True
        try:
            return ipaddress.ip_address(self.host or "").is_loopback
        except ValueError:
            return False


def parse_listen(value: str) -> ListenAddress:
    """Parse a listen address; raises ValueError with a message fit for a config error."""
    if value.startswith("unix:"):
        path = value[5:]
        if not path.startswith("/"):
            raise ValueError(f"{value!r}: a unix socket path must be absolute")
        return ListenAddress(unix_path=path)
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port (for example 127.0.0.1:8765)")
    host = host.strip("[]")
    try:
        n = int(port)
    except ValueError:
        raise ValueError(f"{value!r}: port {port!r} is not a number") from None
    if not 0 <= n <= 65535:
        raise ValueError(f"{value!r}: port {n} is out of range")
    return ListenAddress(host=host, port=n)


def host_of(header: str) -> str | None:
    """The host part of a Host header value, lower case, IPv6 without brackets; None when
    it cannot be read as ``host[:port]``."""
    try:
        parts = urlsplit("//" + header)
        host = parts.hostname
        _ = parts.port  # a port that is not a number is an error
    except ValueError:
        return None
    if not host or parts.path or parts.query or parts.fragment or parts.username is not None:
        return None
    return host


def check_pattern(pattern: str) -> str | None:
    """Why an ``[api] allowed_hosts`` entry is unusable, or None when it is fine."""
    if pattern == "*":
        return None
    name = pattern[2:] if pattern.startswith("*.") else pattern
    if not name or "*" in name:
        return f"{pattern!r}: a wildcard is only allowed as '*' or at the start of '*.domain'"
    if host_of(name) != name.lower().strip("[]"):
        return f"{pattern!r} is not a bare host name or address (no scheme, port or path)"
    return None
