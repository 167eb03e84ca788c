"""Demand-charge control: keep every billing interval's average import under a target (pure, no IO, no clock).

Intervals are aligned to the wall clock in the site's timezone, as meters bill them (15, 30 or 60 minutes
from the hour, local time; across a DST change an interval is still 15 real minutes: the repeated hour in
autumn holds four intervals twice). Each tick::

    remaining_wh = target x interval - energy already imported
    allowed_ev_w = max(0, remaining_wh / time left - forecast of the non-EV load)

so a burst early in an interval is paid back later in it. The cap at the service is the EVs' allowance plus
the non-EV load measured now, in A per line through `gateway.electrical`, plus the service's margin: the
allocator subtracts the margin and its own non-EV estimate (never below the measured one) again, so the EVs get
at most the allowance. Near the end the time left is taken as at least END_GUARD_S, so the cap stays finite; it
is never below 0 A (plus the margin) nor above the service limit.

The forecast of the non-EV load for the rest of the interval is max(its moving average over ``forecast_s``, its
value now): a load that rises is believed at once, one that falls only as its average does.

Energy: the higher of the integrated power (trapezoid) and the service meter's imported-energy register
difference where it has one (a register counts in steps of up to 100 Wh; across a restart in the same interval
its difference is exact). What nobody measured (the part of the interval before a fresh start, a gap longer
than GAP_S without a register) counts at max(target, the import around it): an estimate on the high side.
"""

from __future__ import annotations

import math
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, NamedTuple
from zoneinfo import ZoneInfo

from gateway import electrical
from gateway.budget import DemandFigures, DemandState, Event
from gateway.budget.config import DemandConfig

if TYPE_CHECKING:
    from gateway.config import ServiceConfig

END_GUARD_S = 30.0  # the time left is never taken as less than this (the cap stays finite and bounded)
GAP_S = 10.0  # samples further apart than this: the energy between them is estimated
CLOCK_JUMP_S = 5.0  # wall and monotonic clocks disagreeing by more than this over a tick: a clock jump
WARN_RATIO = 1.01  # projected above target x this: the projected-over event (once per interval)
WARN_AFTER_S = 60.0  # not in the interval's first minute (the EVs are still following the new cap)
OVER_RATIO = 1.001  # an interval closed above target x this was over (meter rounding)


class Measure(NamedTuple):
    import_w: float | None  # the service's import now (W; export negative); None: no valid reading
    register_wh: float | None  # the imported-energy register (None: the meter has none, or no valid reading)
    non_ev_w: float | None  # import - the EVs' reported draw (W), >= 0; None: unknown


def interval_bounds(now_wall: float, tz: ZoneInfo, interval_min: int) -> tuple[float, float]:
    """(start, end) of the billing interval holding ``now_wall``, UTC epoch seconds."""
    local = datetime.fromtimestamp(now_wall, tz)
    start = local.replace(minute=local.minute - local.minute % interval_min, second=0, microsecond=0)
    s = start.timestamp()  # the fold of the repeated hour is kept: the second 01:00 is an hour after the first
    if s > now_wall:  # a zone whose offset is not a whole number of intervals at a transition
        s = now_wall
    return s, s + interval_min * 60.0


def month_of(wall: float, tz: ZoneInfo) -> str:
    d = datetime.fromtimestamp(wall, tz)
    return f"{d.year:04d}-{d.month:02d}"


def effective_target_w(cfg: DemandConfig, month_peak_kw: float) -> float:
    t = cfg.target_kw
    if cfg.raise_to_month_peak:
        t = max(t, month_peak_kw)
    return t * 1000.0


def allowed_ev_w(target_w: float, interval_s: float, energy_wh: float, time_left_s: float, forecast_w: float) -> float:
    """What the EVs may draw for the rest of the interval (W), >= 0 and finite."""
    remaining_wh = target_w * interval_s / 3600.0 - energy_wh
    t = max(time_left_s, END_GUARD_S)
    return max(0.0, remaining_wh * 3600.0 / t - max(forecast_w, 0.0))


