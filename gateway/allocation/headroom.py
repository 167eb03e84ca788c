"""Step 3: headroom per circuit and phase: limit - margin - non-EV load (and the budget caps on the service).

The non-EV load of a metered circuit is its measured current minus the EV draws reported beneath it. Reports
lag the meter (10-60 s), so an EV that lowered its draw after it reported (it followed a decrease, tapered,
paused) would make "measured - reported" too low. Three rules keep the estimate from making room that is
not there:

* a report is believed only up to what its charger may draw and, once it has followed, up to the lowest
  limit it has had since the report was measured (classify);
* while a charger beneath follows a decrease, the estimate may rise but not fall;
* when the measured current drops (below the highest reading since the estimate was last confirmed), the
  estimate does not fall until every draw it subtracts was measured after the drop.

A rise is believed at once. A phase the meter does not measure keeps the worst case.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.allocation.classify import Classes
from gateway.allocation.plan import FloatArray, Plan
from gateway.allocation.state import CircuitMemory, CircuitMemoryView, CircuitRows
from gateway.config import PHASES, Site
from gateway.model import BudgetCap, MeterReading

_DROP_A = 0.5  # the measured current falling more than this below its peak is a drop


@dataclass(frozen=True)
class Headroom:
    cap: FloatArray  # per constraint: limit - margin (a site cap may lower the root's)
    non_ev: FloatArray  # per constraint
    binding_name: tuple[str, ...]  # per constraint, for the reasons
    memory: Mapping[str, CircuitMemory]
    measured: Mapping[str, tuple[float, ...]]


def headroom(
    site: Site, plan: Plan, c: Classes, readings: Mapping[str, MeterReading],
    before: Mapping[str, CircuitMemory], caps: Sequence[BudgetCap], now: float,
) -> Headroom:
    P, K = plan.n_phases, plan.n_constraints
    ev_draw = c.draw.take(plan.mem_cp)  # each membership's draw
    ev_draw_k = np.bincount(plan.mem_k, weights=ev_draw, minlength=K).astype(np.float64, copy=False)
    # per constraint: how many chargers there are still following a decrease, and the oldest measurement time
    # among the draws subtracted there
    responding_k = plan.per_constraint(c.following.astype(np.float64))
    oldest_k = np.full(K, np.inf)
    sel = ev_draw > 0
    np.minimum.at(oldest_k, plan.mem_k[sel], c.draw_at[plan.mem_c[sel]])
    non_ev = plan.worst_non_ev.copy()
    rows = [(j, cid, r) for j, cid in plan.metered_circuits if (r := readings.get(cid)) is not None]
    memory: Mapping[str, CircuitMemory] = {}
    measured: dict[str, tuple[float, ...]] = {}
    if rows and P:
        ids = tuple(cid for _, cid, _ in rows)
        js = np.array([j for j, _, _ in rows], dtype=np.intp)
        cur = np.array([r.current_a[:P] for _, _, r in rows], dtype=np.float64).reshape(len(rows), P)
        seen = np.array([plan.measured_phases[cid] for cid in ids], dtype=bool).reshape(len(rows), P)
        est, peak, held = _estimates(cur, ev_draw_k.reshape(-1, P)[js], seen, plan.worst_non_ev.reshape(-1, P)[js],
                                     _prior(before, ids, P), responding_k.reshape(-1, P)[js],
                                     oldest_k.reshape(-1, P)[js], now)
        non_ev.reshape(-1, P)[js] = est
        memory = CircuitMemoryView(CircuitRows(ids, est, peak, held, cur))
        measured = dict(zip(ids, map(tuple, cur.tolist()), strict=True))
    elif rows:  # no phases: nothing to estimate
        memory = {cid: CircuitMemory((), (), (), ()) for _, cid, _ in rows}
        measured = {cid: () for _, cid, _ in rows}
    cap, names = _site_cap(site, plan, caps)
    return Headroom(cap, non_ev, names, memory, measured)


Prior = tuple[npt.NDArray[np.bool_], FloatArray, FloatArray, FloatArray, FloatArray]


def _prior(before: Mapping[str, CircuitMemory], ids: tuple[str, ...], P: int) -> Prior:
    """Per circuit in ``ids`` (rows) and phase, from the last memory: whether it has a usable one (a circuit
    without starts from this reading), and its non-EV estimate, peak, since when a drop waits (NaN: none)
    and last reading. The last tick's arrays themselves when they cover the same circuits."""
    if isinstance(before, CircuitMemoryView) and before.rows.ids == ids and before.rows.non_ev_a.shape[1] == P:
        r = before.rows
        return np.ones(len(ids), dtype=bool), r.non_ev_a, r.peak_a, r.since, r.measured_a
    M = len(ids)
    got = [before.get(cid) for cid in ids]
    ok = np.array([b is not None and len(b.non_ev_a) == P and len(b.peak_a) == P and len(b.measured_a) == P
                   for b in got], dtype=bool).reshape(M)
    mems = [b if b is not None and k else _BLANK[P] for b, k in zip(got, ok.tolist(), strict=True)]
    return (ok, np.array([b.non_ev_a for b in mems], dtype=np.float64).reshape(M, P),
            np.array([b.peak_a for b in mems], dtype=np.float64).reshape(M, P),
            np.array([[math.nan if h is None else h for h in b.held_since[:P]] for b in mems],
                     dtype=np.float64).reshape(M, P),
            np.array([b.measured_a for b in mems], dtype=np.float64).reshape(M, P))


