"""A discrete-time simulation of one night: the gateway's allocate() (with or without plan()) driving the
sitesim.ev EV model on a scenario's sessions. A pure harness, no daemon: the comparison run for issue 15.

Every ``tick_s`` the harness measures (EV draws per site phase, the base load, meters reading their sum),
builds the Snapshot, takes the latest plan's targets, allocates and sends each EV its limit (the EV follows
after its response delay). The planner runs every ``replan_s`` and on every arrival and departure, inline: in
simulated time it is never late (the daemon runs it in a worker thread, gateway.planner.runner). Needs are
known (``needs="known"``: the departure and energy, and the battery's curve), told as an AC EV tells them over
ISO 15118 (``"iso15118"``: departure, energy and its maximum, no curve: what the rig's EVs tell) or unknown.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from sitesim.ev import ChargingCurve, EvModel, EvSpec, Outlet

from gateway import electrical
from gateway.allocation import AllocatorState, allocate
from gateway.config import ChargerConfig, Site, site_from_dict
from gateway.model import ChargerSnapshot, ChargerState, ChargerTarget, MeterReading, Session, Snapshot
from gateway.planner import BudgetView, Forecast, Plan, PlannerConfig, PlannerState, PlanSession, PriceSlot, Taper, plan
from hil.scenario import Arrival, Scenario

COMPLETE_FRACTION = 0.99  # a session is complete at departure with 99 % of its requested energy
DEMAND_INTERVAL_S = 900.0

_STATES = {"charging": ChargerState.CHARGING, "suspended_ev": ChargerState.SUSPENDED_EV,
           "suspended_evse": ChargerState.SUSPENDED_EVSE, "ev_connected": ChargerState.EV_CONNECTED}


@dataclass(frozen=True)
class SessionResult:
    charger: str
    arrival_s: float
    departure_s: float
    requested_wh: float
    delivered_wh: float

    @property
    def complete(self) -> bool:
        return self.delivered_wh >= COMPLETE_FRACTION * self.requested_wh - 1e-6


@dataclass
class RunResult:
    name: str
    sessions: list[SessionResult]
    cost: float = 0.0
    peak_kw: float = 0.0  # the highest 15-minute average import (EV + base load)
    plan_s: list[float] = field(default_factory=list)
    plans_failed: int = 0
    violations: int = 0  # ticks where a circuit phase carried more than its limit (EV draws + base load)
    at_risk_events: int = 0

    @property
    def completed(self) -> int:
        return sum(s.complete for s in self.sessions)

    @property
    def energy_kwh(self) -> float:
        return sum(s.delivered_wh for s in self.sessions) / 1000.0

    def row(self) -> dict[str, object]:
        n = len(self.sessions)
        return {
            "run": self.name, "complete": self.completed, "sessions": n,
            "complete_pct": round(100.0 * self.completed / n, 1) if n else 0.0,
            "energy_kwh": round(self.energy_kwh, 1), "cost": round(self.cost, 2), "peak_kw": round(self.peak_kw, 1),
            "plan_median_ms": round(1000 * statistics.median(self.plan_s), 1) if self.plan_s else None,
            "plan_max_ms": round(1000 * max(self.plan_s), 1) if self.plan_s else None,
            "violations": self.violations,
        }


def outlet_of(site: Site, ch: ChargerConfig) -> Outlet:
    v_ln = electrical.load_voltage_v(site.service, ch.line_phases) if ch.phases == 1 else \
        electrical.line_to_neutral_v(site.service)
    if ch.kind == "dc":
        return Outlet(kind="dc", max_w=ch.max_limit, min_w=ch.min_limit)
    return Outlet(kind="ac", phases=ch.phases, max_a=ch.max_limit, min_a=ch.min_limit, voltage_v=v_ln,
                  ramp_up_per_s=10.0, ramp_down_per_s=30.0)


def ev_of(a: Arrival) -> EvSpec:
    return EvSpec(capacity_kwh=a.capacity_kwh, soc_start=a.soc_start, soc_target=a.soc_target,
                  max_ac_a=a.max_current_a, ac_phases=a.ac_phases, max_dc_w=a.max_power_w,
                  curve=ChargingCurve(a.taper_start_soc, a.end_fraction), response_delay_s=a.response_delay_s,
                  arrival_at=a.at_s, departure_at=a.departure_s, name=a.id_tag)


def base_load_at(scenario: Scenario, circuit: str, t: float, P: int) -> tuple[float, ...]:
    """The scenario's base load of one circuit (its own profiles) at t, without noise."""
    out = [0.0] * P
    for bl in scenario.base_loads:
        if bl.circuit != circuit:
            continue
        cur = bl.points[0][1]
        for i, (ti, vi) in enumerate(bl.points):
            if t >= ti:
                cur = vi
                if bl.ramp and i + 1 < len(bl.points) and t < bl.points[i + 1][0]:
                    t2, v2 = bl.points[i + 1]
                    cur = tuple(a + (b - a) * (t - ti) / (t2 - ti) for a, b in zip(vi, v2, strict=True))
        out = [o + c for o, c in zip(out, cur, strict=True)]
    return tuple(out)


