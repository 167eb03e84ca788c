"""Step 2: each charger's reserve, its usable draw, and whether it is allocated this tick.

Chargers that are not allocated (fail-safe subtree, offline, non-compliant, no session) get their limit
here and count as fixed loads at their reserve. Active sessions get bounds for the filling: the minimum
(per active connector), and a cap from the charger's maximum, its EV's draw plus an allowance, the ramp and a
budget's cap on the charger (Snapshot.charger_caps). Everything runs on arrays over the plan's chargers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.allocation.inputs import CHARGING, HAS_SESSION, IDLE_REASON, SUSPENDED_EV, Inputs, inputs
from gateway.allocation.narrow import row_any, row_max
from gateway.allocation.plan import EPS_A, FloatArray, IntArray, Plan
from gateway.allocation.reserve import Views, report_for, reports, views
from gateway.allocation.state import NEVER, AllocatorState, BoolArray, Memory, Reports
from gateway.config import Site
from gateway.model import ChargerCap, MeterReading, Snapshot

_DT_MAX_TICKS = 5.0  # an increase may use at most this many ticks of ramp after a gap

Strings = npt.NDArray[np.object_]
_HI_REASONS = np.array(["", "max:charger", "max:ev-suspended", "max:ev-draw", "ramp:rate-limit"], dtype=object)
_NONE, _MAX, _SUSPENDED, _BY_DRAW, _RAMP = range(5)


@dataclass
class Classes:
    """Per charger index (arrays over the plan's chargers; NaN: None)."""

    inp: Inputs  # this tick's snapshot
    mem: Memory  # the memory of the last tick
    views: Views
    reserve: FloatArray  # line A it may draw now
    draw: FloatArray  # (chargers, phases): usable reported draw (0 where none may make room)
    has_draw: BoolArray
    draw_at: FloatArray  # when that draw was measured (NEVER when none)
    reports: Reports  # recent draw reports with the lowest reserve since each (memory)
    following: BoolArray  # still following a decrease (its earlier limit is part of its reserve)
    limit: FloatArray
    line: FloatArray
    reason: Strings
    fixed: FloatArray  # line current counted as a fixed load (not active)
    is_active: BoolArray
    lo: FloatArray  # line A
    lo_limit: FloatArray  # the same minimum in the charger's unit (its minimum per active connector)
    hi: FloatArray
    hi_reason: Strings
    weight: FloatArray
    paused_since: FloatArray
    running_since: FloatArray
    waiting: BoolArray  # an active session left at 0 this tick (paused, or waiting in the gate)

    @property
    def active(self) -> IntArray:
        return np.flatnonzero(self.is_active)


def memory_of(state: AllocatorState, plan: Plan) -> Memory:
    """The last tick's memory as arrays for this plan (rebuilt from the per-charger mapping when the state
    was not made with this plan)."""
    if state.memory is not None and state.plan_key is plan:
        return state.memory
    return Memory.of(plan.ids, state.chargers, plan.n_phases)


def classify(
    snapshot: Snapshot, site: Site, plan: Plan, state: AllocatorState, failsafe: Mapping[int, str], now: float,
    aging: Mapping[int, str] | None = None, readings: Mapping[str, MeterReading] | None = None,
) -> Classes:
    n = len(plan.ids)
    last = state.inputs if state.plan_key is plan and isinstance(state.inputs, Inputs) else None
    inp, mem = inputs(snapshot, plan, last), memory_of(state, plan)
    v = views(plan, inp, mem, site.control.ev_response_s, now)
    reps = reports(mem, inp, v.base_a)
    # an EV follows a change late: while a decrease it accepted is within its response window, its draw
    # may still be falling (even if a later increase is already accepted)
    following: BoolArray = row_any(v.follows.until > now)
    rep = report_for(reps, seen_at(plan, readings, now), inp, now)
    # a draw is believed only up to what the charger may draw now and, once it has followed, the lowest limit
    # it has had since it was measured: more is stale (a non-compliant charger's draw is believed). While it
    # follows, the non-EV estimate holds instead (headroom).
    bound = np.where(inp.noncompliant, row_max(rep.draw, 0.0),
                     np.where(following, v.may_draw_a, np.minimum(v.may_draw_a, rep.low)))
    raw_max = row_max(inp.raw, 0.0)
    c = Classes(
        inp=inp, mem=mem, views=v,
        reserve=np.where(inp.noncompliant, np.maximum(v.may_draw_a, raw_max), v.may_draw_a),
        draw=np.where(rep.usable[:, None], np.minimum(rep.draw, bound[:, None]), 0.0),
        has_draw=rep.usable, draw_at=np.where(rep.usable, rep.at, NEVER), reports=reps, following=following,
        limit=np.zeros(n), line=np.zeros(n), reason=np.full(n, "", dtype=object), fixed=np.zeros(n),
        is_active=np.zeros(n, dtype=bool), lo=np.zeros(n), lo_limit=np.zeros(n), hi=np.zeros(n),
        hi_reason=np.full(n, "", dtype=object), weight=np.ones(n), paused_since=np.full(n, np.nan),
        running_since=np.full(n, np.nan), waiting=np.zeros(n, dtype=bool),
    )
    _decide_fixed(c, plan, failsafe, raw_max)
    dt = min(max(now - state.at, 0.0), _DT_MAX_TICKS * site.control.tick_s) if state.at is not None else 0.0
    _bounds(c, site, plan, dt, now)
    for i, meter in (aging or {}).items():
        if c.is_active[i]:
            _hold_late(c, i, f"hold:{meter}-late")
    if snapshot.charger_caps:
        for cid, ccap in snapshot.charger_caps.items():
            k = plan.index.get(cid)
            if k is not None and c.is_active[k]:
                _charger_cap(c, k, ccap)
    return c


def _charger_cap(c: Classes, i: int, cap: ChargerCap) -> None:
    """A budget's cap on one charger (solar modes, the planner) lowers its upper bound, never raises it; below
    the charger's minimum the session pauses (limit 0, the cap's reason)."""
    lim = cap.limit_a if cap.limit_a >= 0 else 0.0  # NaN and negative: 0 (a fault lowers, never raises)
    if lim >= c.lo[i] - EPS_A:
        if lim < c.hi[i]:
            c.hi[i], c.hi_reason[i] = max(lim, c.lo[i]), cap.reason
        return
    c.is_active[i] = False
    c.limit[i], c.line[i], c.reason[i] = 0.0, 0.0, cap.reason
    c.fixed[i] = c.reserve[i]


def seen_at(plan: Plan, readings: Mapping[str, MeterReading] | None, now: float) -> FloatArray:
    """Per charger: when the meters on its path last read (the oldest of them; now when none did)."""
    if not readings:
        return np.full(len(plan.ids), now)
    per_path = [min((readings[m].at for m in path if m in readings), default=now) for path in plan.metered_paths]
    return np.array(per_path, dtype=np.float64)[plan.path_index]


def _decide_fixed(c: Classes, plan: Plan, failsafe: Mapping[int, str], raw_max: FloatArray) -> None:
    """Limits for chargers that are not allocated this tick; the rest are active sessions."""
    inp, mem = c.inp, c.mem
    prev = np.where(mem.has, mem.limit, plan.failsafe_limit)  # a fresh start: it falls back to its fail-safe
    fs = np.zeros(len(plan.ids), dtype=bool)
    fs[list(failsafe)] = True
    offline = ~fs & ~inp.online
    noncompliant = ~fs & inp.online & inp.noncompliant
    idle = ~fs & inp.online & ~inp.noncompliant & ~HAS_SESSION[inp.state]
    # a data fault lowers limits, never raises one: min(its limit, its fail-safe limit)
    limit = np.where(fs, np.minimum(prev, plan.failsafe_limit), 0.0)
    limit = np.where(offline, np.where(mem.has, mem.limit, 0.0), limit)
    limit = np.where(noncompliant, np.where(mem.has, prev, plan.min_limit), limit)
    reason = np.where(idle, IDLE_REASON[inp.state], "")
    if offline.any() or noncompliant.any():
        reason = np.where(offline, "offline:reserved", np.where(noncompliant, "noncompliant:fixed-load", reason))
    for i, why in failsafe.items():
        reason[i] = why
    c.reason = reason
    fixed = fs | offline | noncompliant | idle
    c.limit, c.line = np.where(fixed, limit, 0.0), np.where(fixed, limit * plan.u2l, 0.0)
    held = np.maximum(np.maximum(c.reserve, limit * plan.u2l), np.where(inp.noncompliant, raw_max, 0.0))
    c.fixed = np.where(fixed, held, 0.0)
    c.is_active = ~fixed


def _hold_late(c: Classes, i: int, why: str) -> None:
    """Beneath a meter whose reading is late, a session may keep or lower its limit but not raise it."""
    prev_line = float(c.mem.line_a[i]) if c.mem.has[i] else 0.0
    if prev_line >= c.lo[i] - 1e-9:
        if c.hi[i] > prev_line:
            c.hi[i], c.hi_reason[i] = prev_line, why
        return
    c.is_active[i] = False  # it had no share (paused or new): it does not start now
    c.limit[i], c.line[i], c.reason[i] = 0.0, 0.0, why
    c.fixed[i] = c.reserve[i]


def _bounds(c: Classes, site: Site, plan: Plan, dt: float, now: float) -> None:
    """Minimum, cap and weight of every active session."""
    ctl, inp, mem, act = site.control, c.inp, c.mem, c.is_active
    c.weight = np.where(act, _weights(site, plan, c), 1.0)
    lo_limit = np.minimum(plan.min_limit * np.maximum(inp.active_connectors, 1.0), plan.max_limit)
    lo_a = lo_limit * plan.u2l  # the minimum for every EV on it
    suspended = (inp.state == SUSPENDED_EV) & (lo_a < plan.max_a)
    cap = np.where(suspended, lo_a, plan.max_a)
    why = np.where(suspended, _SUSPENDED, _MAX)
    # An EV that does not use its limit gives the rest to others, judged only on a draw measured a response
    # after its limit last rose (a ramping EV is not held back by lagging reports). Once capped, the cap
    # lifts when the EV draws within half the allowance of its limit.
    allowance = ctl.draw_allowance_a
    d = row_max(c.draw, 0.0)
    capped = np.where(mem.reason == "max:ev-draw", d < mem.line_a - allowance / 2,
                      (c.draw_at >= c.views.raised_at + ctl.ev_response_s) & (d < mem.line_a - allowance))
    dcap = np.maximum(lo_a, d + allowance)
    by_draw = (inp.state == CHARGING) & c.has_draw & mem.has & (mem.limit > 0) & capped & (dcap < cap)
    cap, why = np.where(by_draw, dcap, cap), np.where(by_draw, _BY_DRAW, why)
    # ramp: an increase is rate-limited from the previous limit (from 0 when it had none; after a (re)start
    # from the measured draw)
    start = np.where(mem.has, np.where(mem.limit > 0, mem.line_a, 0.0), np.where(c.has_draw, d, 0.0))
    ramp_cap = np.maximum(lo_a, start + ctl.ramp_up_a_per_s * dt)
    ramped = ramp_cap < cap - EPS_A
    cap, why = np.where(ramped, ramp_cap, cap), np.where(ramped, _RAMP, why)
    c.lo, c.lo_limit = np.where(act, lo_a, 0.0), np.where(act, lo_limit, 0.0)
    c.hi, c.hi_reason = np.where(act, cap, 0.0), _HI_REASONS[np.where(act, why, _NONE)]
    # a session not yet allocated waits its turn
    waits = mem.paused_since if mem.has.all() else np.where(mem.has, mem.paused_since,
                                                              np.minimum(now, inp.started_at()))
    c.paused_since = np.where(act, waits, np.nan)
    c.running_since = np.where(act & mem.has, mem.running_since, np.nan)


def _weights(site: Site, plan: Plan, c: Classes) -> FloatArray:
    """The weight of each session's class: the session's own when it names a known one, else the charger's."""
    prios = c.inp.priority
    if not any(prios):
        return plan.weight
    pr = site.priorities
    return np.array([pr[p].weight if p and p in pr else w for p, w in zip(prios, plan.weight.tolist(), strict=True)],
                    dtype=np.float64)
