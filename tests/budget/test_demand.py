"""The demand window's arithmetic: interval boundaries (DST both ways, in real zones), the allowance and its
guard near the end, energy across a boundary, the month's peak, restarts and clock jumps."""

from __future__ import annotations

import itertools
import math
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.budget import DemandState
from gateway.budget.config import DemandConfig
from gateway.budget.demand import (
    END_GUARD_S,
    Measure,
    allowed_ev_w,
    interval_bounds,
    month_of,
    step,
)
from gateway.config import site_from_text

SITE = """
[site]
id = "d"
[service]
voltage_ll_v = 400
phases = 3
limit_a = 100
[[meters]]
id = "m"
circuit = "service"
host = "127.0.0.1"
"""
SVC = site_from_text(SITE).service
BERLIN = ZoneInfo("Europe/Berlin")
LA = ZoneInfo("America/Los_Angeles")
KOLKATA = ZoneInfo("Asia/Kolkata")
UTC_ = ZoneInfo("UTC")


def wall(tz: ZoneInfo, *args: int, fold: int = 0) -> float:
    y, mo, d, h, mi, *rest = args
    return datetime(y, mo, d, h, mi, rest[0] if rest else 0, tzinfo=tz, fold=fold).timestamp()


def local(tz: ZoneInfo, t: float) -> str:
    return datetime.fromtimestamp(t, tz).strftime("%H:%M:%S%z")


@pytest.mark.parametrize("minutes", [15, 30, 60])
def test_interval_boundaries_are_on_the_clock(minutes: int) -> None:
    t = wall(BERLIN, 2026, 6, 1, 12, 0)
    s, e = interval_bounds(t, BERLIN, minutes)
    assert (s, e) == (t, t + minutes * 60)
    s2, e2 = interval_bounds(t - 0.001, BERLIN, minutes)
    assert e2 == t and s2 == t - minutes * 60  # the instant before belongs to the interval before
    s3, _ = interval_bounds(t + minutes * 60 - 0.001, BERLIN, minutes)
    assert s3 == t


def test_60_minute_intervals_follow_local_hours_in_a_half_hour_zone() -> None:
    t = wall(KOLKATA, 2026, 6, 1, 12, 10)
    s, e = interval_bounds(t, KOLKATA, 60)
    assert local(KOLKATA, s) == "12:00:00+0530" and e - s == 3600
    assert datetime.fromtimestamp(s, UTC_).minute == 30  # 06:30 UTC: not a UTC hour


def _starts(tz: ZoneInfo, day: tuple[int, int, int], minutes: int) -> list[float]:
    t0 = wall(tz, *day, 0, 0)
    seen: list[float] = []
    for k in range(0, 26 * 3600, 60):
        s, e = interval_bounds(t0 + k, tz, minutes)
        assert s <= t0 + k < e and e - s == minutes * 60
        if not seen or seen[-1] != s:
            seen.append(s)
    return seen


@pytest.mark.parametrize(("tz", "day", "hours"), [
    (BERLIN, (2026, 3, 29), 23),  # spring forward: 02:00 CET -> 03:00 CEST
    (BERLIN, (2026, 10, 25), 25),  # fall back: 03:00 CEST -> 02:00 CET, 02:00-03:00 twice
    (LA, (2026, 3, 8), 23),
    (LA, (2026, 11, 1), 25),
])
@pytest.mark.parametrize("minutes", [15, 60])
def test_intervals_across_dst_are_contiguous_and_on_the_local_clock(
    tz: ZoneInfo, day: tuple[int, int, int], hours: int, minutes: int
) -> None:
    starts = _starts(tz, day, minutes)
    assert all(b - a == minutes * 60 for a, b in itertools.pairwise(starts))
    assert all(datetime.fromtimestamp(s, tz).minute % minutes == 0 for s in starts)
    midnight_next = datetime(day[0], day[1], day[2] + 1, tzinfo=tz).timestamp()
    assert len([s for s in starts if s < midnight_next]) == hours * 60 // minutes


def test_the_repeated_hour_holds_its_intervals_twice() -> None:
    first = wall(LA, 2026, 11, 1, 1, 20, fold=0)  # 01:20 PDT
    second = wall(LA, 2026, 11, 1, 1, 20, fold=1)  # 01:20 PST, an hour later
    a, b = interval_bounds(first, LA, 15)[0], interval_bounds(second, LA, 15)[0]
    assert b - a == 3600 and local(LA, a) == "01:15:00-0700" and local(LA, b) == "01:15:00-0800"


def test_month_is_the_site_months() -> None:
    t = wall(BERLIN, 2026, 4, 1, 0, 10)  # still March in UTC
    assert month_of(t, BERLIN) == "2026-04" and month_of(t, UTC_) == "2026-03"


