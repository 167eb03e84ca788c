"""The LP ideal with deadlines (issue 15): hil.ideal's relaxation (perfect knowledge of every arrival,
departure, battery and base load; no ramp, no response delay, no 6 A floor) with each session's energy due by
its departure, as many sessions complete as possible.

Kept apart from hil.ideal.ideal_energy (which maximises energy; the solar branch extends it with a demand
constraint). Per session: its current in each step of ``step_s`` while it is plugged in (its share of a step
it is present for part of), at most the charger's and the EV's maximum and the EV's taper (linear in the
energy received, as in hil.ideal), its energy at most its request; a shortfall per session, weighted by the
inverse of its request (a Wh that completes a small session counts more: as many complete as possible), then
the energy cost at the site's tariff, then sooner. Solved with scipy's HiGHS; optionally (``milp=True``) as a
MILP that counts completions exactly (a binary per session), with a time limit.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from gateway.config import site_from_dict
from hil.ideal import _ev_model, _loaded_phases, circuit_room
from hil.planner_sim import COMPLETE_FRACTION, _price_at, price_slots
from hil.scenario import Scenario


def ideal_deadlines(scenario: Scenario, step_s: float | None = None, start_wall: float = 0.0,
                    milp: bool = False, time_limit_s: float = 60.0) -> dict[str, Any]:
    from scipy.optimize import Bounds, LinearConstraint, linprog
    from scipy.optimize import milp as milp_solve
    from scipy.sparse import coo_matrix

    started = time.monotonic()
    site = site_from_dict(scenario.site)
    h = float(step_s or scenario.ideal_step_s)
    T = max(1, math.ceil(scenario.duration_s / h))
    cidx, room = circuit_room(scenario, site, h, T)
    slots = price_slots(site, start_wall, scenario.duration_s)
    price = np.array([_price_at(slots, (t + 0.5) * h) for t in range(T)])
    pmax = float(np.max(np.abs(price))) if T else 0.0
    c: list[float] = []
    ub: list[float] = []
    integ: list[int] = []
    rr: list[int] = []
    cc_: list[int] = []
    vv: list[float] = []
    lo_b: list[float] = []
    hi_b: list[float] = []

    def var(cost: float, upper: float, integer: bool = False) -> int:
        c.append(cost)
        ub.append(upper)
        integ.append(1 if integer else 0)
        return len(c) - 1

    def row(entries: list[tuple[int, float]], lo: float, hi: float) -> int:
        r = len(lo_b)
        for col, v in entries:
            rr.append(r)
            cc_.append(col)
            vv.append(v)
        lo_b.append(lo)
        hi_b.append(hi)
        return r

    circuit_rows: dict[tuple[int, int, int], list[tuple[int, float]]] = {}
    sess: list[list[tuple[int, float]]] = []
    reqs = [a.requested_wh for a in scenario.arrivals]
    ref = max(reqs) if reqs else 1.0
    for a in scenario.arrivals:
        cfg = site.chargers[a.charger]
        w_per_a, ch_max, ev_max = _ev_model(site, cfg, a)
        req = a.requested_wh
        cap_wh = a.capacity_kwh * 1000.0
        dep = min(a.departure_s, scenario.duration_s)
        phases = _loaded_phases(cfg, a)
        path = [cidx[x] for x in site.path_to_root[cfg.circuit]]
        s0, e = a.taper_start_soc, a.end_fraction
        slope = (1.0 - e) / (1.0 - s0) if s0 < 1.0 else 0.0
        mine: list[tuple[int, float]] = []
        cum_prev: int | None = None
        for t in range(int(a.at_s // h), min(T, math.ceil(dep / h))):
            frac = (min(dep, (t + 1) * h) - max(a.at_s, t * h)) / h
            if frac <= 0 or req <= 0:
                continue
            wh = w_per_a * frac * h / 3600.0
            x = var(wh * (price[t] / 1000.0 + 1e-7 * t / T), min(ch_max, ev_max))
            mine.append((x, wh))
            if slope > 0:
                b = ev_max * (1.0 - slope * (a.soc_start - s0))
                if cum_prev is not None:
                    row([(x, 1.0), (cum_prev, ev_max * slope / cap_wh)], -math.inf, b)
                elif a.soc_start > s0:
                    row([(x, 1.0)], -math.inf, max(b, 0.0))
                cum = var(0.0, math.inf)
                row([(cum, 1.0), (x, -wh)] + ([(cum_prev, -1.0)] if cum_prev is not None else []), 0.0, 0.0)
                cum_prev = cum
            for ci in path:
                for p in phases:
                    circuit_rows.setdefault((ci, t, p), []).append((x, 1.0))
        if mine:
            short = var(0.1 * (pmax + 1.0) * ref / max(req, 1.0), req)
            row([*mine, (short, 1.0)], req, math.inf)
            row(mine, -math.inf, req)
            if milp:  # done_s = 1 only if the session gets COMPLETE_FRACTION of its request
                done = var(-1000.0 * (pmax + 1.0) * ref / 1000.0, 1.0, integer=True)
                row([*mine, (done, -COMPLETE_FRACTION * req)], 0.0, math.inf)
        sess.append(mine)
    for (j, t, p), entries in circuit_rows.items():
        row(entries, -math.inf, float(room[j, t, p]))
    if not c:
        return {"complete": 0, "sessions": len(scenario.arrivals), "energy_kwh": 0.0, "status": "no sessions"}
    A = coo_matrix((vv, (rr, cc_)), shape=(len(lo_b), len(c))).tocsr()
    lo_a, hi_a = np.array(lo_b), np.array(hi_b)
    if milp:
        res = milp_solve(np.array(c), constraints=LinearConstraint(A, lo_a, hi_a), integrality=np.array(integ),
                         bounds=Bounds(np.zeros(len(c)), np.array(ub)), options={"time_limit": time_limit_s})
    else:
        # linprog takes A_ub x <= b_ub: every row as up to two inequalities
        up = np.isfinite(hi_a)
        dn = np.isfinite(lo_a)
        from scipy.sparse import vstack

        res = linprog(np.array(c), A_ub=vstack([A[up], -A[dn]]).tocsr(), b_ub=np.concatenate([hi_a[up], -lo_a[dn]]),
                      bounds=np.column_stack([np.zeros(len(ub)), np.array(ub)]), method="highs",
                      options={"time_limit": time_limit_s})
    if res.x is None:
        return {"complete": None, "sessions": len(scenario.arrivals), "status": str(res.message)}
    xs = res.x
    per = [float(sum(xs[v] * wh for v, wh in mine)) for mine in sess]
    complete = sum(d >= COMPLETE_FRACTION * r - 1e-6 for d, r in zip(per, reqs, strict=True))
    cost = sum(float(xs[v] * wh) / 1000.0 * price[_slot(v, mine, a.at_s, h)]
               for mine, a in zip(sess, scenario.arrivals, strict=True)
               for v, wh in mine)
    return {"complete": complete, "sessions": len(scenario.arrivals), "energy_kwh": round(sum(per) / 1000.0, 1),
            "cost": round(cost, 2), "status": "optimal" if res.status == 0 else str(res.message),
            "solve_s": round(time.monotonic() - started, 2), "sessions_wh": per}


def _slot(v: int, mine: list[tuple[int, float]], at_s: float, h: float) -> int:
    k = [x for x, _ in mine].index(v)
    return int(at_s // h) + k
