"""Step 5: priority-weighted max-min fairness by progressive filling (each between its minimum and cap)."""

from __future__ import annotations

import numpy as np

from tests.alloc_reference.plan import EPS_A, TOL_A, FloatArray, IntArray, Plan


def fill(
    plan: Plan, grow: np.ndarray, lo: FloatArray, hi: FloatArray, weight: FloatArray, room: FloatArray
) -> tuple[FloatArray, dict[int, int]]:
    """Line current per charger, and for each charger frozen by a full constraint, that constraint."""
    n, K = len(plan.ids), plan.n_constraints
    x = np.zeros(n)
    grow = grow.copy()
    frozen_by: dict[int, int] = {}
    usage_fixed = np.zeros(K)
    while grow.any():
        gmask = grow[plan.mem_c]
        g_c, g_k = plan.mem_c[gmask], plan.mem_k[gmask]
        t_hi_all = float(np.max(np.where(grow, hi / weight, 0.0)))

        def usage(t: float, g_c: IntArray = g_c, g_k: IntArray = g_k, base: FloatArray = usage_fixed) -> FloatArray:
            xt = np.clip(weight * t, lo, hi)
            return base + np.bincount(g_k, weights=xt[g_c], minlength=K)

        # a constraint already full at t=0 (fixed loads alone; its members are paused) must not hold back
        # the others: it binds only its growing members, and it has none
        room_r = np.maximum(room, usage(0.0))
        if (usage(t_hi_all) <= room_r + EPS_A).all():
            x[grow] = hi[grow]
            break
        t_lo, t_up = 0.0, t_hi_all
        wmax = float(np.max(weight[grow]))
        while (t_up - t_lo) * wmax > TOL_A:
            t_mid = 0.5 * (t_lo + t_up)
            if (usage(t_mid) <= room_r + EPS_A).all():
                t_lo = t_mid
            else:
                t_up = t_mid
        sat = np.zeros(K, dtype=bool)
        sat[np.flatnonzero(usage(t_up) > room_r + EPS_A)] = True
        xt = np.clip(weight * t_lo, lo, hi)
        hit = np.zeros(n, dtype=bool)
        hit_k = np.full(n, -1, dtype=np.intp)
        sel = sat[g_k]
        hit[g_c[sel]] = True
        hit_k[g_c[sel][::-1]] = g_k[sel][::-1]  # the first (nearest circuit, lowest phase) wins
        newly = np.flatnonzero(hit & grow)
        if newly.size == 0:  # numerical corner: freeze everyone at the feasible level
            newly = np.flatnonzero(grow)
        for i in newly.tolist():
            x[i] = xt[i]
            if hit_k[i] >= 0:
                frozen_by[i] = int(hit_k[i])
        grow[newly] = False
        fmask = np.zeros(n, dtype=bool)
        fmask[newly] = True
        fm = fmask[plan.mem_c]
        usage_fixed = usage_fixed + np.bincount(plan.mem_k[fm], weights=x[plan.mem_c[fm]], minlength=K)
    return x, frozen_by