def test_allowance_pays_back_an_early_burst() -> None:
    # 20 kW over 15 min = 5 kWh; 5 min at 40 kW used 3.333 kWh: 1.667 kWh over 10 min = 10 kW in all
    e = 40_000 * 300 / 3600
    assert allowed_ev_w(20_000, 900, e, 600, 0) == pytest.approx(10_000)
    assert allowed_ev_w(20_000, 900, e, 600, 4_000) == pytest.approx(6_000)  # less the non-EV forecast
    assert allowed_ev_w(20_000, 900, e, 600, 12_000) == 0.0  # never below 0
    assert allowed_ev_w(20_000, 900, 6_000, 300, 0) == 0.0  # over budget: 0, not negative


@pytest.mark.parametrize("left", [0.0, 1e-9, 0.5, END_GUARD_S / 2, END_GUARD_S])
def test_allowance_stays_finite_at_the_end(left: float) -> None:
    a = allowed_ev_w(20_000, 900, 4_000, left, 0)
    assert math.isfinite(a) and a == pytest.approx(1_000 * 3600 / END_GUARD_S)


CFG = DemandConfig(target_kw=20.0, interval_min=15)


def run(
    cfg: DemandConfig, tz: ZoneInfo, t0: float, seconds: int, power_w: float, *, non_ev_w: float = 0.0,
    register: float | None = 0.0, st: DemandState | None = None, mono0: float = 100.0, dt: float = 1.0,
) -> tuple[DemandState, list[tuple[str, object]], list[float]]:
    """Steps every dt at a constant import; the register counts exactly. Returns the state, the events and
    each tick's cap."""
    events: list[tuple[str, object]] = []
    caps: list[float] = []
    reg = register
    for k in range(int(seconds / dt) + 1):
        m = Measure(power_w, reg, non_ev_w)
        st, fig, ev = step(cfg, tz, SVC, st, m, mono0 + k * dt, t0 + k * dt)
        events.extend((n, f) for n, f in ev)
        caps.append(fig.cap_a)
        if reg is not None:
            reg += power_w * dt / 3600
    assert st is not None
    return st, events, caps


def test_energy_of_a_boundary_tick_is_split_by_time() -> None:
    t0 = wall(BERLIN, 2026, 6, 1, 12, 14, 59) + 0.5
    st, _, _ = run(CFG, BERLIN, t0, 1, 36_000.0, register=None)  # ticks at 12:14:59.5 and 12:15:00.5
    assert st.interval_start == wall(BERLIN, 2026, 6, 1, 12, 15)
    assert st.energy_wh == pytest.approx(36_000 * 0.5 / 3600)  # half the tick in the new interval


def test_closed_interval_above_target_is_an_event_and_the_months_peak() -> None:
    t0 = wall(BERLIN, 2026, 6, 1, 12, 0)
    st, events, _ = run(CFG, BERLIN, t0, 900 + 5, 30_000.0)
    over = [f for n, f in events if n == "demand_interval_over"]
    assert len(over) == 1 and over[0]["average_kw"] == pytest.approx(30.0, rel=1e-3)  # type: ignore[index]
    assert st.month_peak_kw == pytest.approx(30.0, rel=1e-3) and st.month == "2026-06"
    assert any(n == "demand_projected_over" for n, _ in events)  # seen coming, once
    assert sum(1 for n, _ in events if n == "demand_projected_over") == 1


def test_peak_resets_with_the_site_month() -> None:
    t0 = wall(BERLIN, 2026, 3, 31, 23, 45)
    st, _, _ = run(CFG, BERLIN, t0, 900 + 10, 30_000.0)
    assert st.month == "2026-04" and st.month_peak_kw == 0.0  # March's peak does not carry into April


def test_raise_to_month_peak_lets_the_target_rise() -> None:
    t0 = wall(BERLIN, 2026, 6, 1, 12, 0)
    cfg = DemandConfig(target_kw=20.0, raise_to_month_peak=True)
    st, _, _ = run(cfg, BERLIN, t0, 900 + 2, 30_000.0)
    _, fig, _ = step(cfg, BERLIN, SVC, st, Measure(0.0, None, 0.0), 2000.0, t0 + 903)
    assert fig.effective_target_kw == pytest.approx(30.0, rel=1e-3) and fig.target_kw == 20.0
    _, fig2, _ = step(CFG, BERLIN, SVC, st, Measure(0.0, None, 0.0), 2000.0, t0 + 903)
    assert fig2.effective_target_kw == 20.0


def test_cap_is_the_allowance_plus_the_non_ev_load_in_amperes() -> None:
    t0 = wall(BERLIN, 2026, 6, 1, 12, 0)
    _, fig, _ = step(CFG, BERLIN, SVC, None, Measure(5_000.0, 0.0, 5_000.0), 1.0, t0)
    # 20 kW for the whole interval, the forecast is the 5 kW non-EV load now: 15 kW for EVs + 5 kW = 20 kW
    assert fig.allowed_ev_kw == pytest.approx(15.0)
    assert fig.cap_a == pytest.approx(20_000 / (math.sqrt(3) * 400))


def test_cap_never_negative_nor_above_the_service() -> None:
    t0 = wall(BERLIN, 2026, 6, 1, 12, 0)
    _st, _, caps = run(CFG, BERLIN, t0, 899, 60_000.0)  # far over budget all interval
    assert min(caps) >= 0 and max(caps) <= SVC.limit_a
    low = DemandConfig(target_kw=0.5)
    _, _, caps = run(low, BERLIN, t0, 60, 60_000.0, non_ev_w=0.0)
    assert caps[-1] == 0.0


