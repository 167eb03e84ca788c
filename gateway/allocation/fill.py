"""Step 5: priority-weighted max-min fairness by progressive filling (each between its minimum and cap)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gateway.allocation.plan import EPS_A, TOL_A, FloatArray, IntArray, Plan


def fill(
    plan: Plan, grow: np.ndarray, lo: FloatArray, hi: FloatArray, weight: FloatArray, room: FloatArray
) -> tuple[FloatArray, IntArray]:
    """Line current per charger, and for each charger frozen by a full constraint, that constraint (-1: none)."""
    n, K = len(plan.ids), plan.n_constraints
    x = np.zeros(n)
    grow = grow.copy()
    frozen_by = np.full(n, -1, dtype=np.intp)
    usage_fixed = np.zeros(K)
    while grow.any():
        gmask = grow[plan.mem_c]
        g_c, g_k = plan.mem_c[gmask], plan.mem_k[gmask]
        t_hi_all = float(np.max(np.where(grow, hi / weight, 0.0)))

        # a constraint already full at t=0 (fixed loads alone; its members are paused) must not hold back
        # the others: it binds only its growing members, and it has none
        usage = _usage(g_c, g_k, weight, lo, hi, usage_fixed, K)
        limit = np.maximum(room, usage(0.0)) + EPS_A
        over = usage(t_hi_all) > limit
        if not over.any():
            x[grow] = hi[grow]
            break
        # usage only grows with the level (exactly, in floating point too): a constraint within its room at the
        # highest level is within it at every level below, so only the others are summed from here on
        # (numbered among themselves: the sums per constraint are the same, in the same order)
        keep = over[g_k]
        kk = np.flatnonzero(over)
        compact = np.zeros(K, dtype=np.intp)
        compact[kk] = np.arange(kk.size)
        usage = _usage(g_c[keep], compact[g_k[keep]], weight, lo, hi, usage_fixed[kk], kk.size)
        limit_o = limit[kk]
        t_lo, t_up = 0.0, t_hi_all
        wmax = float(np.max(weight[grow]))
        while (t_up - t_lo) * wmax > TOL_A:
            t_mid = 0.5 * (t_lo + t_up)
            if (usage(t_mid) <= limit_o).all():
                t_lo = t_mid
            else:
                t_up = t_mid
        sat = np.zeros(K, dtype=bool)
        sat[kk] = usage(t_up) > limit_o
        xt = np.clip(weight * t_lo, lo, hi)
        hit = np.zeros(n, dtype=bool)
        hit_k = np.full(n, -1, dtype=np.intp)
        sel = sat[g_k]
        hit[g_c[sel]] = True
        hit_k[g_c[sel][::-1]] = g_k[sel][::-1]  # the first (nearest circuit, lowest phase) wins
        newly = np.flatnonzero(hit & grow)
        if newly.size == 0:  # numerical corner: freeze everyone at the feasible level
            newly = np.flatnonzero(grow)
        x[newly], frozen_by[newly] = xt[newly], hit_k[newly]
        grow[newly] = False
        fmask = np.zeros(n, dtype=bool)
        fmask[newly] = True
        fm = fmask[plan.mem_c]
        usage_fixed = usage_fixed + np.bincount(plan.mem_k[fm], weights=x[plan.mem_c[fm]], minlength=K)
    return x, frozen_by


def _usage(
    g_c: IntArray, g_k: IntArray, weight: FloatArray, lo: FloatArray, hi: FloatArray, base: FloatArray, K: int
) -> Callable[[float], FloatArray]:
    """Each constraint's load at level t: the fixed part plus every membership's charger at its share."""
    w_g, lo_g, hi_g = weight[g_c], lo[g_c], hi[g_c]  # gathered once per round
    xt = np.empty(len(g_c))

    def usage(t: float) -> FloatArray:
        np.multiply(w_g, t, out=xt)
        np.maximum(xt, lo_g, out=xt)
        np.minimum(xt, hi_g, out=xt)  # np.clip, without its wrapper
        return base + np.bincount(g_k, weights=xt, minlength=K)

    return usage
