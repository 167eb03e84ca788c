"""Step 4: each active session gets its minimum or 0; when not all fit, the lowest priority pauses first
and equals take turns every rotation period."""

from __future__ import annotations

import numpy as np

from gateway.allocation.classify import Classes
from gateway.allocation.plan import EPS_A, FloatArray, Plan
from gateway.allocation.state import BoolArray


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
    is_over = need > room + EPS_A
    # a need only falls, so the over-full constraints only get fewer: a session that loads none of them now
    # never pauses, and the others are taken in order
    loads_over = np.zeros(len(plan.ids), dtype=bool)
    loads_over[a_c[is_over[a_k]]] = True
    order = _order(plan, c, period_s, now, loads_over)
    # as Python floats from here (one session at a time); a session none of whose constraints is still over
    # is passed at C speed (isdisjoint)
    need_l, room_l = need.tolist(), (room + EPS_A).tolist()
    over = set(np.flatnonzero(is_over).tolist())  # need_l[k] > room_l[k], the same floats
    # a constraint whose fixed loads alone overfill it stays over whatever pauses (its need falls to 0 at most)
    full = {k for k in over if room_l[k] < -_FULL_A}
    members, lo_l = plan.members, lo.tolist()
    for t, i in enumerate(order):
        if over <= full:  # only those are left: the rest pause at once (_paused_beneath)
            _paused_beneath(plan, full, order[t:], paused)
            break
        m = members[i]
        if over.isdisjoint(m):
            continue
        li, first = lo_l[i], -1
        for k in m:  # the first over (nearest circuit, lowest phase) names the pause
            if first < 0 and k in over:
                first = k
            need_k = need_l[k] = need_l[k] - li
            if not need_k > room_l[k]:
                over.discard(k)
        paused[i] = first
        if not over:
            break
    return paused


_FULL_A = 1e-6  # a room this far below 0 cannot be reached by a need falling to 0 (rounding stays far smaller)


def _paused_beneath(plan: Plan, full: set[int], rest: list[int], paused: dict[int, int]) -> None:
    """When only constraints overfilled by fixed loads are over (``full``: they stay over), each session left
    in ``rest`` pauses if it loads one, named after the first one among its memberships (the loop's choice:
    nothing else is over); into ``paused``, in order."""
    is_full = np.zeros(plan.n_constraints, dtype=bool)
    is_full[list(full)] = True
    at = np.flatnonzero(is_full[plan.mem_k])  # memberships in a full constraint, in charger order
    if not at.size:
        return  # no charger loads one: nothing else pauses
    ends = np.append(plan.mem_start[1:], len(plan.mem_k))
    j = np.minimum(np.searchsorted(at, plan.mem_start), at.size - 1)
    first = np.where((at[j] >= plan.mem_start) & (at[j] < ends), plan.mem_k[at[j]], -1)
    rest_a = np.array(rest, dtype=np.intp)
    hit = rest_a[first[rest_a] >= 0]
    paused.update(zip(hit.tolist(), first[hit].tolist(), strict=True))


def _order(plan: Plan, c: Classes, period_s: float, now: float, among: BoolArray) -> list[int]:
    """The active sessions ``among`` these in the order they pause: the lowest weight first; then those still
    waiting their turn (the latest paused first), those running (the longest running first), those that waited
    a whole period (the longest wait last: it resumes first); then the latest departure first, then by id."""
    act = plan.by_id[among[plan.by_id]]  # by id: the last key, as a stable sort keeps it among equals
    ps, rs = c.paused_since[act], c.running_since[act]
    has_ps = ~np.isnan(ps)
    since_ps = now - ps
    group = np.where(has_ps, np.where(since_ps < period_s, 0, 2), 1)
    k2 = np.where(has_ps, since_ps, np.where(np.isnan(rs), 0.0, -(now - rs)))
    keys = [k for k in (-c.inp.departure_at[act], k2, group, c.weight[act])  # the last is the first key
            if k.size and not (k == k[0]).all()]  # a key equal for all orders nothing (often: departures, weights)
    order: list[int] = (act[np.lexsort(keys)] if keys else act).tolist()
    return order
