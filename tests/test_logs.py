"""Logging: JSON lines, a broken log stream never breaks the caller, a temporary target is restored."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from gateway import logs


def test_json_lines_with_event_level_and_fields() -> None:
    out = io.StringIO()
    with logs.configured("info", "json", out):
        structlog.get_logger("t").info("limit_changed", charger="CP1", limit=16.0, reason="capped:service/L1")
        structlog.get_logger("t").debug("not_shown")
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["event"] == "limit_changed" and lines[0]["level"] == "info"
    assert lines[0]["reason"] == "capped:service/L1" and "timestamp" in lines[0]


def test_a_closed_log_stream_never_raises_into_the_caller() -> None:
    out = io.StringIO()
    with logs.configured("info", "json", out):
        out.close()
        structlog.get_logger("t").error("still_running", x=1)  # must not raise


def test_configured_restores_the_previous_target() -> None:
    first, second = io.StringIO(), io.StringIO()
    with logs.configured("info", "json", first):
        with logs.configured("info", "json", second):
            structlog.get_logger("t").info("inner")
        structlog.get_logger("t").info("outer")
    assert "inner" in second.getvalue() and "inner" not in first.getvalue()
    assert "outer" in first.getvalue() and "outer" not in second.getvalue()


def test_lines_are_written_off_the_caller_in_order_and_all_of_them_when_the_block_ends() -> None:
    out = io.StringIO()
    with logs.configured("info", "json", out):
        for i in range(3000):
            structlog.get_logger("t").info("limit_changed", charger=f"CP{i:04d}", n=i)
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [e["n"] for e in lines] == list(range(3000))
    assert all(isinstance(e["timestamp"], str) and e["timestamp"].endswith("Z") for e in lines)


def test_flush_waits_for_every_line_logged_before_it() -> None:
    out = io.StringIO()
    with logs.configured("info", "json", out):
        structlog.get_logger("t").warning("first")
        structlog.get_logger("t").info("second")
        assert logs.flush(5.0)
        assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["first", "second"]


def test_a_process_that_exits_writes_every_line_it_logged() -> None:
    code = (
        "import structlog\n"
        "from gateway import logs\n"
        "logs.configure('info', 'json')\n"
        "log = structlog.get_logger('t')\n"
        "for i in range(2000):\n"
        "    log.info('line', n=i)\n"
        "import logging; logging.getLogger('websockets').warning('a library warning')\n"
        "log.error('last')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in proc.stdout.splitlines()]
    assert [e.get("n") for e in lines[:-2]] == list(range(2000))
    # the library's record: the same JSON on the same stream, in its place
    assert lines[-2] == {"event": "a library warning", "level": "warning", "logger": "websockets",
                         "timestamp": lines[-2]["timestamp"]}
    assert lines[-2]["timestamp"].endswith("Z")
    assert lines[-1]["event"] == "last" and lines[-1]["level"] == "error"
    assert proc.stderr == ""


# ---------------------------------------------------------------------------------------- journald priorities
LOG_INFO = 6  # journald's priority for a stdout line without a prefix


def journald_priority(line: str) -> tuple[int, str]:
    """A stdout line as journald reads it with SyslogLevelPrefix=true: systemd's syslog_parse_priority(&p,
    &priority, with_facility=false) in journald-stream.c. ``<N>`` with 1 to 3 digits is recognised, but
    without a facility only a single digit 0..7 is taken (and stripped); anything else is the message itself
    at the stream's priority (info)."""
    if not line.startswith("<") or ">" not in line:
        return LOG_INFO, line
    k = line.index(">")
    digits = line[1:k]
    if not 1 <= len(digits) <= 3 or not digits.isdigit():
        return LOG_INFO, line
    *high, c = (int(d) for d in digits)
    if any(high) or c > 7:
        return LOG_INFO, line
    return c, line[k + 1:]


def test_the_priority_parser_is_journalds() -> None:
    assert journald_priority('<4>{"a":1}') == (4, '{"a":1}')
    assert journald_priority('<04>x') == (4, "x")
    assert journald_priority('<14>x') == (LOG_INFO, "<14>x")  # a facility: not taken from a stream
    assert journald_priority('{"a":"<3>"}') == (LOG_INFO, '{"a":"<3>"}')


_DAEMON_LOGGING = (
    "import logging, sys, structlog\n"
    "from gateway.config import site_from_text\n"
    "from gateway import cli_run\n"
    "site = site_from_text(open(sys.argv[1]).read())\n"
    "cli_run.configure_logging(site, level=None, fmt=None)\n"
    "log = structlog.get_logger('gateway.t')\n"
    "log.debug('d_debug'); log.info('d_info'); log.warning('d_warning'); log.error('d_error')\n"
    "log.critical('d_critical')\n"
    "try:\n"
    "    1 / 0\n"
    "except ZeroDivisionError:\n"
    "    log.exception('d_exception')\n"
    "logging.getLogger('websockets.server').info('lib_info')\n"
    "logging.getLogger('websockets.server').warning('lib_warning')\n"
    "logging.getLogger('pymodbus.logging').error('lib_error\\n>>>>> send: 0x0 0x1')\n"
    "logging.getLogger('asyncio').critical('lib_critical')\n"
)
_SITE_TOML = """
[site]
id = "log-site"
[service]
voltage_ll_v = 400
phases = 3
limit_a = 100
"""


