"""Who may do what in the web UI: the sign-in cookie and protection against cross-site forms.

- Reading pages follow the read API: open when the API listens on loopback (or a Unix
  socket), otherwise only for a signed-in browser.
- Actions (import, resume, rollback, verify, update storage path, reindex) need the API
  token. The sign-in page takes it once and sets ``imalinkd_auth``: ``<issued>.<mac>``,
  an HMAC of the issue time keyed by the token, so the cookie holds nothing that gives the
  token back, is refused once it is older than :data:`SIGNIN_SECONDS`, and stops working
  the moment the token file is replaced. It is ``HttpOnly`` (no script reads it) and
  ``SameSite=Strict`` (no other site's page sends it).
- Every form carries a CSRF value equal to the ``imalinkd_csrf`` cookie (double submit),
  compared in constant time; a POST whose ``Origin`` names another host is refused too.
  Together with ``SameSite=Strict`` a page on another site cannot make this browser act.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from imalinkd.api import auth

AUTH_COOKIE = "imalinkd_auth"
CSRF_COOKIE = "imalinkd_csrf"
CSRF_FIELD = "csrf_token"
SIGNIN_SECONDS = 12 * 3600


def _mac(token: str, issued: int) -> str:
    return hmac.new(token.encode("utf-8", "surrogateescape"), f"imalinkd-web-signin:{issued}".encode(), hashlib.sha256).hexdigest()


def signin_cookie_value(token: str, now: float | None = None) -> str:
    issued = int(time.time() if now is None else now)
    return f"{issued}.{_mac(token, issued)}"


def cookie_is_valid(value: str | None, token: str | None, now: float | None = None) -> bool:
    """True for a cookie this daemon issued with the current token, not yet expired."""
    if not value or not token:
        return False
    issued_text, _, mac = value.partition(".")
    if not issued_text.isdigit() or not mac:
        return False
    issued = int(issued_text)
    age = (time.time() if now is None else now) - issued
    if age < -60 or age > SIGNIN_SECONDS:
        return False
    return hmac.compare_digest(mac.encode("ascii", "replace"), _mac(token, issued).encode())


@dataclass(frozen=True)
class Access:
    """The API's access rules, as the web pages apply them."""

    token: str | None
    reads_open: bool
    trust_local_socket: bool

    def signed_in(self, request: Request) -> bool:
        if self.trust_local_socket:
            return True
        if auth.token_matches(auth.bearer_token(request.headers.get("authorization")), self.token):
            return True
        return cookie_is_valid(request.cookies.get(AUTH_COOKIE), self.token)

    def may_read(self, request: Request) -> bool:
        return self.reads_open or self.signed_in(request)

    def check_token(self, given: str) -> bool:
        return auth.token_matches(given.strip(), self.token)


def csrf_value(request: Request) -> str:
    """The browser's CSRF value (made now when it has none; :func:`set_csrf_cookie` sends it)."""
    value = request.cookies.get(CSRF_COOKIE) or ""
    if len(value) < 32:
        value = getattr(request.state, "new_csrf", None) or secrets.token_urlsafe(32)
        request.state.new_csrf = value
    return value


def set_csrf_cookie(request: Request, response: Response) -> None:
    new = getattr(request.state, "new_csrf", None)
    if new:
        response.set_cookie(CSRF_COOKIE, new, httponly=True, samesite="strict", path="/")


def csrf_ok(request: Request, submitted: str | None) -> bool:
    """The form's CSRF value matches the cookie, and the request comes from this site."""
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not submitted or not hmac.compare_digest(cookie.encode(), submitted.encode("utf-8", "replace")):
        return False
    origin = request.headers.get("origin")
    if origin and origin != "null":
        host = request.headers.get("host", "")
        if urlsplit(origin).netloc != host:
            return False
    return True
