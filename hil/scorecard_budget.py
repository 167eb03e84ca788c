"""Scorecard figures for the site budget (issue 14): the demand of every billing interval, intervals above the
target, the month's peak, the energy cost under the tariff, and for a solar scenario the share of EV energy that
came from the PV surplus and the export. Separate functions over a :class:`~hil.rig.runner.Recording`.

Power is what the simulated service meter measures (per line I x V_LN x ``hil.pv.METER_PF``, summed over the
lines; + import, - export), from the recorded true current of the service circuit. Billing intervals are aligned
to the wall clock (``Recording.t0_wall``), as meters bill them; the demand of an interval is its *imported*
energy divided by the interval's length (a partial interval at either end of a run is reported with
``partial: true`` and the seconds it covers, and is not counted in the intervals above the target nor in the
peak unless no interval is complete). Energies are scenario energies (wall x time scale).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sitesim.meter import LoadProfile

from gateway import electrical
from hil.pv import METER_PF, DemandSpec, Tariff
from hil.rig.runner import Recording

FULL = 0.98  # an interval covered this much is complete (sampling jitter at its ends)


def _dt(rec: Recording) -> np.ndarray:
    """Per sample, the wall seconds it stands for: up to the next sample (the sampler is late on a loaded
    machine, so a fixed sample period would undercount energy), the median period for the last one."""
    t = rec.times
    if len(t) < 2:
        return np.full(len(t), rec.scenario.sample_wall_s)
    return np.diff(t, append=t[-1] + float(np.median(np.diff(t))))


def service_power_w(rec: Recording) -> np.ndarray:
    """Per sample, the service meter's active power (W, + import)."""
    if not len(rec.times):
        return np.zeros(0)
    root = rec.circuit_ids.index(rec.site.root)
    v = electrical.line_to_neutral_v(rec.site.service)
    return np.asarray(rec.circuit_a[:, root, :].sum(axis=1) * v * METER_PF, dtype=float)


def demand_intervals(rec: Recording, spec: DemandSpec) -> dict[str, Any]:
    """Every billing interval's average demand (kW), the intervals above the target and the peak."""
    t, p, dt, k = rec.times, service_power_w(rec), _dt(rec), rec.scenario.time_scale
    epoch = rec.t0_wall + t
    idx = np.floor(epoch / spec.interval_s).astype(np.int64) if len(t) else np.zeros(0, dtype=np.int64)
    rows: list[dict[str, Any]] = []
    for n in np.unique(idx):
        sel = idx == n
        imp_kwh = float((np.maximum(p[sel], 0.0) * dt[sel]).sum() / 3.6e6)
        covered = float(dt[sel].sum())
        rows.append({
            "start_epoch_s": float(n * spec.interval_s),
            "start_wall_s": round(float(n * spec.interval_s - rec.t0_wall), 2),
            "covered_s": round(covered, 1), "partial": covered < FULL * spec.interval_s,
            "import_kwh": round(imp_kwh * k, 3),
            "average_kw": round(imp_kwh / (spec.interval_s / 3600.0), 3),
            "max_kw": round(float(p[sel].max()) / 1000.0, 3),
        })
    full = [r for r in rows if not r["partial"]]
    judged = full or rows
    return {
        "interval_s": spec.interval_s, "target_kw": spec.target_kw, "intervals": rows,
        "intervals_complete": len(full),
        "intervals_above_target": sum(1 for r in full if r["average_kw"] > spec.target_kw),
        "peak_kw": max((r["average_kw"] for r in judged), default=0.0),
        "peak_from_partial_intervals": not full,
        "max_power_kw": round(float(p.max()) / 1000.0, 3) if len(p) else 0.0,
    }


def energy_cost(rec: Recording, tariff: Tariff, peak_kw: float | None = None) -> dict[str, Any]:
    """Imported energy at the tariff's price when it was imported, minus the export credit, plus the demand
    charge on ``peak_kw`` (the month's peak interval average)."""
    t, p, dt, k = rec.times, service_power_w(rec), _dt(rec), rec.scenario.time_scale
    prices = np.array([tariff.price_at(rec.t0_wall + x) for x in t])
    imp = np.maximum(p, 0.0) * dt / 3.6e6 * k
    exp = np.maximum(-p, 0.0) * dt / 3.6e6 * k
    energy = float((imp * prices).sum())
    credit = float(exp.sum() * tariff.export_price_per_kwh)
    demand = (peak_kw or 0.0) * tariff.demand_charge_per_kw
    return {"import_kwh": round(float(imp.sum()), 3), "export_kwh": round(float(exp.sum()), 3),
            "energy_cost": round(energy, 3), "export_credit": round(credit, 3), "demand_charge": round(demand, 3),
            "total_cost": round(energy - credit + demand, 3)}


