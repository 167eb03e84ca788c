"""A bridge from a HIL scenario to acnportal (Caltech's ACN simulator): the same sessions and limits through
acnportal's own simulator and scheduling algorithms (earliest deadline first, least laxity first).

* ``network_of(site, scenario)``: an acnportal ChargingNetwork for a gateway site: one EVSE per charger (a
  J1772 pilot: 0 or 6..max A in 1 A steps, acnportal's FiniteRatesEVSE), its voltage such that acnportal's
  power (voltage x pilot) is the EV's (a three-phase charger: 3 x V_LN per A of line current), and per circuit
  and loaded phase a current constraint (all angles 0, so the constraint is the plain sum the gateway
  enforces) at limit - margin - the subtree's highest base load over the run.
* ``events_of(...)``: a PluginEvent per arrival: acnportal's EV with a Linear2StageBattery (capacity, initial
  charge, the EV's maximum power, its taper start; acnportal's taper runs to 0 at full, ours to
  ``end_fraction``).
* ``run_acn(...)``: the simulation, scored like hil.planner_sim (complete at 99 % of the request, energy, cost at
  the site's tariff, the highest 15-minute average import with the base load).
* ``caltech_site()``: acnportal's Caltech ACN (54 line-to-line EVSEs at 208 V behind a 150 kVA transformer) as
  a gateway site, for running the gateway on a site no one here designed.

acnportal's adaptive (model-predictive) scheduler needs cvxpy, which is not installed here: it is skipped.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import numpy as np

from gateway import electrical
from gateway.config import Site, site_from_dict
from hil.planner_sim import DEMAND_INTERVAL_S, RunResult, SessionResult, _price_at, base_load_at_subtree, price_slots
from hil.scenario import Scenario


def _station_voltage(site: Site, cid: str) -> float:
    ch = site.chargers[cid]
    if ch.kind == "ac" and ch.phases == 3:
        return 3.0 * electrical.line_to_neutral_v(site.service)
    return electrical.watts_per_line_a(site.service, ch.line_phases)


def network_of(site: Site, scenario: Scenario) -> Any:
    from acnportal.acnsim.models.evse import FiniteRatesEVSE
    from acnportal.acnsim.network import ChargingNetwork, Current

    net = ChargingNetwork()
    for cid, ch in site.chargers.items():
        rates = [0.0, *[float(a) for a in range(math.ceil(ch.min_limit), int(ch.max_limit) + 1)]]
        net.register_evse(FiniteRatesEVSE(cid, rates), _station_voltage(site, cid), 0.0)
    P = site.service.phases
    times = sorted({0.0, *[t for bl in scenario.base_loads for t, _ in bl.points]})
    for c, cc in site.circuits.items():
        worst = np.max(np.array([base_load_at_subtree(site, scenario, c, t, P) for t in times]), axis=0)
        for p in range(P):
            loads = {cid: 1.0 for cid in site.chargers_under[c] if p in site.chargers[cid].line_phases}
            if loads:
                net.add_constraint(Current(loads), float(cc.limit_a - cc.margin_a - worst[p]), name=f"{c}/L{p + 1}")
    return net


def _curve_battery(capacity: float, init: float, max_kw: float, s0: float, end: float) -> Any:
    """An acnportal Battery with sitesim.ev's charging curve (flat to ``s0``, then linear down to ``end`` of the
    maximum at full), so that both simulators charge the same EV the same way (acnportal's Linear2StageBattery
    tapers to 0 at full, which would make the last per cent take hours)."""
    from acnportal.acnsim.models.battery import Battery

    class CurveBattery(Battery):  # type: ignore[misc]
        def charge(self, pilot: float, voltage: float, period: float) -> float:
            soc = self._current_charge / self._capacity
            frac = 1.0 if soc <= s0 or s0 >= 1.0 else 1.0 - (1.0 - end) * (min(soc, 1.0) - s0) / (1.0 - s0)
            rate_to_full = (self._capacity - self._current_charge) / (period / 60)
            power = max(0.0, min(pilot * voltage / 1000, self._max_power * frac, rate_to_full))
            self._current_charge += power * (period / 60)
            self._current_charging_power = power
            return float(power * 1000 / voltage)

    return CurveBattery(capacity, init, max_kw)


def session_ids(scenario: Scenario) -> list[str]:
    """acnportal's session ids: the station id where each station has one session. acnportal 0.3's
    apply_upper_bound_estimate looks the estimator's bounds (kept per session id) up by station id, so the
    max-rate estimator only works when the two are the same."""
    chargers = [a.charger for a in scenario.arrivals]
    if len(set(chargers)) == len(chargers):
        return chargers
    return [f"s{i:04d}-{c}" for i, c in enumerate(chargers)]


def events_of(site: Site, scenario: Scenario, period_s: float) -> Any:
    from acnportal.acnsim.events import EventQueue, PluginEvent
    from acnportal.acnsim.models.ev import EV

    evs = []
    ids = session_ids(scenario)
    for i, a in enumerate(scenario.arrivals):
        v = _station_voltage(site, a.charger)
        ch = site.chargers[a.charger]
        max_a = min(a.max_current_a, ch.max_limit)
        batt = _curve_battery(a.capacity_kwh, a.soc_start * a.capacity_kwh, max_a * v / 1000.0,
                              a.taper_start_soc, a.end_fraction)
        arrival = round(a.at_s / period_s)
        departure = round(min(a.departure_s, scenario.duration_s) / period_s)
        ev = EV(arrival, departure, a.requested_wh / 1000.0, a.charger, ids[i], batt)
        evs.append(PluginEvent(arrival, ev))
    return EventQueue(evs)


def algorithms() -> dict[str, Any]:
    from acnportal.algorithms import SortedSchedulingAlgo, earliest_deadline_first, least_laxity_first
    from acnportal.algorithms.upper_bound_estimator import SimpleRampdown

    # estimate_max_rate: acnportal's own estimator of each EV's maximum from its observed rates (else a 16 A
    # EV holds 32 A of every constraint; the gateway learns the same from the draw, "max:ev-draw")
    out: dict[str, Any] = {
        "acnportal EDF": lambda: SortedSchedulingAlgo(earliest_deadline_first, estimate_max_rate=True,
                                                      max_rate_estimator=SimpleRampdown()),
        "acnportal LLF": lambda: SortedSchedulingAlgo(least_laxity_first, estimate_max_rate=True,
                                                      max_rate_estimator=SimpleRampdown()),
    }
    try:  # the adaptive (MPC) scheduler solves a convex program through cvxpy
        import cvxpy  # noqa: F401
        from acnportal.algorithms import AdaptiveSchedulingAlgo

        out["acnportal adaptive"] = lambda: AdaptiveSchedulingAlgo([])  # objectives would go here
    except ImportError:
        pass
    return out


def adaptive_available() -> bool:
    try:
        import cvxpy  # noqa: F401
    except ImportError:
        return False
    return True


def run_acn(scenario: Scenario, algo: str, *, period_s: float = 60.0, start_wall: float = 0.0,
            site: Site | None = None, network: Any = None) -> RunResult:
    from acnportal.acnsim import Simulator
    from acnportal.acnsim.analysis import aggregate_power

    site = site or site_from_dict(scenario.site)
    net = network if network is not None else network_of(site, scenario)
    sched = algorithms()[algo]()
    start = datetime.fromtimestamp(start_wall, UTC)
    sim = Simulator(net, sched, events_of(site, scenario, period_s), start, period=period_s / 60.0, verbose=False)
    sim.run()
    res = RunResult(algo, [])
    by_id = dict(zip(session_ids(scenario), scenario.arrivals, strict=True))
    for sid, ev in sim.ev_history.items():
        a = by_id[sid]
        res.sessions.append(SessionResult(a.charger, a.at_s, a.departure_s, a.requested_wh,
                                          ev.energy_delivered * 1000.0))
    power_kw = aggregate_power(sim)
    slots = price_slots(site, start_wall, scenario.duration_s)
    P = site.service.phases
    v_ln = electrical.line_to_neutral_v(site.service)
    per = round(DEMAND_INTERVAL_S / period_s)
    total = []
    for k, kw in enumerate(power_kw):
        t = k * period_s
        res.cost += float(kw) * period_s / 3600.0 * _price_at(slots, t)
        base_kw = sum(base_load_at_subtree(site, scenario, site.service.id, t, P)) * v_ln / 1000.0
        total.append(float(kw) + base_kw)
    for k in range(0, len(total), per):
        chunk = total[k : k + per]
        if len(chunk) == per:
            res.peak_kw = max(res.peak_kw, sum(chunk) / per)
    return res


def caltech_site(transformer_kva: float = 150.0) -> dict[str, Any]:
    """acnportal's Caltech ACN as a gateway site (a raw config dict): 208Y/120 V service behind the 150 kVA
    transformer (its secondary's per-line current), the two 80 A pods and the 54 line-to-line EVSEs with the
    phase pairs acnportal gives them. The gateway's per-line sum is conservative against acnportal's phasor
    constraints (|I_ab - I_ca| <= |I_ab| + |I_ca|), so its schedules fit the Caltech network too."""
    from acnportal.acnsim.network.sites import caltech_acn

    net = caltech_acn(basic_evse=True, transformer_cap=transformer_kva)
    pairs = {30: "L1-L2", -90: "L2-L3", 150: "L3-L1"}
    cc_pod = {"CA-322", "CA-493", "CA-496", "CA-320", "CA-495", "CA-321", "CA-323", "CA-494"}
    av_pod = {"CA-324", "CA-325", "CA-326", "CA-327", "CA-489", "CA-490", "CA-491", "CA-492"}
    chargers = []
    for sid, angle in zip(net.station_ids, net._phase_angles, strict=True):
        circuit = "cc-pod" if sid in cc_pod else "av-pod" if sid in av_pod else "service"
        chargers.append({"id": sid, "kind": "ac", "ocpp_version": "1.6J", "circuit": circuit,
                         "phases": 1, "phase_rotation": pairs.get(round(float(angle)), "L1-L2"),
                         "min_current_a": 6.0, "max_current_a": 32.0, "failsafe_current_a": 0.0, "priority": "staff"})
    secondary_a = transformer_kva * 1000.0 / (math.sqrt(3) * 208.0)
    return {
        "site": {"id": "caltech-acn", "name": "Caltech ACN (acnportal's site model)"},
        "service": {"voltage_ll_v": 208, "phases": 3, "limit_a": round(secondary_a, 1), "margin_a": 0.0,
                    "worst_case_non_ev_a": 0.0},
        "control": {"tick_s": 10.0, "ramp_up_a_per_s": 2.0, "ev_response_s": 11.0},
        "priorities": {"staff": {"weight": 1.0}},
        "circuits": [{"id": "cc-pod", "kind": "panel", "parent": "service", "limit_a": 80.0},
                     {"id": "av-pod", "kind": "panel", "parent": "service", "limit_a": 80.0}],
        "meters": [{"id": "m-main", "circuit": "service", "host": "127.0.0.1"}],
        "chargers": chargers,
    }
