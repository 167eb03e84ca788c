"""Telemetry off the control loop: a LatestTick thread builds the topics of the latest tick (stale ones
dropped) and the values reach the outbox on the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from pathlib import Path

from gateway.config import Site
from gateway.control import LatestTick
from gateway.model import Allocation, Snapshot
from gateway.telemetry.mqtt import Telemetry
from tests.telemetry.conftest import async_wait, mqtt_cfg, tick


def test_a_busy_subscriber_gets_the_latest_tick_and_the_stale_ones_are_dropped() -> None:
    release = threading.Event()
    seen: list[float] = []

    def slow(snapshot: Snapshot, allocation: Allocation) -> None:
        seen.append(snapshot.taken_at)
        release.wait(10)

    worker = LatestTick(slow, "test")
    worker(*tick(1.0))
    deadline = time.monotonic() + 10
    while not seen and time.monotonic() < deadline:  # the first is being handled (the thread has taken it)
        time.sleep(0.001)
    for t in range(2, 11):  # while the first is being handled
        worker(*tick(float(t)))
    release.set()
    assert worker.wait_idle(10)
    assert seen[0] == 1.0 and seen[-1] == 10.0 and len(seen) < 10
    assert worker.dropped == 10 - len(seen)
    worker.stop()


async def test_ticks_built_on_the_worker_thread_reach_the_outbox_on_the_loop(site: Site, tmp_path: Path) -> None:
    tel = Telemetry(mqtt_cfg(), site, state_dir=tmp_path)  # no broker: the values wait in the outbox
    link = asyncio.create_task(tel.run())
    worker = LatestTick(tel.publish_tick, "telemetry")
    loop_thread = threading.get_ident()
    built_on: list[int] = []
    orig = tel._tick_chargers

    def spy(snapshot: Snapshot, allocation: Allocation, ts: str, now: float) -> None:
        built_on.append(threading.get_ident())
        orig(snapshot, allocation, ts, now)

    tel._tick_chargers = spy  # type: ignore[method-assign]
    try:
        for k in range(20):
            worker(*tick(1000.0 + k, ac_limit=10.0 + k / 2))
        await asyncio.to_thread(worker.wait_idle, 10)

        def latest() -> object:
            m = tel._values.get("ems/t-site/charger/AC-1")
            return None if m is None else json.loads(m.payload).get("limit_a")

        assert await async_wait(lambda: latest() == 19.5)
        assert built_on and loop_thread not in built_on
        assert worker.handled + worker.dropped == 20
    finally:
        worker.stop()
        link.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await link
        tel.close()