def _base_w(rec: Recording, t_s: np.ndarray, with_pv: bool) -> np.ndarray:
    """The scenario's base loads at the service (without their noise), W at the meters' physics."""
    sc, site = rec.scenario, rec.site
    v = electrical.line_to_neutral_v(site.service)
    pv_circuit_load = None
    if sc.pv is not None:
        pv_circuit_load = sc.base_loads[-1]  # the scenario parser appends the PV's negative load last
    out = np.zeros(len(t_s))
    for bl in sc.base_loads:
        if bl is pv_circuit_load and not with_pv:
            continue
        prof = LoadProfile(list(bl.points), ramp=bl.ramp, phases=site.service.phases)
        out += np.array([sum(prof(float(x))) for x in t_s]) * v * METER_PF
    return out


def solar_figures(rec: Recording) -> dict[str, Any] | None:
    """The share of EV energy that came from the PV surplus, the export, import and PV energy."""
    sc = rec.scenario
    if sc.pv is None or not len(rec.times):
        return None
    k, dt = sc.time_scale, _dt(rec)
    t_s = rec.times * k
    grid = service_power_w(rec)
    pv = np.array([sc.pv.kw(float(x)) * 1000.0 for x in t_s])
    ev = np.maximum(grid - _base_w(rec, t_s, with_pv=True), 0.0)  # what the chargers draw
    building = grid - ev + pv  # the non-EV load
    surplus = np.maximum(pv - building, 0.0)
    from_surplus = np.minimum(ev, surplus)
    kwh = dt / 3.6e6 * k  # per sample

    def e(x: np.ndarray) -> float:
        return float((x * kwh).sum())

    ev_kwh = e(ev)
    return {
        "pv_kwh": round(e(pv), 3), "ev_kwh": round(ev_kwh, 3),
        "ev_from_surplus_kwh": round(e(from_surplus), 3),
        "ev_surplus_share": round(e(from_surplus) / ev_kwh, 4) if ev_kwh > 0 else None,
        "surplus_kwh": round(e(surplus), 3),
        "export_kwh": round(e(np.maximum(-grid, 0.0)), 3),
        "import_kwh": round(e(np.maximum(grid, 0.0)), 3),
        "peak_export_kw": round(float(np.maximum(-grid, 0.0).max()) / 1000.0, 3),
    }


def budget_card(rec: Recording) -> dict[str, Any]:
    """The budget figures the scenario asks for (its [demand], [tariff], [pv]); {} when it asks for none."""
    sc = rec.scenario
    out: dict[str, Any] = {}
    peak = None
    if sc.demand is not None:
        out["demand"] = demand_intervals(rec, sc.demand)
        peak = out["demand"]["peak_kw"]
    if sc.tariff is not None:
        out["cost"] = energy_cost(rec, sc.tariff, peak)
    sol = solar_figures(rec)
    if sol is not None:
        out["solar"] = sol
    return out


def format_budget(card: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    d = card.get("demand")
    if d:
        avgs = ", ".join(f"{r['average_kw']:.2f}{'*' if r['partial'] else ''}" for r in d["intervals"])
        lines.append(f"  demand ({d['interval_s']:g} s intervals, target {d['target_kw']:g} kW): {avgs} kW "
                     f"(* partial); above target {d['intervals_above_target']} of {d['intervals_complete']}; "
                     f"peak {d['peak_kw']:.2f} kW")
    c = card.get("cost")
    if c:
        lines.append(f"  cost: {c['total_cost']:.2f} (energy {c['energy_cost']:.2f}, demand {c['demand_charge']:.2f}, "
                     f"export credit {c['export_credit']:.2f}); import {c['import_kwh']:.2f} kWh")
    s = card.get("solar")
    if s:
        share = s["ev_surplus_share"]
        lines.append(f"  solar: PV {s['pv_kwh']:.2f} kWh, EV {s['ev_kwh']:.2f} kWh of which "
                     + ("-" if share is None else f"{100 * share:.1f} %")
                     + f" from surplus; export {s['export_kwh']:.2f} kWh (peak {s['peak_export_kw']:.2f} kW), "
                     f"import {s['import_kwh']:.2f} kWh")
    return lines


def ideal_is_feasible(ideal: Mapping[str, Any]) -> bool:
    return bool(ideal.get("status") == "optimal" and not any(x > 1e-6 for x in ideal.get("demand_excess_kwh", [])))


__all__ = ["budget_card", "demand_intervals", "energy_cost", "format_budget", "ideal_is_feasible",
           "service_power_w", "solar_figures"]
