"""The driver's judgement of a reading: mapping to site phases, CT, direction, bounds, freezing."""

from __future__ import annotations

import math

from gateway.meters.config import MeterConfig
from gateway.meters.driver import Bounds, MeterDriver
from gateway.meters.regmap import load_map


class _NoClient:
    async def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> None:
        raise AssertionError("not used")

    async def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> None:
        raise AssertionError("not used")


def _driver(bounds: Bounds | None = None, **kw: object) -> MeterDriver:
    cfg = MeterConfig(id="m", circuit="c", **kw)  # type: ignore[arg-type]
    return MeterDriver(cfg, load_map("eastron_sdm630"), _NoClient(), bounds or Bounds(200.0, False))


def _values(i: tuple[float, float, float] = (10.0, 20.0, 30.0), p: tuple[float, float, float] | None = None,
            v: float = 230.0) -> dict[str, float]:
    pw = p if p is not None else tuple(a * v for a in i)
    out = {f"current_l{k + 1}_a": i[k] for k in range(3)}
    out |= {f"voltage_l{k + 1}_v": v + k * 0.1 for k in range(3)}
    out |= {f"power_l{k + 1}_w": pw[k] for k in range(3)}
    out |= {"total_power_w": sum(pw), "frequency_hz": 50.0, "energy_import_wh": 5000.0}
    return out


def test_phase_map_ct_ratio_and_inversion() -> None:
    d = _driver(Bounds(200.0, can_export=True), phase_map=(2, 0, 1), ct_ratio=2.0, invert=True)
    r = d.evaluate(_values(), at=12.5)
    assert r.valid, r.reason
    assert r.at == 12.5
    assert r.current_a == (40.0, 60.0, 20.0)  # measured L1 -> site L3, x2
    assert r.power_w is not None and r.power_w[2] == -2 * 10 * 230.0
    assert r.total_power_w == -2 * 60 * 230.0
    assert r.energy_import_wh is None  # an inverted CT turns the import register into export


def test_single_phase_meter_on_a_three_phase_site() -> None:
    d = _driver(phase_map=(1,))
    vals = {k: v for k, v in _values().items() if not k.endswith(("l2_a", "l3_a", "l2_v", "l3_v", "l2_w", "l3_w"))}
    r = d.evaluate(vals, at=0.0)
    assert r.valid, r.reason
    assert r.current_a == (0.0, 10.0, 0.0)


def test_nan_makes_the_reading_invalid() -> None:
    vals = _values()
    vals["current_l2_a"] = math.nan
    r = _driver().evaluate(vals, at=0.0)
    assert not r.valid and "not_implemented:current_l2_a" in r.reason


def test_current_above_the_bound_is_implausible() -> None:
    r = _driver(Bounds(max_current_a=25.0, can_export=False)).evaluate(_values(), at=0.0)
    assert not r.valid and "implausible:current_l3" in r.reason


def test_export_on_a_circuit_that_cannot_export() -> None:
    vals = _values(p=(2300.0, -4600.0, 6900.0))
    assert not _driver(Bounds(200.0, False, export_tolerance_w=500)).evaluate(vals, at=0.0).valid
    assert _driver(Bounds(200.0, True)).evaluate(vals, at=0.0).valid
    small = _values(p=(2300.0, -100.0, 6900.0))  # metering noise at no load
    assert _driver(Bounds(200.0, False, export_tolerance_w=500)).evaluate(small, at=0.0).valid


def test_frozen_after_n_identical_polls_and_thaws() -> None:
    d = _driver(frozen_polls=3)
    vals = _values()
    assert d.evaluate(vals, 0.0).valid
    assert d.evaluate(vals, 1.0).valid
    r = d.evaluate(vals, 2.0)
    assert not r.valid and r.reason.startswith("frozen:3")
    assert d.evaluate(_values(v=231.0), 3.0).valid


def test_frozen_detection_can_be_disabled() -> None:
    d = _driver(frozen_polls=0)
    assert all(d.evaluate(_values(), float(t)).valid for t in range(20))
