"""HIL scenario files: what a lab runs against the real gateway before a site goes live.

A scenario (TOML, read strictly with :mod:`gateway.confkit`) names the site config to use, the
base (non-EV) load per circuit and phase over time, EV arrivals, charger behaviour, faults and a
time scale. All times and rates in a scenario are *scenario* (simulated) seconds; ``time_scale``
says how many scenario seconds pass per wall second.

How the time scale is applied. OCPP charging profiles carry absolute wall-clock timestamps and a
lease duration in the gateway's real seconds, so the simulated chargers must keep the wall clock:
a charger on a k-times-faster clock would see every lease lapse k times too soon. Instead the
*world around the gateway* is compressed by k: arrivals, departures, load steps and faults happen at
``t0 + t/k`` wall seconds, EV response delays become ``delay/k``, ramp rates ``rate*k`` and battery
capacities ``capacity/k`` (so the state of charge moves k times faster at the same power, and the
taper of the charging curve comes k times sooner). Energies measured on the wall clock are multiplied
by k to give scenario energies. The gateway runs in real time with its timers shortened by the
scenario's ``[gateway.*]`` overrides (``tick_s`` >= 0.2 s, meter polls, lease, grace periods).

How often the chargers send MeterValues: ``[chargers] meter_interval_s`` (scenario seconds, per connector,
``0``: never, a charger that reports no current at all; also per ``[[chargers.override]]``), else the
older ``charger_meter_interval_wall_s`` (wall seconds). ``python -m hil run --meter-interval S`` overrides both.

Utility demand response: ``[openadr]``, a real openleadr VTN the rig runs on loopback and the events it issues
(scenario seconds; their dtstart and duration on the compressed clock), for the gateway's VEN configured in
``[gateway.budget.openadr]`` (:mod:`hil.dr`).

Meter wiring faults (what an installer got wrong, for the whole run): ``[meter_faults]``, a circuit
meter's id = ``"swap:L1-L2,invert,ct:2"`` (any of: two phases swapped at the meter's inputs, the CTs
turned round, CTs of this times the configured ratio; :meth:`sitesim.site.MeterFault.parse`).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sitesim.site import MeterFault

from gateway import electrical
from gateway.confkit import Table, read_toml
from gateway.errors import ConfigError
from hil.dr import DrSpec, check_dr, parse_dr
from hil.pv import DemandSpec, PvProfile, Tariff, parse_demand, parse_pv, parse_tariff, pv_amps

FAULT_KINDS = ("meter_silent", "cms_down", "broker_down", "gateway_restart", "noncompliant")


@dataclass(frozen=True)
class ChargerBehaviour:
    """How a simulated charger (and the EVs on it) follows limits. Scenario-time quantities."""

    response_delay_s: float | None = None  # delay before following a new limit; None: the EV's own
    ramp_up_per_s: float | None = None  # A/s (AC) or W/s (DC); None: a step
    ramp_down_per_s: float | None = None
    min_current_a: float | None = None  # AC: below this the EV pauses (None: the site config's minimum)
    noncompliant: bool = False  # ignores every limit
    # how often the charger sends MeterValues, per connector, in scenario seconds (0: never, it reports no
    # current at all; None: the scenario's charger_meter_interval_wall_s)
    meter_interval_s: float | None = None


@dataclass(frozen=True)
class BaseLoad:
    circuit: str
    points: tuple[tuple[float, tuple[float, ...]], ...]  # (scenario s, per-phase A), sorted
    ramp: bool = False  # linear between points (False: each value holds until the next point)
    noise_a: float = 0.0


@dataclass(frozen=True)
class Arrival:
    at_s: float
    charger: str
    departure_s: float
    capacity_kwh: float = 60.0
    soc_start: float = 0.2
    soc_target: float = 1.0
    max_power_w: float = 150_000.0  # the EV's DC maximum
    max_current_a: float = 32.0  # the EV's on-board charger, per phase
    ac_phases: int = 3
    taper_start_soc: float = 0.8
    end_fraction: float = 0.1
    response_delay_s: float = 8.0
    id_tag: str = ""
    connector: int = 1
    iso15118: bool = False  # the EV tells its departure and energy (NotifyEVChargingNeeds, OCPP 2.0.1 chargers)

    @property
    def requested_wh(self) -> float:
        return max(0.0, self.soc_target - self.soc_start) * self.capacity_kwh * 1000.0


@dataclass(frozen=True)
class Fault:
    kind: str  # one of FAULT_KINDS
    at_s: float
    duration_s: float = 0.0  # 0: until the end of the run (gateway_restart: down time)
    target: str = ""  # meter id (meter_silent), charger id (noncompliant)


@dataclass(frozen=True)
class GatewayOverrides:
    control: Mapping[str, Any] = field(default_factory=dict)
    ocpp: Mapping[str, Any] = field(default_factory=dict)
    meters: Mapping[str, Any] = field(default_factory=dict)  # applied to every meter
    mqtt: bool = True  # run a mosquitto broker and point the gateway's telemetry at it
    budget: Mapping[str, Any] = field(default_factory=dict)  # [gateway.budget]: merged into the config's [budget]
    planner: Mapping[str, Any] = field(default_factory=dict)  # [gateway.planner]: merged into the config's [planner]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    site: Mapping[str, Any]  # the raw site config
    duration_s: float
    time_scale: float
    seed: int
    sample_wall_s: float
    charger_tick_wall_s: float
    charger_meter_interval_wall_s: float
    gateway: GatewayOverrides
    behaviour: ChargerBehaviour
    behaviour_by_charger: Mapping[str, ChargerBehaviour]
    base_loads: tuple[BaseLoad, ...]
    arrivals: tuple[Arrival, ...]
    faults: tuple[Fault, ...]
    ideal_step_s: float = 60.0
    ideal: bool = True
    source: str = "<memory>"
    pv: PvProfile | None = None  # [pv]: also in base_loads, as a negative load on its circuit
    demand: DemandSpec | None = None  # [demand]: what the scorecard and the ideal judge the demand by
    tariff: Tariff | None = None  # [tariff]: the scorecard's energy cost
    align_start_s: float = 0.0  # > 0: scenario time 0 waits for the wall clock's next multiple of this (billing)
    meter_faults: Mapping[str, MeterFault] = field(default_factory=dict)  # [meter_faults]: wiring, whole run
    dr: DrSpec | None = None  # [openadr]: the rig's VTN and the demand-response events it issues (hil/dr.py)

    def wall(self, t_s: float) -> float:
        """Scenario seconds -> wall seconds since the start of the run."""
        return t_s / self.time_scale

    @property
    def wall_duration_s(self) -> float:
        return self.duration_s / self.time_scale

    def behaviour_of(self, charger: str) -> ChargerBehaviour:
        return self.behaviour_by_charger.get(charger, self.behaviour)

    def meter_interval_wall_of(self, charger: str) -> float:
        """The charger's MeterValues interval in wall seconds (0: it sends none)."""
        m = self.behaviour_of(charger).meter_interval_s
        return self.charger_meter_interval_wall_s if m is None else m / self.time_scale

    def with_meter_interval(self, meter_interval_s: float) -> Scenario:
        """The same scenario with every charger reporting every ``meter_interval_s`` scenario seconds (0: never)."""
        if meter_interval_s < 0:
            raise ConfigError("meter_interval_s", "must be >= 0 (0: the chargers send no MeterValues)")

        def b(x: ChargerBehaviour) -> ChargerBehaviour:
            return dataclasses.replace(x, meter_interval_s=meter_interval_s)

        return dataclasses.replace(self, behaviour=b(self.behaviour),
                                   behaviour_by_charger={k: b(v) for k, v in self.behaviour_by_charger.items()})

    def load_steps(self) -> list[tuple[float, str, float]]:
        """Every upward step of a base load: (scenario s, circuit, the largest per-phase increase A)."""
        out: list[tuple[float, str, float]] = []
        for bl in self.base_loads:
            if bl.ramp:
                continue
            for (_, v0), (t1, v1) in zip(bl.points, bl.points[1:], strict=False):
                inc = max(b - a for a, b in zip(v0, v1, strict=True))
                if inc > 0:
                    out.append((t1, bl.circuit, inc))
        return sorted(out)


