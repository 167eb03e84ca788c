"""The pure EV + outlet physics: energy integral, taper, delay, ramp, minimum current, non-compliance."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sitesim import SimError
from sitesim.ev import ChargingCurve, EvModel, EvSpec, Outlet

AC3 = Outlet(kind="ac", phases=3, max_a=32.0, min_a=6.0, voltage_v=230.0)
DC = Outlet(kind="dc", max_w=150_000.0)
BIG: dict[str, Any] = dict(capacity_kwh=1000.0, soc_start=0.1, soc_target=1.0)  # no taper reached within an hour


@settings(max_examples=60, deadline=None)
@given(
    limit=st.floats(min_value=6.0, max_value=32.0),
    seconds=st.floats(min_value=1.0, max_value=3600.0),
    steps=st.integers(min_value=1, max_value=50),
)
def test_constant_draw_energy_is_power_times_time(limit: float, seconds: float, steps: int) -> None:
    m = EvModel(EvSpec(**BIG), AC3, 0.0, limit=limit, enabled=True)
    assert m.draw_a == pytest.approx((limit, limit, limit))
    for k in range(1, steps + 1):
        m.step(seconds * k / steps)
    assert m.energy_wh == pytest.approx(limit * 230.0 * 3 * seconds / 3600.0, rel=1e-9)
    assert m.soc == pytest.approx(0.1 + m.energy_wh / 1_000_000.0, rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(
    cuts=st.lists(st.floats(min_value=0.0, max_value=7200.0), max_size=30),
    soc_start=st.floats(min_value=0.5, max_value=0.95),
)
def test_energy_hardly_depends_on_step_partition_through_the_taper(cuts: list[float], soc_start: float) -> None:
    spec = EvSpec(capacity_kwh=40.0, soc_start=soc_start, max_dc_w=100_000.0)
    coarse = EvModel(spec, DC, 0.0, enabled=True)
    fine = EvModel(spec, DC, 0.0, enabled=True)
    coarse.step(7200.0)
    for t in sorted(cuts):
        fine.step(t)
    fine.step(7200.0)
    assert fine.energy_wh == pytest.approx(coarse.energy_wh, rel=1e-3, abs=1.0)
    assert fine.soc <= spec.soc_target + 1e-12


@settings(max_examples=60, deadline=None)
@given(
    start=st.floats(min_value=0.0, max_value=1.0),
    end=st.floats(min_value=0.0, max_value=1.0),
    a=st.floats(min_value=0.0, max_value=1.0),
    b=st.floats(min_value=0.0, max_value=1.0),
)
def test_curve_is_flat_then_non_increasing(start: float, end: float, a: float, b: float) -> None:
    c = ChargingCurve(taper_start_soc=start, end_fraction=end)
    lo, hi = min(a, b), max(a, b)
    assert c.fraction(hi) <= c.fraction(lo) + 1e-12
    assert c.fraction(min(lo, start)) == 1.0
    assert end - 1e-12 <= c.fraction(hi) <= 1.0


def test_taper_lowers_the_draw_and_the_ev_stops_at_target() -> None:
    spec = EvSpec(capacity_kwh=20.0, soc_start=0.75, soc_target=0.9, max_dc_w=50_000.0,
                  curve=ChargingCurve(taper_start_soc=0.8, end_fraction=0.1))
    m = EvModel(spec, DC, 0.0, enabled=True)
    assert m.draw_w == 50_000.0  # flat part
    draws = []
    t = 0.0
    while not m.full and t < 7200:
        t += 10.0
        m.step(t)
        draws.append(m.draw_w)
    assert m.full and m.soc == pytest.approx(0.9)
    assert m.draw_w == 0.0 and m.state == "suspended_ev"
    tapering = [d for d in draws if 0 < d < 50_000.0]
    assert tapering and all(x >= y for x, y in itertools.pairwise(tapering))
    assert m.energy_wh == pytest.approx(0.15 * 20_000.0)


def test_new_limit_takes_effect_after_the_response_delay() -> None:
    m = EvModel(EvSpec(**BIG, response_delay_s=7.0), AC3, 100.0, limit=32.0, enabled=True)
    m.set_limit(10.0, 100.0)
    m.step(106.9)
    assert m.draw_a == (32.0, 32.0, 32.0)
    assert m.applied_limit == 32.0
    m.step(107.0)
    assert m.draw_a == (10.0, 10.0, 10.0)
    # the energy integral switches exactly at the delay
    assert m.energy_wh == pytest.approx(32.0 * 690.0 * 7.0 / 3600.0, rel=1e-9)


def test_ramp_rate_limits_the_increase() -> None:
    out = Outlet(kind="ac", phases=3, ramp_up_per_s=2.0)
    m = EvModel(EvSpec(**BIG, response_delay_s=0.0), out, 0.0, limit=6.0, enabled=True)
    assert m.level == 6.0
    m.set_limit(16.0, 0.0)
    m.step(2.5)
    assert m.level == pytest.approx(11.0)
    m.step(10.0)
    assert m.level == pytest.approx(16.0)
    # energy: ramp 6 -> 16 over 5 s (area 55 A*s) then 5 s at 16 A (80 A*s)
    assert m.energy_wh == pytest.approx((55.0 + 80.0) * 690.0 / 3600.0, rel=1e-9)


def test_below_minimum_current_the_ev_stops_unless_noncompliant() -> None:
    m = EvModel(EvSpec(**BIG, response_delay_s=0.0), AC3, 0.0, limit=5.9, enabled=True)
    assert m.draw_a == (0.0, 0.0, 0.0) and m.state == "suspended_evse"
    m.noncompliant = True
    m.step(1.0)
    assert m.draw_a == (32.0, 32.0, 32.0) and m.state == "charging"


def test_one_phase_ev_and_phase_limited_schedule() -> None:
    m = EvModel(EvSpec(**BIG, ac_phases=1), AC3, 0.0, limit=16.0, enabled=True)
    assert m.draw_a == (16.0, 0.0, 0.0)
    assert m.draw_w == pytest.approx(16.0 * 230.0)
    m3 = EvModel(EvSpec(**BIG, response_delay_s=0.0), AC3, 0.0, limit=16.0, enabled=True)
    m3.set_limit(16.0, 0.0, phases=1)
    assert m3.draw_a == (16.0, 0.0, 0.0)


def test_not_energised_draws_nothing() -> None:
    m = EvModel(EvSpec(**BIG), AC3, 0.0, enabled=False)
    m.step(100.0)
    assert m.energy_wh == 0.0 and m.state == "ev_connected"
    m.set_enabled(True, 100.0)
    m.step(200.0)
    assert m.energy_wh == pytest.approx(32.0 * 690.0 * 100.0 / 3600.0)


def test_random_evs_are_deterministic_given_a_seed() -> None:
    a = [EvSpec.random(random.Random(7), now=1000.0, arrival_window_s=600.0) for _ in range(3)]
    b = [EvSpec.random(random.Random(7), now=1000.0, arrival_window_s=600.0) for _ in range(3)]
    assert a == b
    assert all(5.0 <= e.response_delay_s <= 11.0 for e in a)
    assert all(e.arrival_at is not None and e.departure_at is not None and e.departure_at > e.arrival_at for e in a)


def test_bad_specs_are_refused() -> None:
    with pytest.raises(SimError):
        EvSpec(capacity_kwh=0.0)
    with pytest.raises(SimError):
        Outlet(phases=2)
    with pytest.raises(SimError):
        Outlet(ramp_up_per_s=0.0)
