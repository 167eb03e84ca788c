"""Step 4: each active session gets its minimum or 0; when not all fit, the lowest priority pauses first
and equals take turns every rotation period."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gateway.model import ChargerSnapshot
from tests.alloc_reference.classify import Classes
from tests.alloc_reference.plan import EPS_A, FloatArray, Plan

_FAR = 1e18


def pause(
    plan: Plan, c: Classes, room: FloatArray, chargers: Mapping[str, ChargerSnapshot], period_s: float, now: float
) -> dict[int, int]:
    """The sessions to pause, each with the constraint that made it pause."""
    K, n = plan.n_constraints, len(plan.ids)
    is_active = np.zeros(n, dtype=bool)
    is_active[np.array(c.active, dtype=np.intp)] = True
    mmask = is_active[plan.mem_c]
    a_c, a_k = plan.mem_c[mmask], plan.mem_k[mmask]
    lo = np.array(c.lo, dtype=np.float64)
    need = np.bincount(a_k, weights=lo[a_c], minlength=K)
    paused: dict[int, int] = {}
    if not (need > room + EPS_A).any():
        return paused
    members: dict[int, list[int]] = {}
    for c_i, k_i in zip(a_c.tolist(), a_k.tolist(), strict=True):
        members.setdefault(c_i, []).append(k_i)

    def order_key(i: int) -> tuple[float, int, float, float, str]:
        ps, rs = c.paused_since[i], c.running_since[i]
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
        return (c.weight[i], group, k2, -(dep if dep is not None else _FAR), plan.ids[i])

    for i in sorted(c.active, key=order_key):
        over = [k for k in members[i] if need[k] > room[k] + EPS_A]
        if not over:
            continue
        paused[i] = over[0]
        for k in members[i]:
            need[k] -= lo[i]
        if not (need > room + EPS_A).any():
            break
    return paused
