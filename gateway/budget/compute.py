"""The budget of one tick: every source's cap on the service, and the figures for telemetry (pure, no IO).

``budget(inputs, cfg, state, now_mono, now_wall) -> (Budget, BudgetState)``: the remote cap (held by the
service, given here), the demand window (`gateway.budget.demand`) and the active tariff period's cap
(`gateway.budget.tariff`). Each becomes a `BudgetCap` in A per line at the service; the allocator takes the
smallest of them and the service limit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from gateway import electrical
from gateway.budget import Budget, BudgetState, DemandFigures, Event, TariffFigures, TariffMemo
from gateway.budget.config import BudgetConfig, TariffConfig, zone
from gateway.budget.demand import Measure, step
from gateway.budget.remote import RemoteCap, budget_cap
from gateway.budget.tariff import active
from gateway.model import BudgetCap, ChargerSnapshot, MeterReading

if TYPE_CHECKING:
    from gateway.config import ServiceConfig, Site


@dataclass(frozen=True)
class BudgetInputs:
    service: ServiceConfig
    measure: Measure  # the service meter now
    remote: RemoteCap | None = None
    tariff: TariffConfig | None = None  # the schedule in force (the config's, or one received over MQTT)
    # this tick's readings and chargers, for the sources that need more than the service meter (solar)
    readings: Mapping[str, MeterReading | None] = field(default_factory=dict)
    chargers: Mapping[str, ChargerSnapshot] = field(default_factory=dict)


def budget(
    inputs: BudgetInputs, cfg: BudgetConfig, state: BudgetState, now_mono: float, now_wall: float
) -> tuple[Budget, BudgetState]:
    svc = inputs.service
    caps: list[BudgetCap] = []
    events: list[Event] = []
    if inputs.remote is not None:
        caps.append(budget_cap(inputs.remote, svc))
    demand_fig: DemandFigures | None = None
    demand_st = state.demand
    if cfg.demand is not None:
        demand_st, demand_fig, ev = step(cfg.demand, zone(cfg.timezone), svc, state.demand, inputs.measure,
                                         now_mono, now_wall)
        events.extend(ev)
        caps.append(BudgetCap("demand-window", (demand_fig.cap_a,) * svc.phases))
    tariff_fig: TariffFigures | None = None
    memo: TariffMemo | None = None
    if inputs.tariff is not None:
        tariff_fig, memo = _tariff(inputs.tariff, state.tariff, now_wall)
        if tariff_fig.cap_kw is not None and tariff_fig.period is not None:
            amps = min(electrical.service_line_current_a(svc, tariff_fig.cap_kw * 1000.0), svc.limit_a)
            caps.append(BudgetCap(f"tariff:{tariff_fig.period}", (amps,) * svc.phases))
    b = Budget(caps=tuple(caps), demand=demand_fig, tariff=tariff_fig, events=tuple(events))
    return b, BudgetState(demand=demand_st, tariff=memo)


def _tariff(t: TariffConfig, memo: TariffMemo | None, now_wall: float) -> tuple[TariffFigures, TariffMemo]:
    if memo is None or memo.source != t.source or now_wall >= memo.until or now_wall < memo.until - 9 * 86400:
        a = active(t, now_wall)
        idx = -1 if a.period is None else a.season.periods.index(a.period)
        memo = TariffMemo(t.source, a.season.name, idx, a.until)
    season = next((s for s in t.seasons if s.name == memo.season), t.seasons[0])
    p = season.periods[memo.index] if 0 <= memo.index < len(season.periods) else None
    fig = TariffFigures(
        season=season.name, period=None if p is None else p.name,
        price_per_kwh=None if p is None else p.price_per_kwh, cap_kw=None if p is None else p.cap_kw,
        until=memo.until, source=t.source,
    )
    return fig, memo


def measure(
    site: Site, readings: Mapping[str, MeterReading | None], chargers: Mapping[str, ChargerSnapshot], now: float,
    ev_power: EvPower | None = None,
) -> Measure:
    """The service meter's import now, its register, and the non-EV load (import - the EVs' reported draw);
    unknown when the reading is invalid or older than the meter's stale_after_s. ``ev_power``: the daemon's
    `EvPower`, kept from tick to tick (without it, `ev_power_w` reads every charger)."""
    svc = site.service
    mid = site.circuits[site.root].meter
    rd = readings.get(mid) if mid is not None else None
    if rd is None or not rd.valid or mid is None or now - rd.at > site.meters[mid].stale_after_s:
        return Measure(None, None, None)
    if rd.total_power_w is not None:
        p = rd.total_power_w
    elif rd.power_w is not None:
        p = sum(rd.power_w)
    else:
        # no power registers: each line's current to neutral at unity power factor, taken as import
        p = sum(electrical.ac_power_w(svc, (i,), a) for i, a in enumerate(rd.current_a[: svc.phases]))
    reg = rd.energy_import_wh
    if reg is not None and not math.isfinite(reg):
        reg = None
    ev_w = ev_power(chargers) if ev_power is not None else ev_power_w(site, chargers)
    return Measure(p, reg, max(p - ev_w, 0.0))


class EvFactor(NamedTuple):
    line_phases: tuple[int, ...]
    w_per_a: float  # W per A in each loaded line (unity pf, nominal voltage)
    input_per_w: float  # a reported power -> the power it takes at the service (1 / efficiency for DC)


def ev_factors(site: Site) -> dict[str, EvFactor]:
    """Per charger: how its reported draw turns into power at the service (through gateway.electrical)."""
    svc = site.service
    return {
        cid: EvFactor(ch.line_phases, electrical.ac_power_w(svc, ch.line_phases, 1.0),
                      1.0 / ch.efficiency if ch.kind == "dc" else 1.0)
        for cid, ch in site.chargers.items()
    }


def ev_power_w(
    site: Site, chargers: Mapping[str, ChargerSnapshot], factors: Mapping[str, EvFactor] | None = None
) -> float:
    """The EVs' draw at the service by their last reports (W): the mean line current over the lines a charger
    loads, times W per A of that wiring; a report in W alone at its input."""
    fs = factors if factors is not None else ev_factors(site)
    total = 0.0
    for cid, cs in chargers.items():
        f = fs.get(cid)
        if f is not None:
            total += charger_power_w(cs, f)
    return total


def charger_power_w(cs: ChargerSnapshot, f: EvFactor) -> float:
    """One charger's part of :func:`ev_power_w` (0 without a session or a report)."""
    if not cs.state.has_session:
        return 0.0
    d = cs.draw_a
    if d is not None:
        lines = [d[p] for p in f.line_phases if p < len(d)]
        if lines:
            return sum(lines) / len(lines) * f.w_per_a
    if cs.draw_w is not None:
        return cs.draw_w * f.input_per_w
    return 0.0


class EvPower:
    """:func:`ev_power_w` for a control loop: a charger whose snapshot is the very object of the last call
    (the daemon keeps a snapshot until something about it changes) is not read again. The same sum, in the
    same order."""

    def __init__(self, site: Site) -> None:
        self.factors = ev_factors(site)
        self._last: dict[str, tuple[ChargerSnapshot, float]] = {}

    def __call__(self, chargers: Mapping[str, ChargerSnapshot]) -> float:
        fs, last, total = self.factors, self._last, 0.0
        for cid, cs in chargers.items():
            kept = last.get(cid)
            if kept is not None and kept[0] is cs:
                total += kept[1]
                continue
            f = fs.get(cid)
            if f is None:
                continue
            w = charger_power_w(cs, f)
            last[cid] = (cs, w)
            total += w
        return total
