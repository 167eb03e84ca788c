"""ControlLoop bookkeeping that is not timing: a reload keeps what still exists."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from gateway.control import ControlLoop
from gateway.model import Allocation, ChargerSnapshot, MeterReading
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
