"""The site configuration: TOML read once into frozen, validated dataclasses.

Units are part of every key name. The circuit tree is rooted at the service; every circuit
names its parent; chargers name the circuit that feeds them. `load_site` refuses anything
it cannot vouch for with a ConfigError naming the key path and the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway import electrical
from gateway.budget.config import BudgetConfig, parse_budget
from gateway.budget.solar_config import check_solar
from gateway.confkit import Table, check_ident, is_loopback_host, parse_toml, read_toml
from gateway.errors import ConfigError
from gateway.meters.config import MeterConfig, check_bus_settings, parse_meter
from gateway.ocpp_proxy.config import ChargerOcppConfig, OcppConfig, parse_charger_ocpp, parse_ocpp
from gateway.planner.config import PlannerSettings, parse_planner
from gateway.telemetry.config import MqttConfig, parse_mqtt
from gateway.web.config import WebConfig, parse_web

PHASES = electrical.LINE_NAMES  # site lines by index; a service uses the first n_lines of them
CIRCUIT_KINDS = ("service", "transformer", "switchboard", "panel", "cabinet", "feeder")
OcppVersion = Literal["1.6", "2.0.1"]
ChargerKind = Literal["ac", "dc"]
MAX_CIRCUIT_A = 100_000.0  # no circuit or service limit beyond this (A per phase)
MAX_CHARGER_A = 1000.0  # an AC charger's limits (A per phase)
MAX_CHARGER_W = 5_000_000.0  # a DC charger's limits (W; megawatt charging is 3.75 MW)


@dataclass(frozen=True)
class ServiceConfig:
    id: str
    voltage_ll_v: float  # line-to-line (three-phase), leg-to-leg (split-phase: 240), the voltage (single-phase)
    wiring: electrical.Wiring  # three-phase (L1 L2 L3), single-phase (L1), split-phase (legs L1 L2)
    limit_a: float  # per line
    margin_a: float
    voltage_tolerance_pct: float
    worst_case_non_ev_a: float
    can_export: bool = False  # the site exports (PV): the service meter may read negative power

    @property
    def phases(self) -> int:
        """How many lines, i.e. entries in every per-phase tuple: 3, 1, or 2 (split-phase legs)."""
        return electrical.n_lines(self.wiring)


@dataclass(frozen=True)
class CircuitConfig:
    id: str
    kind: str
    parent: str | None  # None for the service
    limit_a: float  # per phase
    margin_a: float
    worst_case_non_ev_a: float  # worst-case non-EV load through this circuit, per phase
    can_export: bool
    meter: str | None = None  # filled from [[meters]]
    key: str = ""  # its key path in the config file, for messages
    worst_case_explicit: bool = False  # worst_case_non_ev_a was set, not derived from the children


@dataclass(frozen=True)
class ChargerConfig:
    id: str
    ocpp_version: OcppVersion
    kind: ChargerKind
    circuit: str
    connectors: int
    phases: int  # phases the charger itself uses (1 or 3)
    phase_map: tuple[int, ...]  # charger phase i is site phase phase_map[i]
    line_phases: tuple[int, ...]  # site lines that carry the charger's line current (2: line-to-line)
    min_limit: float  # A per phase (AC) or W (DC)
    max_limit: float
    failsafe_limit: float
    efficiency: float  # DC: AC->DC conversion efficiency
    power_factor: float  # DC: at the AC input
    priority: str
    ocpp: ChargerOcppConfig = field(default_factory=ChargerOcppConfig)
    key: str = ""  # its key path in the config file, for messages

    @property
    def unit(self) -> Literal["A", "W"]:
        return "A" if self.kind == "ac" else "W"


@dataclass(frozen=True)
class PriorityClass:
    name: str
    weight: float


@dataclass(frozen=True)
class ControlConfig:
    """The loop's tuning. The ``_a`` values are line current per phase for AC and DC chargers alike
    (a DC charger's are converted to W with `gateway.electrical`), so one default suits a 100 A and a
    4000 A site."""

    tick_s: float = 1.0
    ramp_up_a_per_s: float = 2.0
    hysteresis_a: float = 0.5
    draw_allowance_a: float = 4.0
    rotation_period_s: float = 900.0
    noncompliance_tolerance_a: float = 2.0
    noncompliance_grace_s: float = 10.0
    ev_response_s: float = 12.0  # how long an EV may take to follow a lowered limit (EVs take 5-11 s, plus a tick)
    stop_noncompliant: bool = False


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"
    format: str = "auto"  # auto: JSON when stdout is not a terminal
    journal: str = "auto"  # <N> syslog priority prefixes: auto (stdout is the journal's stream), on, off
    loggers: Mapping[str, str] = field(default_factory=dict)  # [logging.loggers]: logger name -> level


@dataclass(frozen=True)
class Site:
    id: str
    name: str
    service: ServiceConfig
    circuits: Mapping[str, CircuitConfig]  # topological order, service first
    chargers: Mapping[str, ChargerConfig]
    priorities: Mapping[str, PriorityClass]
    control: ControlConfig
    meters: Mapping[str, MeterConfig]  # the meters that measure circuits
    ocpp: OcppConfig
    mqtt: MqttConfig | None
    logging: LoggingConfig
    state_dir: str = "/var/lib/ems-gateway"  # durable queues (OCPP store, MQTT events)
    source: str = "<memory>"
    budget: BudgetConfig = field(default_factory=BudgetConfig)  # [budget]: demand window, tariff (gateway.budget)
    planner: PlannerSettings = field(default_factory=PlannerSettings)  # [planner]: departure-aware charging
    # derived topology
    children: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    path_to_root: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # circuit -> itself..service
    chargers_under: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # transitive
    web: WebConfig | None = None  # [web]: the local page and API (gateway.web)
    pv_meters: Mapping[str, MeterConfig] = field(default_factory=dict)  # role = "pv": PV inverters, read only

    @property
    def polled_meters(self) -> dict[str, MeterConfig]:
        """Every meter the meter service reads: the circuit meters and the PV inverters."""
        return {**self.meters, **self.pv_meters}

    @property
    def root(self) -> str:
        return self.service.id

    def n_phases(self) -> int:
        return self.service.phases

    def to_line_a(self, charger: ChargerConfig, limit: float) -> float:
        """Charger limit (A per phase, or W of DC output) -> line current per loaded line (A); DC at the
        conservative voltage (see `gateway.electrical.limit_to_line_a`)."""
        return electrical.limit_to_line_a(self.service, charger, limit)

    def from_line_a(self, charger: ChargerConfig, line_a: float) -> float:
        """Line current per loaded line (A) -> a limit in the charger's unit (the inverse of `to_line_a`)."""
        return electrical.line_a_to_limit(self.service, charger, line_a)

    def failsafe_budget(self) -> dict[str, tuple[float, ...]]:
        """Per circuit, per phase: worst-case non-EV load + sum of fail-safe line currents (A)."""
        out: dict[str, tuple[float, ...]] = {}
        for cid, c in self.circuits.items():
            per = [c.worst_case_non_ev_a] * self.service.phases
            for chid in self.chargers_under[cid]:
                ch = self.chargers[chid]
                a = self.to_line_a(ch, ch.failsafe_limit)
                for p in ch.line_phases:
                    per[p] += a
            out[cid] = tuple(per)
        return out


# --------------------------------------------------------------------------------------
def load_site(path: str | Path) -> Site:
    data = read_toml(path)
    try:
        return site_from_dict(data, source=str(path))
    except ConfigError as exc:
        exc.file = str(path)
        exc.args = (f"{path}: {exc.path}: {exc.reason}" if exc.path else f"{path}: {exc.reason}",)
        raise


def site_from_text(text: str, source: str = "<memory>") -> Site:
    return site_from_dict(parse_toml(text, file=source), source=source)


def site_from_dict(data: Mapping[str, Any], source: str = "<memory>") -> Site:
    root = Table(data)
    site_t = root.table("site")
    if site_t is None:
        raise ConfigError("site", "required table is missing")
    site_id = site_t.ident("id", what="site id")
    site_name = site_t.str("name", site_id)
    if len(site_name) > 200 or not site_name.isprintable():
        raise site_t.error("name", "must be printable text of at most 200 characters")
    state_dir = check_state_dir(site_t.str("state_dir", "/var/lib/ems-gateway"), site_t.key_path("state_dir"))
    site_t.done()

    service = _parse_service(root)
    circuits = _parse_circuits(root, service)
    priorities = _parse_priorities(root)
    control = _parse_control(root.table("control"))
    logging_cfg = _parse_logging(root.table("logging"))
    meters = _parse_meters(root, circuits, service.phases)
    pv_meters = {mid: m for mid, m in meters.items() if m.role == "pv"}
    meters = {mid: m for mid, m in meters.items() if m.role != "pv"}
    circuits = {
        cid: _with_meter(c, meters) for cid, c in circuits.items()
    }
    chargers = _parse_chargers(root, service, circuits, priorities)
    ocpp = parse_ocpp(root.table("ocpp"))
    mqtt = parse_mqtt(root.table("mqtt"))
    web = parse_web(root.table("web"), taken_ports=(ocpp.listen_port, ocpp.tls_listen_port or 0))
    budget = parse_budget(root.table("budget"), service, _service_meter_has_energy(meters, service.id))
    planner = parse_planner(root.table("planner"), chargers=chargers, priorities=priorities, timezone=budget.timezone)
    root.done()

    children, path_to_root, order = _topology(circuits)
    circuits = {cid: circuits[cid] for cid in order}
    under: dict[str, list[str]] = {cid: [] for cid in circuits}
    for ch in chargers.values():
        for cid in path_to_root[ch.circuit]:
            under[cid].append(ch.id)

    site = Site(
        id=site_id,
        name=site_name,
        service=service,
        circuits=circuits,
        chargers=chargers,
        priorities=priorities,
        control=control,
        meters=meters,
        ocpp=ocpp,
        mqtt=mqtt,
        logging=logging_cfg,
        state_dir=state_dir,
        source=source,
        children=children,
        path_to_root=path_to_root,
        chargers_under={k: tuple(v) for k, v in under.items()},
        web=web,
        pv_meters=pv_meters,
        budget=budget,
        planner=planner,
    )
    _check_electrical(site)
    check_solar(site)
    _check_charger_auth(site)
    return site


def _service_meter_has_energy(meters: Mapping[str, MeterConfig], service_id: str) -> bool | None:
    """Whether the service meter reads an imported-energy register (None: the service has no meter)."""
    from gateway.meters.regmap import load_map

    for m in meters.values():
        if m.circuit == service_id:
            return not m.invert and load_map(m.map).has("energy_import_wh")
    return None


def _check_charger_auth(site: Site) -> None:
    """Every charger can be told apart from an impostor: a password, a client certificate, a loopback
    listener (only this machine can connect), or an explicit ``allow_unauthenticated = true``. Profiles 2
    and 3 need the TLS listener."""
    loopback = is_loopback_host(site.ocpp.listen_host)
    for ch in site.chargers.values():
        o = ch.ocpp
        if o.security_profile >= 2 and site.ocpp.tls_listen_port is None:
            raise ConfigError(
                f"{ch.key}.ocpp.security_profile",
                f"security profile {o.security_profile} needs TLS, but [ocpp] has no tls_listen_port",
            )
        if o.security_profile == 3 and not site.ocpp.client_ca_file:
            raise ConfigError(
                f"{ch.key}.ocpp.security_profile",
                "security profile 3 needs [ocpp] client_ca_file (client certificates)",
            )
        if o.password is None and o.security_profile != 3 and not loopback and not o.allow_unauthenticated:
            raise ConfigError(
                f"{ch.key}.ocpp.password",
                f"charger {ch.id!r} has no password, and ocpp.listen_host = {site.ocpp.listen_host!r} is not "
                f"loopback: any client could connect as it and receive its profiles. Set a password (or security "
                f"profile 3), or allow_unauthenticated = true in its [chargers.ocpp] to accept that",
            )


def check_state_dir(state_dir: str, key: str = "site.state_dir") -> str:
    """``state_dir``: an absolute or relative path that is a directory, or does not exist yet (it is created).
    A regular file there would fail later, at the first write, with the daemon running."""
    if "\0" in state_dir:
        raise ConfigError(key, "must not contain NUL")
    p = Path(state_dir)
    cur: Path | None = p
    while cur is not None:
        try:
            if cur.exists() and not cur.is_dir():
                what = "is" if cur == p else f"lies under {str(cur)!r}, which is"
                raise ConfigError(key, f"{state_dir!r} {what} not a directory")
        except OSError as exc:
            raise ConfigError(key, f"cannot inspect {state_dir!r}: {exc.strerror or exc}") from exc
        cur = cur.parent if cur.parent != cur else None
    return state_dir


def _with_meter(c: CircuitConfig, meters: Mapping[str, MeterConfig]) -> CircuitConfig:
    for m in meters.values():
        if m.circuit == c.id:
            return CircuitConfig(**{**c.__dict__, "meter": m.id})
    return c


def _parse_service(root: Table) -> ServiceConfig:
    t = root.table("service")
    if t is None:
        raise ConfigError("service", "required table is missing")
    wiring = _parse_wiring(t)
    s = ServiceConfig(
        id=t.ident("id", "service", what="service id"),
        voltage_ll_v=t.float("voltage_ll_v", min=100, max=1000),
        wiring=wiring,
        limit_a=t.float("limit_a", gt=0, max=MAX_CIRCUIT_A),
        margin_a=t.float("margin_a", 0.0, min=0, max=MAX_CIRCUIT_A),
        voltage_tolerance_pct=t.float("voltage_tolerance_pct", 5.0, min=0, max=20),
        worst_case_non_ev_a=t.float("worst_case_non_ev_a", -1.0, max=MAX_CIRCUIT_A)
        if t.has("worst_case_non_ev_a")
        else -1.0,
        can_export=t.bool("can_export", False),
    )
    if s.margin_a >= s.limit_a:
        raise t.error("margin_a", f"must be below limit_a ({s.limit_a:g} A)")
    if t.has("worst_case_non_ev_a") and s.worst_case_non_ev_a < 0:
        raise t.error("worst_case_non_ev_a", "must be >= 0")
    t.done()
    return s


def _parse_wiring(t: Table) -> electrical.Wiring:
    """``wiring`` ("three-phase" | "single-phase" | "split-phase"); without it, from ``phases`` (3 or 1)."""
    phases = t.int("phases", 3) if t.has("phases") else None
    if phases is not None and phases not in (1, 3):
        raise t.error(
            "phases", f"must be 1 or 3, got {phases} (a 120/240 V service with two legs: wiring = \"split-phase\")"
        )
    if not t.has("wiring"):
        return "single-phase" if phases == 1 else "three-phase"
    raw = t.choice("wiring", electrical.WIRINGS)
    wiring: electrical.Wiring = (
        "split-phase" if raw == "split-phase" else "single-phase" if raw == "single-phase" else "three-phase"
    )
    if phases is not None and (wiring == "split-phase" or phases != electrical.n_lines(wiring)):
        raise t.error("phases", f"contradicts wiring = {wiring!r}: give only wiring")
    return wiring


def _parse_circuits(root: Table, service: ServiceConfig) -> dict[str, CircuitConfig]:
    circuits: dict[str, CircuitConfig] = {}
    explicit_wc: dict[str, bool] = {}
    tables = root.tables("circuits")
    for t in tables:
        cid = t.ident("id", what="circuit id")
        if cid == service.id or cid in circuits:
            raise t.error("id", f"duplicate circuit id {cid!r}")
        kind = t.choice("kind", CIRCUIT_KINDS[1:], "panel")
        has_wc = t.has("worst_case_non_ev_a")
        c = CircuitConfig(
            id=cid,
            kind=kind,
            parent=t.str("parent", required=True),
            limit_a=t.float("limit_a", gt=0, max=MAX_CIRCUIT_A),
            margin_a=t.float("margin_a", 0.0, min=0, max=MAX_CIRCUIT_A),
            worst_case_non_ev_a=t.float("worst_case_non_ev_a", 0.0, min=0, max=MAX_CIRCUIT_A),
            can_export=t.bool("can_export", False),
            key=t.path,
            worst_case_explicit=has_wc,
        )
        if c.margin_a >= c.limit_a:
            raise t.error("margin_a", f"must be below limit_a ({c.limit_a:g} A)")
        t.done()
        circuits[cid] = c
        explicit_wc[cid] = has_wc
    for i, t in enumerate(tables):
        c = list(circuits.values())[i]
        if c.parent != service.id and c.parent not in circuits:
            raise ConfigError(
                t.key_path("parent"),
                f"unknown circuit {c.parent!r}: circuit {c.id!r} has no path to the service {service.id!r}",
            )
    svc = CircuitConfig(
        id=service.id,
        kind="service",
        parent=None,
        limit_a=service.limit_a,
        margin_a=service.margin_a,
        worst_case_non_ev_a=max(service.worst_case_non_ev_a, 0.0),
        can_export=service.can_export,
        key="service",
        worst_case_explicit=service.worst_case_non_ev_a >= 0,
    )
    allc = {service.id: svc, **circuits}
    explicit_wc[service.id] = service.worst_case_non_ev_a >= 0
    # cycles: walk each circuit's parents
    for cid in circuits:
        seen = [cid]
        cur = allc[cid].parent
        while cur is not None and cur != service.id:
            if cur in seen:
                cyc = " -> ".join([*seen[seen.index(cur):], cur])
                raise ConfigError(f"{circuits[cid].key}.parent", f"cycle in the circuit tree: {cyc}")
            seen.append(cur)
            cur = allc[cur].parent
    # a circuit's worst-case non-EV load defaults to the sum of its children's
    _, _, order = _topology(allc)
    wc = {cid: c.worst_case_non_ev_a for cid, c in allc.items()}
    for cid in reversed(order):
        if not explicit_wc[cid]:
            wc[cid] = sum(wc[k] for k, c in allc.items() if c.parent == cid)
    return {cid: CircuitConfig(**{**c.__dict__, "worst_case_non_ev_a": wc[cid]}) for cid, c in allc.items()}


def _topology(
    circuits: Mapping[str, CircuitConfig],
) -> tuple[dict[str, tuple[str, ...]], dict[str, tuple[str, ...]], list[str]]:
    children: dict[str, list[str]] = {cid: [] for cid in circuits}
    root = None
    for cid, c in circuits.items():
        if c.parent is None:
            root = cid
        else:
            children[c.parent].append(cid)
    assert root is not None
    order: list[str] = []
    stack = [root]
    while stack:
        cid = stack.pop()
        order.append(cid)
        stack.extend(reversed(children[cid]))
    path: dict[str, tuple[str, ...]] = {}
    for cid in order:
        parent = circuits[cid].parent
        path[cid] = (cid,) if parent is None else (cid, *path[parent])
    return {k: tuple(v) for k, v in children.items()}, path, order


def _parse_priorities(root: Table) -> dict[str, PriorityClass]:
    out: dict[str, PriorityClass] = {}
    for name, t in root.subtables("priorities"):
        check_ident(t.path, name, "priority class name")
        out[name] = PriorityClass(name=name, weight=t.float("weight", gt=0, max=1e6))
        t.done()
    if not out:
        out["default"] = PriorityClass("default", 1.0)
    return out


_REMOVED_CONTROL_W = {
    "ramp_up_w_per_s": "ramp_up_a_per_s",
    "hysteresis_w": "hysteresis_a",
    "draw_allowance_w": "draw_allowance_a",
    "noncompliance_tolerance_w": "noncompliance_tolerance_a",
}


def _parse_control(t: Table | None) -> ControlConfig:
    if t is None:
        return ControlConfig()
    for old, new in _REMOVED_CONTROL_W.items():
        if t.has(old):
            raise t.error(
                old,
                f"removed: DC chargers now use {new} too, in line current per phase (the same value is then "
                f"safe on a small and a large site); convert: W / (sqrt(3) x V_LL x efficiency x pf) on three "
                f"phases",
            )
    d = ControlConfig()
    c = ControlConfig(
        tick_s=t.float("tick_s", d.tick_s, min=0.2, max=10.0),
        ramp_up_a_per_s=t.float("ramp_up_a_per_s", d.ramp_up_a_per_s, gt=0, max=1000),
        hysteresis_a=t.float("hysteresis_a", d.hysteresis_a, min=0, max=100),
        draw_allowance_a=t.float("draw_allowance_a", d.draw_allowance_a, min=0, max=100),
        rotation_period_s=t.float("rotation_period_s", d.rotation_period_s, gt=0, max=7 * 86400),
        noncompliance_tolerance_a=t.float("noncompliance_tolerance_a", d.noncompliance_tolerance_a, min=0, max=100),
        noncompliance_grace_s=t.float("noncompliance_grace_s", d.noncompliance_grace_s, min=0, max=3600),
        ev_response_s=t.float("ev_response_s", d.ev_response_s, min=0, max=120),
        stop_noncompliant=t.bool("stop_noncompliant", d.stop_noncompliant),
    )
    t.done()
    return c


def _parse_logging(t: Table | None) -> LoggingConfig:
    if t is None:
        return LoggingConfig()
    levels = ("debug", "info", "warning", "error", "critical")
    lt = t.table("loggers")
    loggers: dict[str, str] = {}
    if lt is not None:
        for name in list(lt.keys()):
            if not name or name.strip(".") != name or ".." in name:
                raise lt.error(name, "expected a logger name such as pymodbus or aiohttp.access")
            loggers[name] = lt.choice(name, levels)
    c = LoggingConfig(
        level=t.choice("level", levels[:4], "info"),
        format=t.choice("format", ("auto", "json", "console"), "auto"),
        journal=t.choice("journal", ("auto", "on", "off"), "auto"),
        loggers=loggers,
    )
    t.done()
    return c


def _parse_meters(root: Table, circuits: Mapping[str, CircuitConfig], n_phases: int) -> dict[str, MeterConfig]:
    out: dict[str, MeterConfig] = {}
    by_circuit: dict[str, str] = {}
    for t in root.tables("meters"):
        m = parse_meter(t)
        if m.id in out:
            raise t.error("id", f"duplicate meter id {m.id!r}")
        if m.circuit not in circuits:
            raise t.error("circuit", f"unknown circuit {m.circuit!r}")
        if m.role == "pv":  # a PV inverter on that circuit: it measures what it feeds in, not the circuit
            out[m.id] = m
            continue
        if m.circuit in by_circuit:
            raise t.error("circuit", f"circuit {m.circuit!r} is already measured by meter {by_circuit[m.circuit]!r}")
        if any(p >= n_phases for p in m.phase_map):
            raise t.error(
                "phase_map",
                f"the service has {n_phases} line(s) ({', '.join(PHASES[:n_phases])}): a meter phase cannot "
                f"map to {', '.join(PHASES[p] for p in m.phase_map if p >= n_phases)}"
                + (f" (use phase_map = [{', '.join(repr(p) for p in PHASES[:n_phases])}])".replace("'", '"')
                   if n_phases < 3 else ""),
            )
        _check_meter_covers(t, m, circuits[m.circuit], n_phases)
        by_circuit[m.circuit] = m.id
        out[m.id] = m
    check_bus_settings(list(out.values()))
    return out


def _check_meter_covers(t: Table, m: MeterConfig, circuit: CircuitConfig, n_phases: int) -> None:
    """A meter that measures fewer lines than its circuit carries: the others are unknown. Allowed only
    when the circuit states its worst-case non-EV load, which the unmeasured lines then keep."""
    missing = [PHASES[p] for p in range(n_phases) if p not in m.phase_map]
    if not missing or circuit.worst_case_explicit:
        return
    wc_key = f"{circuit.key}.worst_case_non_ev_a"
    raise t.error(
        "phase_map",
        f"meter {m.id!r} measures {', '.join(PHASES[p] for p in m.phase_map)} only, but circuit {circuit.id!r} "
        f"carries {', '.join(PHASES[:n_phases])}: the load on {', '.join(missing)} would be unknown. Measure "
        f"every line, or set {wc_key} explicitly (the unmeasured lines then keep that worst case)",
    )


_ROTATIONS_3 = {"L1L2L3": (0, 1, 2), "L2L3L1": (1, 2, 0), "L3L1L2": (2, 0, 1)}
# a single-phase charger: line-to-neutral on one line, or line-to-line across two
_ROTATIONS_1: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "L1": ((0,), (0,)),
    "L2": ((1,), (1,)),
    "L3": ((2,), (2,)),
    "L1-L2": ((0,), (0, 1)),
    "L2-L3": ((1,), (1, 2)),
    "L3-L1": ((2,), (2, 0)),
}
_ROTATIONS_BY_WIRING: dict[str, tuple[str, ...]] = {
    "three-phase": tuple(_ROTATIONS_1),
    "split-phase": ("L1", "L2", "L1-L2"),  # 120 V leg-to-neutral, or 240 V across both legs
    "single-phase": ("L1",),
}