def step(
    cfg: DemandConfig, tz: ZoneInfo, service: ServiceConfig, st: DemandState | None, m: Measure,
    now_mono: float, now_wall: float,
) -> tuple[DemandState, DemandFigures, list[Event]]:
    """One tick of the demand window: the next state, the figures (the cap among them) and the events."""
    events: list[Event] = []
    start, end = interval_bounds(now_wall, tz, cfg.interval_min)
    st = _advance(cfg, tz, st, m, start, now_mono, now_wall, events)
    target_w = effective_target_w(cfg, st.month_peak_kw)
    non_ev_now = m.non_ev_w if m.non_ev_w is not None else (st.non_ev_avg_w or 0.0)
    forecast = max(st.non_ev_avg_w or 0.0, non_ev_now)
    time_left = min(max(end - now_wall, 0.0), cfg.interval_s)
    ev_w = allowed_ev_w(target_w, cfg.interval_s, st.energy_wh, time_left, forecast)
    total_w = ev_w + max(non_ev_now, 0.0)
    # plus the service's margin, which the allocator takes off again: the margin guards the service's rating
    # (the clamp to its limit keeps it), the window is an energy budget whose own feedback pays back any error
    cap_a = min(max(electrical.service_line_current_a(service, total_w), 0.0) + service.margin_a, service.limit_a)
    hours = cfg.interval_s / 3600.0
    projected_kw = (st.energy_wh + max(m.import_w or 0.0, 0.0) * time_left / 3600.0) / hours / 1000.0
    if (not st.warned and projected_kw > target_w / 1000.0 * WARN_RATIO
            and now_wall - start >= WARN_AFTER_S):
        st = replace(st, warned=True)
        unavoidable = st.energy_wh + forecast * time_left / 3600.0 > target_w * hours
        events.append(("demand_projected_over", {
            "interval_start": start, "projected_kw": round(projected_kw, 3), "target_kw": round(target_w / 1000, 3),
            "energy_kwh": round(st.energy_wh / 1000, 4), "time_left_s": round(time_left, 1),
            "unavoidable": unavoidable,
        }))
    fig = DemandFigures(
        interval_start=start, interval_end=end, energy_wh=st.energy_wh, projected_kw=projected_kw,
        target_kw=cfg.target_kw, effective_target_kw=target_w / 1000.0, month_peak_kw=st.month_peak_kw,
        allowed_ev_kw=ev_w / 1000.0, forecast_non_ev_kw=forecast / 1000.0, cap_a=cap_a,
        measurement="register" if st.register_wh is not None else "power", estimated_s=st.estimated_s,
    )
    return st, fig, events


def _unknown_rate_w(cfg: DemandConfig, *powers: float | None) -> float:
    return max([cfg.target_kw * 1000.0, *(p for p in powers if p is not None)])


def _advance(
    cfg: DemandConfig, tz: ZoneInfo, st: DemandState | None, m: Measure, start: float, now_mono: float,
    now_wall: float, events: list[Event],
) -> DemandState:
    """The state at now: the energy of this interval so far, the month's peak, the non-EV average."""
    if st is None:
        return _fresh(cfg, tz, None, m, start, now_mono, now_wall)
    dt_wall = now_wall - st.last_wall
    dt = dt_wall if st.last_mono is None else now_mono - st.last_mono
    if st.last_mono is not None and abs(dt_wall - dt) > CLOCK_JUMP_S:
        events.append(("clock_jump", {"jump_s": round(dt_wall - dt, 3), "source": "demand-window"}))
    dt = max(dt, 0.0)
    avg = _average(st.non_ev_avg_w, m.non_ev_w, dt, cfg.forecast_s)
    e, est = _energy(cfg, st, m, dt)
    moved = replace(st, register_wh=m.register_wh, last_wall=now_wall, last_mono=now_mono, power_w=m.import_w,
                    non_ev_avg_w=avg)
    if start == st.interval_start:
        return _counted(cfg, moved, st.integrated_wh + e, st.estimated_s + est)
    if start < st.interval_start:  # the wall clock went back past the interval's start: keep what was counted
        moved = replace(moved, interval_start=start, month=month_of(start, tz), warned=False)
        return _counted(cfg, moved, st.integrated_wh + e, st.estimated_s + est)
    # a new interval: close the old one (with its share of this tick's energy by time, if it was the one before)
    contiguous = st.interval_start + cfg.interval_s >= start - 1e-6 and st.last_wall <= start and dt_wall > 0
    share = min(max((start - st.last_wall) / dt_wall, 0.0), 1.0) if contiguous else 0.0
    reg_at_start = None
    if contiguous and m.register_wh is not None and st.register_wh is not None and m.register_wh >= st.register_wh:
        reg_at_start = st.register_wh + (m.register_wh - st.register_wh) * share
    old = _counted(cfg, st, st.integrated_wh + e * share, st.estimated_s + est * share,
                   register_now=reg_at_start if reg_at_start is not None else st.register_wh)
    avg_kw = old.energy_wh / (cfg.interval_s / 3600.0) / 1000.0
    month = month_of(st.interval_start, tz)
    # only a measured interval sets the month's peak: one partly estimated (a fresh start in its middle) could
    # raise it, and with raise_to_month_peak the target with it, on a guess
    measured = old.estimated_s <= GAP_S
    base = st.month_peak_kw if month == st.month else 0.0
    peak = max(base, avg_kw) if measured else base
    target_kw = effective_target_w(cfg, st.month_peak_kw) / 1000.0
    if avg_kw > target_kw * OVER_RATIO:
        events.append(("demand_interval_over", {
            "interval_start": st.interval_start, "average_kw": round(avg_kw, 3), "target_kw": round(target_kw, 3),
            "excess_kw": round(avg_kw - target_kw, 3), "complete": contiguous,
            "estimated_s": round(old.estimated_s, 1),
        }))
    new_month = month_of(start, tz)
    carried = replace(moved, month=new_month, month_peak_kw=peak if new_month == month else 0.0)
    if not contiguous:  # the gateway was away over the boundary (or the clock jumped): nothing known of this one
        return _fresh(cfg, tz, carried, m, start, now_mono, now_wall)
    new = replace(carried, interval_start=start, register_start_wh=reg_at_start, warned=False)
    return _counted(cfg, new, e * (1.0 - share), est * (1.0 - share))


