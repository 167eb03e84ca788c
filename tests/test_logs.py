"""Logging: JSON lines, a broken log stream never breaks the caller, a temporary target is restored."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert [e.get("n") for e in lines[:-1]] == list(range(2000))
    assert lines[-1]["event"] == "last" and lines[-1]["level"] == "error"
    assert "WARNING websockets: a library warning" in proc.stderr
