"""ControlLoop bookkeeping that is not timing: a reload keeps what still exists."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Mapping

from gateway.control import ControlLoop
from gateway.model import Allocation, ChargerSnapshot, MeterReading
from hil.support import running_task
from tests.factories import ac, charging, make_site


class _Meters:
    def readings(self) -> Mapping[str, MeterReading | None]:
        return {}


class _Chargers:
    def snapshot(self) -> Mapping[str, ChargerSnapshot]:
        return {"A": charging("A")}

    async def apply(self, allocation: Allocation, preempt: Callable[[], bool] | None = None) -> bool:
        return True

    async def stop_transaction(self, charger_id: str) -> None:
        return None


async def test_reload_keeps_circuit_estimates_and_limits_that_still_exist() -> None:
    site = make_site(circuits=[{"id": "p1", "parent": "service", "limit_a": 63}],
                     chargers=[ac("A", "p1", phases=3), ac("B", "p1", phases=3)])
    loop = ControlLoop(site, _Meters(), _Chargers())
    await loop.tick()
    assert loop.state is not None and set(loop.state.chargers) == {"A", "B"}
    before = loop.state.chargers["A"]
    smaller = make_site(chargers=[ac("A", phases=3)])
    loop.update_site(smaller)
    # the allocator's memory of what still exists is kept (every reserve and estimate), not rebuilt
    assert set(loop.state.chargers) == {"A"}
    assert loop.state.chargers["A"] is before
    assert set(loop.state.circuits) <= {"service"}


class _WakingChargers(_Chargers):
    """A port whose applies are overtaken by an overload reading (it lands before the increases): the first
    one only, or (``always``) every one, as readings at the limit do at every poll."""

    def __init__(self, loop: list[ControlLoop], *, always: bool = False) -> None:
        self.loop = loop
        self.always = always
        self.calls: list[bool] = []

    async def apply(self, allocation: Allocation, preempt: Callable[[], bool] | None = None) -> bool:
        if self.always or not self.calls:  # the reading lands while the loop runs inside apply
            asyncio.get_running_loop().call_soon(self.loop[0].wake, "overload:m-main", 0.0)
        await asyncio.sleep(0)
        done = preempt is None or not preempt()
        self.calls.append(done)
        return done


async def test_a_wake_during_apply_preempts_the_tick_and_the_loop_ticks_again_at_once() -> None:
    site = make_site(chargers=[ac("A", phases=3)], control={"tick_s": 10.0})
    holder: list[ControlLoop] = []
    chargers = _WakingChargers(holder)
    loop = ControlLoop(site, _Meters(), chargers)
    holder.append(loop)
    seen: list[tuple[float, int]] = []
    loop.subscribe(lambda snap, alloc: seen.append((snap.taken_at, len(alloc.limits))))
    async with running_task(loop.run()):
        async with asyncio.timeout(5):  # half the 10 s tick: the re-tick did not wait for it
            while len(loop.records) < 2:
                await loop.ticked.wait()
    first, second = loop.records[0], loop.records[1]
    assert first.preempted and first.trigger == "tick"
    assert not second.preempted and second.trigger == "overload:m-main"
    assert chargers.calls[:2] == [False, True]
    assert len(seen) >= 2 and all(n == 1 for _, n in seen)  # every tick handed to the subscribers


async def test_readings_that_overload_at_every_poll_do_not_starve_the_increases() -> None:
    site = make_site(chargers=[ac("A", phases=3)], control={"tick_s": 10.0})
    holder: list[ControlLoop] = []
    chargers = _WakingChargers(holder, always=True)
    loop = ControlLoop(site, _Meters(), chargers)
    holder.append(loop)
    async with running_task(loop.run()):
        async with asyncio.timeout(5):
            while len(loop.records) < 6:
                await loop.ticked.wait()
    flags = [r.preempted for r in loop.records]
    # a tick after a preempted one writes its increases: never two preemptions in a row
    assert any(flags) and not any(a and b for a, b in itertools.pairwise(flags))
