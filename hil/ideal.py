"""An upper bound for a scenario's energy: an ideal allocator with perfect knowledge, as a linear program.

The ideal allocator knows every arrival, departure, battery and base load in advance and may give any
current to any EV at any time (no ramp, no response delay, no 6 A minimum, no hysteresis), subject to:

* every circuit and phase: the EV line currents beneath it <= limit_a - margin_a - the base load in
  its subtree (the largest base load within each time step);
* every EV: its draw <= the charger's maximum and <= the EV's curve at its state of charge (flat up
  to ``taper_start_soc``, then linear down to ``end_fraction``: linear in the energy received so far,
  so the bound stays a linear program); its energy <= (soc_target - soc_start) x capacity.

Time is cut into steps of ``ideal_step_s`` scenario seconds (an EV present for part of a step charges
for that part). Line current -> power uses the same physics as the simulators (nominal voltage;
DC: efficiency and power factor). Solved with scipy's HiGHS. Dropping the minimum-current constraint
makes this a relaxation, i.e. an upper bound on what any allocator could deliver, up to the
discretisation of the time steps.

With a demand constraint (``demand=``, a :class:`hil.pv.DemandSpec`; :func:`ideal_demand` uses the scenario's
``[demand]``): the energy *imported* at the service (base load + EV power at the meters' physics, import only)
in every billing interval of ``interval_s`` x time scale scenario seconds, counted from scenario time 0 (the rig
aligns time 0 to the wall clock's interval boundary with ``align_start_s``), is at most target x interval; an
interval the base load alone pushes above the target gets a slack, penalised far above any EV energy, so the LP
stays solvable and reports the excess (``demand_excess_kwh``: 0 where the target is feasible).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gateway import electrical
from gateway.config import ChargerConfig, Site, site_from_dict
from hil.pv import METER_PF, DemandSpec, Tariff
from hil.scenario import Arrival, BaseLoad, Scenario

EXCESS_PENALTY = 10.0  # objective per Wh above a demand target (each Wh of EV energy is worth 1)


def _loaded_phases(cfg: ChargerConfig, a: Arrival) -> tuple[int, ...]:
    if cfg.kind == "ac" and cfg.phases == 3:
        return cfg.phase_map[: min(3, a.ac_phases)]
    return cfg.line_phases


def _ev_model(site: Site, cfg: ChargerConfig, a: Arrival) -> tuple[float, float, float]:
    """(W per line A, the charger's maximum in line A, the EV's maximum in line A before the taper)."""
    if cfg.kind == "dc":
        w_per_a = electrical.power_w(
            site.service, cfg.line_phases, 1.0, efficiency=cfg.efficiency, power_factor=cfg.power_factor
        )
        return w_per_a, cfg.max_limit / w_per_a, a.max_power_w / w_per_a
    if cfg.phases == 3:  # a three-phase (wye) charger: the EV loads one element, line-to-neutral, per phase it uses
        w_per_a = min(3, a.ac_phases) * electrical.load_voltage_v(site.service, cfg.line_phases)
    else:
        w_per_a = electrical.ac_power_w(site.service, cfg.line_phases, 1.0)
    return w_per_a, cfg.max_limit, a.max_current_a


def _base_at(bl: BaseLoad, t: float) -> np.ndarray:
    """One base-load profile at scenario time ``t`` (without its noise), per phase: the last point at or
    before ``t``, or on a ramp the line to the next one."""
    pts = bl.points
    cur = np.array(pts[0][1])
    for i, (ti, vi) in enumerate(pts):
        if t >= ti:
            cur = np.array(vi)
            if bl.ramp and i + 1 < len(pts) and t < pts[i + 1][0]:
                t2, v2 = pts[i + 1]
                cur = np.array(vi) + (np.array(v2) - np.array(vi)) * (t - ti) / (t2 - ti)
    return cur


def _base(scenario: Scenario, circuit: str, t0: float, t1: float, P: int) -> np.ndarray:
    """The largest base load of one circuit (its own profiles only) within [t0, t1), per phase."""
    out = np.zeros(P)
    for bl in scenario.base_loads:
        if bl.circuit != circuit:
            continue
        times = [t0, *[t for t, _ in bl.points if t0 < t < t1], max(t0, t1 - 1e-6)]
        best = np.zeros(P)
        for t in times:
            best = np.maximum(best, _base_at(bl, t) + 3 * bl.noise_a)
        out += best
    return out


def circuit_room(scenario: Scenario, site: Site, h: float, T: int,
                 service_caps: Sequence[tuple[float, float, float]] = ()) -> tuple[dict[str, int], np.ndarray]:
    """What the EVs may draw on every circuit, step of ``h`` s and phase: its limit (on the service, lowered by
    any ``service_caps`` overlapping the step) less its margin and the largest base load of its subtree in the
    step. Returns the circuits' row index and the array [circuit, step, phase] (A, at least 0)."""
    P = site.service.phases
    circuits = list(site.circuits)
    cidx = {c: i for i, c in enumerate(circuits)}
    own = {c: np.array([_base(scenario, c, t * h, (t + 1) * h, P) for t in range(T)]) for c in circuits}
    room = np.zeros((len(circuits), T, P))
    for c in circuits:
        sub = sum((own[d] for d in circuits if c in site.path_to_root[d]), np.zeros((T, P)))
        cc = site.circuits[c]
        lim = np.full((T, 1), cc.limit_a)
        if c == site.root:
            for t in range(T):
                for c0, c1, cap_a in service_caps:
                    if c0 < (t + 1) * h and c1 > t * h:
                        lim[t, 0] = min(lim[t, 0], cap_a)
        room[cidx[c]] = np.maximum(0.0, lim - cc.margin_a - sub)
    return cidx, room


