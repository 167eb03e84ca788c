"""Departure-aware charging through the real rig (issue 15): ``python -m hil planner-compare <scenario>``.

One table on the same sessions and limits:

* ems-gateway without the planner and with it, each a full run of the rig (:mod:`hil.rig`: the real daemon,
  simulated OCPP 2.0.1 chargers whose ISO 15118 EVs tell their departure and energy in NotifyEVChargingNeeds,
  meters over Modbus, a mosquitto broker), on the scenario's compressed time base;
* acnportal's earliest deadline first and least laxity first through acnportal's own simulator
  (:mod:`hil.planner_acn`, given the true departures);
* the LP ideal with deadlines (:mod:`hil.planner_ideal`).

Figures per run: sessions complete at departure (99 % of the requested energy; count and %), energy delivered,
the EV energy's cost at the site's tariff on the scenario clock, the peak 15-minute demand (EV + base load,
scenario time), and for the planner run the daemon's own plan times (its ``plan_done`` log lines: median, max)
and the rig's safety figures (self-inflicted overload A*s from the scorecard).

Compressed time: the daemon runs on the wall clock, so the scenario's [gateway.*] overrides shorten its timers
by the time scale k (tick 0.2 s, the planner's slot and re-plan 900/k s, ramps x k; energies, as the EVs tell
them and the planner's assumed taper, are scenario energies / k). What cannot be compressed:
the site's tariff periods are local clock times (HH:MM) that the daemon reads off the wall clock, so under the
rig the planner sees the price of the hour the run happens in, flat (no ``plan:cheap-period`` deferral); the
cost column still prices every run's energy on the scenario clock.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from gateway import electrical
from hil import planner_table
from hil.planner_sim import COMPLETE_FRACTION, DEMAND_INTERVAL_S, _price_at, base_load_at_subtree, price_slots
from hil.rig.runner import Recording
from hil.scenario import GatewayOverrides, Scenario

COLS = ("run", "complete", "sessions", "complete_pct", "energy_kwh", "cost", "peak_kw", "plan_median_ms",
        "plan_max_ms", "overload_a_s")


def rig_variant(sc: Scenario, *, planner: bool) -> Scenario:
    """The scenario for the rig: every EV speaks ISO 15118, the daemon's timers shortened by the time scale, the
    planner on or off (the scenario's own [gateway.*] overrides win)."""
    k = sc.time_scale
    control = {"tick_s": 0.2, "ramp_up_a_per_s": min(1000.0, 2.0 * k), "rotation_period_s": 900.0 / k,
               "noncompliance_grace_s": 1.0, "ev_response_s": 0.25, **sc.gateway.control}
    ocpp = {"lease_s": 20, "renew_before_s": 6, **sc.gateway.ocpp}
    meters = {"poll_interval_s": 0.25, "timeout_s": 0.15, "stale_after_s": 1.5, **sc.gateway.meters}
    slot = 900.0 / k
    # energies on the rig are scenario energies / k (real currents, compressed time): so is the assumed taper
    pl = {"enabled": planner, "slot_s": slot, "replan_s": slot, "max_plan_age_s": 1200.0 / k,
          "min_dwell_s": 0.0, "assumed_taper_kwh": 15.0 / k, **sc.gateway.planner}
    pl["enabled"] = planner
    gw = GatewayOverrides(control=control, ocpp=ocpp, meters=meters, mqtt=sc.gateway.mqtt, budget=sc.gateway.budget,
                          planner=pl)
    arrivals = tuple(dataclasses.replace(a, iso15118=True) for a in sc.arrivals)
    return dataclasses.replace(sc, gateway=gw, arrivals=arrivals, charger_meter_interval_wall_s=1.0,
                               name=f"{sc.name}-{'planner' if planner else 'maxmin'}")


def rig_row(rec: Recording, name: str, *, start_wall: float) -> dict[str, Any]:
    """A run's figures from its recording (scenario time, scenario energies)."""
    from hil.scorecard import scorecard

    sc, site, k = rec.scenario, rec.site, rec.scenario.time_scale
    got = [(s.arrival.requested_wh, s.delivered_wh(k)) for s in rec.sessions]
    complete = sum(1 for req, d in got if d >= COMPLETE_FRACTION * req - 1e-6)
    n = len(got)
    # EV power on the scenario clock: the service's true current less the base load
    t_s = rec.times * k
    P = site.service.phases
    v_ln = electrical.line_to_neutral_v(site.service)
    root = rec.circuit_ids.index(site.root)
    total_w = rec.circuit_a[:, root, :].sum(axis=1) * v_ln if len(t_s) else np.zeros(0)
    base_w = np.array([sum(base_load_at_subtree(site, sc, site.root, float(t), P)) * v_ln for t in t_s])
    ev_w = np.maximum(total_w - base_w, 0.0)
    dt = np.diff(t_s, append=t_s[-1] + float(np.median(np.diff(t_s)))) if len(t_s) > 1 else np.zeros(len(t_s))
    slots = price_slots(site, start_wall, sc.duration_s)
    cost = float(sum(w * d / 3.6e6 * _price_at(slots, float(t)) for w, d, t in zip(ev_w, dt, t_s, strict=True)))
    peak = 0.0
    for lo in np.arange(0.0, sc.duration_s, DEMAND_INTERVAL_S):
        m = (t_s >= lo) & (t_s < lo + DEMAND_INTERVAL_S)
        if m.any() and float(dt[m].sum()) >= 0.9 * DEMAND_INTERVAL_S:
            peak = max(peak, float((total_w[m] * dt[m]).sum() / dt[m].sum()) / 1000.0)
    plans = [e for e in rec.gateway_logs if e.get("event") == "plan_done"]
    ms = [float(e["duration_ms"]) for e in plans if isinstance(e.get("duration_ms"), int | float)]
    card = scorecard(rec)
    at_risk = sum(1 for e in rec.gateway_logs if e.get("event") == "plan_done" and e.get("at_risk"))
    return {"run": name, "complete": complete, "sessions": n,
            "complete_pct": round(100.0 * complete / n, 1) if n else 0.0,
            "energy_kwh": round(sum(d for _, d in got) / 1000.0, 1), "cost": round(cost, 2), "peak_kw": round(peak, 1),
            "plan_median_ms": round(statistics.median(ms), 1) if ms else None,
            "plan_max_ms": round(max(ms), 1) if ms else None,
            "overload_a_s": card.get("self_inflicted_a_s"), "plans": len(plans),
            "plans_not_optimal": sum(1 for e in plans if e.get("status") not in ("optimal", "no-sessions")),
            "plans_with_sessions_at_risk": at_risk,
            "planner_failed": sum(1 for e in rec.gateway_logs if e.get("event") == "planner_failed"),
            "messages_lost": card.get("messages_lost"), "gateway_cpu_pct": rec.process.get("cpu_pct"),
            "wall_s": round(rec.wall_elapsed_s, 1)}


def compare_on_rig(sc: Scenario, out: Path, *, start_wall: float, acn: bool = True, ideal: bool = True,
                   maxmin: bool = True) -> list[dict[str, Any]]:
    from hil.planner_acn import run_acn
    from hil.planner_ideal import ideal_deadlines
    from hil.report import write_report
    from hil.rig import run_scenario
    from hil.scorecard import scorecard

    rows: list[dict[str, Any]] = []
    for planner, name in ((False, "ems-gateway (rig)"), (True, "ems-gateway + planner (rig)")):
        if not planner and not maxmin:
            continue
        v = rig_variant(sc, planner=planner)
        d = out / ("planner" if planner else "maxmin")
        rec = run_scenario(v, d)
        write_report(rec, scorecard(rec), d)
        rows.append(rig_row(rec, name, start_wall=start_wall))
        print(json.dumps(rows[-1]), flush=True)
    if acn:
        for algo in ("acnportal EDF", "acnportal LLF"):
            r = run_acn(sc, algo, start_wall=start_wall).row()
            rows.append({k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} | {"overload_a_s": None})
    if ideal:
        rows.append(planner_table.ideal_row(ideal_deadlines(sc, 900, start_wall), overload_a_s=None))
    return rows


def table(title: str, rows: list[dict[str, Any]]) -> str:
    return planner_table.table(
        title, rows, COLS,
        lambda r: (f"{r['run']}: {r['plans']} plans, {r['plans_not_optimal']} not optimal, "
                   f"{r['planner_failed']} failed; gateway CPU {r['gateway_cpu_pct']} %, {r['wall_s']} s wall"),
        lambda run: run.startswith("ems-gateway + planner"), "planner on the rig")
