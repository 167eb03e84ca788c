"""Step 2: each charger's reserve, its usable draw, and whether it is allocated this tick.

Chargers that are not allocated (fail-safe subtree, offline, non-compliant, no session) get their limit
here and count as fixed loads at their reserve. Active sessions get bounds for the filling: the minimum
(per active connector), and a cap from the charger's maximum, its EV's draw plus an allowance and the ramp.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.config import ChargerConfig, Site
from gateway.model import ChargerSnapshot, ChargerState, MeterReading, Snapshot
from tests.alloc_reference.plan import EPS_A, Plan
from tests.alloc_reference.reserve import Report, View, measured_draw, report_for, reports, usable, view
from tests.alloc_reference.state import NEVER, AllocatorState, ChargerMemory

_DT_MAX_TICKS = 5.0  # an increase may use at most this many ticks of ramp after a gap


@dataclass
class Classes:
    """Per charger index, plain lists (numpy scalar access is slow in the per-charger loop)."""

    views: list[View]
    reserve: list[float]  # line A it may draw now
    draw: list[list[float] | None]  # usable reported draw per site phase (None: none that may make room)
    draw_at: list[float]  # when that draw was measured (NEVER when none)
    reports: list[tuple[Report, ...]]  # recent draw reports with the lowest reserve since each (memory)
    following: list[bool]  # still following a decrease (its earlier limit is part of its reserve)
    limit: list[float]  # for chargers decided here (not active)
    line: list[float]
    reason: list[str]
    fixed: list[float]  # line current counted as a fixed load (not active)
    active: list[int]
    lo: list[float]  # line A
    lo_limit: list[float]  # the same minimum in the charger's unit (its minimum per active connector)
    hi: list[float]
    hi_reason: list[str]
    weight: list[float]
    paused_since: list[float | None]
    running_since: list[float | None]


def classify(
    snapshot: Snapshot, site: Site, plan: Plan, state: AllocatorState, failsafe: Mapping[int, str], now: float,
    aging: Mapping[int, str] | None = None, readings: Mapping[str, MeterReading] | None = None,
) -> Classes:
    n, P = len(plan.ids), plan.n_phases
    c = Classes(
        views=[], reserve=[0.0] * n, draw=[None] * n, draw_at=[NEVER] * n, reports=[()] * n,
        following=[False] * n, limit=[0.0] * n, line=[0.0] * n, reason=[""] * n, fixed=[0.0] * n, active=[],
        lo=[0.0] * n, lo_limit=[0.0] * n, hi=[0.0] * n, hi_reason=[""] * n,
        weight=[1.0] * n, paused_since=[None] * n, running_since=[None] * n,
    )
    dt = min(max(now - state.at, 0.0), _DT_MAX_TICKS * site.control.tick_s) if state.at is not None else 0.0
    offline = ChargerSnapshot(id="", online=False)
    resp = site.control.ev_response_s
    for i, (cid, ch) in enumerate(zip(plan.ids, plan.chargers, strict=True)):
        cs = snapshot.chargers.get(cid, offline)
        u2l = plan.unit_to_line[i]
        mem = state.chargers.get(cid)
        v = view(mem, cs, ch, u2l, resp, now)
        c.views.append(v)
        raw = measured_draw(site, ch, cs, P)
        raw_max = max(raw) if raw else 0.0
        c.reports[i] = reports(mem, cs, raw, v)
        # an EV follows a change late: while a decrease it accepted is within its response window, its draw
        # may still be falling (even if a later increase is already accepted)
        c.following[i] = any(now < until for _, until in v.follows)
        seen_at = min((readings[m].at for m in plan.metered_path[i] if m in readings), default=now) if readings else now
        rep = report_for(c.reports[i], seen_at)
        if rep is not None and usable(rep[0], cs, now):
            # believed only up to what the charger may draw now and, once it has followed, the lowest limit it
            # has had since it was measured: more is stale (a non-compliant charger's draw is believed). While
            # it follows, the non-EV estimate holds instead (headroom).
            bound = max(rep[1]) if cs.noncompliant else (v.may_draw_a if c.following[i] else min(v.may_draw_a, rep[2]))
            c.draw[i] = [min(x, bound) for x in rep[1]]
            c.draw_at[i] = rep[0]
        c.reserve[i] = max(v.may_draw_a, raw_max) if cs.noncompliant else v.may_draw_a
        if not _decide_fixed(c, i, ch, cs, mem, v, failsafe.get(i), u2l, raw_max):
            _bounds(c, i, site, ch, cs, mem, v, u2l, dt, now)
            late = aging.get(i) if aging else None
            if late is not None:
                _hold_late(c, i, mem, f"hold:{late}-late")
    return c


def _decide_fixed(
    c: Classes, i: int, ch: ChargerConfig, cs: ChargerSnapshot, mem: ChargerMemory | None, v: View,
    failsafe: str | None, u2l: float, raw_max: float,
) -> bool:
    """Limits for chargers that are not allocated this tick; False for an active session."""
    prev = mem.limit if mem is not None else ch.failsafe_limit  # a fresh start: it falls back to its fail-safe
    if failsafe is not None:
        # a data fault lowers limits, never raises one: min(its limit, its fail-safe limit)
        limit, reason = min(prev, ch.failsafe_limit), failsafe
    elif not cs.online:
        limit, reason = (mem.limit if mem is not None else 0.0), "offline:reserved"
    elif cs.noncompliant:
        limit, reason = (prev if mem is not None else ch.min_limit), "noncompliant:fixed-load"
    elif not cs.state.has_session:
        limit = 0.0
        reason = "idle:no-ev" if cs.state == ChargerState.NO_EV else f"idle:{cs.state.value}"
    else:
        return False
    c.limit[i], c.line[i], c.reason[i] = limit, limit * u2l, reason
    c.fixed[i] = max(c.reserve[i], limit * u2l, raw_max if cs.noncompliant else 0.0)
    return True


def _hold_late(c: Classes, i: int, mem: ChargerMemory | None, why: str) -> None:
    """Beneath a meter whose reading is late, a session may keep or lower its limit but not raise it."""
    prev_line = mem.line_a if mem is not None else 0.0
    if prev_line >= c.lo[i] - 1e-9:
        if c.hi[i] > prev_line:
            c.hi[i], c.hi_reason[i] = prev_line, why
        return
    c.active.pop()  # it had no share (paused or new): it does not start now
    c.limit[i], c.line[i], c.reason[i] = 0.0, 0.0, why
    c.fixed[i] = c.reserve[i]


def _bounds(
    c: Classes, i: int, site: Site, ch: ChargerConfig, cs: ChargerSnapshot, mem: ChargerMemory | None, v: View,
    u2l: float, dt: float, now: float,
) -> None:
    """Minimum, cap and weight of an active session."""
    ctl = site.control
    c.active.append(i)
    prio = cs.session.priority if cs.session is not None and cs.session.priority in site.priorities else None
    c.weight[i] = site.priorities[prio or ch.priority].weight
    hi_a = ch.max_limit * u2l
    lo_limit = min(ch.min_limit * max(cs.active_connectors, 1), ch.max_limit)  # the minimum for every EV on it
    lo_a = lo_limit * u2l
    c.lo[i], c.lo_limit[i] = lo_a, lo_limit
    cap, why = hi_a, "max:charger"
    draw = c.draw[i]
    if cs.state == ChargerState.SUSPENDED_EV:
        if lo_a < cap:
            cap, why = lo_a, "max:ev-suspended"
    elif cs.state == ChargerState.CHARGING and draw is not None and mem is not None and mem.limit > 0:
        # An EV that does not use its limit gives the rest to others, judged only on a draw measured a
        # response after its limit last rose (a ramping EV is not held back by lagging reports). Once
        # capped, the cap lifts when the EV draws within half the allowance of its limit.
        allowance = ctl.draw_allowance_a
        d = max(draw)
        if mem.reason == "max:ev-draw":
            capped = d < mem.line_a - allowance / 2
        else:
            capped = c.draw_at[i] >= v.raised_at + ctl.ev_response_s and d < mem.line_a - allowance
        dcap = max(lo_a, d + allowance)
        if capped and dcap < cap:
            cap, why = dcap, "max:ev-draw"
    # ramp: an increase is rate-limited from the previous limit (from 0 when it had none)
    start = mem.line_a if mem is not None and mem.limit > 0 else None
    if start is None and mem is None and draw is not None:
        start = max(draw)  # first allocation after a (re)start: continue from the measured draw
    ramp_cap = max(lo_a, (start or 0.0) + ctl.ramp_up_a_per_s * dt)
    if ramp_cap < cap - EPS_A:
        cap, why = ramp_cap, "ramp:rate-limit"
    c.hi[i], c.hi_reason[i] = cap, why
    if mem is not None:
        c.paused_since[i], c.running_since[i] = mem.paused_since, mem.running_since
    elif cs.session is not None:
        c.paused_since[i] = min(now, cs.session.started_at)  # a session not yet allocated waits its turn