# ---- parsing ------------------------------------------------------------------------------------
def load_scenario(path: str | Path) -> Scenario:
    p = Path(path)
    data = read_toml(p)
    try:
        return scenario_from_dict(data, base_dir=p.parent, source=str(p))
    except ConfigError as exc:
        exc.args = (f"{p}: {exc.path}: {exc.reason}" if exc.path else f"{p}: {exc.reason}",)
        raise


def _site_config(t: Table, base_dir: Path) -> dict[str, Any]:
    path = t.opt_str("site_config")
    gen = t.table("site_generator")
    if (path is None) == (gen is None):
        raise t.error("site_config", "give exactly one of site_config (a file) or [scenario.site_generator]")
    if path is not None:
        f = Path(path)
        if not f.is_absolute():
            f = (base_dir / f).resolve()
        if not f.exists():
            raise t.error("site_config", f"no such file: {f}")
        return dict(read_toml(f))
    assert gen is not None
    from hil.bench.sites import tree_site_dict

    kind = gen.choice("kind", ("tree",), "tree")
    n = gen.int("chargers", min=1, max=5000)
    per_panel = gen.int("per_panel", 10, min=1)
    factor = gen.float("service_factor", 0.45, gt=0, max=2)
    gen.done()
    assert kind == "tree"
    raw = tree_site_dict(n, per_panel=per_panel, service_factor=factor)
    for m in raw["meters"]:
        m.setdefault("map", "janitza_umg604")
        m.setdefault("transport", "tcp")
        m.setdefault("port", 502)
    for ch in raw["chargers"]:
        ch["ocpp_version"] = "1.6J" if int(ch["id"][2:]) % 2 == 0 else "2.0.1"
    return raw


