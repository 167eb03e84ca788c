"""Step 6: limits from the filling (floor, hysteresis, reasons), the in-flight gate, and the next memory.

The gate keeps the invariant over time: an increase is granted only out of capacity that no charger's
reserve holds (what it may still draw: its old limit while it follows a decrease, a pending limit, an
offline charger's lease). Decreases always pass, at once. A session that cannot get its minimum out of
freed capacity waits at 0 (``hold:in-flight``) until the chargers it waits for have followed.
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np

from gateway.allocation.classify import Classes
from gateway.allocation.inputs import MIN_KEPT
from gateway.allocation.plan import EPS_A, TOL_A, FloatArray, IntArray, Plan
from gateway.allocation.reserve import fresh_reserves
from gateway.allocation.state import AllocatorState, BoolArray, Memory
from gateway.config import Site
from gateway.model import ChargerLimit


def floor_limit(v: float, step: float = 0.1) -> float:
    # the filling level is found to within TOL_A: allow that much so an exact share is not rounded down
    return math.floor((v + 2 * TOL_A) / step) * step


def floor_limits(v: FloatArray, step: float = 0.1) -> FloatArray:
    """``floor_limit`` of every element."""
    return np.asarray(np.floor((v + 2 * TOL_A) / step) * step, dtype=np.float64)


def propose(
    site: Site, plan: Plan, c: Classes, x: FloatArray, frozen_by: IntArray, paused: dict[int, int],
    names: tuple[str, ...],
) -> None:
    """The active sessions' limits before the gate: pauses, floor to 0.1, hysteresis, reasons (in ``c``)."""
    run = c.is_active.copy()
    run[list(paused)] = False
    if paused:
        _pause_reasons(c, paused, c.weight[run], names, plan)
    if not run.any():
        return
    limit = np.maximum(c.lo_limit, floor_limits(x / plan.u2l))
    # capped where the filling stopped below the cap (by a whole step of the charger's unit)
    capped = run & (frozen_by >= 0) & (limit < floor_limits(c.hi / plan.u2l))
    why = c.hi_reason.copy()
    if capped.any():
        reasons = plan.capped_reasons if names is plan.constraint_names else np.array(
            ["capped:" + name for name in names], dtype=object)
        why[capped] = reasons[frozen_by[capped]]
    mem = c.mem
    hold = mem.has & (mem.limit >= c.lo_limit) & (limit > mem.limit) & (
        (limit - mem.limit) * plan.u2l < site.control.hysteresis_a)
    limit = np.where(hold, mem.limit, limit)
    why[hold] = "hold:hysteresis"
    c.limit, c.line = np.where(run, limit, c.limit), np.where(run, limit * plan.u2l, c.line)
    c.reason[run] = why[run]


def _pause_reasons(c: Classes, paused: dict[int, int], running: FloatArray, names: tuple[str, ...],
                   plan: Plan) -> None:
    """Each paused session's reason: its turn (an equal weight runs), its priority (a higher one runs), else
    the constraint that made it pause."""
    idx = np.fromiter(paused, np.intp, len(paused))
    w = c.weight[idx]
    reasons = plan.paused_reasons if names is plan.constraint_names else np.array(
        ["paused:" + name for name in names], dtype=object)
    why = reasons[np.fromiter(paused.values(), np.intp, len(paused))]
    if running.size:
        why = np.where(w < running.max(), "paused:priority", why)
        why = np.where(_among(w, running), "paused:rotation", why)
    c.limit[idx], c.line[idx], c.reason[idx], c.waiting[idx] = 0.0, 0.0, why, True


def _among(values: FloatArray, pool: FloatArray) -> BoolArray:
    """``np.isin(values, pool)`` for values of a few distinct figures (the priority classes' weights), without
    its sort."""
    distinct = set(values.tolist())
    if len(distinct) > 8:
        return np.isin(values, pool)
    out = np.zeros(len(values), dtype=bool)
    for v in distinct:
        if (pool == v).any():
            out |= values == v
    return out


def gate(plan: Plan, c: Classes, cap: FloatArray, non_ev: FloatArray) -> None:
    """Scale every increase to the capacity that no reserve holds (in ``c``): an increase beyond a charger's
    reserve out of the room left once every reserve is held (``_beyond_reserves``), and, where the reserves
    already overfill a constraint, an increase within a decrease still followed only so far as lets that
    overfill lapse with the decreases (``_within_followed``)."""
    if not c.is_active.any():
        return
    held = np.where(c.is_active, c.reserve, c.fixed)
    free = cap - non_ev - plan.per_constraint(held)  # below 0: reserves overfill it (decreases still followed)
    granted, sel = _beyond_reserves(plan, c, np.maximum(free, 0.0))
    if (free < -EPS_A).any():
        granted, sel = _within_followed(plan, c, free, granted, sel)
    if not sel.any():
        return
    limit = floor_limits(granted / plan.u2l)
    # its minimum does not fit in freed capacity yet: it waits (a decrease, always safe)
    limit = np.where((granted < c.lo - EPS_A) | (limit < c.lo_limit - 1e-9), 0.0, limit)
    c.limit, c.line = np.where(sel, limit, c.limit), np.where(sel, limit * plan.u2l, c.line)
    c.reason[sel] = "hold:in-flight"
    c.waiting |= sel & (limit == 0.0)


