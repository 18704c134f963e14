"""structlog set-up, done once at the entry point. Modules only call structlog.get_logger()."""

from __future__ import annotations

import logging
import os
import sys

import structlog

from imalinkd import redact

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


LOG_FORMATS = ("auto", "console", "json")


def wants_json(log_format: str = "auto", stream=None, environ=None) -> bool:
    """``json`` or ``console`` as asked; ``auto``: readable lines on a terminal, JSON under
    systemd (``JOURNAL_STREAM`` is set) and wherever a program reads them (a pipe, a file)."""
    if log_format != "auto":
        return log_format == "json"
    if (os.environ if environ is None else environ).get("JOURNAL_STREAM"):
        return True
    try:
        return not (stream or sys.stderr).isatty()
    except (AttributeError, ValueError):
        return True


def configure_logging(level: str = "info", json: bool = True, stream=None) -> None:
    """JSON lines (for journald and scripts) or readable console lines, to ``stream``
    (stderr by default, so that ``--json`` output on stdout stays clean). Console lines
    are coloured on a terminal."""
    if json:
        renderer = structlog.processors.JSONRenderer()
    else:
        try:
            colors = (stream or sys.stderr).isatty()
        except (AttributeError, ValueError):
            colors = False
        renderer = structlog.dev.ConsoleRenderer(colors=colors)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact.log_processor,  # after format_exc_info: tracebacks are masked too
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level.lower(), logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
    _stdlib_warnings(stream)
    redact.install_excepthooks()


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be replaced)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _stdlib_warnings(stream) -> None:
    """Warnings and errors of the libraries' own ``logging`` loggers (uvicorn, asyncio) to the
    same stream, secrets masked; without this they would go, unmasked, to logging's
    last-resort handler."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_imalinkd", False)]:
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler._imalinkd = True  # type: ignore[attr-defined]
    handler.setLevel(logging.WARNING)
    handler.addFilter(redact.LogFilter())
    handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: %(message)s"))
    root.addHandler(handler)
