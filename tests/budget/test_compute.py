"""The budget of one tick and its hooks in the allocator: the service meter measured (stale readings unknown,
the EVs' draw subtracted through gateway.electrical), every source a cap, the smallest binding by name, and a
ChargerCap lowering one charger's bound (pausing it below its minimum)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.budget import BudgetState
from gateway.budget.compute import BudgetInputs, EvPower, budget, ev_power_w, measure
from gateway.budget.demand import Measure
from gateway.budget.remote import RemoteCap
from gateway.config import Site, site_from_dict
from gateway.model import BudgetCap, ChargerCap, ChargerSnapshot, MeterReading
from tests.factories import ac, charging, dc, idle, site_dict, snap
from tests.test_allocation import FAST, settle

V_LN = 400 / math.sqrt(3)


def _site(**budget: object) -> Site:
    d = site_dict(limit_a=100, chargers=[ac("A", phases=3), ac("B", phases=1, phase_rotation="L2"),
                                         dc("D", max_power_w=50_000, min_power_w=5_000, efficiency=0.95)])
    if budget:
        d["budget"] = budget
    return site_from_dict(d)


def test_measure_subtracts_the_evs_draw() -> None:
    site = _site()
    rd = MeterReading(current_a=(50.0, 60.0, 50.0), at=10.0, total_power_w=40_000.0, energy_import_wh=1234.0)
    chargers = {"A": charging("A", (16.0, 16.0, 16.0)), "B": charging("B", (0.0, 10.0, 0.0)), "D": idle("D")}
    m = measure(site, {"m-main": rd}, chargers, 10.5)
    ev = 3 * V_LN * 16 + V_LN * 10
    assert ev_power_w(site, chargers) == pytest.approx(ev)
    assert m.import_w == 40_000.0 and m.register_wh == 1234.0 and m.non_ev_w == pytest.approx(40_000.0 - ev)


def test_measure_without_power_registers_uses_the_current() -> None:
    site = _site()
    rd = MeterReading(current_a=(10.0, 10.0, 10.0), at=10.0)
    m = measure(site, {"m-main": rd}, {}, 10.0)
    assert m.import_w == pytest.approx(30 * V_LN) and m.register_wh is None


@pytest.mark.parametrize("rd", [None, MeterReading(current_a=(1.0,) * 3, at=10.0, valid=False, reason="x"),
                                MeterReading(current_a=(1.0,) * 3, at=0.0, total_power_w=1000.0)])
def test_an_invalid_or_stale_reading_is_unknown(rd: MeterReading | None) -> None:
    assert measure(_site(), {"m-main": rd}, {}, 10.0) == Measure(None, None, None)


def test_the_loops_ev_power_reads_only_new_snapshots_and_sums_as_ev_power_w_does() -> None:
    """EvPower skips a charger whose snapshot is the object of the last call: over ticks with some snapshots
    kept and others new (draws, sessions ending, chargers leaving), it gives ev_power_w's sum exactly."""
    rng = random.Random(7)
    site = _site()
    ev = EvPower(site)
    makers: dict[str, Callable[[], ChargerSnapshot]] = {
        "A": lambda: charging("A", tuple(rng.uniform(0, 32) for _ in range(3))),
        "B": lambda: charging("B", (0.0, rng.uniform(0, 32), 0.0)) if rng.random() < 0.8 else idle("B"),
        "D": lambda: charging("D", None, draw_w=rng.uniform(0, 50_000)) if rng.random() < 0.8 else idle("D"),
    }
    chargers = {cid: make() for cid, make in makers.items()}
    new_ones = 0
    for _ in range(200):
        for cid, make in makers.items():
            if rng.random() < 0.3:
                chargers[cid] = make()
                new_ones += 1
        shown = {k: v for k, v in chargers.items() if rng.random() < 0.95}  # a charger missing now and then
        assert ev(shown) == ev_power_w(site, shown)
    assert new_ones > 100


