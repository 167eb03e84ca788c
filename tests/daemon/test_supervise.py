"""supervise(): restarts a failing task; with give_up_after, quick failures in a row become FatalError."""

from __future__ import annotations

import asyncio

import pytest

from gateway.supervise import FatalError, supervise


async def test_a_task_that_keeps_failing_quickly_is_given_up_after_n_failures() -> None:
    calls: list[int] = []

    async def failing() -> None:
        calls.append(1)
        raise RuntimeError("boom")

    with pytest.raises(FatalError, match="failed 3 times in a row"):
        async with asyncio.timeout(10):
            await supervise("t", failing, restart_delay_s=0.01, give_up_after=3)
    assert len(calls) == 3


async def test_failures_spread_over_healthy_runs_are_not_counted_together() -> None:
    now = [0.0]
    calls: list[int] = []

    async def healthy_then_failing() -> None:
        calls.append(1)
        now[0] += 100.0  # each run lasts longer than healthy_after_s
        if len(calls) >= 5:
            raise asyncio.CancelledError
        raise RuntimeError("boom")

    with pytest.raises(asyncio.CancelledError):
        await supervise("t", healthy_then_failing, restart_delay_s=0.0, give_up_after=2, healthy_after_s=60.0,
                        clock=lambda: now[0])
    assert len(calls) == 5


async def test_a_fatal_error_is_never_restarted() -> None:
    calls: list[int] = []

    async def fatal() -> None:
        calls.append(1)
        raise FatalError("no way on")

    with pytest.raises(FatalError):
        await supervise("t", fatal, restart_delay_s=0.0)
    assert calls == [1]
