"""Step 6: limits from the filling (floor, hysteresis, reasons), the in-flight gate, and the next memory.

The gate keeps the invariant over time: an increase is granted only out of capacity that no charger's
reserve holds (what it may still draw: its old limit while it follows a decrease, a pending limit, an
offline charger's lease). Decreases always pass, at once. A session that cannot get its minimum out of
freed capacity waits at 0 (``hold:in-flight``) until the chargers it waits for have followed.
"""

from __future__ import annotations

import math

import numpy as np

from gateway.config import Site
from gateway.model import ChargerLimit, Snapshot
from tests.alloc_reference.classify import Classes
from tests.alloc_reference.plan import EPS_A, TOL_A, FloatArray, Plan
from tests.alloc_reference.reserve import follow, fresh_reserve
from tests.alloc_reference.state import AllocatorState, ChargerMemory, following


def floor_limit(v: float, step: float = 0.1) -> float:
    # the filling level is found to within TOL_A: allow that much so an exact share is not rounded down
    return math.floor((v + 2 * TOL_A) / step) * step


def propose(
    site: Site, plan: Plan, c: Classes, x: FloatArray, frozen_by: dict[int, int], paused: dict[int, int],
    names: tuple[str, ...], state: AllocatorState,
) -> None:
    """The active sessions' limits before the gate: pauses, floor to 0.1, hysteresis, reasons (in ``c``)."""
    running = {c.weight[i] for i in c.active if i not in paused}
    hyst = site.control.hysteresis_a
    for i in c.active:
        u2l = plan.unit_to_line[i]
        if i in paused:
            w = c.weight[i]
            if w in running:
                why = "paused:rotation"
            elif any(r > w for r in running):
                why = "paused:priority"
            else:
                why = f"paused:{names[paused[i]]}"
            c.limit[i], c.line[i], c.reason[i] = 0.0, 0.0, why
            continue
        limit = max(c.lo_limit[i], floor_limit(float(x[i]) / u2l))
        # capped where the filling stopped below the cap (by a whole step of the charger's unit)
        capped = i in frozen_by and limit < floor_limit(c.hi[i] / u2l)
        why = f"capped:{names[frozen_by[i]]}" if capped else c.hi_reason[i]
        mem = state.chargers.get(plan.ids[i])
        if mem is not None and mem.limit >= c.lo_limit[i] and limit > mem.limit and (limit - mem.limit) * u2l < hyst:
            limit, why = mem.limit, "hold:hysteresis"
        c.limit[i], c.line[i], c.reason[i] = limit, limit * u2l, why


def gate(plan: Plan, c: Classes, cap: FloatArray, non_ev: FloatArray) -> None:
    """Scale every increase beyond a charger's reserve to the capacity that no reserve holds (in ``c``); where
    the reserves overfill a constraint, scale the increases over the accepted limits so that sum(granted -
    base) <= sum(reserve - base) + free (the fix carried over from gateway/allocation/finalize.py: gate)."""
    n = len(plan.ids)
    if not c.active:
        return
    is_active = np.zeros(n, dtype=bool)
    is_active[np.array(c.active, dtype=np.intp)] = True
    reserve = np.array(c.reserve, dtype=np.float64)
    held = np.where(is_active, reserve, np.array(c.fixed, dtype=np.float64))
    line = np.array(c.line, dtype=np.float64)
    free_raw = cap - non_ev - plan.per_constraint(held)
    granted = line.copy()
    scaled = np.zeros(n, dtype=bool)
    delta = np.where(is_active, np.maximum(line - reserve, 0.0), 0.0)
    if (delta > EPS_A).any():
        free = np.maximum(free_raw, 0.0)
        want = plan.per_constraint(delta)
        factor_k = np.where(want > EPS_A, np.minimum(1.0, free / np.maximum(want, EPS_A)), 1.0)
        factor = np.ones(n)
        np.minimum.at(factor, plan.mem_c, factor_k[plan.mem_k])
        for i in np.flatnonzero((delta > EPS_A) & (factor < 1.0 - 1e-9)).tolist():
            granted[i], scaled[i] = float(reserve[i] + delta[i] * factor[i]), True
    if (free_raw < -EPS_A).any():
        base = np.array([v.base_a for v in c.views], dtype=np.float64)
        up = np.where(is_active, np.maximum(granted - base, 0.0), 0.0)
        rising = up > EPS_A
        if rising.any():
            want = plan.per_constraint(up)
            slack = free_raw + plan.per_constraint(np.where(rising, reserve - base, 0.0))
            factor_k = np.where((free_raw < -EPS_A) & (want > EPS_A),
                                np.clip(slack / np.maximum(want, EPS_A), 0.0, 1.0), 1.0)
            factor = np.ones(n)
            np.minimum.at(factor, plan.mem_c, factor_k[plan.mem_k])
            for i in np.flatnonzero(rising & (factor < 1.0 - 1e-9)).tolist():
                granted[i], scaled[i] = float(base[i] + up[i] * factor[i]), True
    for i in np.flatnonzero(scaled).tolist():
        u2l = plan.unit_to_line[i]
        limit = floor_limit(float(granted[i]) / u2l)
        if granted[i] < c.lo[i] - EPS_A or limit < c.lo_limit[i] - 1e-9:
            limit = 0.0  # its minimum does not fit in freed capacity yet: it waits (a decrease, always safe)
        c.limit[i], c.line[i], c.reason[i] = limit, limit * u2l, "hold:in-flight"


def remember(
    site: Site, plan: Plan, c: Classes, snapshot: Snapshot, state: AllocatorState, now: float
) -> tuple[dict[str, ChargerLimit], dict[str, ChargerMemory]]:
    limits: dict[str, ChargerLimit] = {}
    memory: dict[str, ChargerMemory] = {}
    active = set(c.active)
    resp = site.control.ev_response_s
    for i, cid in enumerate(plan.ids):
        mem, v = state.chargers.get(cid), c.views[i]
        limit, line, why = c.limit[i], c.line[i], c.reason[i]
        paused_since, running_since = _rotation(c, i, i in active, why, now)
        base_a, follows, raised_at = v.base_a, v.follows, v.raised_at
        cs = snapshot.chargers.get(cid)
        if cs is not None and cs.actuation is None and cs.online:
            # no actuation feedback: the decided limit counts as accepted now
            start = fresh_reserve(plan.chargers[i], cs, plan.unit_to_line[i])
            follows, raised_at = follow(mem, start, line, now, resp, now)
            base_a = line
        memory[cid] = ChargerMemory(
            limit=limit, line_a=line, reason=why,
            paused_since=paused_since, running_since=running_since, base_a=base_a,
            follows=follows, raised_at=raised_at,
            reports=c.reports[i],
        )
        may = max(c.reserve[i], line, following(follows, now))
        limits[cid] = ChargerLimit(limit, line, why, may)
    return limits, memory


def _rotation(c: Classes, i: int, active: bool, why: str, now: float) -> tuple[float | None, float | None]:
    if not active:
        return None, None
    if why.startswith("paused:") or (why == "hold:in-flight" and c.limit[i] == 0.0):
        return (c.paused_since[i] if c.paused_since[i] is not None else now), None
    rs = c.running_since[i] if (c.running_since[i] is not None and c.paused_since[i] is None) else now
    return None, rs