def _phases_of(raw: Mapping[str, Any]) -> int:
    """The service's number of lines (3, 1, or 2 for a split-phase service's legs)."""
    svc = raw.get("service", {})
    if "wiring" in svc:
        return electrical.n_lines(str(svc["wiring"]))
    return int(svc.get("phases", 3))


def _per_phase(t: Table, key: str, v: Any, phases: int) -> tuple[float, ...]:
    if isinstance(v, int | float) and not isinstance(v, bool):
        return (float(v),) * phases
    if isinstance(v, list) and len(v) == phases and all(isinstance(x, int | float) for x in v):
        return tuple(float(x) for x in v)
    raise t.error(key, f"each point is [time_s, amperes] or [time_s, [{phases} per-phase amperes]]")


def _behaviour(t: Table, d: ChargerBehaviour) -> ChargerBehaviour:
    def opt(key: str, default: float | None) -> float | None:
        return t.float(key, min=0) if t.has(key) else default

    return ChargerBehaviour(
        response_delay_s=opt("response_delay_s", d.response_delay_s),
        ramp_up_per_s=opt("ramp_up_per_s", d.ramp_up_per_s),
        ramp_down_per_s=opt("ramp_down_per_s", d.ramp_down_per_s),
        min_current_a=opt("min_current_a", d.min_current_a),
        noncompliant=t.bool("noncompliant", d.noncompliant),
        meter_interval_s=opt("meter_interval_s", d.meter_interval_s),
    )


