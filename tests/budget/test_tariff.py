"""Time-of-use: period selection (weekdays, past midnight, seasons, DST), the schedule ahead, the tariff cap as
a budget source, and the schedule replaced over the command path (validated like the config, persisted)."""

from __future__ import annotations

import itertools
import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.budget import BudgetState
from gateway.budget.compute import BudgetInputs, budget
from gateway.budget.config import TariffConfig
from gateway.budget.demand import Measure
from gateway.budget.service import BudgetService
from gateway.budget.tariff import active, period_at, schedule
from gateway.config import Site, site_from_dict
from tests.factories import ac, site_dict

TZ = ZoneInfo("Europe/Berlin")
TARIFF: dict[str, Any] = {"timezone": "Europe/Berlin", "seasons": [
    {"name": "summer", "start_month": 4, "end_month": 9, "periods": [
        {"name": "peak", "days": ["mon-fri"], "start": "08:00", "end": "20:00", "price_per_kwh": 0.40, "cap_kw": 30},
        {"name": "night", "days": ["sun-thu"], "start": "20:00", "end": "08:00", "price_per_kwh": 0.20},
        {"name": "weekend", "days": ["fri"], "start": "20:00", "end": "24:00", "price_per_kwh": 0.15},
        {"name": "weekend", "days": ["sat"], "start": "00:00", "end": "24:00", "price_per_kwh": 0.15},
        {"name": "weekend", "days": ["sun"], "start": "00:00", "end": "20:00", "price_per_kwh": 0.15},
    ]},
    {"name": "winter", "start_month": 10, "end_month": 3, "periods": [
        {"name": "day", "start": "06:00", "end": "22:00", "price_per_kwh": 0.35},
        {"name": "night", "start": "22:00", "end": "06:00", "price_per_kwh": 0.25, "cap_kw": 50},
    ]},
]}


def make(tariff: dict[str, Any] | None = None) -> Site:
    d = site_dict(limit_a=100, chargers=[ac("A", phases=3)])
    d["budget"] = {"timezone": "Europe/Berlin", "tariff": tariff if tariff is not None else TARIFF}
    return site_from_dict(d)


def at(*args: int, fold: int = 0) -> float:
    y, mo, d, h, mi = args[:5]
    return datetime(y, mo, d, h, mi, tzinfo=TZ, fold=fold).timestamp()


SITE = make()
assert SITE.budget.tariff is not None
T: TariffConfig = SITE.budget.tariff


@pytest.mark.parametrize(("when", "season", "period"), [
    ((2026, 6, 10, 12, 0), "summer", "peak"),  # a Wednesday
    ((2026, 6, 10, 7, 59), "summer", "night"),  # Tuesday night into Wednesday morning
    ((2026, 6, 10, 20, 0), "summer", "night"),
    ((2026, 6, 12, 21, 0), "summer", "weekend"),  # Friday evening
    ((2026, 6, 13, 12, 0), "summer", "weekend"),  # Saturday
    ((2026, 6, 15, 3, 0), "summer", "night"),  # Sunday night into Monday
    ((2026, 12, 1, 12, 0), "winter", "day"),
    ((2026, 12, 1, 23, 0), "winter", "night"),
    ((2026, 3, 31, 23, 59), "winter", "night"),
    ((2026, 4, 1, 0, 0), "summer", "night"),  # the season changes at local midnight
])
def test_period_selection(when: tuple[int, ...], season: str, period: str) -> None:
    s, p = period_at(T, at(*when))
    assert (s.name, p.name if p else None) == (season, period)


def test_the_period_ends_on_the_local_clock_across_dst() -> None:
    # 2026-10-25 the clocks go back at 03:00 CEST: winter day 06:00-22:00 lasts 16 h of local time, 16 real
    # hours too (the extra hour falls in the night before): the night 22:00 (Sat) to 06:00 lasts 9 real hours
    a = active(T, at(2026, 10, 24, 23, 0))
    assert a.period is not None and a.period.name == "night"
    assert a.until == at(2026, 10, 25, 6, 0)
    assert a.until - at(2026, 10, 24, 22, 0) == 9 * 3600
    spring = active(T, at(2026, 3, 28, 23, 0))  # clocks forward: a night of 7 real hours
    assert spring.until - at(2026, 3, 28, 22, 0) == 7 * 3600


def test_schedule_is_contiguous_for_the_planner() -> None:
    slots = schedule(T, at(2026, 6, 12, 10, 30), 48 * 3600)
    assert [s.period for s in slots] == ["peak", "weekend"]  # Friday evening to Sunday: one weekend slot
    assert all(a.end == b.start for a, b in itertools.pairwise(slots))
    assert slots[0].end == at(2026, 6, 12, 20, 0) and slots[0].price_per_kwh == 0.40
    assert slots[-1].end == at(2026, 6, 14, 10, 30)


def test_gap_has_no_price_and_no_cap() -> None:
    site = make({"allow_gaps": True, "periods": [
        {"name": "day", "start": "08:00", "end": "18:00", "price_per_kwh": 0.3, "cap_kw": 20}]})
    assert site.budget.tariff is not None
    b, _ = budget(BudgetInputs(site.service, Measure(None, None, None), tariff=site.budget.tariff), site.budget,
                  BudgetState(), 0.0, at(2026, 6, 10, 20, 0))
    assert b.tariff is not None and b.tariff.period is None and b.tariff.price_per_kwh is None and b.caps == ()


