"""The control loop's two commissioning inputs: a simulated load on a meter and a per-charger override."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pytest

from gateway.control import ControlLoop, LimitOverride, SimulatedLoad, with_overrides, with_test_load
from gateway.model import Allocation, ChargerLimit, ChargerSnapshot, MeterReading
from tests.factories import ac, charging, make_site


def test_simulated_load_adds_to_its_meter_only_and_ends_by_itself() -> None:
    meters: dict[str, MeterReading | None] = {
        "m-main": MeterReading((10.0, 20.0, 30.0), at=0.0),
        "m-p1": MeterReading((5.0, 5.0, 5.0), at=0.0),
        "m-dead": None,
    }
    load = SimulatedLoad("m-main", 7.5, until=10.0)
    out = with_test_load(meters, load, now=5.0)
    assert out["m-main"] is not None and out["m-main"].current_a == (17.5, 27.5, 37.5)
    assert out["m-p1"] is meters["m-p1"]
    assert meters["m-main"] is not None and meters["m-main"].current_a == (10.0, 20.0, 30.0)  # input untouched
    assert with_test_load(meters, load, now=10.0) is meters  # over: nothing added
    assert with_test_load(meters, SimulatedLoad("m-dead", 5.0, 10.0), now=1.0) is meters
    invalid = {"m-main": MeterReading((1.0, 1.0, 1.0), at=0.0, valid=False, reason="x")}
    assert with_test_load(invalid, load, now=1.0) is invalid  # an invalid reading stays invalid, unchanged


def test_override_only_lowers_and_lapses() -> None:
    site = make_site(chargers=[ac("A", phases=3), ac("B", phases=3)])
    a = Allocation(at=0.0, limits={"A": ChargerLimit(20.0, 20.0, "fair", 20.0),
                                   "B": ChargerLimit(10.0, 10.0, "x", 10.0)})
    out = with_overrides(a, {"A": LimitOverride("A", 6.0, 10.0), "B": LimitOverride("B", 16.0, 10.0)}, site, 1.0)
    assert out.limits["A"].limit == 6.0 and out.limits["A"].reason == "commissioning-override"
    assert out.limits["A"].line_a == pytest.approx(6.0)
    assert out.limits["A"].may_draw_a == 20.0  # the reserve stays: it may still draw its old limit meanwhile
    assert out.limits["B"] == a.limits["B"]  # an override above the limit raises nothing
    assert with_overrides(a, {"A": LimitOverride("A", 6.0, 10.0)}, site, 10.0) is a  # lapsed


class _Meters:
    def __init__(self) -> None:
        self.value: Mapping[str, MeterReading | None] = {}

    def readings(self) -> Mapping[str, MeterReading | None]:
        return self.value


class _Chargers:
    def snapshot(self) -> Mapping[str, ChargerSnapshot]:
        return {"A": charging("A", (16.0, 16.0, 16.0))}

    async def apply(self, allocation: Allocation, preempt: Callable[[], bool] | None = None) -> bool:
        return True

    async def stop_transaction(self, charger_id: str) -> None:
        return None


async def test_loop_applies_the_inputs_and_refuses_a_load_in_failsafe() -> None:
    site = make_site(limit_a=100.0, chargers=[ac("A", phases=3)])
    meters = _Meters()
    now = [0.0]
    loop = ControlLoop(site, meters, _Chargers(), clock=lambda: now[0])
    with pytest.raises(ValueError, match="start-up"):
        loop.set_test_load("m-main", 10.0, 30.0)
    await loop.tick()  # no reading yet: fail-safe
    assert loop.allocation is not None and loop.allocation.mode != "normal"
    with pytest.raises(ValueError, match="refused"):
        loop.set_test_load("m-main", 10.0, 30.0)
    meters.value = {"m-main": MeterReading((30.0, 30.0, 30.0), at=now[0])}
    await loop.tick()
    assert loop.allocation.mode == "normal"
    before = loop.allocation.limit_of("A")
    assert before is not None
    with pytest.raises(ValueError):
        loop.set_test_load("m-main", 500.0, 30.0)  # beyond the circuit's limit
    with pytest.raises(ValueError):
        loop.set_test_load("nope", 5.0, 30.0)
    loop.set_test_load("m-main", 80.0, 30.0)
    now[0] = 1.0
    meters.value = {"m-main": MeterReading((30.0, 30.0, 30.0), at=now[0])}
    await loop.tick()
    assert loop.snapshot is not None and loop.snapshot.meters["m-main"] is not None
    assert loop.snapshot.meters["m-main"].current_a == (110.0, 110.0, 110.0)
    lowered = loop.allocation.limit_of("A")
    assert lowered is not None and lowered < before
    loop.set_test_override("A", 0.0, 5.0)
    await loop.tick()
    assert loop.allocation.limit_of("A") == 0.0
    now[0] = 40.0  # both lapsed: cleared by the loop itself
    meters.value = {"m-main": MeterReading((30.0, 30.0, 30.0), at=now[0])}
    await loop.tick()
    assert loop.test_load is None and not loop.test_overrides
    assert loop.snapshot.meters["m-main"] is not None and loop.snapshot.meters["m-main"].current_a == (30.0,) * 3
