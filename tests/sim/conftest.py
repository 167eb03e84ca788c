"""Fixtures for the simulator tests: a SimCms on an ephemeral loopback port, a shiftable wall clock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest
from sitesim.charger import SimCharger
from sitesim.cms import SimCms

from hil.support import eventually

wait_until = eventually  # the name the simulator tests know


class ShiftClock:
    """Wall time plus an offset the test can jump forward (leases, response delays)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> ShiftClock:
    return ShiftClock()


@pytest.fixture
async def cms(clock: ShiftClock) -> AsyncIterator[SimCms]:
    c = SimCms(clock=clock, heartbeat_interval_s=30)
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def run_charger() -> AsyncIterator[Callable[[SimCharger], asyncio.Task[None]]]:
    tasks: list[asyncio.Task[None]] = []

    def start(ch: SimCharger) -> asyncio.Task[None]:
        t = asyncio.create_task(ch.run())
        tasks.append(t)
        return t

    yield start
    for t in tasks:
        t.cancel()
    for t in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            async with asyncio.timeout(15.0):
                await t