def _arrival(t: Table, chargers: set[str], duration_s: float) -> Arrival:
    a = Arrival(
        at_s=t.float("at_s", min=0),
        charger=t.str("charger", required=True),
        departure_s=t.float("departure_s", gt=0),
        capacity_kwh=t.float("capacity_kwh", 60.0, gt=0),
        soc_start=t.float("soc_start", 0.2, min=0, max=1),
        soc_target=t.float("soc_target", 1.0, min=0, max=1),
        max_power_w=t.float("max_power_w", 150_000.0, gt=0),
        max_current_a=t.float("max_current_a", 32.0, gt=0),
        ac_phases=t.int("ac_phases", 3, min=1, max=3),
        taper_start_soc=t.float("taper_start_soc", 0.8, min=0, max=1),
        end_fraction=t.float("end_fraction", 0.1, min=0, max=1),
        response_delay_s=t.float("response_delay_s", 8.0, min=0),
        id_tag=t.str("id_tag", "HIL"),
        connector=t.int("connector", 1, min=1),
        iso15118=t.bool("iso15118", False),
    )
    t.done()
    if a.charger not in chargers:
        raise t.error("charger", f"unknown charger {a.charger!r}")
    if a.departure_s <= a.at_s:
        raise t.error("departure_s", "must be after at_s")
    if a.at_s >= duration_s:
        raise t.error("at_s", f"after the end of the scenario ({duration_s:g} s)")
    return a


def _random_arrivals(t: Table, raw: Mapping[str, Any], duration_s: float, seed: int) -> list[Arrival]:
    """Arrivals drawn from a seeded generator: each charger gets sessions one after another."""
    rng = random.Random(t.int("seed", seed))
    share = t.float("charger_share", 1.0, gt=0, max=1)  # share of chargers that get cars at all
    start_lo, start_hi = _pair(t, "first_arrival_s", (0.0, duration_s * 0.2))
    dwell_lo, dwell_hi = _pair(t, "dwell_s", (1800.0, 7200.0))
    gap_lo, gap_hi = _pair(t, "gap_s", (300.0, 1800.0))
    cap_lo, cap_hi = _pair(t, "capacity_kwh", (40.0, 100.0))
    soc_lo, soc_hi = _pair(t, "soc_start", (0.1, 0.5))
    tgt_lo, tgt_hi = _pair(t, "soc_target", (0.8, 1.0))
    delay_lo, delay_hi = _pair(t, "response_delay_s", (5.0, 11.0))
    dc_choices = tuple(t.raw("max_power_w") or (150_000.0, 250_000.0, 350_000.0))
    ac_choices = tuple(t.raw("max_current_a") or (16.0, 32.0))
    phase_choices = tuple(t.raw("ac_phases") or (1, 3, 3))
    t.done()
    out: list[Arrival] = []
    for ch in raw.get("chargers", []):
        if rng.random() >= share:
            continue
        at = rng.uniform(start_lo, start_hi)
        n = 0
        while at < duration_s:
            dep = at + rng.uniform(dwell_lo, dwell_hi)
            out.append(Arrival(
                at_s=round(at, 1), charger=str(ch["id"]), departure_s=round(dep, 1),
                capacity_kwh=round(rng.uniform(cap_lo, cap_hi), 1),
                soc_start=round(rng.uniform(soc_lo, soc_hi), 3), soc_target=round(rng.uniform(tgt_lo, tgt_hi), 3),
                max_power_w=float(rng.choice(dc_choices)), max_current_a=float(rng.choice(ac_choices)),
                ac_phases=int(rng.choice(phase_choices)), response_delay_s=round(rng.uniform(delay_lo, delay_hi), 2),
                id_tag=f"R{len(out):05d}", taper_start_soc=rng.choice((0.7, 0.8, 0.85)),
            ))
            n += 1
            at = dep + rng.uniform(gap_lo, gap_hi)
    return out


def _pair(t: Table, key: str, default: tuple[float, float]) -> tuple[float, float]:
    v = t.raw(key)
    if v is None:
        return default
    if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, int | float) for x in v) and v[0] <= v[1]):
        raise t.error(key, "expected [low, high]")
    return float(v[0]), float(v[1])


