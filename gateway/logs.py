"""Logging: structlog, JSON lines to stdout (the journal) or readable key=value lines on a terminal.

Lines are rendered and written off the event loop: the caller only builds the event dict (level,
a raw timestamp, context) and puts it on a queue; one writer thread renders it (JSON or console),
and writes it, in the order it was logged. Records of libraries that use the standard logging
module (pymodbus, paho, websockets, aiohttp, openleadr, asyncio) go through the same queue: the root
logger's handler carries a :class:`structlog.stdlib.ProcessorFormatter` with the same renderer, so they
are the same lines on the same stream (``logger`` names the library), warnings and above unless
``[logging.loggers]`` says otherwise. pymodbus' frame dumps (hex frames appended to its errors) are cut:
its error stays one line. :func:`flush` waits until every line logged before it is written (it is called
at exit, and when a :func:`configured` block ends).

Under systemd (``JOURNAL_STREAM`` names the output stream, or ``[logging] journal = "on"``) every line
starts with ``<N>``, the syslog priority of its level (debug 7, info 6, warning 4, error 3, critical 2),
which journald takes as the entry's priority (``SyslogLevelPrefix=``, on by default) and strips: then
``journalctl -p warning`` shows warnings and worse only.

:func:`apply_levels` changes the levels in place (a reload's ``[logging]``).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, TextIO

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}
# syslog priorities (RFC 5424) by structlog level name; journald reads them from a "<N>" line prefix
PRIORITY = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "warn": 4, "error": 3, "exception": 3,
            "critical": 2, "fatal": 2}
LIBRARY_LEVEL = logging.WARNING  # the standard logging modules' records (libraries) below this are dropped
BACKLOG_MAX = 100_000  # lines waiting to be written; beyond it new lines are dropped (and counted)
_UTC = datetime.UTC
_FRAMES = "\n>>>>> "  # pymodbus appends its last frames to an error: "\n>>>>> send: 0x1 0x3 ..."


def configure(
    level: str = "info",
    fmt: str = "auto",
    stream: Any = None,
    *,
    journal: str = "auto",
    loggers: Mapping[str, str] | None = None,
    pin_level: bool = False,
) -> None:
    """Log at ``level`` to ``stream`` (stdout) as ``fmt`` (auto: console on a terminal, else JSON).

    ``journal``: "auto" prefixes lines with their syslog priority when the stream is the journal's
    (``JOURNAL_STREAM``), "on" always, "off" never. ``loggers``: logger name -> level (standard logging and
    structlog loggers by name prefix). ``pin_level``: the level came from the command line; a reload keeps it."""
    out = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=24)
    prefix = journal == "on" or (journal == "auto" and is_journal_stream(out))
    formatter = structlog.stdlib.ProcessorFormatter(
        processor=renderer,
        foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, _from_record],
    )
    writer = _Writer(renderer, out, formatter, prefix=prefix)
    _state.pinned = pin_level
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            _stamp,  # the time of the call; formatted by the writer
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,  # needs the caller's sys.exc_info(): on the caller
            _to_writer,
        ],
        logger_factory=_QueueLoggerFactory(writer),
        cache_logger_on_first_use=False,
    )
    old, _state.current = _state.current, writer
    if old is not None and old not in _state.held:
        old.stop()
    root = logging.getLogger()
    mine = [h for h in root.handlers if isinstance(h, _QueueHandler)]
    for h in mine:
        h.setFormatter(formatter)
    if not root.handlers:  # as logging.basicConfig: an application's (or pytest's) own handlers are kept
        handler = _QueueHandler()
        handler.setFormatter(formatter)
        root.addHandler(handler)
        root.setLevel(LIBRARY_LEVEL)
    apply_levels(level, loggers or {}, force=True)


def apply_levels(level: str, loggers: Mapping[str, str], *, force: bool = False) -> None:
    """Set the level of the gateway's lines and the per-logger levels (those of an earlier call that are
    gone fall back to the default); in place, for a reload. A level pinned by the command line is kept."""
    if force or not _state.pinned:
        _state.level = _LEVELS.get(level, logging.INFO)
    for name in _state.loggers:
        if name not in loggers:
            logging.getLogger(name).setLevel(_DEFAULT_LIBRARY_LEVELS.get(name, logging.NOTSET))
    for name, lv in _DEFAULT_LIBRARY_LEVELS.items():
        if name not in loggers:
            logging.getLogger(name).setLevel(lv)
    _state.loggers = {n: _LEVELS.get(v, logging.INFO) for n, v in loggers.items()}
    for name, lv in _state.loggers.items():
        logging.getLogger(name).setLevel(lv)
    logging.getLogger("gateway").setLevel(_state.level_of("gateway"))  # the gateway's own stdlib loggers
    _state.by_name.clear()
    floor = min([_state.level, *_state.loggers.values()])
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(floor))


def is_journal_stream(out: Any) -> bool:
    """Whether ``out`` is the stream systemd connected to the journal (``JOURNAL_STREAM=<dev>:<inode>``)."""
    value = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(out.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (AttributeError, OSError, ValueError):  # no descriptor (io.UnsupportedOperation is both), no value
        return False


def flush(timeout_s: float = 5.0) -> bool:
    """Wait until every line logged so far is written (False: not within ``timeout_s``)."""
    w = _state.current
    return True if w is None else w.flush(timeout_s)


@contextlib.contextmanager
def configured(
    level: str, fmt: str, stream: TextIO, *, journal: str = "off", pin_level: bool = False
) -> Iterator[None]:
    """Log to ``stream`` for the duration of the block, then restore the configuration before it."""
    saved = structlog.get_config()
    saved_writer = _state.current
    saved_levels = (_state.level, dict(_state.loggers), _state.pinned)
    if saved_writer is not None:
        _state.held.add(saved_writer)
    configure(level, fmt, stream=stream, journal=journal, pin_level=pin_level)
    mine = _state.current
    try:
        yield
    finally:
        if mine is not None:
            mine.stop()  # everything logged in the block is written before it ends
        structlog.configure(**saved)
        _state.current = saved_writer
        _state.level, _state.loggers, _state.pinned = saved_levels[0], saved_levels[1], saved_levels[2]
        _state.by_name.clear()
        if saved_writer is not None:
            _state.held.discard(saved_writer)


# libraries quieter than LIBRARY_LEVEL unless [logging.loggers] names them
_DEFAULT_LIBRARY_LEVELS: dict[str, int] = {"pymodbus": logging.WARNING, "websockets": logging.WARNING}


# ---------------------------------------------------------------------------------------- the caller's side
def _stamp(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event_dict["timestamp"] = time.time()  # a float here; the writer puts the ISO text in the same key
    return event_dict


def _to_writer(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (event_dict,), {}


class _QueueLogger:
    """structlog's logger: hands the processed event dict to the writer thread (never raises). ``min_level``:
    the level of its name ([logging.loggers]), finer than the filtering wrapper's."""

    def __init__(self, writer: _Writer, min_level: int) -> None:
        self._writer = writer
        self._min = min_level

    def msg(self, event_dict: MutableMapping[str, Any]) -> None:
        if self._min > logging.DEBUG and _LEVELS.get(str(event_dict.get("level")), logging.ERROR) < self._min:
            return
        self._writer.put(event_dict)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


