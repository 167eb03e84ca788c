"""Logging: structlog, JSON lines to stdout (the journal) or readable key=value lines on a terminal.

Lines are rendered and written off the event loop: the caller only builds the event dict (level,
a raw timestamp, context) and puts it on a queue; one writer thread renders it (JSON or console),
and writes it, in the order it was logged. Records of libraries that use the standard logging
module (pymodbus, websockets; warnings only) go through the same queue to stderr, so the order of
all lines is kept. :func:`flush` waits until every line logged before it is written (it is called
at exit, and when a :func:`configured` block ends).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import queue
import sys
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_STDLIB_FORMAT = "%(levelname)s %(name)s: %(message)s"
BACKLOG_MAX = 100_000  # lines waiting to be written; beyond it new lines are dropped (and counted)
_UTC = datetime.UTC


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    out = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=24)
    writer = _Writer(renderer, out)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _stamp,  # the time of the call; formatted by the writer
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,  # needs the caller's sys.exc_info(): on the caller
            _to_writer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=_QueueLoggerFactory(writer),
        cache_logger_on_first_use=False,
    )
    old, _state.current = _state.current, writer
    if old is not None and old not in _state.held:
        old.stop()
    # libraries that use the standard logging module (pymodbus, websockets) go to stderr, warnings only
    root = logging.getLogger()
    if not root.handlers:  # as logging.basicConfig: an application's (or pytest's) own handlers are kept
        root.addHandler(_QueueHandler())
        root.setLevel(logging.WARNING)
    for noisy in ("pymodbus", "websockets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def flush(timeout_s: float = 5.0) -> bool:
    """Wait until every line logged so far is written (False: not within ``timeout_s``)."""
    w = _state.current
    return True if w is None else w.flush(timeout_s)


@contextlib.contextmanager
def configured(level: str, fmt: str, stream: TextIO) -> Iterator[None]:
    """Log to ``stream`` for the duration of the block, then restore the configuration before it."""
    saved = structlog.get_config()
    saved_writer = _state.current
    if saved_writer is not None:
        _state.held.add(saved_writer)
    configure(level, fmt, stream=stream)
    mine = _state.current
    try:
        yield
    finally:
        if mine is not None:
            mine.stop()  # everything logged in the block is written before it ends
        structlog.configure(**saved)
        _state.current = saved_writer
        if saved_writer is not None:
            _state.held.discard(saved_writer)


# ---------------------------------------------------------------------------------------- the caller's side
def _stamp(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict["timestamp"] = time.time()  # a float here; the writer puts the ISO text in the same key
    return event_dict


def _to_writer(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (event_dict,), {}


class _QueueLogger:
    """structlog's logger: hands the processed event dict to the writer thread (never raises)."""

    def __init__(self, writer: _Writer) -> None:
        self._writer = writer

    def msg(self, event_dict: MutableMapping[str, Any]) -> None:
        self._writer.put(event_dict)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _QueueLoggerFactory:
    def __init__(self, writer: _Writer) -> None:
        self._writer = writer

    def __call__(self, *args: Any) -> _QueueLogger:
        return _QueueLogger(self._writer)


class _QueueHandler(logging.Handler):
    """The root logger's handler: a standard logging record goes to the current writer (formatted there)."""

    def emit(self, record: logging.LogRecord) -> None:
        w = _state.current
        if w is None:
            return
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)  # tracebacks die with the frame
        record.exc_info = None
        w.put(record)


class _State:
    def __init__(self) -> None:
        self.current: _Writer | None = None
        self.held: set[_Writer] = set()  # writers a `configured` block will restore: not stopped by configure


_state = _State()


# ---------------------------------------------------------------------------------------- the writer thread
class _Writer:
    """One thread that renders and writes every line, in order. A broken or closed stream loses lines, never
    raises into a caller; a backlog beyond BACKLOG_MAX drops new lines (counted, reported when it drains)."""

    def __init__(self, renderer: Any, out: TextIO) -> None:
        self._renderer = renderer
        self._out = out
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stdlib = logging.Formatter(_STDLIB_FORMAT)
        self.dropped = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        if self._stopped:
            self._write_now(item)  # after stop (late lines at exit): written by the caller, still in order
            return
        if self._q.qsize() >= BACKLOG_MAX:
            self.dropped += 1
            return
        self._q.put(item)

    def flush(self, timeout_s: float = 5.0) -> bool:
        if self._stopped or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._q.put(done)
        return done.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._stopped:
            return
        self._q.put(None)
        self._thread.join(timeout_s)
        self._stopped = True
        with contextlib.suppress(queue.Empty):  # lines put after the stop marker (or left by a stuck stream)
            while True:
                item = self._q.get_nowait()
                if item is not None and not isinstance(item, threading.Event):
                    self._write_now(item)

    def _run(self) -> None:
        while True:
            item = self._q.get()
            batch = [item]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 512:
                    batch.append(self._q.get_nowait())
            out: list[str] = []
            err: list[str] = []
            stop = False
            for it in batch:
                if it is None:
                    stop = True
                elif isinstance(it, threading.Event):
                    self._write(out, err)
                    out, err = [], []
                    it.set()
                elif isinstance(it, logging.LogRecord):
                    err.append(self._render_record(it))
                else:
                    out.append(self._render(it))
            if self.dropped:
                n, self.dropped = self.dropped, 0
                out.append(self._render({"event": "log_lines_dropped", "count": n, "level": "warning",
                                         "timestamp": time.time()}))
            self._write(out, err)
            if stop:
                return

    def _render(self, event_dict: MutableMapping[str, Any]) -> str:
        try:
            ts = event_dict.get("timestamp")
            if isinstance(ts, float):
                event_dict["timestamp"] = datetime.datetime.fromtimestamp(ts, _UTC).isoformat().replace("+00:00", "Z")
            return str(self._renderer(None, str(event_dict.get("level", "info")), event_dict))
        except Exception as exc:  # a value the renderer cannot take: the line, not the writer, is lost
            return f"log line not rendered: {exc!r}: {event_dict.get('event')!r}"

    def _render_record(self, record: logging.LogRecord) -> str:
        try:
            return self._stdlib.format(record)
        except Exception as exc:
            return f"log record not formatted: {exc!r}"

    def _write(self, out: list[str], err: list[str]) -> None:
        if out:
            with contextlib.suppress(OSError, ValueError):
                self._out.write("\n".join(out) + "\n")
                self._out.flush()
        if err:
            with contextlib.suppress(OSError, ValueError):
                sys.stderr.write("\n".join(err) + "\n")
                sys.stderr.flush()

    def _write_now(self, item: Any) -> None:
        if isinstance(item, logging.LogRecord):
            self._write([], [self._render_record(item)])
        elif isinstance(item, MutableMapping):
            self._write([self._render(item)], [])


@atexit.register
def _flush_at_exit() -> None:
    w = _state.current
    if w is not None:
        w.stop(2.0)