def scenario_from_dict(data: Mapping[str, Any], *, base_dir: Path = Path("."), source: str = "<memory>") -> Scenario:
    root = Table(data)
    st = root.table("scenario")
    if st is None:
        raise ConfigError("scenario", "required table is missing")
    name = st.str("name", required=True)
    description = st.str("description", name)
    raw = _site_config(st, base_dir)
    duration_s = st.float("duration_s", gt=0)
    time_scale = st.float("time_scale", 1.0, min=1.0, max=1000.0)
    seed = st.int("seed", 1)
    sample_wall_s = st.float("sample_wall_s", 0.1, min=0.02, max=5)
    tick_wall_s = st.float("charger_tick_wall_s", 0.1, min=0.02, max=5)
    meter_interval = st.float("charger_meter_interval_wall_s", 2.0, min=0.1)
    ideal_step_s = st.float("ideal_step_s", 60.0, gt=0)
    ideal = st.bool("ideal", True)
    align_start_s = st.float("align_start_s", 0.0, min=0, max=3600)
    st.done()

    gt_ = root.table("gateway")
    gw = GatewayOverrides()
    if gt_ is not None:
        ctl, ocp, met = gt_.raw("control"), gt_.raw("ocpp"), gt_.table("meters")
        for key, v in (("control", ctl), ("ocpp", ocp)):
            if v is not None and not isinstance(v, dict):
                raise gt_.error(key, "expected a table (checked against the site config when the run starts)")
        mt: dict[str, Any] = {}
        if met is not None:
            for k in ("poll_interval_s", "stale_after_s", "timeout_s"):
                if met.has(k):
                    mt[k] = met.float(k, gt=0)
            met.done()
        bud = gt_.raw("budget")
        if bud is not None and not isinstance(bud, dict):
            raise gt_.error("budget", "expected a table (checked against the site config when the run starts)")
        pla = gt_.raw("planner")
        if pla is not None and not isinstance(pla, dict):
            raise gt_.error("planner", "expected a table (checked against the site config when the run starts)")
        gw = GatewayOverrides(control=dict(ctl or {}), ocpp=dict(ocp or {}), meters=mt, mqtt=gt_.bool("mqtt", True),
                              budget=dict(bud or {}), planner=dict(pla or {}))
        gt_.done()

    charger_ids = {str(c["id"]) for c in raw.get("chargers", [])}
    behaviour = ChargerBehaviour()
    by_charger: dict[str, ChargerBehaviour] = {}
    bt = root.table("chargers")
    if bt is not None:
        overrides = bt.tables("override")
        behaviour = _behaviour(bt, behaviour)
        bt.done()
        for ot in overrides:
            ids = ot.str_list("ids")
            for cid in ids:
                if cid not in charger_ids:
                    raise ot.error("ids", f"unknown charger {cid!r}")
            b = _behaviour(ot, behaviour)
            ot.done()
            by_charger.update({cid: b for cid in ids})

    phases = _phases_of(raw)
    circuit_ids = {"service", str(raw.get("service", {}).get("id", "service"))} | {
        str(c["id"]) for c in raw.get("circuits", [])
    }
    base_loads: list[BaseLoad] = []
    for lt in root.tables("base_loads"):
        circuit = lt.str("circuit", required=True)
        if circuit not in circuit_ids:
            raise lt.error("circuit", f"unknown circuit {circuit!r}")
        pts_raw = lt.raw("points")
        if not isinstance(pts_raw, list) or not pts_raw:
            raise lt.error("points", "expected a list of [time_s, amperes] points")
        pts: list[tuple[float, tuple[float, ...]]] = []
        for p in pts_raw:
            if not (isinstance(p, list) and len(p) == 2 and isinstance(p[0], int | float)):
                raise lt.error("points", "each point is [time_s, amperes]")
            pts.append((float(p[0]), _per_phase(lt, "points", p[1], phases)))
        ramp, noise = lt.bool("ramp", False), lt.float("noise_a", 0.0, min=0)
        base_loads.append(BaseLoad(circuit, tuple(sorted(pts)), ramp, noise))
        lt.done()

    pv_meters = [str(m["id"]) for m in raw.get("meters", []) if m.get("role") == "pv"]
    pv = parse_pv(root.table("pv"), pv_meters)
    if pv is not None:
        base_loads.append(_pv_load(raw, pv, phases))
    demand, tariff = parse_demand(root.table("demand")), parse_tariff(root.table("tariff"))

    arrivals = [_arrival(at, charger_ids, duration_s) for at in root.tables("arrivals")]
    rt = root.table("random_arrivals")
    if rt is not None:
        arrivals += _random_arrivals(rt, raw, duration_s, seed)
    arrivals.sort(key=lambda a: (a.at_s, a.charger))
    busy: dict[tuple[str, int], float] = {}
    for a in arrivals:
        slot = (a.charger, a.connector)
        if busy.get(slot, -1.0) > a.at_s:
            raise ConfigError("arrivals", f"charger {a.charger} connector {a.connector}: an EV arrives at "
                                          f"{a.at_s:g} s before the previous one leaves ({busy[slot]:g} s)")
        busy[slot] = a.departure_s

    meter_ids = {str(m["id"]) for m in raw.get("meters", [])}
    faults: list[Fault] = []
    for ft in root.tables("faults"):
        f = Fault(
            kind=ft.choice("kind", FAULT_KINDS),
            at_s=ft.float("at_s", min=0),
            duration_s=ft.float("duration_s", 0.0, min=0),
            target=ft.str("target", ""),
        )
        ft.done()
        if f.kind == "meter_silent" and f.target not in meter_ids:
            raise ft.error("target", f"unknown meter {f.target!r}")
        if f.kind == "noncompliant" and f.target not in charger_ids:
            raise ft.error("target", f"unknown charger {f.target!r}")
        faults.append(f)
    meter_faults = _meter_faults(root.table("meter_faults"), raw)
    dr = parse_dr(root.table("openadr"), duration_s, time_scale)
    if dr is not None:
        check_dr(gw.budget)
    root.done()
    return Scenario(
        name=name, description=description, site=raw, duration_s=duration_s, time_scale=time_scale, seed=seed,
        sample_wall_s=sample_wall_s, charger_tick_wall_s=tick_wall_s, charger_meter_interval_wall_s=meter_interval,
        gateway=gw, behaviour=behaviour, behaviour_by_charger=by_charger, base_loads=tuple(base_loads),
        arrivals=tuple(arrivals), faults=tuple(sorted(faults, key=lambda f: f.at_s)), ideal_step_s=ideal_step_s,
        ideal=ideal, source=source, pv=pv, demand=demand, tariff=tariff, align_start_s=align_start_s,
        meter_faults=meter_faults, dr=dr,
    )