def test_the_active_periods_cap_is_a_budget_source() -> None:
    b, st = budget(BudgetInputs(SITE.service, Measure(None, None, None), tariff=T), SITE.budget, BudgetState(),
                   0.0, at(2026, 6, 10, 12, 0))
    assert b.tariff is not None and b.tariff.price_per_kwh == 0.40
    assert [c.name for c in b.caps] == ["tariff:peak"]
    assert b.caps[0].limit_a == pytest.approx((30_000 / (3**0.5 * 400),) * 3)
    # the period ends: the next tick finds the night, without a cap
    b2, _ = budget(BudgetInputs(SITE.service, Measure(None, None, None), tariff=T), SITE.budget, st, 1.0,
                   at(2026, 6, 10, 20, 0))
    assert b2.tariff is not None and b2.tariff.period == "night" and b2.caps == ()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _cmd(svc: BudgetService, body: dict[str, Any]) -> dict[str, object]:
    return svc.command("tariff", json.dumps(body).encode(), retained=False, require_ts=False)


def test_tariff_replaced_over_the_command_path_validated_and_persisted(tmp_path: Path) -> None:
    wall = Clock(at(2026, 6, 10, 12, 0))
    svc = BudgetService(SITE, clock=Clock(10.0), wall_clock=wall, state_dir=tmp_path)
    flat = {"periods": [{"name": "flat", "start": "00:00", "end": "24:00", "price_per_kwh": 0.3}]}
    bad = _cmd(svc, {"id": "t1", "tariff": {"periods": [{**flat["periods"][0], "end": "12:00"}]}})
    assert bad["ok"] is False and "tariff.periods" in str(bad["reason"]) and "no period covers" in str(bad["reason"])
    assert _cmd(svc, {"id": "t2", "tariff": {**flat, "timezone": "Moon/Base"}})["ok"] is False
    assert "unknown key" in str(_cmd(svc, {"id": "t3", "tarif": flat})["reason"])
    ok = _cmd(svc, {"id": "t4", "tariff": flat})
    assert ok == {"id": "t4", "ok": True, "seasons": 1, "periods": 1}
    b = svc.tick({}, {}, 11.0)
    assert b.tariff is not None and b.tariff.period == "flat" and b.tariff.source == "mqtt:t4"
    state = svc.tariff_state()
    assert state is not None and state["period"] == "flat" and state["price_per_kwh"] == 0.3
    svc.close()
    again = BudgetService(SITE, clock=Clock(1.0), wall_clock=wall, state_dir=tmp_path)  # a restart keeps it
    assert again.tariff() is not None and again.tariff().source == "mqtt:t4"  # type: ignore[union-attr]
    assert _cmd(again, {"id": "t5", "clear": True}) == {"id": "t5", "ok": True, "cleared": True}
    b = again.tick({}, {}, 2.0)
    assert b.tariff is not None and b.tariff.period == "peak" and b.tariff.source == "config"
    again.close()
    assert BudgetService(SITE, clock=Clock(1.0), wall_clock=wall, state_dir=tmp_path).tariff() is T


def test_retained_and_stale_tariff_commands_are_refused(tmp_path: Path) -> None:
    wall = Clock(at(2026, 6, 10, 12, 0))
    svc = BudgetService(SITE, clock=Clock(10.0), wall_clock=wall, state_dir=tmp_path)
    body = json.dumps({"id": "r", "tariff": TARIFF}).encode()
    assert "retained" in str(svc.command("tariff", body, retained=True, require_ts=False)["reason"])
    assert "ts is required" in str(svc.command("tariff", body, retained=False, require_ts=True)["reason"])
    stale = {"id": "s", "ts": "2020-01-01T00:00:00Z", "tariff": TARIFF}
    assert "stale" in str(_cmd(svc, stale)["reason"])
    svc.close()


def _scan(cfg: TariffConfig, t: float) -> float:
    """The period's end the slow way: minute by minute on the real clock."""
    key = period_at(cfg, t)
    u = (t // 60 + 1) * 60
    while period_at(cfg, u) == key:
        u += 60
    return u


@settings(max_examples=150, deadline=None)
@given(offset_min=st.integers(0, 366 * 1440), second=st.floats(0, 59.9))
def test_the_periods_end_from_the_week_table_matches_a_scan(offset_min: int, second: float) -> None:
    t = at(2026, 1, 1, 0, 0) + offset_min * 60 + second  # every DST change and season change of a year
    assert active(T, t).until == _scan(T, t)


@pytest.mark.parametrize("when", [(2026, 3, 29, 1, 59), (2026, 10, 25, 1, 30), (2026, 3, 31, 21, 0),
                                  (2026, 9, 30, 23, 59)])
def test_the_periods_end_across_dst_and_seasons(when: tuple[int, ...]) -> None:
    t = at(*when)
    assert active(T, t).until == _scan(T, t)