def _beyond_reserves(plan: Plan, c: Classes, free: FloatArray) -> tuple[FloatArray, BoolArray]:
    """Each increase beyond its charger's reserve scaled to the free room of every constraint it loads:
    (the line each is granted, which were scaled)."""
    delta = np.where(c.is_active, np.maximum(c.line - c.reserve, 0.0), 0.0)
    if not (delta > EPS_A).any():
        return c.line, np.zeros(len(plan.ids), dtype=bool)
    want = plan.per_constraint(delta)
    factor_k = np.where(want > EPS_A, np.minimum(1.0, free / np.maximum(want, EPS_A)), 1.0)
    if not (factor_k < 1.0 - 1e-9).any():  # every constraint has room for its increases: none is scaled
        return c.line, np.zeros(len(plan.ids), dtype=bool)
    factor = np.minimum(1.0, plan.lowest_per_charger(factor_k[plan.mem_k]))
    sel = (delta > EPS_A) & (factor < 1.0 - 1e-9)
    return np.where(sel, c.reserve + delta * factor, c.line), sel


def _within_followed(
    plan: Plan, c: Classes, free: FloatArray, granted: FloatArray, sel: BoolArray
) -> tuple[FloatArray, BoolArray]:
    """Where the reserves overfill a constraint (``free`` < 0: after an external load step, decreases being
    followed), an increase over what a charger accepted (``base_a``) but within its reserve (its earlier limit
    while it follows a decrease) takes that room for good, past the end of its window, while the others'
    reserves still hold theirs. So, per such constraint, the sum of the increases over the accepted limits may
    use the room the followed decreases give back, less the overfill: sum(granted - base) <= sum(reserve -
    base) + free; each is scaled down to fit (the safety world found a 1 A overload without this)."""
    base = c.views.base_a
    up = np.where(c.is_active, np.maximum(granted - base, 0.0), 0.0)
    rising = up > EPS_A
    if not rising.any():
        return granted, sel
    want = plan.per_constraint(up)
    slack = free + plan.per_constraint(np.where(rising, c.reserve - base, 0.0))
    factor_k = np.where((free < -EPS_A) & (want > EPS_A), np.clip(slack / np.maximum(want, EPS_A), 0.0, 1.0), 1.0)
    factor = np.minimum(1.0, plan.lowest_per_charger(factor_k[plan.mem_k]))
    more = rising & (factor < 1.0 - 1e-9)
    return np.where(more, base + up * factor, granted), sel | more


def remember(
    site: Site, plan: Plan, c: Classes, now: float, state: AllocatorState | None = None
) -> tuple[dict[str, ChargerLimit], Memory, FloatArray]:
    """The limits, the next memory and what each charger may draw from now on (its reserve in the
    allocation). A charger's limit whose values are those of the last tick's (``state``) is that object."""
    inp, mem, v = c.inp, c.mem, c.views
    # no actuation feedback: the decided limit counts as accepted now
    accepted_now = ~inp.has_act & inp.online
    before = np.where(mem.has, mem.base_a, fresh_reserves(plan, inp, mem))
    follows = v.follows.copy()
    fall = accepted_now & (c.line < before - EPS_A)
    rise = accepted_now & ~fall & (c.line > before + EPS_A)
    follows.add(fall, before, np.full(len(plan.ids), now + site.control.ev_response_s))
    raised = np.where(rise, now, v.raised_at)
    base = np.where(accepted_now, c.line, v.base_a)
    paused_since, running_since = _rotation(c, now)
    may = np.maximum(np.maximum(c.reserve, c.line), follows.highest(now))
    memory = Memory(plan.ids, np.ones(len(plan.ids), dtype=bool), c.limit, c.line, c.reason, paused_since,
                    running_since, base, raised, follows, c.reports)
    return _limits(plan, c, may, state), memory, may


def _limits(plan: Plan, c: Classes, may: FloatArray, state: AllocatorState | None) -> dict[str, ChargerLimit]:
    mem = c.mem
    if (state is not None and state.memory is mem and state.limits is not None and state.may_a is not None
            and len(plan.ids) >= MIN_KEPT):
        changed = np.flatnonzero((c.limit != mem.limit) | (c.line != mem.line_a) | (may != state.may_a)
                                 | (c.reason != mem.reason))
        if 5 * changed.size <= 4 * len(plan.ids):  # the last tick's, those that changed made anew
            limits = dict(state.limits)
            rows = zip(c.limit[changed].tolist(), c.line[changed].tolist(), c.reason[changed].tolist(),
                       may[changed].tolist(), strict=True)
            limits.update(zip(plan.id_objects[changed].tolist(), map(_LIMIT, rows), strict=True))
            return limits
    rows = zip(c.limit.tolist(), c.line.tolist(), c.reason.tolist(), may.tolist(), strict=True)
    return dict(zip(plan.ids, map(_LIMIT, rows), strict=True))


_LIMIT = partial(tuple.__new__, ChargerLimit)  # ChargerLimit._make without its Python frame


def _rotation(c: Classes, now: float) -> tuple[FloatArray, FloatArray]:
    """(paused since, running since) of the active sessions: a session left at 0 keeps waiting since it was
    paused (or from now); one that runs keeps running since it ran without a pause (or from now)."""
    ps, rs = c.paused_since, c.running_since
    paused = np.where(c.is_active & c.waiting, np.where(np.isnan(ps), now, ps), np.nan)
    running = np.where(c.is_active & ~c.waiting, np.where(~np.isnan(rs) & np.isnan(ps), rs, now), np.nan)
    return paused, running

