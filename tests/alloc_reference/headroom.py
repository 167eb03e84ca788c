"""Step 3: headroom per circuit and phase: limit - margin - non-EV load (and the site cap).

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
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from gateway.config import PHASES, Site
from gateway.model import MeterReading
from tests.alloc_reference.classify import Classes
from tests.alloc_reference.plan import FloatArray, Plan
from tests.alloc_reference.state import CircuitMemory

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
    before: Mapping[str, CircuitMemory], site_cap_a: float | None, now: float,
) -> Headroom:
    P, K = plan.n_phases, plan.n_constraints
    n = len(plan.ids)
    draws = np.array([d if d is not None else [0.0] * P for d in c.draw], dtype=np.float64).reshape(n, P)
    ev_draw_k = np.bincount(plan.mem_k, weights=draws[plan.mem_c, plan.mem_p], minlength=K)
    # per constraint: how many chargers there are still following a decrease, and the oldest measurement time
    # among the draws subtracted there
    responding_k = plan.per_constraint(np.array(c.following, dtype=np.float64))
    oldest_k = np.full(K, np.inf)
    at = np.array(c.draw_at, dtype=np.float64)
    sel = draws[plan.mem_c, plan.mem_p] > 0
    np.minimum.at(oldest_k, plan.mem_k[sel], at[plan.mem_c[sel]])
    non_ev = plan.worst_non_ev.copy()
    memory: dict[str, CircuitMemory] = {}
    measured: dict[str, tuple[float, ...]] = {}
    for j, cid in enumerate(plan.circuit_ids):
        reading = readings.get(cid)
        if reading is None:
            continue
        sl = slice(j * P, (j + 1) * P)
        cur = [float(x) for x in reading.current_a[:P]]
        mem = _estimate(
            cur, ev_draw_k[sl].tolist(), plan.measured_phases[cid].tolist(), plan.worst_non_ev[sl].tolist(),
            before.get(cid), responding_k[sl].tolist(), oldest_k[sl].tolist(), now,
        )
        memory[cid] = mem
        non_ev[sl] = mem.non_ev_a
        measured[cid] = tuple(cur)
    cap, names = _site_cap(site, plan, site_cap_a)
    return Headroom(cap, non_ev, names, memory, measured)


def _estimate(
    cur: list[float], ev_draw: list[float], seen: list[bool], worst: list[float], before: CircuitMemory | None,
    responding: list[float], oldest: list[float], now: float,
) -> CircuitMemory:
    """The next memory: the non-EV estimate per phase, the peak reading and the pending drop."""
    P = len(cur)
    ok = before is not None and len(before.non_ev_a) == P and len(before.peak_a) == P and len(before.measured_a) == P
    est: list[float] = []
    peaks: list[float] = []
    held: list[float | None] = []
    for p in range(P):
        if not seen[p]:  # a phase the meter does not measure is unknown, not 0 A
            est.append(worst[p])
            peaks.append(cur[p])
            held.append(None)
            continue
        raw = max(cur[p] - ev_draw[p], 0.0)
        if not ok or before is None:
            est.append(raw)
            peaks.append(cur[p])
            held.append(None)
            continue
        prev, peak, since = before.non_ev_a[p], max(before.peak_a[p], cur[p]), before.held_since[p]
        if cur[p] < peak - _DROP_A and (since is None or cur[p] < before.measured_a[p] - _DROP_A):
            since = now  # the current dropped (further): the reports subtracted must be newer than this
        if since is not None and oldest[p] > since:
            since, peak = None, cur[p]  # every draw subtracted was measured after the drop: confirmed
        hold = since is not None or responding[p] > 0
        est.append(prev if hold and raw < prev else raw)
        peaks.append(peak)
        held.append(since)
    return CircuitMemory(tuple(est), tuple(peaks), tuple(held), tuple(cur))


def _site_cap(site: Site, plan: Plan, site_cap_a: float | None) -> tuple[FloatArray, tuple[str, ...]]:
    P = plan.n_phases
    cap = plan.cap.copy()
    names = list(plan.constraint_names)
    if site_cap_a is not None and math.isfinite(site_cap_a) and site_cap_a >= 0:
        root_j = plan.circuit_ids.index(site.root)
        root = site.circuits[site.root]
        room = min(root.limit_a, site_cap_a) - root.margin_a
        for ph in range(P):
            if room < cap[root_j * P + ph]:
                cap[root_j * P + ph] = room
                names[root_j * P + ph] = f"site-cap/{PHASES[ph]}"
    return cap, tuple(names)
