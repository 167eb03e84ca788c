"""Step 4: each active session gets its minimum or 0; when not all fit, the lowest priority pauses first
and equals take turns every rotation period."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from gateway.allocation.classify import Classes
from gateway.allocation.plan import EPS_A, FloatArray, Plan
from gateway.model import ChargerSnapshot

_FAR = 1e18


def pause(
    plan: Plan, c: Classes, room: FloatArray, chargers: Mapping[str, ChargerSnapshot], period_s: float, now: float
) -> dict[int, int]:
    """The sessions to pause, each with the constraint that made it pause."""
    K = plan.n_constraints
    mmask = c.is_active[plan.mem_c]
    a_c, a_k = plan.mem_c[mmask], plan.mem_k[mmask]
    lo = c.lo
    need = np.bincount(a_k, weights=lo[a_c], minlength=K)
    paused: dict[int, int] = {}
    if not (need > room + EPS_A).any():
        return paused
    members: dict[int, list[int]] = {}
    for c_i, k_i in zip(a_c.tolist(), a_k.tolist(), strict=True):
        members.setdefault(c_i, []).append(k_i)
    ps_all, rs_all, weight, lo_l = c.paused_since.tolist(), c.running_since.tolist(), c.weight.tolist(), lo.tolist()

    def order_key(i: int) -> tuple[float, int, float, float, str]:
        ps, rs = _opt(ps_all[i]), _opt(rs_all[i])
        if ps is not None and now - ps < period_s:
            group, k2 = 0, now - ps  # still waiting its turn: stays paused first
        elif ps is None and rs is not None:
            group, k2 = 1, -(now - rs)  # running: the longest running pauses first
        elif ps is None:
            group, k2 = 1, 0.0
        else:
            group, k2 = 2, now - ps  # waited a whole period: resumes, the longest wait first
        cs = chargers.get(plan.ids[i])
        dep = cs.session.departure_at if cs is not None and cs.session is not None else None
        return (weight[i], group, k2, -(dep if dep is not None else _FAR), plan.ids[i])

    # as Python floats from here (one session at a time); a need only falls, so the over-full constraints
    # only get fewer
    need_l, room_l = need.tolist(), (room + EPS_A).tolist()
    n_over = sum(1 for x, r in zip(need_l, room_l, strict=True) if x > r)
    for i in sorted(c.active.tolist(), key=order_key):
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


def _opt(x: float) -> float | None:
    return None if math.isnan(x) else x