def _run_daemon_logging(tmp_path: Path, logging_toml: str, *, journal_stream: str | None) -> list[str]:
    """The daemon's logging set up as ``ems-gateway run`` does, its stdout a file (as the journal's socket
    would be); ``journal_stream``: JOURNAL_STREAM, "self" for the device and inode of that file."""
    cfg = tmp_path / "site.toml"
    cfg.write_text(_SITE_TOML + logging_toml)
    out = tmp_path / "stdout"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("JOURNAL_STREAM", None)
    with out.open("w") as f:
        if journal_stream == "self":
            st = os.fstat(f.fileno())
            journal_stream = f"{st.st_dev}:{st.st_ino}"
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        proc = subprocess.run([sys.executable, "-c", _DAEMON_LOGGING, str(cfg)], stdout=f, stderr=subprocess.PIPE,
                              text=True, timeout=60, env=env)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return out.read_text().splitlines()


def test_under_the_journal_every_line_carries_its_priority_and_p_warning_shows_warnings_only(tmp_path: Path) -> None:
    lines = _run_daemon_logging(tmp_path, '[logging]\nlevel = "debug"\n', journal_stream="self")
    parsed = [journald_priority(x) for x in lines]
    entries = [(prio, json.loads(text)) for prio, text in parsed]  # every line, prefix stripped, is JSON
    by_event = {e["event"]: prio for prio, e in entries}
    assert by_event == {"d_debug": 7, "d_info": 6, "d_warning": 4, "d_error": 3, "d_critical": 2,
                        "d_exception": 3, "lib_warning": 4, "lib_error": 3, "lib_critical": 2}  # lib_info: below
    # journalctl -p warning: priority 0..4
    shown = [e["event"] for prio, e in entries if prio <= 4]
    assert shown == ["d_warning", "d_error", "d_critical", "d_exception", "lib_warning", "lib_error", "lib_critical"]
    assert all(x.startswith("<") for x in lines)
    exc = next(e for _, e in entries if e["event"] == "d_exception")
    assert "ZeroDivisionError" in exc["exception"]  # the traceback inside the one line
    pm = next(e for _, e in entries if e["event"] == "lib_error")
    assert pm["logger"] == "pymodbus.logging" and pm["frames_dropped"] == 1


def test_no_prefix_when_stdout_is_not_the_journals_stream(tmp_path: Path) -> None:
    for stream in (None, "1:2", "garbage"):  # not set; another stream (a child's inherited variable); junk
        lines = _run_daemon_logging(tmp_path, '[logging]\nlevel = "info"\n', journal_stream=stream)
        events = [json.loads(x)["event"] for x in lines]  # plain JSON
        assert events[:2] == ["d_info", "d_warning"], stream


def test_journal_on_in_the_config_prefixes_whatever_the_stream(tmp_path: Path) -> None:
    lines = _run_daemon_logging(tmp_path, '[logging]\njournal = "on"\n', journal_stream=None)
    assert [journald_priority(x)[0] for x in lines][:2] == [6, 4]
    lines = _run_daemon_logging(tmp_path, '[logging]\njournal = "off"\n', journal_stream="self")
    assert lines[0].startswith("{")


def test_logger_levels_from_the_config(tmp_path: Path) -> None:
    toml = '[logging]\nlevel = "warning"\n[logging.loggers]\n"gateway.t" = "debug"\nwebsockets = "info"\n' \
           'pymodbus = "critical"\n'
    events = [json.loads(x)["event"] for x in _run_daemon_logging(tmp_path, toml, journal_stream=None)]
    assert events == ["d_debug", "d_info", "d_warning", "d_error", "d_critical", "d_exception", "lib_info",
                      "lib_warning", "lib_critical"]


def test_apply_levels_changes_the_levels_in_place() -> None:
    out = io.StringIO()
    with logs.configured("info", "json", out):
        log = structlog.get_logger("gateway.x")
        log.debug("hidden_1")
        logs.apply_levels("warning", {"gateway.x.sub": "debug"})
        log.info("hidden_2")
        structlog.get_logger("gateway.x.sub.deeper").debug("shown_sub")
        log.warning("shown_warning")
        logs.apply_levels("debug", {})
        log.debug("shown_debug")
        assert logging.getLogger("gateway").level == logging.DEBUG
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["shown_sub", "shown_warning",
                                                                           "shown_debug"]


def test_a_logging_key_error_names_its_path() -> None:
    from gateway.config import site_from_text
    from gateway.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        site_from_text(_SITE_TOML + '[logging.loggers]\npymodbus = "loud"\n')
    assert e.value.path == "logging.loggers.pymodbus"
    with pytest.raises(ConfigError) as e:
        site_from_text(_SITE_TOML + '[logging]\njournal = "maybe"\n')
    assert e.value.path == "logging.journal"


def test_console_lines_under_the_journal_carry_their_priority_on_every_line(tmp_path: Path) -> None:
    lines = _run_daemon_logging(tmp_path, '[logging]\nformat = "console"\njournal = "on"\n', journal_stream=None)
    parsed = [journald_priority(x) for x in lines]
    warning = next(p for p, text in parsed if "d_warning" in text)
    assert warning == 4
    start = next(i for i, (_, text) in enumerate(parsed) if "d_exception" in text)
    tb_end = next(i for i, (_, text) in enumerate(parsed) if text.startswith("ZeroDivisionError"))
    assert {p for p, _ in parsed[start:tb_end + 1]} == {3}  # the traceback's lines: error, as its first


def test_a_level_from_the_command_line_stays_through_a_reload() -> None:
    out = io.StringIO()
    with logs.configured("warning", "json", out, pin_level=True):  # ems-gateway run --log-level warning
        logs.apply_levels("debug", {"gateway.y": "debug"})  # a reload's [logging]
        structlog.get_logger("gateway.x").info("hidden")
        structlog.get_logger("gateway.y").debug("shown_per_logger")
    assert [json.loads(x)["event"] for x in out.getvalue().splitlines()] == ["shown_per_logger"]
