"""Step 5: priority-weighted max-min fairness by progressive filling (each between its minimum and cap)."""

from __future__ import annotations

import math
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
    level_hi = hi / weight  # the level at which each reaches its cap
    gmask = grow[plan.mem_c]
    g_c, g_k = plan.mem_c[gmask], plan.mem_k[gmask]  # the growing chargers' memberships, in order
    while grow.any():
        t_hi_all = float(level_hi[grow].max(initial=0.0))

        # a constraint already full at t=0 (fixed loads alone; its members are paused) must not hold back
        # the others: it binds only its growing members, and it has none
        usage = _usage(g_c, g_k, weight, lo, hi, usage_fixed, K)
        u0 = usage(0.0)
        limit = np.maximum(room, u0) + EPS_A
        u_hi = usage(t_hi_all)
        over = u_hi > limit
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
        o_c, o_k = g_c[keep], compact[g_k[keep]]
        usage = _usage(o_c, o_k, weight, lo, hi, usage_fixed[kk], kk.size)
        limit_o = limit[kk]
        wmax = float(weight[grow].max())
        crossing = _crossing(o_c, o_k, weight, lo, hi, usage_fixed[kk], limit_o)
        known = _exact_bracket(usage, crossing, limit_o, t_hi_all, u_hi[kk], TOL_A / wmax)
        # at 0 and t_hi_all (the regula falsi's start, needed only without the exact bracket)
        excess = (0.0, 0.0) if known is not None else (float(np.max(u0[kk] - limit_o)),
                                                        float(np.max(u_hi[kk] - limit_o)))
        t_lo, t_up = _bisect(usage, limit_o, t_hi_all, wmax, excess, known)
        # the members of a constraint full at t_up freeze at t_lo, named after their first such constraint
        sel = (usage(t_up) > limit_o)[o_k]
        hit_c = o_c[sel]
        if hit_c.size == 0:  # numerical corner: freeze everyone at the feasible level
            newly = np.flatnonzero(grow)
        else:
            hit = np.zeros(n, dtype=bool)
            hit[hit_c] = True
            frozen_by[hit_c[::-1]] = kk[o_k[sel]][::-1]  # the first (nearest circuit, lowest phase) wins
            newly = np.flatnonzero(hit)
        x[newly] = np.minimum(np.maximum(weight[newly] * t_lo, lo[newly]), hi[newly])  # np.clip's arithmetic
        grow[newly] = False
        done = ~grow[g_c]  # the memberships of those frozen now, in order
        usage_fixed = usage_fixed + np.bincount(g_k[done], weights=x[g_c[done]], minlength=K)
        g_c, g_k = g_c[~done], g_k[~done]
    return x, frozen_by