def test_fresh_start_mid_interval_counts_the_past_on_the_high_side() -> None:
    t0 = wall(BERLIN, 2026, 6, 1, 12, 5)
    _, fig, _ = step(CFG, BERLIN, SVC, None, Measure(10_000.0, 1000.0, 10_000.0), 1.0, t0)
    assert fig.energy_wh == pytest.approx(20_000 * 300 / 3600)  # max(target, import) for the 5 minutes
    assert fig.estimated_s == 300


def test_restart_in_the_same_interval_keeps_its_energy_register_exact() -> None:
    t0 = wall(BERLIN, 2026, 6, 1, 12, 0)
    st, _, _ = run(CFG, BERLIN, t0, 120, 10_000.0, register=5_000.0)
    e_before = st.energy_wh
    assert e_before == pytest.approx(10_000 * 120 / 3600, rel=1e-3)
    # down for 60 s at 10 kW: the register counted on; a new boot's monotonic clock
    restored = DemandState(**{**st.__dict__, "last_mono": None})
    reg = (st.register_wh or 0.0) + 10_000 * 60 / 3600
    st2, fig, _ = step(CFG, BERLIN, SVC, restored, Measure(10_000.0, reg, 10_000.0), 3.0, t0 + 180)
    assert st2.interval_start == st.interval_start
    assert fig.energy_wh == pytest.approx(10_000 * 180 / 3600, rel=1e-3) and fig.estimated_s == 0


def test_restart_without_register_estimates_the_gap_high() -> None:
    t0 = wall(BERLIN, 2026, 6, 1, 12, 0)
    st, _, _ = run(CFG, BERLIN, t0, 120, 10_000.0, register=None)
    restored = DemandState(**{**st.__dict__, "last_mono": None})
    _, fig, _ = step(CFG, BERLIN, SVC, restored, Measure(10_000.0, None, 10_000.0), 3.0, t0 + 180)
    assert fig.energy_wh == pytest.approx(st.energy_wh + 20_000 * 60 / 3600)  # the gap at the target
    assert fig.estimated_s == pytest.approx(60)


def test_restart_in_a_new_interval_starts_fresh_and_keeps_the_months_peak() -> None:
    t0 = wall(BERLIN, 2026, 6, 1, 12, 0)
    st, _, _ = run(CFG, BERLIN, t0, 905, 30_000.0)
    restored = DemandState(**{**st.__dict__, "last_mono": None})
    later = t0 + 3600 + 60  # an hour later, a minute into an interval
    st2, fig, ev = step(CFG, BERLIN, SVC, restored, Measure(1_000.0, 99_999.0, 1_000.0), 5.0, later)
    assert st2.interval_start == wall(BERLIN, 2026, 6, 1, 13, 0)
    assert fig.month_peak_kw == pytest.approx(30.0, rel=1e-3)
    assert fig.energy_wh == pytest.approx(20_000 * 60 / 3600) and fig.estimated_s == 60
    assert ev == []  # the interval it stopped in (5 s seen at 30 kW) closes with what was seen: not over


def test_wall_clock_jump_forward_is_an_event_and_a_fresh_interval() -> None:
    t0 = wall(BERLIN, 2026, 6, 1, 12, 0)
    st, _, _ = run(CFG, BERLIN, t0, 60, 10_000.0)
    st2, fig, ev = step(CFG, BERLIN, SVC, st, Measure(10_000.0, None, 0.0), (st.last_mono or 0.0) + 1, t0 + 60 + 3600)
    assert ("clock_jump" in [n for n, _ in ev]) and st2.interval_start == wall(BERLIN, 2026, 6, 1, 13, 0)
    assert math.isfinite(fig.cap_a) and fig.cap_a >= 0


def test_wall_clock_jump_back_keeps_what_was_counted() -> None:
    t0 = wall(BERLIN, 2026, 6, 1, 12, 15)
    st, _, _ = run(CFG, BERLIN, t0, 60, 10_000.0, register=None)
    st2, _, ev = step(CFG, BERLIN, SVC, st, Measure(10_000.0, None, 0.0), (st.last_mono or 0.0) + 1, t0 - 30)
    assert "clock_jump" in [n for n, _ in ev]
    assert st2.interval_start == wall(BERLIN, 2026, 6, 1, 12, 0) and st2.energy_wh >= st.energy_wh


def test_a_partly_estimated_interval_does_not_set_the_months_peak() -> None:
    t0 = wall(BERLIN, 2026, 6, 1, 12, 10)  # a fresh start 10 minutes into the interval
    st, events, _ = run(CFG, BERLIN, t0, 300 + 5, 30_000.0)
    assert [n for n, _ in events].count("demand_interval_over") == 1  # reported, with its estimate
    over = next(f for n, f in events if n == "demand_interval_over")
    assert over["estimated_s"] == 600.0  # type: ignore[index]
    assert st.month_peak_kw == 0.0  # but a guess does not raise the month's peak (nor the target with it)