def _parse_charger_wiring(
    t: Table, service: ServiceConfig, kind: ChargerKind
) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """(phases, phase_map, line_phases) of a charger from ``phases`` and ``phase_rotation``."""
    wiring = service.wiring
    if wiring == "three-phase" and kind == "ac" and not t.has("phases"):
        raise t.error(
            "phases",
            "required for an AC charger on a three-phase service: 3 for a three-phase charger, or 1 for a "
            'single-phase one (with phase_rotation "L1", "L2", "L3", or "L1-L2".. for line-to-line)',
        )
    phases = t.int("phases", 3 if (wiring == "three-phase" and kind == "dc") else 1)
    if phases not in (1, 3):
        raise t.error("phases", f"must be 1 or 3, got {phases}")
    if phases == 3:
        if wiring != "three-phase":
            raise t.error("phases", f"a three-phase charger cannot sit on a {wiring} service")
        rot = t.str("phase_rotation", "L1L2L3")
        if rot not in _ROTATIONS_3:
            raise t.error("phase_rotation", f"must be one of {', '.join(_ROTATIONS_3)} for a three-phase charger")
        return 3, _ROTATIONS_3[rot], (0, 1, 2)
    if wiring == "split-phase" and not t.has("phase_rotation"):
        raise t.error(
            "phase_rotation",
            'required on a split-phase service: "L1-L2" (240 V across both legs, as Level 2 chargers are) or '
            '"L1" / "L2" (120 V, one leg to neutral)',
        )
    rot = t.str("phase_rotation", "L1")
    allowed = _ROTATIONS_BY_WIRING[wiring]
    if rot not in allowed:
        if wiring == "single-phase" and rot in _ROTATIONS_1:
            raise t.error("phase_rotation", "a single-phase service has only L1")
        raise t.error(
            "phase_rotation", f"must be one of {', '.join(allowed)} for a single-phase charger on a {wiring} service"
        )
    phase_map, line_phases = _ROTATIONS_1[rot]
    return 1, phase_map, line_phases