def _bisect(
    usage: Callable[[float], FloatArray], limit: FloatArray, t_hi: float, wmax: float, excess: tuple[float, float],
    known: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """The bisection of [0, t_hi] for the highest level at which every constraint is within its limit (0 is,
    t_hi is not: ``excess``, the largest usage - limit at both), until the bracket is narrower than
    TOL_A / wmax: its (t_lo, t_up).

    Usage grows with the level exactly (in floating point too), so a level known to fit decides every midpoint
    below it, and one known not to fit every midpoint above it. A few regula falsi steps on the largest excess
    first find such a pair close around the crossing (usage is piecewise linear: a handful of evaluations),
    unless ``known`` is such a pair already (``_exact_bracket``); the bisection then evaluates only the
    midpoints that fall between them. The result is that of the plain bisection, midpoint for midpoint."""
    fits, fails = known if known is not None else _bracket(usage, limit, t_hi, excess, TOL_A / wmax)
    t_lo, t_up = 0.0, t_hi
    while (t_up - t_lo) * wmax > TOL_A:
        t_mid = 0.5 * (t_lo + t_up)
        if t_mid <= fits or (t_mid < fails and bool((usage(t_mid) <= limit).all())):
            t_lo = t_mid
        else:
            t_up = t_mid
    return t_lo, t_up


_FALSI_STEPS = 8


def _bracket(
    usage: Callable[[float], FloatArray], limit: FloatArray, t_hi: float, excess: tuple[float, float], tol: float
) -> tuple[float, float]:
    """A level that fits and one above it that does not, evaluated, closer together than ``tol / 64`` where
    a few Illinois (regula falsi) steps on the largest excess get them; (0, t_hi) at worst."""
    a, b = 0.0, t_hi
    ga, gb = excess
    if not (ga <= 0.0 < gb):
        return 0.0, t_hi  # the premise does not hold: nothing is decided in advance
    side = 0
    for _ in range(_FALSI_STEPS):
        if b - a <= tol / 64:
            break
        t = b - gb * (b - a) / (gb - ga)
        if not a < t < b:
            t = 0.5 * (a + b)
        u = usage(t)
        g = float(np.max(u - limit))
        if bool((u <= limit).all()):
            a, ga = t, g
            if side == -1:
                gb *= 0.5  # Illinois: the end kept twice in a row counts half
            side = -1
        else:
            b, gb = t, g
            if side == 1:
                ga *= 0.5
            side = 1
    return a, b


_EXACT_TRIES = 4


def _exact_bracket(
    usage: Callable[[float], FloatArray], crossing: Callable[[int], float], limit: FloatArray, t_hi: float,
    u_hi: FloatArray, tol: float,
) -> tuple[float, float] | None:
    """A level that fits and one above it that does not, evaluated, ``tol / 128`` apart around the first
    crossing, found from the constraints' exact crossings: the crossing of the constraint furthest over at a
    level that does not fit lies below that level and bounds the first one from above; just below it, either
    everything fits (the pair is found) or another constraint is over and crosses earlier. None when a few
    such steps do not find the pair (floating point, a crossing at 0): the regula falsi finds one then."""
    delta = tol / 256
    t, u = t_hi, u_hi
    for _ in range(_EXACT_TRIES):
        tk = crossing(int(np.argmax(u - limit)))
        if not delta < tk < t:
            return None
        below = tk - delta
        u = usage(below)
        if bool((u <= limit).all()):
            above = tk + delta
            if above >= t_hi:
                return below, t_hi
            return (below, above) if bool((usage(above) > limit).any()) else None
        t = below
    return None


def _crossing(
    g_c: IntArray, g_k: IntArray, weight: FloatArray, lo: FloatArray, hi: FloatArray, base: FloatArray,
    limit: FloatArray,
) -> Callable[[int], float]:
    """For a constraint, the level above which its load exceeds its limit (computed from its members'
    breakpoints, as exactly as floating point allows: ``_exact_bracket`` checks it by evaluation); inf when
    it never does."""

    def crossing(k: int) -> float:
        members = g_c[g_k == k]
        if not members.size:
            return 0.0 if base[k] > limit[k] else math.inf
        w, top = weight[members], hi[members]
        bottom = np.minimum(lo[members], top)  # clipped as the usage clips: the cap wins
        times = np.concatenate((bottom / w, top / w))
        # ties in any order: the sums differ only in rounding, and _exact_bracket checks the crossing
        order = np.argsort(times)
        times = times[order]
        slope = np.concatenate((w, -w))[order].cumsum()  # after each breakpoint
        rise = np.empty(times.size)  # the load's rise from each breakpoint to the next, 0 before the first
        rise[0] = 0.0
        np.multiply(slope[:-1], times[1:] - times[:-1], out=rise[1:])
        value = rise.cumsum()
        value += float(base[k]) + float(bottom.sum())
        j = int(np.searchsorted(value, limit[k], side="right"))  # the first breakpoint past the limit
        if j == 0:
            return 0.0
        if j == len(value) or slope[j - 1] <= 0.0:
            return math.inf
        return float(times[j - 1] + (limit[k] - value[j - 1]) / slope[j - 1])

    return crossing


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
