"""With a feasible demand target (the non-EV load below it) and chargers that follow their limit within one tick,
no billing interval's average exceeds the target: a small pure simulation of `budget()` and `allocate()`.

The simulated site: the non-EV load changes in steps at tick instants (the meter reading of a tick shows the load
of the tick that follows), each EV draws min(its limit, what it wants) from the tick after the limit was decided,
the service meter's register counts the energy exactly. Intervals start on the local clock, DST nights included.
"""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway import electrical
from gateway.allocation import AllocatorState, allocate
from gateway.budget import BudgetState
from gateway.budget.compute import BudgetInputs, budget, measure
from gateway.budget.demand import interval_bounds
from gateway.config import Site, site_from_dict
from gateway.model import MeterReading, Snapshot
from tests.factories import ac, charging, site_dict

TZ = "Europe/Berlin"
STARTS = [  # local interval starts: an ordinary day, the night clocks go forward, the night they go back
    datetime(2026, 6, 10, 17, 0, tzinfo=ZoneInfo(TZ)).timestamp(),
    datetime(2026, 3, 29, 1, 30, tzinfo=ZoneInfo(TZ)).timestamp(),
    datetime(2026, 10, 25, 2, 30, tzinfo=ZoneInfo(TZ), fold=0).timestamp(),
]
DT = 2.0


def make(target_kw: float, n: int) -> Site:
    d = site_dict(limit_a=100, margin_a=2, chargers=[ac(f"C{i}", phases=3) for i in range(n)],
                  control={"tick_s": DT, "ramp_up_a_per_s": 5.0})
    d["budget"] = {"timezone": TZ, "demand": {"target_kw": target_kw, "interval_min": 15}}
    return site_from_dict(d)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    target_kw=st.floats(8.0, 45.0),
    n=st.integers(1, 4),
    wants=st.lists(st.floats(6.0, 32.0), min_size=4, max_size=4),
    load=st.lists(st.tuples(st.integers(1, 120), st.floats(0.0, 0.95)), min_size=1, max_size=30),
    start=st.sampled_from(STARTS),
)
def test_no_interval_average_exceeds_a_feasible_target(
    target_kw: float, n: int, wants: list[float], load: list[tuple[int, float]], start: float
) -> None:
    site = make(target_kw, n)
    svc = site.service
    assert site.budget.demand is not None
    v_per_a = electrical.service_power_w(svc, 1.0)  # W per A on every line
    schedule = [frac * target_kw * 1000.0 for ticks, frac in load for _ in range(ticks)]
    ticks = int(2 * 900 / DT) + 30
    draws = {f"C{i}": 0.0 for i in range(n)}
    reg = 1_000_000.0
    bst, ast = BudgetState(), AllocatorState()
    energy: dict[float, float] = {}
    binding = 0
    for k in range(ticks):
        wall, mono = start + k * DT, 500.0 + k * DT
        non_ev = schedule[k % len(schedule)]
        ev_w = sum(draws.values()) * v_per_a
        p = non_ev + ev_w
        rd = MeterReading(current_a=(p / v_per_a,) * 3, at=mono, total_power_w=p, energy_import_wh=reg)
        chargers = {cid: charging(cid, (a,) * 3) for cid, a in draws.items()}
        chargers = {cid: c.__class__(**{**c.__dict__, "draw_at": mono}) for cid, c in chargers.items()}
        readings: dict[str, MeterReading | None] = {"m-main": rd}
        b, bst = budget(BudgetInputs(svc, measure(site, readings, chargers, mono)), site.budget, bst, mono, wall)
        snap = Snapshot(taken_at=mono, meters=readings, chargers=chargers, caps=b.caps)
        alloc, ast = allocate(snap, site, ast, mono)
        binding += any(lim.reason.startswith("capped:demand-window") for lim in alloc.limits.values())
        draws = {cid: min(alloc.limits[cid].limit, wants[i]) for i, cid in enumerate(draws)}
        # the tick that follows: the load measured now, the EVs at their new limits
        p_next = non_ev + sum(draws.values()) * v_per_a
        reg += p_next * DT / 3600.0
        s, _ = interval_bounds(wall, ZoneInfo(TZ), 15)
        energy[s] = energy.get(s, 0.0) + p_next * DT / 3600.0
    complete = sorted(energy)[:-1]  # the last one is cut short
    assert len(complete) >= 2
    for s in complete:
        avg_kw = energy[s] / 0.25 / 1000.0
        assert avg_kw <= target_kw * (1 + 1e-9), (datetime.fromtimestamp(s, ZoneInfo(TZ)), avg_kw, target_kw)
    assert math.isfinite(sum(energy.values()))
    event("the demand window bound" if binding else "the demand window never bound")


def test_the_simulation_binds_and_would_exceed_without_the_window() -> None:
    """The property's setting is not vacuous: without the demand window the same site goes over the target."""
    site = make(20.0, 3)
    free = site_from_dict({**site_dict(limit_a=100, margin_a=2, chargers=[ac(f"C{i}", phases=3) for i in range(3)],
                                       control={"tick_s": DT, "ramp_up_a_per_s": 5.0})})
    for s_, expect_over in ((site, False), (free, True)):
        draws = {f"C{i}": 0.0 for i in range(3)}
        bst, ast = BudgetState(), AllocatorState()
        v_per_a = electrical.service_power_w(s_.service, 1.0)
        e = 0.0
        reasons: set[str] = set()
        for k in range(int(900 / DT)):
            mono = 500.0 + k * DT
            p = 5_000.0 + sum(draws.values()) * v_per_a
            rd = MeterReading(current_a=(p / v_per_a,) * 3, at=mono, total_power_w=p)
            chargers = {cid: charging(cid, (a,) * 3) for cid, a in draws.items()}
            chargers = {cid: c.__class__(**{**c.__dict__, "draw_at": mono}) for cid, c in chargers.items()}
            readings: dict[str, MeterReading | None] = {"m-main": rd}
            b, bst = budget(BudgetInputs(s_.service, measure(s_, readings, chargers, mono)), s_.budget, bst, mono,
                            STARTS[0] + k * DT)
            alloc, ast = allocate(Snapshot(mono, readings, chargers, caps=b.caps), s_, ast, mono)
            reasons |= {lim.reason for lim in alloc.limits.values()}
            draws = {cid: alloc.limits[cid].limit for cid in draws}
            e += (5_000.0 + sum(draws.values()) * v_per_a) * DT / 3600.0
        avg = e / 0.25 / 1000.0
        assert (avg > 20.0) == expect_over, avg
        if not expect_over:
            assert "capped:demand-window/L1" in reasons and avg > 19.0  # it uses the budget, nearly all of it