def _counted(
    cfg: DemandConfig, st: DemandState, integrated_wh: float, estimated_s: float, register_now: float | None = None
) -> DemandState:
    """The interval's energy: the higher of the integrated power and the register's difference (a register
    counts in steps of up to 100 Wh; the integration misses what falls between samples)."""
    reg = register_now if register_now is not None else st.register_wh
    energy = integrated_wh
    if cfg.measurement != "power" and reg is not None and st.register_start_wh is not None:
        d = reg - st.register_start_wh
        if math.isfinite(d) and d >= 0:
            energy = max(energy, d)
    return replace(st, integrated_wh=integrated_wh, energy_wh=energy, estimated_s=estimated_s)


def _fresh(
    cfg: DemandConfig, tz: ZoneInfo, prev: DemandState | None, m: Measure, start: float, now_mono: float,
    now_wall: float,
) -> DemandState:
    """An interval we see from the middle: what went before counts at the high-side estimate."""
    elapsed = max(now_wall - start, 0.0)
    month = month_of(start, tz)
    peak = prev.month_peak_kw if prev is not None and prev.month == month else 0.0
    e = _unknown_rate_w(cfg, m.import_w) * elapsed / 3600.0
    # the register's start is unknown: taken as now less the estimate, so both measures carry the estimate
    reg_start = None if m.register_wh is None or cfg.measurement == "power" else m.register_wh - e
    return DemandState(
        interval_start=start, energy_wh=e, integrated_wh=e, register_wh=m.register_wh, register_start_wh=reg_start,
        last_wall=now_wall, last_mono=now_mono, power_w=m.import_w,
        non_ev_avg_w=prev.non_ev_avg_w if prev is not None else m.non_ev_w, month=month, month_peak_kw=peak,
        estimated_s=elapsed,
    )


def _energy(cfg: DemandConfig, st: DemandState, m: Measure, dt: float) -> tuple[float, float]:
    """(Wh imported since the last tick by the integrated power, seconds of it estimated). Over a gap the
    register's difference is exact (a restart); without one, the high-side estimate."""
    if m.import_w is not None and st.power_w is not None and dt <= GAP_S:
        return max((m.import_w + st.power_w) / 2.0, 0.0) * dt / 3600.0, 0.0
    if cfg.measurement != "power" and m.register_wh is not None and st.register_wh is not None:
        d = m.register_wh - st.register_wh
        if math.isfinite(d) and d >= 0:
            return d, 0.0
    return _unknown_rate_w(cfg, m.import_w, st.power_w) * dt / 3600.0, dt


def _average(avg: float | None, x: float | None, dt: float, tau: float) -> float | None:
    if x is None:
        return avg
    if avg is None:
        return x
    return avg + (x - avg) * (1.0 - math.exp(-dt / tau))