def _parse_chargers(
    root: Table,
    service: ServiceConfig,
    circuits: Mapping[str, CircuitConfig],
    priorities: Mapping[str, PriorityClass],
) -> dict[str, ChargerConfig]:
    out: dict[str, ChargerConfig] = {}
    default_prio = "default" if "default" in priorities else next(iter(priorities))
    for t in root.tables("chargers"):
        cid = t.str("id", required=True)
        if "/" in cid or cid.strip() != cid:
            raise t.error("id", "must not contain '/' or surrounding spaces (it is the OCPP identity in the URL path)")
        check_ident(t.key_path("id"), cid, "charger id (its OCPP identity)")
        if cid in out:
            raise t.error("id", f"duplicate charger id {cid!r}")
        version_raw = t.choice("ocpp_version", ("1.6", "1.6J", "2.0.1"), "1.6J")
        version: OcppVersion = "2.0.1" if version_raw == "2.0.1" else "1.6"
        kind_raw = t.choice("kind", ("ac", "dc"), "ac")
        kind: ChargerKind = "dc" if kind_raw == "dc" else "ac"
        circuit = t.str("circuit", required=True)
        if circuit not in circuits:
            raise t.error("circuit", f"unknown circuit {circuit!r}")
        connectors = t.int("connectors", 1, min=1, max=16)
        phases, phase_map, line_phases = _parse_charger_wiring(t, service, kind)
        if kind == "ac":
            for bad in ("min_power_w", "max_power_w", "failsafe_power_w"):
                if t.has(bad):
                    raise t.error(bad, "AC chargers are limited in A per phase: use the *_current_a key")
            lo = t.float("min_current_a", 6.0, min=0, max=MAX_CHARGER_A)
            hi = t.float("max_current_a", gt=0, max=MAX_CHARGER_A)
            fs = t.float("failsafe_current_a", min=0, max=MAX_CHARGER_A)
            eff, pf = 1.0, 1.0
            t.float("efficiency", 1.0, gt=0, max=1)
            t.float("power_factor", 1.0, gt=0, max=1)
            unit = "A"
            lo_key, hi_key, fs_key = "min_current_a", "max_current_a", "failsafe_current_a"
        else:
            for bad in ("min_current_a", "max_current_a", "failsafe_current_a"):
                if t.has(bad):
                    raise t.error(bad, "DC chargers are limited in W: use the *_power_w key")
            lo = t.float("min_power_w", 0.0, min=0, max=MAX_CHARGER_W)
            hi = t.float("max_power_w", gt=0, max=MAX_CHARGER_W)
            fs = t.float("failsafe_power_w", min=0, max=MAX_CHARGER_W)
            if lo <= 0 < hi:
                raise t.error(
                    "min_power_w",
                    "a DC charger needs a minimum above 0 W: its limit ramps up from the minimum, so at 0 W a "
                    "session never starts; set the lowest power it keeps charging at (often 5-10 kW)",
                )
            eff = t.float("efficiency", 0.95, gt=0.5, max=1)
            pf = t.float("power_factor", 0.99, gt=0.5, max=1)
            unit = "W"
            lo_key, hi_key, fs_key = "min_power_w", "max_power_w", "failsafe_power_w"
        if lo > hi:
            raise t.error(lo_key, f"minimum {lo:g} {unit} exceeds the maximum {hi_key} = {hi:g} {unit}")
        if fs > hi:
            raise t.error(fs_key, f"fail-safe limit {fs:g} {unit} exceeds the maximum {hi_key} = {hi:g} {unit}")
        if 0 < fs < lo:
            raise t.error(fs_key, f"fail-safe limit {fs:g} {unit} lies between 0 and the minimum {lo:g} {unit}")
        prio = t.str("priority", default_prio)
        if prio not in priorities:
            raise t.error("priority", f"unknown priority class {prio!r} (known: {', '.join(priorities)})")
        ocpp = parse_charger_ocpp(t.table("ocpp"))
        t.done()
        ch = ChargerConfig(
            id=cid,
            ocpp_version=version,
            kind=kind,
            circuit=circuit,
            connectors=connectors,
            phases=phases,
            phase_map=phase_map,
            line_phases=line_phases,
            min_limit=lo,
            max_limit=hi,
            failsafe_limit=fs,
            efficiency=eff,
            power_factor=pf,
            priority=prio,
            ocpp=ocpp,
            key=t.path,
        )
        out[cid] = ch
    return out