def _estimates(
    cur: FloatArray, ev_draw: FloatArray, seen: npt.NDArray[np.bool_], worst: FloatArray, prior: Prior,
    responding: FloatArray, oldest: FloatArray, now: float,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per metered circuit (rows) and phase: the non-EV estimate, the peak reading and since when a drop waits
    (NaN: none), from the last memory (``prior``)."""
    M, P = cur.shape
    ok, prev, peak_before, since, last = prior
    raw = np.maximum(cur - ev_draw, 0.0)
    if ok.any():
        peak = np.maximum(peak_before, cur)
        waiting = ~np.isnan(since)
        # the current dropped (further): the reports subtracted must be newer than this
        since = np.where((cur < peak - _DROP_A) & (~waiting | (cur < last - _DROP_A)), now, since)
        # every draw subtracted was measured after the drop: confirmed
        confirmed = ~np.isnan(since) & (oldest > since)
        since, peak = np.where(confirmed, np.nan, since), np.where(confirmed, cur, peak)
        hold = ~np.isnan(since) | (responding > 0)
        est = np.where(hold & (raw < prev), prev, raw)
        fresh = ~ok[:, None]
        est, peak, since = np.where(fresh, raw, est), np.where(fresh, cur, peak), np.where(fresh, np.nan, since)
    else:
        est, peak, since = raw, cur.copy(), np.full((M, P), np.nan)
    # a phase the meter does not measure is unknown, not 0 A
    return np.where(seen, est, worst), np.where(seen, peak, cur), np.where(seen, since, np.nan)


_BLANK = {P: CircuitMemory((0.0,) * P, (0.0,) * P, (None,) * P, (0.0,) * P) for P in range(4)}


def _site_cap(site: Site, plan: Plan, caps: Sequence[BudgetCap]) -> tuple[FloatArray, tuple[str, ...]]:
    """The service constraint per phase: min(service limit, every budget cap) - margin, named after the binding
    cap ("<cap name>/L<n>"). A cap never raises anything; one that is not a number counts as 0 A (a data fault
    lowers limits)."""
    P = plan.n_phases
    cap = plan.cap.copy()
    if not caps:
        return cap, plan.constraint_names
    names = list(plan.constraint_names)
    root_j = plan.circuit_ids.index(site.root)
    root = site.circuits[site.root]
    for bc in caps:
        if not bc.limit_a:
            continue
        for ph in range(P):
            v = bc.limit_a[ph] if ph < len(bc.limit_a) else min(bc.limit_a)
            if math.isnan(v) or v < 0:
                v = 0.0
            room = min(root.limit_a, v) - root.margin_a
            if room < cap[root_j * P + ph]:
                cap[root_j * P + ph] = room
                names[root_j * P + ph] = f"{bc.name}/{PHASES[ph]}"
    return cap, tuple(names)
