"""[planner] configuration: frozen, validated, errors name the key path (units in key names).

    [planner]
    enabled = true
    slot_s = 900               # the plan's time step
    replan_s = 900             # a new plan this often (and on every arrival and departure)
    max_plan_age_s = 1200      # an older plan is dropped: max-min fairness until the next one
    time_limit_s = 0.8         # HiGHS's limit per plan
    min_dwell_s = 3600         # a default departure is at least this far after the arrival
    assumed_taper_kwh = 15     # an EV that tells no battery curve (AC): the last 15 kWh of its session (at most
    assumed_taper_end_pct = 20 #   a quarter of it) planned at a rate falling to 20 % of its maximum (0: none)

    [planner.defaults.fleet]   # per priority class
    departure = "05:00"        # local time (the site's [budget] timezone)
    energy_kwh = 60
    expect_vehicles = true     # free chargers of the class hold room for a vehicle not back yet

    [planner.chargers.VAN001]  # per charger, over its class's
    departure = "05:30"
    energy_kwh = 70

    [[planner.vehicles]]       # fleet vehicle profiles by idToken
    id_token = "FLEET-001"
    capacity_kwh = 75
    target_soc_pct = 100       # or energy_kwh
    departure = "04:45"
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.confkit import Table
from gateway.planner.model import PlannerConfig
from gateway.planner.needs import Needs, next_local_time

_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


@dataclass(frozen=True)
class Default:
    departure_min: int | None = None  # local minutes after midnight
    energy_wh: float | None = None
    expect_vehicles: bool = False


@dataclass(frozen=True)
class Vehicle:
    id_token: str
    capacity_wh: float | None = None
    target_soc: float | None = None
    energy_wh: float | None = None
    departure_min: int | None = None


@dataclass(frozen=True)
class PlannerSettings:
    enabled: bool = False
    solver: PlannerConfig = field(default_factory=PlannerConfig)
    replan_s: float = 900.0  # = the slot: replanning more often shuffles equal shares (see hil/bench/bench_planner)
    max_plan_age_s: float = 1200.0
    min_dwell_s: float = 3600.0
    timezone: str = "UTC"
    classes: Mapping[str, Default] = field(default_factory=dict)
    chargers: Mapping[str, Default] = field(default_factory=dict)
    vehicles: Mapping[str, Vehicle] = field(default_factory=dict)


def _hhmm(t: Table, key: str) -> int | None:
    if not t.has(key):
        return None
    v = t.str(key)
    m = _HHMM.fullmatch(v)
    if m is None:
        raise t.error(key, f"expected a local time HH:MM, got {v!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


def _default(t: Table) -> Default:
    d = Default(_hhmm(t, "departure"), _kwh(t, "energy_kwh"), t.bool("expect_vehicles", False))
    t.done()
    return d


def _kwh(t: Table, key: str) -> float | None:
    v = t.opt_float(key, min=0, max=2000)
    return None if v is None else v * 1000.0


def parse_planner(
    t: Table | None, *, chargers: Mapping[str, object], priorities: Mapping[str, object], timezone: str = "UTC"
) -> PlannerSettings:
    if t is None:
        return PlannerSettings(timezone=timezone)
    solver = PlannerConfig(
        slot_s=t.float("slot_s", 900.0, min=0.5, max=3600),  # below a minute: a rig on compressed time
        time_limit_s=t.float("time_limit_s", 0.8, gt=0, max=30),
        assumed_taper_wh=t.float("assumed_taper_kwh", 15.0, min=0, max=200) * 1000.0,
        assumed_taper_end_fraction=t.float("assumed_taper_end_pct", 20.0, min=1, max=100) / 100.0,
    )
    replan = t.float("replan_s", 900.0, min=0.5, max=3600)
    age = t.float("max_plan_age_s", 1200.0, gt=0, max=7200)
    if age < replan:
        raise t.error("max_plan_age_s", f"must be at least replan_s ({replan:g} s): every plan would be too old")
    classes: dict[str, Default] = {}
    for name, sub in t.subtables("defaults"):
        if name not in priorities:
            raise t.error(f"defaults.{name}", f"unknown priority class {name!r} (known: {', '.join(priorities)})")
        classes[name] = _default(sub)
    per_charger: dict[str, Default] = {}
    for cid, sub in t.subtables("chargers"):
        if cid not in chargers:
            raise t.error(f"chargers.{cid}", f"unknown charger {cid!r}")
        per_charger[cid] = _default(sub)
    vehicles: dict[str, Vehicle] = {}
    for vt in t.tables("vehicles"):
        tok = vt.str("id_token", required=True)
        if tok in vehicles:
            raise vt.error("id_token", f"duplicate id_token {tok!r}")
        soc = vt.opt_float("target_soc_pct", min=0, max=100)
        v = Vehicle(tok, _kwh(vt, "capacity_kwh"), None if soc is None else soc / 100.0, _kwh(vt, "energy_kwh"),
                    _hhmm(vt, "departure"))
        if v.target_soc is not None and v.capacity_wh is None:
            raise vt.error("target_soc_pct", "needs capacity_kwh")
        if v.target_soc is not None and v.energy_wh is not None:
            raise vt.error("energy_kwh", "give energy_kwh or target_soc_pct, not both")
        vt.done()
        vehicles[tok] = v
    out = PlannerSettings(enabled=t.bool("enabled", True), solver=solver, replan_s=replan, max_plan_age_s=age,
                          min_dwell_s=t.float("min_dwell_s", 3600.0, min=0, max=86400), timezone=timezone,
                          classes=classes, chargers=per_charger, vehicles=vehicles)
    t.done()
    return out


def configured_needs(
    s: PlannerSettings, *, charger: str, priority: str, id_token: str | None, started_wall: float
) -> Needs | None:
    """What the config says of a session's needs: its vehicle profile (by idToken), then the charger's default,
    then its class's; None when the config says nothing."""
    out: Needs | None = None
    v = s.vehicles.get(id_token) if id_token else None
    if v is not None:
        out = Needs(v.energy_wh, _dep(s, v.departure_min, started_wall), f"vehicle:{v.id_token}", v.target_soc,
                    v.capacity_wh)
    for src, d in ((f"charger:{charger}", s.chargers.get(charger)), (f"class:{priority}", s.classes.get(priority))):
        if d is None:
            continue
        n = Needs(d.energy_wh, _dep(s, d.departure_min, started_wall), src)
        out = n if out is None else out.fill(n)
    return out


def _dep(s: PlannerSettings, minute: int | None, started_wall: float) -> float | None:
    return None if minute is None else next_local_time(minute, s.timezone, started_wall, s.min_dwell_s)