def _check_electrical(site: Site) -> None:
    """Checks that need the whole tree: minimums that no circuit can carry, the fail-safe budget."""
    for ch in site.chargers.values():
        lo_a = site.to_line_a(ch, ch.min_limit)
        for cid in site.path_to_root[ch.circuit]:
            c = site.circuits[cid]
            if lo_a > c.limit_a - c.margin_a:
                key = "min_current_a" if ch.kind == "ac" else "min_power_w"
                raise ConfigError(
                    f"{ch.key}.{key}",
                    f"charger {ch.id!r} minimum needs {lo_a:.1f} A per phase, more than circuit "
                    f"{cid!r} can carry ({c.limit_a:g} A limit, {c.margin_a:g} A margin)",
                )
    budget = site.failsafe_budget()
    for cid, per in budget.items():
        c = site.circuits[cid]
        for p, amps in enumerate(per):
            if amps > c.limit_a + 1e-9:
                raise ConfigError(
                    c.key,
                    f"fail-safe budget exceeded on circuit {cid!r} phase {PHASES[p]}: fail-safe limits "
                    f"({amps - c.worst_case_non_ev_a:.1f} A) + worst-case non-EV load "
                    f"({c.worst_case_non_ev_a:.1f} A) = {amps:.1f} A > limit {c.limit_a:g} A; lower the "
                    f"chargers' failsafe limits beneath it",
                )