def _meter_faults(t: Table | None, raw: Mapping[str, Any]) -> dict[str, MeterFault]:
    """[meter_faults]: circuit meter id -> its wiring fault ("swap:L1-L2", "invert", "ct:2", comma separated)."""
    if t is None:
        return {}
    roles = {str(m["id"]): str(m.get("role", "circuit")) for m in raw.get("meters", [])}
    out: dict[str, MeterFault] = {}
    for mid in list(t.keys()):
        spec = t.str(mid)
        if mid not in roles:
            raise t.error(mid, f"unknown meter {mid!r}")
        if roles[mid] != "circuit":
            raise t.error(mid, f"meter {mid!r} is a PV inverter (role = {roles[mid]!r}): no CTs to get wrong")
        try:
            out[mid] = MeterFault.parse(spec)
        except ValueError as e:
            raise t.error(mid, str(e)) from None
    t.done()
    return out


def _pv_load(raw: Mapping[str, Any], pv: PvProfile, phases: int) -> BaseLoad:
    """The PV as a negative base load on its meter's circuit, spread evenly over the lines the meter measures."""
    m = next(x for x in raw.get("meters", []) if str(x["id"]) == pv.meter)
    svc = raw.get("service", {})
    wiring = str(svc.get("wiring", "three-phase" if int(svc.get("phases", 3)) == 3 else "single-phase"))
    v_ll = float(svc["voltage_ll_v"])
    v_ln = v_ll / 3**0.5 if wiring == "three-phase" else v_ll / 2.0 if wiring == "split-phase" else v_ll
    lines = [("L1", "L2", "L3").index(p) for p in m.get("phase_map", ("L1", "L2", "L3")[:phases])]
    pts = tuple((t, tuple(-pv_amps(kw, v_ln, len(lines)) if i in lines else 0.0 for i in range(phases)))
                for t, kw in pv.points)
    return BaseLoad(str(m["circuit"]), pts, ramp=pv.ramp)
