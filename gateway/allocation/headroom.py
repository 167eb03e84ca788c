"""Step 3: headroom per circuit and phase: limit - margin - non-EV load (and the site cap).

The non-EV load of a metered circuit is its measured current minus the usable EV draws reported beneath it.
Reports lag the meter: an EV that lowered its draw after it last reported still counts with its old draw,
so a fall of "measured - reported" right after the measured current dropped may be an EV, not the building.
Such a fall is believed only once every draw it subtracts was measured after the drop; until then the
estimate holds. A rise is believed at once. A phase the meter does not measure keeps the worst case.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from gateway.allocation.classify import Classes
from gateway.allocation.plan import FloatArray, Plan
from gateway.allocation.state import CircuitMemory
from gateway.config import PHASES, Site
from gateway.model import MeterReading

_EPS_A = 1e-6
_DROP_A = 1.0  # a fall of the measured current by more than this (per tick) is a drop


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
    # per constraint: the oldest measurement time among the draws subtracted there
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
        seen = plan.measured_phases[cid].tolist()
        raw = [max(cur[p] - ev_draw_k[j * P + p], 0.0) if seen[p] else float(plan.worst_non_ev[j * P + p])
               for p in range(P)]
        mem = _estimate(raw, cur, before.get(cid), oldest_k[sl].tolist(), now)
        non_ev[sl] = mem.non_ev_a
        memory[cid], measured[cid] = mem, tuple(cur)
    cap, names = _site_cap(site, plan, site_cap_a)
    return Headroom(cap, non_ev, names, memory, measured)


def _estimate(
    raw: list[float], cur: list[float], before: CircuitMemory | None, oldest: list[float], now: float
) -> CircuitMemory:
    P = len(raw)
    if before is None or len(before.non_ev_a) != P:
        return CircuitMemory(tuple(raw), tuple(cur), (None,) * P)
    est: list[float] = []
    held: list[float | None] = []
    for p in range(P):
        prev, since = before.non_ev_a[p], before.held_since[p]
        dropped = cur[p] < before.measured_a[p] - _DROP_A
        if raw[p] >= prev - _EPS_A or (since is None and not dropped):
            est.append(raw[p])  # a rise, or a fall that no drop of the measured current could explain
            held.append(None)
            continue
        since = now if dropped else since
        if since is not None and oldest[p] > since:
            est.append(raw[p])  # every draw subtracted was measured after the drop: believed
            held.append(None)
        else:
            est.append(prev)
            held.append(since)
    return CircuitMemory(tuple(est), tuple(cur), tuple(held))


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
