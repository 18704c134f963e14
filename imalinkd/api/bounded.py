"""HTTP connections with bounds: a request timeout and a cap on open connections.

uvicorn alone bounds neither: a client may send half a request and keep the connection
open for ever (its keep-alive timeout starts only after a first response), and it accepts
every connection. A few hundred such "slowloris" connections use up the daemon's file
descriptors, and then ``blkid`` and the scan of a newly plugged card fail with EMFILE.

:func:`bounded_protocol` makes a subclass of uvicorn's h11 protocol that

- closes a connection that has not sent a whole request (request line, headers and body)
  within ``request_timeout`` seconds of connecting, or of starting its next request on a
  kept-alive connection (answering ``408`` when no answer has begun);
- answers ``503`` and closes at once any connection beyond ``max_connections`` open ones,
  so the descriptors the API holds stay bounded whatever clients do.

An idle kept-alive connection is closed by uvicorn after ``timeout_keep_alive`` seconds
(``[api] idle_timeout_seconds``). Header size is bounded by h11 (16 KiB). Refusals are
logged at most once every 10 seconds, with a count.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import h11
import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

log = structlog.get_logger(__name__)

LOG_INTERVAL_SECONDS = 10.0


def _answer(status: str, detail: str) -> bytes:
    """A whole HTTP/1.1 answer written straight to the transport (h11 cannot send one
    before it has read a request)."""
    body = json.dumps({"detail": detail}).encode()
    head = (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
            f"content-length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


_BUSY = _answer("503 Service Unavailable", "too many open connections; try again shortly")
_SLOW = _answer("408 Request Timeout", "the request was not sent in time")
_RECEIVING = (h11.IDLE, h11.SEND_BODY)  # their states while a request is incomplete


class _RateLimitedLog:
    def __init__(self, event: str) -> None:
        self.event = event
        self.last = 0.0
        self.unlogged = 0

    def __call__(self, **fields: Any) -> None:
        now = time.monotonic()
        if self.last and now - self.last < LOG_INTERVAL_SECONDS:
            self.unlogged += 1
            return
        log.warning(self.event, **fields, left_out_since_last_line=self.unlogged)
        self.last, self.unlogged = now, 0


def bounded_protocol(max_connections: int, request_timeout: float) -> type[H11Protocol]:
    """An h11 protocol class for ``uvicorn.Config(http=…)`` with these bounds."""
    refused_log = _RateLimitedLog("api_connection_refused")
    slow_log = _RateLimitedLog("api_slow_request_closed")

    class BoundedH11Protocol(H11Protocol):
        _timer: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if len(self.connections) >= max_connections:
                self._refused = True
                self.transport = transport
                transport.write(_BUSY)
                transport.close()
                refused_log(open_connections=len(self.connections), max_connections=max_connections)
                return
            super().connection_made(transport)
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if not self._refused:
                super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            if self._timer is None and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request on a kept-alive connection begins
            super().data_received(data)
            if self.conn.their_state not in _RECEIVING:
                self._disarm()  # the whole request is in (or the connection is done with)

        def _arm(self) -> None:
            self._disarm()
            self._timer = self.loop.call_later(request_timeout, self._too_slow)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

        def _too_slow(self) -> None:
            self._timer = None
            if self.transport is None or self.transport.is_closing() or self.conn.their_state not in _RECEIVING:
                return
            if self.conn.our_state is h11.IDLE:
                self.transport.write(_SLOW)
            self.transport.close()
            slow_log(client=f"{self.client[0]}:{self.client[1]}" if self.client else None, timeout_seconds=request_timeout)

    return BoundedH11Protocol
