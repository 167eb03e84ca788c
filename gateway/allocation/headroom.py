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

from gateway.allocation.classify import Classes
from gateway.allocation.plan import FloatArray, Plan
from gateway.allocation.state import CircuitMemory
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
    ev_draw = c.draw[plan.mem_c, plan.mem_p]  # each membership's draw
    ev_draw_k = np.bincount(plan.mem_k, weights=ev_draw, minlength=K)
    # per constraint: how many chargers there are still following a decrease, and the oldest measurement time
    # among the draws subtracted there
    responding_k = plan.per_constraint(c.following.astype(np.float64))
    oldest_k = np.full(K, np.inf)
    sel = ev_draw > 0
    np.minimum.at(oldest_k, plan.mem_k[sel], c.draw_at[plan.mem_c[sel]])
    non_ev = plan.worst_non_ev.copy()
    memory: dict[str, CircuitMemory] = {}
    measured: dict[str, tuple[float, ...]] = {}
    ev_l, worst_l, resp_l, oldest_l = ev_draw_k.tolist(), plan.worst_non_ev.tolist(), responding_k.tolist(), (
        oldest_k.tolist())
    for j, cid in plan.metered_circuits:
        reading = readings.get(cid)
        if reading is None:
            continue
        a, b = j * P, (j + 1) * P
        cur = [float(x) for x in reading.current_a[:P]]
        mem = _estimate(cur, ev_l[a:b], plan.measured_phases[cid].tolist(), worst_l[a:b], before.get(cid),
                        resp_l[a:b], oldest_l[a:b], now)
        memory[cid] = mem
        non_ev[a:b] = mem.non_ev_a
        measured[cid] = tuple(cur)
    cap, names = _site_cap(site, plan, caps)
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
