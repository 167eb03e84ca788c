"""The filling's level search (gateway/allocation/fill.py): the exact crossings and the bracket they give
are checked against plain evaluation, and the bisection started from them ends where the plain one does."""

from __future__ import annotations

import math
import sys

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import gateway.allocation  # noqa: F401  (gateway.allocation.fill is shadowed by the function it exports)
from gateway.allocation.plan import TOL_A

F = sys.modules["gateway.allocation.fill"]


@st.composite
def constraints(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                          np.ndarray]:
    """A few constraints over a few dozen chargers: memberships, weights, bounds, fixed load and limits (each
    constraint over its limit at the highest level, within it at 0)."""
    n = draw(st.integers(1, 40))
    K = draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    weight = rng.choice([0.5, 1.0, 2.0, 3.0], size=n)
    lo = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0, 16, n))
    hi = np.maximum(lo, rng.uniform(0, 48, n))
    hi = np.where(rng.random(n) < 0.1, lo, hi)  # some are pinned at their minimum
    lo = np.where(rng.random(n) < 0.05, hi + 1.0, lo)  # and a minimum above the cap: the cap wins
    members = [np.flatnonzero(rng.random(n) < 0.6) for _ in range(K)]
    g_c = np.concatenate([np.arange(n), *members]).astype(np.intp)  # the first constraint holds every charger
    g_k = np.concatenate([np.zeros(n), *(np.full(m.size, k) for k, m in enumerate(members, 1))]).astype(np.intp)
    K += 1
    base = rng.uniform(0, 20, K)
    at0 = base + np.bincount(g_k, weights=np.minimum(lo, hi)[g_c], minlength=K)
    top = base + np.bincount(g_k, weights=hi[g_c], minlength=K)
    limit = at0 + rng.uniform(0.0, 1.0, K) * (top - at0)
    return g_c, g_k, weight, lo, hi, base, limit


def _usage_at(g_c: np.ndarray, g_k: np.ndarray, weight: np.ndarray, lo: np.ndarray, hi: np.ndarray,
              base: np.ndarray, t: float) -> np.ndarray:
    x = np.minimum(np.maximum(weight * t, lo), hi)
    return base + np.bincount(g_k, weights=x[g_c], minlength=base.size)


@settings(max_examples=300, deadline=None)
@given(constraints())
def test_a_constraints_crossing_is_where_its_load_passes_its_limit(case: tuple[np.ndarray, ...]) -> None:
    g_c, g_k, weight, lo, hi, base, limit = case
    crossing = F._crossing(g_c, g_k, weight, lo, hi, base, limit)
    t_top = float(np.max(hi / weight)) * 1.01 + 1.0
    for k in range(base.size):
        tk = crossing(k)
        u_top = _usage_at(g_c, g_k, weight, lo, hi, base, t_top)[k]
        if u_top <= limit[k]:
            assert tk == math.inf  # it never passes its limit
            continue
        assert 0.0 <= tk < t_top
        eps = 1e-7 * max(1.0, tk)
        assert _usage_at(g_c, g_k, weight, lo, hi, base, max(tk - eps, 0.0))[k] <= limit[k] + 1e-9
        assert _usage_at(g_c, g_k, weight, lo, hi, base, tk + eps)[k] > limit[k]


@settings(max_examples=300, deadline=None)
@given(constraints())
def test_the_exact_bracket_fits_below_fails_above_and_the_bisection_ends_where_the_plain_one_does(
    case: tuple[np.ndarray, ...],
) -> None:
    g_c, g_k, weight, lo, hi, base, limit = case
    K = base.size
    usage = F._usage(g_c, g_k, weight, lo, hi, base, K)
    t_hi = float(np.max(hi / weight))
    u_hi = usage(t_hi)
    if not (u_hi > limit).any() or not (usage(0.0) <= limit).all():
        return  # the filling searches only between a level that fits and one that does not
    wmax = float(np.max(weight))
    known = F._exact_bracket(usage, F._crossing(g_c, g_k, weight, lo, hi, base, limit), limit, t_hi, u_hi,
                             TOL_A / wmax)
    excess = (float(np.max(usage(0.0) - limit)), float(np.max(u_hi - limit)))
    plain = F._bisect(usage, limit, t_hi, wmax, excess, (0.0, t_hi))
    assert F._bisect(usage, limit, t_hi, wmax, excess) == plain  # the regula falsi's bracket
    if known is None:
        return  # the filling falls back to the regula falsi (checked just above)
    fits, fails = known
    assert 0.0 < fits < fails <= t_hi
    assert (fails - fits) * wmax <= TOL_A / 64
    assert (usage(fits) <= limit).all() and (usage(fails) > limit).any()
    assert F._bisect(usage, limit, t_hi, wmax, excess, known) == plain
