"""Keeping secrets out of everything printed: messages, log lines, tracebacks.

Two kinds of secret reach output by accident: the password of the catalog URL
(``postgresql://user:PASSWORD@host/db``, in error messages and ``check-config``) and the
API token. Both are handled in one place:

- :func:`url` renders a database URL with its password as ``***`` (SQLAlchemy's own
  rendering, so every URL form it accepts is covered);
- :func:`text` removes from any text every secret registered with :func:`remember` (the
  config registers the catalog password when it is loaded, the API server its token) and,
  in case a URL was never registered (a malformed one, one from another source), the
  password part of anything shaped like ``scheme://user:password@``.

``ImalinkError`` messages and the log processor (:func:`log_processor`, installed by
``logsetup``) go through :func:`text`, so a secret does not get into the journal through a
message someone forgot to redact.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import quote, unquote

MASK = "***"
# scheme://user:password@ — the password is anything up to the last '@' before the host
_URL_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s:/@]*:)(?P<pw>[^\s@/]*(?:@[^\s@/]*)*)(?=@)")
_MIN_SECRET = 8  # shorter ones would mask ordinary words and parts of paths; URLs are caught by shape

_secrets: set[str] = set()
_lock = threading.Lock()


def remember(secret: str | None) -> None:
    """Have ``secret`` masked wherever :func:`text` sees it from now on (also in its
    percent-encoded and decoded forms, as it may appear inside a URL)."""
    if not secret or len(secret) < _MIN_SECRET:
        return
    with _lock:
        for form in {secret, unquote(secret), quote(secret, safe="")}:
            if len(form) >= _MIN_SECRET:
                _secrets.add(form)


def remember_url(value: str | None) -> None:
    """Register the password of a database URL (nothing when it has none)."""
    if not value:
        return
    try:
        from sqlalchemy.engine import make_url

        password = make_url(value).password
    except Exception:
        match = _URL_PASSWORD.search(value)
        password = match.group("pw") if match else None
    if password:
        remember(str(password))


def url(value: str) -> str:
    """A database URL fit to print: the password replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(value)
    except Exception:
        return text(value)
    if parsed.password is None:
        return value
    return text(parsed.render_as_string(hide_password=True))


def text(value: str) -> str:
    """``value`` with every known secret, and any URL password, masked."""
    if not value:
        return value
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in value:
            value = value.replace(secret, MASK)
    if "://" in value:
        value = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, value)
    return value


def value(obj: object) -> object:
    """:func:`text` applied to a string, or to the strings inside lists, tuples and dicts
    (log event values); anything else unchanged."""
    if isinstance(obj, str):
        return text(obj)
    if isinstance(obj, dict):
        return {k: value(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(value(v) for v in obj)
    return obj


class LogFilter:
    """A ``logging`` filter doing the same for records of the standard library's loggers
    (uvicorn, asyncio): the message, its arguments and a formatted traceback."""

    def filter(self, record) -> bool:
        record.msg = text(record.getMessage())
        record.args = ()
        if record.exc_info and not record.exc_text:
            import logging

            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = text(record.exc_text)
            record.exc_info = None
        return True


def install_excepthooks() -> None:
    """Print uncaught exceptions (of the main thread and of other threads) with secrets
    masked, as Python would print them otherwise."""
    import sys
    import traceback

    def main_hook(exc_type, exc, tb) -> None:
        sys.stderr.write(text("".join(traceback.format_exception(exc_type, exc, tb))))

    def thread_hook(args) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "?"
        lines = traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
        sys.stderr.write(text(f"Exception in thread {name}:\n" + "".join(lines)))

    sys.excepthook = main_hook
    threading.excepthook = thread_hook


def log_processor(_logger: object, _method: str, event_dict: dict) -> dict:
    """structlog processor: masks secrets in every value of a log event, tracebacks
    (``exception``, once formatted) included."""
    return {k: value(v) for k, v in event_dict.items()}