class _QueueLoggerFactory:
    def __init__(self, writer: _Writer) -> None:
        self._writer = writer

    def __call__(self, *args: Any) -> _QueueLogger:
        name = args[0] if args and isinstance(args[0], str) else ""
        return _QueueLogger(self._writer, _state.level_of(name))


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


def _from_record(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A standard logging record's time, traceback; pymodbus' frame dump cut from its message."""
    record: logging.LogRecord = event_dict["_record"]
    event_dict["timestamp"] = _iso(record.created)
    event = event_dict.get("event")
    if isinstance(event, str) and _FRAMES in event and record.name.startswith("pymodbus"):
        event_dict["event"], *frames = event.split(_FRAMES)
        event_dict["frames_dropped"] = len(frames)
    if record.exc_text:
        event_dict["exception"] = record.exc_text
    return event_dict


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, _UTC).isoformat().replace("+00:00", "Z")


class _State:
    def __init__(self) -> None:
        self.current: _Writer | None = None
        self.held: set[_Writer] = set()  # writers a `configured` block will restore: not stopped by configure
        self.level = logging.INFO
        self.loggers: dict[str, int] = {}  # [logging.loggers]
        self.pinned = False
        self.by_name: dict[str, int] = {}  # level_of's answers

    def level_of(self, name: str) -> int:
        """The level for logger ``name``: its own or its nearest parent's in [logging.loggers], else the level."""
        lv = self.by_name.get(name)
        if lv is None:
            lv = self.level
            probe = name
            while probe:
                if probe in self.loggers:
                    lv = self.loggers[probe]
                    break
                probe = probe.rpartition(".")[0]
            self.by_name[name] = lv
        return lv


_state = _State()


# ---------------------------------------------------------------------------------------- the writer thread
class _Writer:
    """One thread that renders and writes every line, in order. A broken or closed stream loses lines, never
    raises into a caller; a backlog beyond BACKLOG_MAX drops new lines (counted, reported when it drains)."""

    def __init__(self, renderer: Any, out: TextIO, formatter: logging.Formatter, *, prefix: bool = False) -> None:
        self._renderer = renderer
        self._out = out
        self._formatter = formatter
        self._prefix = prefix
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
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
            stop = False
            for it in batch:
                if it is None:
                    stop = True
                elif isinstance(it, threading.Event):
                    self._write(out)
                    out = []
                    it.set()
                else:
                    out.append(self._line(it))
            if self.dropped:
                n, self.dropped = self.dropped, 0
                out.append(self._line({"event": "log_lines_dropped", "count": n, "level": "warning",
                                       "timestamp": time.time()}))
            self._write(out)
            if stop:
                return

    def _line(self, item: Any) -> str:
        if isinstance(item, logging.LogRecord):
            text, priority = self._render_record(item), _record_priority(item.levelno)
        else:
            priority = PRIORITY.get(str(item.get("level", "info")), 6)  # before rendering: renderers pop it
            text = self._render(item)
        if not self._prefix:
            return text
        return "\n".join(f"<{priority}>{part}" for part in text.split("\n"))  # every line of a traceback too

    def _render(self, event_dict: MutableMapping[str, Any]) -> str:
        try:
            ts = event_dict.get("timestamp")
            if isinstance(ts, float):
                event_dict["timestamp"] = _iso(ts)
            return str(self._renderer(None, str(event_dict.get("level", "info")), event_dict))
        except Exception as exc:  # a value the renderer cannot take: the line, not the writer, is lost
            return f"log line not rendered: {exc!r}: {event_dict.get('event')!r}"

    def _render_record(self, record: logging.LogRecord) -> str:
        try:
            return self._formatter.format(record)
        except Exception as exc:
            return f"log record not formatted: {exc!r}: {record.name}"

    def _write(self, out: list[str]) -> None:
        if out:
            with contextlib.suppress(OSError, ValueError):
                self._out.write("\n".join(out) + "\n")
                self._out.flush()

    def _write_now(self, item: Any) -> None:
        if isinstance(item, logging.LogRecord | MutableMapping):
            self._write([self._line(item)])


def _record_priority(levelno: int) -> int:
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    return 6 if levelno >= logging.INFO else 7


@atexit.register
def _flush_at_exit() -> None:
    w = _state.current
    if w is not None:
        w.stop(2.0)