def price_slots(site: Site, start_wall: float, duration_s: float) -> tuple[PriceSlot, ...]:
    """The site's tariff schedule on the scenario clock (t = wall - start_wall)."""
    tcfg = site.budget.tariff
    if tcfg is None:
        return ()
    from gateway.budget.tariff import schedule

    return tuple(PriceSlot(s.start - start_wall, s.end - start_wall, s.price_per_kwh, s.cap_kw)
                 for s in schedule(tcfg, start_wall, duration_s + 3600.0))


def _price_at(slots: tuple[PriceSlot, ...], t: float) -> float:
    for s in slots:
        if s.start <= t < s.end:
            return s.price_per_kwh or 0.0
    return 0.0


class _Live:
    def __init__(self, a: Arrival, model: EvModel, index: int) -> None:
        self.a, self.model, self.index = a, model, index


def simulate(
    scenario: Scenario, *, use_planner: bool, needs: Literal["known", "iso15118", "unknown"] = "known",
    tick_s: float = 10.0,
    replan_s: float = 900.0, start_wall: float = 0.0, planner_cfg: PlannerConfig | None = None,
    name: str | None = None, expect: tuple[float, float] | None = None,
) -> RunResult:
    """``expect``: (departure s, kWh) of the vehicle each free charger expects (a fleet class's default), or None."""
    site = site_from_dict(scenario.site)
    P = site.service.phases
    slots = price_slots(site, start_wall, scenario.duration_s)
    demand = site.budget.demand
    view = BudgetView(slots=slots, demand_target_kw=demand.target_kw if demand is not None else None)
    arrivals = sorted(scenario.arrivals, key=lambda a: a.at_s)
    result = RunResult(name or ("ems-gateway + planner" if use_planner else "ems-gateway"), [])
    live: dict[str, _Live] = {}
    done: set[str] = set()  # chargers whose vehicle came and left (the expected one is not coming back)
    nxt = 0
    state: AllocatorState | None = None
    pstate: PlannerState | None = None
    current: Plan | None = None
    last_plan = -math.inf
    v_ln = electrical.line_to_neutral_v(site.service)
    interval_wh, interval_start = 0.0, 0.0
    t = 0.0
    while t < scenario.duration_s:
        changed = False
        for cid in [c for c, lv in live.items() if lv.a.departure_s <= t]:
            lv = live.pop(cid)
            lv.model.step(lv.a.departure_s)
            result.sessions.append(SessionResult(cid, lv.a.at_s, lv.a.departure_s, lv.a.requested_wh,
                                                 lv.model.energy_wh))
            done.add(cid)
            changed = True
        while nxt < len(arrivals) and arrivals[nxt].at_s <= t:
            a = arrivals[nxt]
            live[a.charger] = _Live(a, EvModel(ev_of(a), outlet_of(site, site.chargers[a.charger]), t, limit=0.0), nxt)
            nxt += 1
            changed = True
        chargers, per_circuit = _measure(site, scenario, live, t, P)
        violations = _over_limit(site, per_circuit)
        result.violations += violations
        if use_planner and (changed or t - last_plan >= replan_s):
            sessions = [_plan_session(site, cid, lv, t, needs) for cid, lv in live.items()]
            if expect is not None and expect[0] > t:
                sessions += [PlanSession(cid, expect[1] * 1000.0, expect[0], expected=True)
                             for cid in site.chargers if cid not in live and cid not in done]
            fc = Forecast.flat({c: base_load_at_subtree(site, scenario, c, t, P) for c in site.circuits})
            t0 = time.perf_counter()
            p, pstate = plan(sessions, site, view, fc, pstate, t, planner_cfg)
            result.plan_s.append(time.perf_counter() - t0)
            result.at_risk_events += len(pstate.events)
            if p.ok:
                current = p
            else:
                result.plans_failed += 1
                current = None  # a failed plan: max-min fairness until the next one
            last_plan = t
        targets: Mapping[str, ChargerTarget] = {}
        if current is not None:
            targets = {cid: ChargerTarget(tp.target_a, tp.reason, tp.hold) for cid, tp in current.targets.items()
                       if cid in live}
        meters = {m.id: MeterReading(current_a=per_circuit[m.circuit], at=t) for m in site.meters.values()}
        snap = Snapshot(taken_at=t, meters=meters, chargers=chargers, targets=targets)
        alloc, state = allocate(snap, site, state, t)
        for cid, lv in live.items():
            lim = alloc.limit_of(cid)
            lv.model.set_limit(lim if lim is not None else 0.0, t)
        t_next = t + tick_s
        power_w = 0.0
        for lv in live.values():
            e0 = lv.model.energy_wh
            lv.model.step(t_next)
            de = lv.model.energy_wh - e0
            result.cost += de / 1000.0 * _price_at(slots, t)
            power_w += de * 3600.0 / tick_s
        base_w = sum(base_load_at(scenario, c, t, P)[p] for c in site.circuits for p in range(P)) * v_ln
        interval_wh += (power_w + base_w) * tick_s / 3600.0
        if t_next - interval_start >= DEMAND_INTERVAL_S - 1e-9:
            result.peak_kw = max(result.peak_kw, interval_wh * 3.6 / (t_next - interval_start))
            interval_wh, interval_start = 0.0, t_next
        t = t_next
    for cid, lv in live.items():
        result.sessions.append(SessionResult(cid, lv.a.at_s, lv.a.departure_s, lv.a.requested_wh, lv.model.energy_wh))
    return result


