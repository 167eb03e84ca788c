"""Solar surplus: per charger a cap so that "surplus" chargers charge only from what the site exports.

Pure and frozen: :func:`surplus_caps` takes the grid power at the service meter, the solar-mode chargers (their
minimum, maximum, weight and draw) and the previous :class:`SolarState`, and returns a :class:`Surplus`: one
:class:`~gateway.model.ChargerCap` per solar-mode charger (the allocator lowers the charger's upper bound to it),
the next state and the telemetry figures. No IO, no clock (``now`` is passed in).

The surplus is the export at the service meter plus what the solar-mode chargers draw themselves::

    surplus_w = -grid_w + sum(draw of each solar-mode charger)      (grid_w: + import, - export; all phases)

(a charger's draw is its previous cap, what it may draw: the EVs' reports lag them by 10-60 s, and one from
before a resume or a raise would make the surplus look smaller than it is and pause the charger again at once;
a new session's draw is its report). The EVs follow a new cap only 5-11 s later, so the estimate runs ahead of
them (high by what an EV has not taken yet, low while one still follows a decrease); a loop that handed out the
whole estimate every tick would overshoot and oscillate. The surplus is therefore smoothed: it moves towards each
tick's estimate by (time since the last tick) / ``smoothing_s`` (default 20 s, a few EV response times), and the
smoothed surplus is what is shared out each tick:

1. every "surplus+min" charger with a session gets its minimum (6 A per active connector for AC), surplus or not;
2. "surplus" chargers get their minimum in turn (the ones already charging first, then by priority weight, then
   id) while the surplus left covers it; the others are paused (cap 0: never between 0 and the minimum);
3. what is left is shared among the chargers that got their minimum, by priority weight, up to their maximum.

Hysteresis, so that clouds do not toggle sessions every tick: a charger that charges keeps its minimum as long as
the surplus covers it, and is paused when it does not, at once (``pause_after_s`` = 0, the default: a "surplus"
charger does not take from the grid) or once that has lasted ``pause_after_s`` (meanwhile it keeps its minimum,
``solar:pausing``, importing the difference: a short cloud does not end the charge); a charger the surplus paused
resumes only once its minimum plus ``resume_margin_w`` has been there for ``resume_after_s`` without a break. A
new session starts at once if its minimum is there. Increases of the cap are then ramped by the allocator's ramp
rate, decreases pass at once.

Export limit. The gateway cannot curtail PV; it can only add load, and the inverter's own export control keeps
the limit. What the gateway must not do is *cause* export above the limit: lowering a charger to the surplus
never raises the export (it only happens while the site imports), but pausing one at the 6 A floor hands its
draw back to the grid. With ``export_limit_w`` set, a "surplus" charger is therefore not paused while the surplus
left for it exceeds the limit, and a paused one starts at once when it does (at its minimum, importing the
difference between the floor and the surplus: reason ``solar:export-limit``).

No grid reading (the service meter invalid, stale or missing): "surplus" chargers are paused, "surplus+min" ones
get their minimum (a data fault lowers limits, never raises them).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import NamedTuple

from gateway import electrical
from gateway.budget import Budget
from gateway.budget.solar_config import SOLAR_MODES, SolarConfig, SolarFigures
from gateway.config import ChargerConfig, Site
from gateway.model import ChargerCap, ChargerSnapshot, ChargerState, MeterReading

EPS_W = 1e-6
REPORT_MAX_AGE_S = 120.0  # a charger's draw report older than this is not used (as in the allocator)
SESSION_STATES = frozenset({ChargerState.CHARGING, ChargerState.EV_CONNECTED, ChargerState.SUSPENDED_EV,
                            ChargerState.SUSPENDED_EVSE})


class SolarCharger(NamedTuple):
    id: str
    mode: str  # "surplus" | "surplus+min"
    weight: float  # its priority class's weight
    w_per_a: float  # W at the service per A of line current in each loaded line (nominal voltage)
    min_a: float  # line A of its minimum (per active connector, summed)
    max_a: float  # line A of its maximum
    active: bool  # it has a session
    draw_a: float | None = None  # measured line current per loaded line (None: no fresh report)


class SolarInputs(NamedTuple):
    grid_w: float | None  # active power at the service meter, + import / - export; None: no valid reading
    pv_w: float | None  # what the PV inverters feed in (telemetry only); None: no PV meter read
    chargers: tuple[SolarCharger, ...]


class SolarState(NamedTuple):
    caps_a: Mapping[str, float] = {}  # the last cap of each solar charger with a session (0: paused)
    ok_since: Mapping[str, float] = {}  # a paused charger: since when its minimum + margin has been there
    low_since: Mapping[str, float] = {}  # a charging one: since when the surplus has been below its minimum
    surplus_w: float | None = None  # the smoothed surplus at ``at``
    at: float | None = None


class Surplus(NamedTuple):
    caps: Mapping[str, ChargerCap]
    state: SolarState
    surplus_w: float | None  # export + what the solar chargers draw (None: no grid reading)
    export_w: float | None
    pv_w: float | None


def _drawn_a(c: SolarCharger, state: SolarState) -> float:
    """What a solar charger draws, for the surplus: its previous cap while it has one (reports lag the EV by
    10-60 s: one from before a resume or a raise would make the surplus look smaller than it is and pause the
    charger again at once), else its report (a new session), else nothing."""
    prev = state.caps_a.get(c.id)
    if prev is not None:
        return prev
    return c.draw_a or 0.0


def _share(left_w: float, granted: dict[str, float], by_id: Mapping[str, SolarCharger]) -> dict[str, float]:
    """Weighted water-filling of ``left_w`` over the granted chargers, each up to its maximum (line A)."""
    out = dict(granted)
    open_ = [i for i in granted if by_id[i].max_a - out[i] > 1e-9]
    while left_w > EPS_W and open_:
        total_w = sum(by_id[i].weight for i in open_)
        given = 0.0
        still = []
        for i in open_:
            c = by_id[i]
            room_w = (c.max_a - out[i]) * c.w_per_a
            w = min(room_w, left_w * c.weight / total_w)
            out[i] += w / c.w_per_a
            given += w
            if room_w - w > EPS_W:
                still.append(i)
        left_w -= given
        if len(still) == len(open_):
            break  # nobody saturated: everything was handed out
        open_ = still
    return out


def surplus_caps(inp: SolarInputs, cfg: SolarConfig, state: SolarState, now: float) -> Surplus:
    solar = [c for c in inp.chargers if c.mode in SOLAR_MODES]
    by_id = {c.id: c for c in solar}
    caps: dict[str, ChargerCap] = {c.id: ChargerCap(0.0, "solar:no-session") for c in solar if not c.active}
    active = [c for c in solar if c.active]
    if inp.grid_w is None or not math.isfinite(inp.grid_w):
        for c in active:
            caps[c.id] = (ChargerCap(c.min_a, "solar:no-grid-reading") if c.mode == "surplus+min"
                          else ChargerCap(0.0, "solar:no-grid-reading"))
        return Surplus(caps, SolarState({i: caps[i].limit_a for i in (c.id for c in active)}, {}), None, None,
                       inp.pv_w)
    raw_w = -inp.grid_w + sum(c.w_per_a * _drawn_a(c, state) for c in solar)
    surplus_w = raw_w
    if state.surplus_w is not None and state.at is not None and cfg.smoothing_s > 0 and now >= state.at:
        surplus_w = state.surplus_w + min(1.0, (now - state.at) / cfg.smoothing_s) * (raw_w - state.surplus_w)
    left = surplus_w
    granted: dict[str, float] = {}
    reason: dict[str, str] = {}
    for c in active:
        if c.mode == "surplus+min":
            granted[c.id], reason[c.id] = c.min_a, "solar:surplus+min"
            left -= c.min_a * c.w_per_a
    ok_since: dict[str, float] = {}
    low_since: dict[str, float] = {}
    limit = cfg.export_limit_w
    queue = sorted((c for c in active if c.mode == "surplus"),
                   key=lambda c: (state.caps_a.get(c.id, 1.0) <= 0.0, -c.weight, c.id))
    for c in queue:
        need = c.min_a * c.w_per_a
        prev = state.caps_a.get(c.id)
        paused = prev is not None and prev <= 0.0
        why = ""
        if not paused and left >= need - EPS_W:
            why = "solar:surplus"
        elif not paused and cfg.pause_after_s > 0:  # below the floor: paused only once that has lasted
            since = low_since[c.id] = state.low_since.get(c.id, now)
            if now - since < cfg.pause_after_s - 1e-9:
                why = "solar:pausing"
        elif paused and left >= need + cfg.resume_margin_w - EPS_W:
            since = ok_since[c.id] = state.ok_since.get(c.id, now)
            if now - since >= cfg.resume_after_s - 1e-9:
                why = "solar:surplus"
        if not why and limit is not None and left > limit + EPS_W:
            why = "solar:export-limit"  # pausing (or staying paused) would push the export above the limit
        if why:
            granted[c.id], reason[c.id] = c.min_a, why
            left -= need
            ok_since.pop(c.id, None)
        else:
            caps[c.id] = ChargerCap(0.0, "solar:paused")
    for i, a in _share(max(0.0, left), granted, by_id).items():
        caps[i] = ChargerCap(a, reason[i])
    nxt = SolarState({c.id: caps[c.id].limit_a for c in active}, ok_since, low_since, surplus_w, now)
    return Surplus(caps, nxt, surplus_w, max(0.0, -inp.grid_w), inp.pv_w)


# ---- from the site and a snapshot (the budget service's side) -------------------------------------------------
def _line_a(site: Site, cfg: ChargerConfig, ch: ChargerSnapshot) -> float | None:
    if ch.draw_a is not None:
        return max((ch.draw_a[p] for p in cfg.line_phases if p < len(ch.draw_a)), default=0.0)
    if ch.draw_w is None:
        return None
    if cfg.kind == "dc":
        return electrical.dc_line_current_a(site.service, cfg, ch.draw_w)
    return electrical.ac_line_current_a(site.service, cfg.line_phases, ch.draw_w)


def solar_chargers(site: Site, cfg: SolarConfig, chargers: Mapping[str, ChargerSnapshot],
                   now: float) -> tuple[SolarCharger, ...]:
    """The solar-mode chargers of the site as :func:`surplus_caps` needs them."""
    out = []
    for chid, cc in site.chargers.items():
        mode = cfg.mode_of(chid, cc.priority)
        if mode not in SOLAR_MODES:
            continue
        ch = chargers.get(chid)
        active = ch is not None and ch.online and ch.state in SESSION_STATES
        fresh = ch is not None and (ch.draw_at is None or now - ch.draw_at <= REPORT_MAX_AGE_S)
        draw = _line_a(site, cc, ch) if ch is not None and fresh else None
        n = max(1, ch.active_connectors) if ch is not None else 1
        prio = site.priorities.get(cc.priority)
        out.append(SolarCharger(
            id=chid, mode=mode, weight=prio.weight if prio is not None else 1.0,
            w_per_a=electrical.watts_per_line_a(site.service, cc.line_phases),
            min_a=min(site.to_line_a(cc, cc.min_limit) * n, site.to_line_a(cc, cc.max_limit)),
            max_a=site.to_line_a(cc, cc.max_limit), active=active, draw_a=draw,
        ))
    return tuple(out)


def _fresh_power_w(r: MeterReading | None, stale_after_s: float, now: float) -> float | None:
    if r is None or not r.valid or now - r.at > stale_after_s:
        return None
    if r.total_power_w is not None and math.isfinite(r.total_power_w):
        return r.total_power_w
    if r.power_w is not None and all(math.isfinite(p) for p in r.power_w):
        return sum(r.power_w)
    return None


def grid_and_pv_w(site: Site, cfg: SolarConfig, readings: Mapping[str, MeterReading | None],
                  now: float) -> tuple[float | None, float | None]:
    """(the service meter's active power, + import; the PV inverters' power), None where not known."""
    gm = cfg.grid_meter or site.circuits[site.root].meter
    grid = None
    if gm is not None and gm in site.meters:
        grid = _fresh_power_w(readings.get(gm), site.meters[gm].stale_after_s, now)
    pv_ids = cfg.pv_meters if cfg.pv_meters is not None else tuple(site.pv_meters)
    pvs = [_fresh_power_w(readings.get(m), site.pv_meters[m].stale_after_s, now) for m in pv_ids
           if m in site.pv_meters]
    known = [p for p in pvs if p is not None]
    return grid, (sum(known) if known else None)


def solar_inputs(site: Site, cfg: SolarConfig, readings: Mapping[str, MeterReading | None],
                 chargers: Mapping[str, ChargerSnapshot], now: float) -> SolarInputs:
    grid, pv = grid_and_pv_w(site, cfg, readings, now)
    return SolarInputs(grid, pv, solar_chargers(site, cfg, chargers, now))


def with_solar(b: Budget, site: Site, readings: Mapping[str, MeterReading | None],
               chargers: Mapping[str, ChargerSnapshot], state: SolarState, now: float) -> tuple[Budget, SolarState]:
    """The budget with the solar caps (the lower one where another source already caps a charger) and the
    solar figures; unchanged when no charger has a surplus mode."""
    cfg = site.budget.solar
    if not cfg.enabled:
        return b, SolarState()
    s = surplus_caps(solar_inputs(site, cfg, readings, chargers, now), cfg, state, now)
    caps = dict(b.charger_caps)
    for chid, cap in s.caps.items():
        old = caps.get(chid)
        if old is None or cap.limit_a < old.limit_a:
            caps[chid] = cap
    paused = tuple(sorted(i for i, c in s.caps.items() if c.limit_a <= 0.0 and c.reason != "solar:no-session"))
    fig = SolarFigures(s.pv_w, s.surplus_w, s.export_w, cfg.export_limit_w, paused)
    return dataclasses.replace(b, charger_caps=caps, solar=fig), s.state
