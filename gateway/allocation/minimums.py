"""Step 4: each active session gets its minimum or 0; when not all fit, the lowest priority pauses first
and equals take turns every rotation period."""

from __future__ import annotations

import numpy as np

from gateway.allocation.classify import Classes
from gateway.allocation.plan import EPS_A, FloatArray, Plan

_FAR = 1e18


def pause(plan: Plan, c: Classes, room: FloatArray, period_s: float, now: float) -> dict[int, int]:
    """The sessions to pause, each with the constraint that made it pause."""
    K = plan.n_constraints
    mmask = c.is_active[plan.mem_c]
    a_c, a_k = plan.mem_c[mmask], plan.mem_k[mmask]
    lo = c.lo
    need = np.bincount(a_k, weights=lo[a_c], minlength=K)
    paused: dict[int, int] = {}
    if not (need > room + EPS_A).any():
        return paused
    order = _order(plan, c, period_s, now)
    # as Python floats from here (one session at a time); a need only falls, so the over-full constraints
    # only get fewer
    need_l, room_l = need.tolist(), (room + EPS_A).tolist()
    n_over = sum(1 for x, r in zip(need_l, room_l, strict=True) if x > r)
    members, lo_l = plan.members, lo.tolist()
    for i in order:
        over = [k for k in members[i] if need_l[k] > room_l[k]]
        if not over:
            continue
        paused[i] = over[0]
        for k in members[i]:
            was_over = need_l[k] > room_l[k]
            need_l[k] -= lo_l[i]
            n_over -= was_over and not need_l[k] > room_l[k]
        if not n_over:
            break
    return paused


def _order(plan: Plan, c: Classes, period_s: float, now: float) -> list[int]:
    """The active sessions in the order they pause: the lowest weight first; then those still waiting their turn
    (the latest paused first), those running (the longest running first), those that waited a whole period (the
    longest wait last: it resumes first); then the latest departure first, then by id."""
    act = c.active
    ps, rs = c.paused_since[act], c.running_since[act]
    has_ps = ~np.isnan(ps)
    since_ps = now - ps
    group = np.where(has_ps, np.where(since_ps < period_s, 0, 2), 1)
    k2 = np.where(has_ps, since_ps, np.where(np.isnan(rs), 0.0, -(now - rs)))
    sessions = c.inp.sessions
    deps = [s.departure_at if s is not None else None for s in map(sessions.__getitem__, act.tolist())]
    neg_dep = -np.array([_FAR if d is None else d for d in deps], dtype=np.float64)
    keys = (plan.id_rank[act], neg_dep, k2, group, c.weight[act])  # the last is the first key
    order: list[int] = act[np.lexsort(keys)].tolist()
    return order
