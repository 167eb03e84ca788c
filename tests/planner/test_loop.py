"""The control loop with a planner: the tick's snapshot carries the plan's targets; a failing planner gives none."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.control import ControlLoop
from gateway.model import Allocation, ChargerSnapshot, ChargerTarget, MeterReading, Snapshot
from tests.factories import ac, charging, make_site


class _Meters:
    def readings(self) -> Mapping[str, MeterReading | None]:
        return {}


class _Chargers:
    def snapshot(self) -> Mapping[str, ChargerSnapshot]:
        return {"A": charging("A"), "B": charging("B")}

    async def apply(self, allocation: Allocation, preempt: Callable[[], bool] | None = None) -> bool:
        return True

    async def stop_transaction(self, charger_id: str) -> None:
        return None


class _Planner:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[Allocation | None] = []

    def targets(self, snapshot: Snapshot, allocation: Allocation | None, now: float) -> Mapping[str, ChargerTarget]:
        self.seen.append(allocation)
        if self.fail:
            raise RuntimeError("planner bug")
        return {"B": ChargerTarget(0.0, "plan:cheap-period", True)}


async def test_the_plan_reaches_the_allocator_and_a_failure_falls_back() -> None:
    site = make_site(chargers=[ac("A", phases=3), ac("B", phases=3)])
    p = _Planner()
    loop = ControlLoop(site, _Meters(), _Chargers(), planner=p)
    a = await loop.tick()
    assert loop.snapshot is not None and "B" in loop.snapshot.targets
    assert a.limits["B"].limit == 0.0  # (the meterless test site is in fail-safe: the allocator tests show reasons)
    await loop.tick()
    assert p.seen[-1] is a  # the planner sees the last allocation (its non-EV estimates: the forecast)
    p.fail = True
    await loop.tick()
    assert loop.snapshot is not None and not loop.snapshot.targets
