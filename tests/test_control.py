"""ControlLoop bookkeeping that is not timing: a reload keeps what still exists."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.control import ControlLoop
from gateway.model import Allocation, ChargerSnapshot, MeterReading
from tests.factories import ac, charging, make_site


class _Meters:
    def readings(self) -> Mapping[str, MeterReading | None]:
        return {}


class _Chargers:
    def snapshot(self) -> Mapping[str, ChargerSnapshot]:
        return {"A": charging("A")}

    async def apply(self, allocation: Allocation) -> None:
        return None

    async def stop_transaction(self, charger_id: str) -> None:
        return None


async def test_reload_keeps_circuit_estimates_and_limits_that_still_exist() -> None:
    site = make_site(circuits=[{"id": "p1", "parent": "service", "limit_a": 63}],
                     chargers=[ac("A", "p1", phases=3), ac("B", "p1", phases=3)])
    loop = ControlLoop(site, _Meters(), _Chargers())
    await loop.tick()
    assert loop.allocation is not None and set(loop.allocation.circuits) == {"service", "p1"}
    smaller = make_site(chargers=[ac("A", phases=3)])
    loop.update_site(smaller)
    assert set(loop.allocation.limits) == {"A"}
    assert set(loop.allocation.circuits) == {"service"}
    assert loop.allocation.circuits["service"].state == "stale:m-main"  # kept, not rebuilt