def _base_service_w(scenario: Scenario, site: Site, t0: float, t1: float) -> float:
    """The mean base load of the whole site within [t0, t1) (noise averages out), W at the meters' physics."""
    v = electrical.line_to_neutral_v(site.service)
    total = 0.0
    for bl in scenario.base_loads:
        acc = sum(float(_base_at(bl, t0 + (t1 - t0) * (j + 0.5) / 8).sum()) / 8 for j in range(8))
        total += acc * v * METER_PF
    return total


def ideal_demand(scenario: Scenario, step_s: float | None = None, *, t0_epoch: float | None = None) -> dict[str, Any]:
    """The ideal allocator under the scenario's demand target (its [demand]); with ``t0_epoch`` (the wall clock
    of scenario time 0) and a [tariff], also the energy cost at the tariff."""
    if scenario.demand is None:
        raise ValueError(f"scenario {scenario.name!r} has no [demand] table")
    return ideal_energy(scenario, step_s, demand=scenario.demand, tariff=scenario.tariff, t0_epoch=t0_epoch)


def ideal_energy(scenario: Scenario, step_s: float | None = None, *, demand: DemandSpec | None = None,
                 tariff: Tariff | None = None, t0_epoch: float | None = None,
                 service_caps: Sequence[tuple[float, float, float]] = ()) -> dict[str, Any]:
    """Solve the LP; returns energy_kwh (total), per-session kWh, the step, status and solve time (with
    ``demand``: also the billing intervals' averages, the intervals above the target, the peak and the cost).
    ``service_caps``: (start s, end s, A per line) caps on the service (demand-response events), each lowering
    the service's limit in every step it overlaps."""
    from scipy.optimize import linprog
    from scipy.sparse import coo_matrix

    started = time.monotonic()
    site = site_from_dict(scenario.site)
    h = float(step_s or scenario.ideal_step_s)
    T = max(1, math.ceil(scenario.duration_s / h))
    cidx, room = circuit_room(scenario, site, h, T, service_caps)

    n_var = 0
    obj: list[float] = []
    ub: list[float] = []
    rows_a: list[int] = []
    cols_a: list[int] = []
    vals_a: list[float] = []
    rhs_ub: list[float] = []
    eq_r: list[int] = []
    eq_c: list[int] = []
    eq_v: list[float] = []
    n_eq = 0
    circuit_rows: dict[tuple[int, int, int], int] = {}
    sess_vars: list[list[tuple[int, float]]] = []  # per session: (x var, Wh per unit x)
    meter_wh: dict[int, list[tuple[int, float]]] = {}  # step -> (x var, Wh at the service meter per unit x)
    v_ln = electrical.line_to_neutral_v(site.service)

    def new_var(cost: float, upper: float) -> int:
        nonlocal n_var
        obj.append(cost)
        ub.append(upper)
        n_var += 1
        return n_var - 1

    def ub_row(entries: list[tuple[int, float]], b: float) -> int:
        r = len(rhs_ub)
        for col, v in entries:
            rows_a.append(r)
            cols_a.append(col)
            vals_a.append(v)
        rhs_ub.append(b)
        return r

    for a in scenario.arrivals:
        cfg = site.chargers[a.charger]
        w_per_a, ch_max, ev_max = _ev_model(site, cfg, a)
        req = a.requested_wh
        cap_wh = a.capacity_kwh * 1000.0
        dep = min(a.departure_s, scenario.duration_s)
        phases = _loaded_phases(cfg, a)
        path = [cidx[c] for c in site.path_to_root[cfg.circuit]]
        s0, e = a.taper_start_soc, a.end_fraction
        slope = (1.0 - e) / (1.0 - s0) if s0 < 1.0 else 0.0  # fraction lost per unit SoC above s0
        prev_e: int | None = None
        mine: list[tuple[int, float]] = []
        for t in range(int(a.at_s // h), min(T, math.ceil(dep / h))):
            frac = (min(dep, (t + 1) * h) - max(a.at_s, t * h)) / h
            if frac <= 0 or req <= 0:
                continue
            wh = w_per_a * frac * h / 3600.0
            x = new_var(-wh, min(ch_max, ev_max))
            mine.append((x, wh))
            meter_wh.setdefault(t, []).append((x, len(phases) * v_ln * METER_PF * frac * h / 3600.0))
            # energy received before this step
            if prev_e is not None and slope > 0:
                # x + ev_max * slope / cap * E <= ev_max * (1 - slope * (soc_start - s0))
                ub_row([(x, 1.0), (prev_e, ev_max * slope / cap_wh)], ev_max * (1.0 - slope * (a.soc_start - s0)))
            elif slope > 0 and a.soc_start > s0:
                ub_row([(x, 1.0)], ev_max * max(0.0, 1.0 - slope * (a.soc_start - s0)))
            e_new = new_var(0.0, req)
            eq_r.extend([n_eq, n_eq])
            eq_c.extend([e_new, x])
            eq_v.extend([1.0, -wh])
            if prev_e is not None:
                eq_r.append(n_eq)
                eq_c.append(prev_e)
                eq_v.append(-1.0)
            n_eq += 1
            prev_e = e_new
            for ci in path:
                for p in phases:
                    key = (ci, t, p)
                    r = circuit_rows.get(key)
                    if r is None:
                        r = circuit_rows[key] = ub_row([], float(room[ci, t, p]))
                    rows_a.append(r)
                    cols_a.append(x)
                    vals_a.append(1.0)
        sess_vars.append(mine)

    demand_rows: list[tuple[int, int]] = []  # per billing interval: (its import variables' first, slack var)
    imp_vars: list[int] = []
    base_wh: list[float] = []
    if demand is not None:
        length = demand.interval_s * scenario.time_scale  # scenario seconds per billing interval
        per_interval: dict[int, list[int]] = {}
        for t in range(T):
            bw = _base_service_w(scenario, site, t * h, (t + 1) * h) * h / 3600.0
            base_wh.append(bw)
            imp = new_var(0.0, math.inf)  # the step's imported energy: >= the net, >= 0
            imp_vars.append(imp)
            ub_row([*meter_wh.get(t, []), (imp, -1.0)], -bw)
            per_interval.setdefault(int((t * h + 1e-9) // length), []).append(imp)
        for _n, imps in sorted(per_interval.items()):
            slack = new_var(EXCESS_PENALTY, math.inf)
            ub_row([*((v, 1.0) for v in imps), (slack, -1.0)], demand.target_kw * 1000.0 * length / 3600.0)
            demand_rows.append((imps[0], slack))
    if n_var == 0:
        return {"energy_kwh": 0.0, "sessions_kwh": [], "step_s": h, "status": "no sessions", "solve_s": 0.0}
    A = coo_matrix((vals_a, (rows_a, cols_a)), shape=(len(rhs_ub), n_var)).tocsr()
    Aeq = coo_matrix((eq_v, (eq_r, eq_c)), shape=(n_eq, n_var)).tocsr() if n_eq else None
    res = linprog(np.array(obj), A_ub=A, b_ub=np.array(rhs_ub), A_eq=Aeq,
                  b_eq=np.zeros(n_eq) if n_eq else None, bounds=list(zip([0.0] * n_var, ub, strict=True)),
                  method="highs")
    if res.x is None:
        return {"energy_kwh": None, "sessions_kwh": [], "step_s": h, "status": str(res.message),
                "solve_s": round(time.monotonic() - started, 2)}
    xs = res.x
    per = [round(float(sum(xs[v] * wh for v, wh in mine)) / 1000.0, 3) for mine in sess_vars]
    energy_wh = float(sum(xs[v] * wh for mine in sess_vars for v, wh in mine))
    out: dict[str, Any] = {"energy_kwh": round(energy_wh / 1000.0, 2), "sessions_kwh": per, "step_s": h,
                           "status": "optimal" if res.status == 0 else str(res.message), "variables": n_var,
                           "solve_s": round(time.monotonic() - started, 2)}
    if demand is not None:
        out.update(_demand_result(demand, scenario, xs, imp_vars, demand_rows, h, base_wh, meter_wh, tariff,
                                  t0_epoch))
    return out


def _demand_result(demand: DemandSpec, scenario: Scenario, xs: np.ndarray, imp_vars: list[int],
                   rows: list[tuple[int, int]], h: float, base_wh: list[float],
                   meter_wh: dict[int, list[tuple[int, float]]], tariff: Tariff | None,
                   t0_epoch: float | None) -> dict[str, Any]:
    length = demand.interval_s * scenario.time_scale
    # the import of each step, recomputed from the EV currents (the LP's import variables may sit above it)
    imp = [max(0.0, float(base_wh[t] + sum(xs[v] * c for v, c in meter_wh.get(t, [])))) for t in range(len(imp_vars))]
    avgs: list[float] = []
    for n in range(len(rows)):
        wh = sum(imp[t] for t in range(len(imp)) if int((t * h + 1e-9) // length) == n)
        avgs.append(round(float(wh) / 1000.0 / (length / 3600.0), 3))
    excess = [round(float(xs[s]) / 1000.0, 4) for _, s in rows]
    full = [a for n, a in enumerate(avgs) if (n + 1) * length <= scenario.duration_s + 1e-6] or avgs
    res: dict[str, Any] = {
        "demand_target_kw": demand.target_kw, "demand_interval_s": demand.interval_s,
        "demand_intervals_kw": avgs, "demand_excess_kwh": excess,
        "demand_intervals_above_target": sum(1 for a in full if a > demand.target_kw + 1e-3),
        "demand_peak_kw": max(full, default=0.0),
        "import_kwh": round(sum(imp) / 1000.0, 3),
    }
    if tariff is not None and t0_epoch is not None:
        k = scenario.time_scale
        energy = sum(imp[t] / 1000.0 * tariff.price_at(t0_epoch + (t + 0.5) * h / k) for t in range(len(imp)))
        dem = res["demand_peak_kw"] * tariff.demand_charge_per_kw
        res["cost"] = {"energy_cost": round(energy, 3), "demand_charge": round(dem, 3),
                       "total_cost": round(energy + dem, 3)}
    return res
