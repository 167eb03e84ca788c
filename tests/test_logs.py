"""Logging: JSON lines, a broken log stream never breaks the caller, a temporary target is restored."""

from __future__ import annotations

import io
import json

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