def test_dc_draw_in_watts_counts_at_its_input() -> None:
    site = _site()
    assert ev_power_w(site, {"D": charging("D", None, draw_w=47_500.0)}) == pytest.approx(50_000.0)


def test_every_source_is_a_cap_named_for_the_reasons() -> None:
    site = _site(timezone="Europe/Berlin", demand={"target_kw": 30},
                 tariff={"periods": [{"name": "day", "start": "00:00", "end": "24:00", "price_per_kwh": 0.3,
                                      "cap_kw": 40}]})
    wall = datetime(2026, 6, 1, 12, 0, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    remote = RemoteCap(limit_a=80.0, request_id="dr-7", requested_a=80.0, requested_kw=None, expires_at=99.0,
                       expires_wall=wall + 99, set_wall=wall)
    inputs = BudgetInputs(site.service, Measure(10_000.0, None, 10_000.0), remote=remote,
                          tariff=site.budget.tariff)
    b, st = budget(inputs, site.budget, BudgetState(), 1.0, wall)
    assert [c.name for c in b.caps] == ["remote:dr-7", "demand-window", "tariff:day"]
    assert b.caps[0].limit_a == (80.0, 80.0, 80.0)
    assert b.caps[1].limit_a[0] == pytest.approx(30_000 / (3 * V_LN))
    assert b.caps[2].limit_a[0] == pytest.approx(40_000 / (3 * V_LN))
    binding = b.binding()
    assert binding is not None and binding.name == "demand-window"
    assert st.demand is not None and st.tariff is not None and b.tariff is not None and b.tariff.price_per_kwh == 0.3


def test_the_smallest_cap_binds_by_name_and_none_raises() -> None:
    site = site_from_dict(site_dict(limit_a=100, chargers=[ac("A", phases=3), ac("B", phases=3)], control=FAST))
    caps = (BudgetCap("tariff:peak", (70.0, 70.0, 70.0)), BudgetCap("demand-window", (40.0, 60.0, 60.0)))
    a = settle(site, snap(0, [charging("A"), charging("B")], {"m-main": (0, 0, 0)}, caps=caps))
    assert a.limits["A"].reason == "capped:demand-window/L1" and a.limits["A"].limit == 20.0
    assert a.circuits["service"].limit_a == 40.0
    high = (BudgetCap("tariff:peak", (500.0,) * 3), BudgetCap("broken", (math.nan,) * 3))
    b = settle(site, snap(0, [charging("A"), charging("B")], {"m-main": (0, 0, 0)}, caps=high[:1]))
    assert b.limits["A"].reason == "max:charger" and b.limits["A"].limit == 32.0  # 500 A raises nothing
    c = settle(site, snap(0, [charging("A"), charging("B")], {"m-main": (0, 0, 0)}, caps=high))
    assert all(lim.limit == 0.0 for lim in c.limits.values())  # a cap that is not a number counts as 0 A


def test_a_charger_cap_lowers_one_charger_and_pauses_it_below_its_minimum() -> None:
    site = site_from_dict(site_dict(limit_a=100, chargers=[ac("A", phases=3), ac("B", phases=3)], control=FAST))
    s = snap(0, [charging("A"), charging("B")], {"m-main": (0, 0, 0)},
             charger_caps={"A": ChargerCap(10.0, "solar:surplus")})
    a = settle(site, s)
    assert a.limits["A"].limit == 10.0 and a.limits["A"].reason == "solar:surplus"
    assert a.limits["B"].limit == 32.0
    low = snap(0, [charging("A"), charging("B")], {"m-main": (0, 0, 0)},
               charger_caps={"A": ChargerCap(3.0, "solar:surplus")})
    b = settle(site, low)
    assert b.limits["A"].limit == 0.0 and b.limits["A"].reason == "solar:surplus"
    high = snap(0, [charging("A")], {"m-main": (0, 0, 0)}, charger_caps={"A": ChargerCap(80.0, "solar:surplus")})
    assert settle(site, high).limits["A"].reason == "max:charger"  # never raises
