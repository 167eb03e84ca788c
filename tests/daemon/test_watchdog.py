"""The watchdog is pinged by the control loop itself: a stalled loop stops the pings."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from gateway.control import ControlLoop
from gateway.model import Allocation, ChargerSnapshot, ChargerState, MeterReading
from gateway.systemd import Notifier
from tests.daemon.conftest import NotifyListener
from tests.factories import ac, make_site


class StallingMeters:
    """Readings from a meter whose driver call blocks the loop's thread when told to."""

    def __init__(self) -> None:
        self.stall_s = 0.0

    def readings(self) -> Mapping[str, MeterReading | None]:
        if self.stall_s:
            s, self.stall_s = self.stall_s, 0.0
            time.sleep(s)  # a hung call inside the control loop
        return {"m-main": MeterReading(current_a=(10.0, 10.0, 10.0), at=time.monotonic())}


class Chargers:
    def __init__(self) -> None:
        self.applied: list[Allocation] = []

    def snapshot(self) -> Mapping[str, ChargerSnapshot]:
        return {"A": ChargerSnapshot(id="A", online=True, state=ChargerState.NO_EV)}

    async def apply(self, allocation: Allocation, preempt: Callable[[], bool] | None = None) -> bool:
        self.applied.append(allocation)
        return True

    async def stop_transaction(self, charger_id: str) -> None:
        raise AssertionError("not expected")


async def test_stalled_loop_stops_watchdog_pings(tmp_path: Path) -> None:
    listener = NotifyListener(str(tmp_path / "notify.sock"))
    site = make_site(chargers=[ac("A", phases=3)], control={"tick_s": 0.2})
    meters = StallingMeters()
    loop = ControlLoop(site, meters, Chargers(), notifier=Notifier(address=listener.path))
    task = asyncio.create_task(loop.run())
    try:
        await asyncio.sleep(1.0)
        pings = [t for t, m in listener.drain() if m == "WATCHDOG=1"]
        assert len(pings) >= 3
        meters.stall_s = 2.0
        await asyncio.sleep(3.0)
        pings = [t for t, m in listener.drain() if m == "WATCHDOG=1"]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) >= 1.9  # no ping while the loop was stuck
        assert pings[-1] > time.monotonic() - 1.0  # and pings resumed afterwards
        assert any(m.startswith("STATUS=normal") for _, m in listener.drain())
    finally:
        task.cancel()
        listener.close()
