"""structlog set-up, done once at the entry point. Modules only call structlog.get_logger()."""

from __future__ import annotations

import logging
import sys

import structlog

from imalinkd import redact

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", json: bool = True, stream=None) -> None:
    """JSON lines (for journald and scripts) or readable console lines, to ``stream``
    (stderr by default, so that ``--json`` output on stdout stays clean)."""
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
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