def base_load_at_subtree(site: Site, scenario: Scenario, circuit: str, t: float, P: int) -> tuple[float, ...]:
    out = [0.0] * P
    for d in site.circuits:
        if circuit in site.path_to_root[d]:
            out = [o + v for o, v in zip(out, base_load_at(scenario, d, t, P), strict=True)]
    return tuple(out)


def _site_phases(ch: ChargerConfig, n_used: int) -> tuple[int, ...]:
    if ch.kind == "ac" and ch.phases == 3:
        return ch.phase_map[:n_used]
    return ch.line_phases


def _measure(
    site: Site, scenario: Scenario, live: Mapping[str, _Live], t: float, P: int
) -> tuple[dict[str, ChargerSnapshot], dict[str, tuple[float, ...]]]:
    """Charger snapshots and each circuit's measured current (its subtree's base load + EV draws)."""
    per_circuit = {c: list(base_load_at_subtree(site, scenario, c, t, P)) for c in site.circuits}
    chargers: dict[str, ChargerSnapshot] = {}
    for cid, ch in site.chargers.items():
        lv = live.get(cid)
        if lv is None:
            chargers[cid] = ChargerSnapshot(id=cid, online=True, state=ChargerState.NO_EV, draw_a=(0.0,) * P, draw_at=t)
            continue
        m = lv.model
        draw = [0.0] * P
        line_a = m.level if ch.kind == "ac" else site.to_line_a(ch, m.level)
        for p in _site_phases(ch, m.phases_used if ch.kind == "ac" else len(ch.line_phases)):
            draw[p] = line_a if line_a > 0 else 0.0
        for c in site.path_to_root[ch.circuit]:
            per_circuit[c] = [x + d for x, d in zip(per_circuit[c], draw, strict=True)]
        chargers[cid] = ChargerSnapshot(
            id=cid, online=True, state=_STATES.get(m.state, ChargerState.CHARGING), draw_a=tuple(draw), draw_at=t,
            session=Session(started_at=lv.a.at_s, departure_at=lv.a.departure_s, energy_wh=m.energy_wh,
                            energy_at=t),  # the harness meters the session exactly, every tick
        )
    return chargers, {c: tuple(v) for c, v in per_circuit.items()}


def _over_limit(site: Site, per_circuit: Mapping[str, tuple[float, ...]]) -> int:
    return int(any(v > site.circuits[c].limit_a + 1e-6 for c, vals in per_circuit.items() for v in vals))


def _plan_session(site: Site, cid: str, lv: _Live, t: float, needs: str) -> PlanSession:
    a, m = lv.a, lv.model
    ch = site.chargers[cid]
    w = site.priorities[ch.priority].weight
    if needs == "unknown":
        return PlanSession(cid, None, None, weight=w)
    need = max(0.0, a.requested_wh - m.energy_wh)
    # "iso15118": what an AC EV tells (energy, departure, its maximum), not its battery's curve
    taper = Taper(a.capacity_kwh * 1000.0, m.soc, a.taper_start_soc, a.end_fraction) if needs == "known" else None
    return PlanSession(cid, need, a.departure_s, weight=w, ev_max_a=a.max_current_a if ch.kind == "ac" else None,
                       ac_phases=a.ac_phases, taper=taper, source="iso15118", delivered_wh=m.energy_wh)
