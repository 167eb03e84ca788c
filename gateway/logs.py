"""Logging: structlog, JSON lines to stdout (the journal) or readable key=value lines on a terminal."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    out = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=24)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=_SafeLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    # libraries that use the standard logging module (pymodbus, websockets) go to stderr, warnings only
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("pymodbus", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _SafeLogger(structlog.PrintLogger):
    """A print logger whose write errors (a closed or broken stream) never reach the caller: a log
    line lost is better than a control loop or a request handler that fails because of it."""

    def msg(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().msg(message)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _SafeLoggerFactory:
    def __init__(self, file: TextIO) -> None:
        self._file = file

    def __call__(self, *args: Any) -> _SafeLogger:
        return _SafeLogger(self._file)


@contextlib.contextmanager
def configured(level: str, fmt: str, stream: TextIO) -> Iterator[None]:
    """Log to ``stream`` for the duration of the block, then restore the configuration before it."""
    saved = structlog.get_config()
    configure(level, fmt, stream=stream)
    try:
        yield
    finally:
        structlog.configure(**saved)
