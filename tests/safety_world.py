"""A small world around the allocator, for the time-domain safety tests, with its own physics.

The world has a service (three-phase, single-phase or 120/240 V split-phase), a few circuits, chargers
(AC three-phase, line-to-neutral, line-to-line; DC with efficiency and power factor; stations with several
connectors), EVs that arrive, follow a new limit only after their own response delay, ramp up, taper and
leave, chargers that accept a limit late or reject it (and are sent it again), report MeterValues per
connector every few seconds or never, meters that go stale or invalid, and non-EV loads that step.

It does not use the gateway's conversions: the line currents come from first principles here
(:func:`line_current_a`), from the world's own description of each charger's connection, so that a wrong
conversion in the gateway shows up as a physical overload. Line currents of loads on the same line add
arithmetically (an upper bound of the phasor sum, which is what the limits are about).

The gateway's side is only ``allocate`` (called through :func:`allocate_step`, which speaks both the old
``allocate(snapshot, site, previous, now) -> Allocation`` and the new ``-> (Allocation, state)``) and the
``Site`` parsed from the TOML-shaped dict that :meth:`WorldSpec.site_dict` writes.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.allocation import allocate
from gateway.config import Site, site_from_dict
from gateway.errors import ConfigError
from gateway.model import Actuation, Allocation, ChargerSnapshot, ChargerState, MeterReading, Session, Snapshot

Wiring = Literal["three-phase", "single-phase", "split-phase"]
SUBSTEPS = 4  # physics steps per gateway tick
EPS_A = 0.05  # what the oracle forgives (rounding of limits to 0.1 A and W)
LEASE_S = 60.0
RETRY_S = 3.0  # a rejected limit is sent again after this long
ACCEPT_DELAY_MAX_S = 2.0


# ---- physics -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ServiceSpec:
    wiring: Wiring
    voltage_v: float  # three-phase: line-to-line; single-phase: its one voltage; split-phase: leg to leg (240)
    limit_a: float
    margin_a: float = 0.0
    voltage_tolerance_pct: float = 0.0

    @property
    def n_lines(self) -> int:
        return {"three-phase": 3, "single-phase": 1, "split-phase": 2}[self.wiring]

    @property
    def v_line_neutral(self) -> float:
        if self.wiring == "three-phase":
            return self.voltage_v / math.sqrt(3.0)
        return self.voltage_v / 2.0 if self.wiring == "split-phase" else self.voltage_v

    @property
    def v_line_line(self) -> float:
        return self.voltage_v  # three-phase L-L, split-phase leg to leg (single-phase has none)


def connection_lines(connection: str) -> tuple[int, ...]:
    """The lines a connection loads: "L1L2L3" (three-phase, any rotation), "L2" (line-to-neutral), "L1-L2"
    (line-to-line, or 240 V across both legs of a split-phase service)."""
    if "-" in connection:
        a, b = connection.split("-")
        return int(a[1]) - 1, int(b[1]) - 1
    return tuple(sorted(int(connection[i + 1]) - 1 for i in range(0, len(connection), 2)))


def line_current_a(service: ServiceSpec, connection: str, kind: str, value: float, *, efficiency: float = 1.0,
                   power_factor: float = 1.0, voltage_factor: float = 1.0) -> float:
    """The current in each line a load draws. AC: ``value`` is the current per phase the EV draws (A), which
    is the line current whatever the connection. DC: ``value`` is the output power (W); the input power
    P/eff at power factor pf is S = P/(eff*pf) volt-amperes, drawn as S/(sqrt3*V_LL) per line (three-phase),
    S/V_LN (line-to-neutral) or S/V_LL (line-to-line), at the voltage actually present."""
    if kind == "ac":
        return value
    s_va = value / (efficiency * power_factor)
    lines = connection_lines(connection)
    if len(lines) == 3:
        v = math.sqrt(3.0) * service.v_line_line
    elif len(lines) == 2:
        v = service.v_line_line
    else:
        v = service.v_line_neutral
    return s_va / (v * voltage_factor)


# ---- the world's description -------------------------------------------------------------------------
@dataclass(frozen=True)
class CircuitSpec:
    id: str
    parent: str
    limit_a: float
    margin_a: float = 0.0
    metered: bool = True


@dataclass(frozen=True)
class EvSpec:
    connector: int  # 1-based
    arrive_s: float
    depart_s: float
    need_wh: float
    max_value: float  # the EV's own maximum: A per phase (AC) or W (DC)
    response_s: float  # it follows a new limit this long after the charger applied it
    ramp_per_s: float  # A/s or W/s
    min_a: float = 6.0  # AC: below this offered current the EV pauses


@dataclass(frozen=True)
class ChargerSpec:
    id: str
    circuit: str
    kind: Literal["ac", "dc"]
    connection: str  # "L1L2L3", "L2L3L1", "L1", "L1-L2", ...
    min_limit: float
    max_limit: float
    failsafe_limit: float
    connectors: int = 1
    efficiency: float = 1.0
    power_factor: float = 1.0
    priority: str = "default"
    report_s: float | None = 10.0  # MeterValues interval per connector (None: the charger reports none)
    accept_delay_s: float = 0.5
    reject_share: float = 0.0  # share of the limits it rejects the first time they are sent

    def config(self) -> dict[str, Any]:
        lines = connection_lines(self.connection)
        d: dict[str, Any] = {"id": self.id, "kind": self.kind, "circuit": self.circuit, "connectors": self.connectors,
                             "phases": 3 if len(lines) == 3 else 1, "phase_rotation": self.connection,
                             "priority": self.priority}
        if self.kind == "ac":
            d.update(min_current_a=self.min_limit, max_current_a=self.max_limit,
                     failsafe_current_a=self.failsafe_limit)
        else:
            d.update(min_power_w=self.min_limit, max_power_w=self.max_limit, failsafe_power_w=self.failsafe_limit,
                     efficiency=self.efficiency, power_factor=self.power_factor)
        return d


@dataclass(frozen=True)
class BaseStep:
    at_s: float
    circuit: str
    amps: tuple[float, ...]  # the circuit's own non-EV load per line from then on


@dataclass(frozen=True)
class MeterFault:
    circuit: str
    start_s: float
    end_s: float
    kind: Literal["stale", "invalid"]


@dataclass(frozen=True)
class WorldSpec:
    service: ServiceSpec
    circuits: tuple[CircuitSpec, ...]
    chargers: tuple[ChargerSpec, ...]
    evs: Mapping[str, tuple[EvSpec, ...]]  # per charger
    base: tuple[BaseStep, ...] = ()
    faults: tuple[MeterFault, ...] = ()
    service_metered: bool = True
    tick_s: float = 1.0
    ev_response_s: float = 10.0
    duration_s: float = 180.0
    priorities: Mapping[str, float] = field(default_factory=lambda: {"default": 1.0})
    control: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0

    def circuit_ids(self) -> list[str]:
        return ["service", *(c.id for c in self.circuits)]

    def limits(self) -> dict[str, tuple[float, float]]:
        out = {"service": (self.service.limit_a, self.service.margin_a)}
        out.update({c.id: (c.limit_a, c.margin_a) for c in self.circuits})
        return out

    def path(self, circuit: str) -> list[str]:
        parents = {c.id: c.parent for c in self.circuits}
        out = [circuit]
        while out[-1] != "service":
            out.append(parents[out[-1]])
        return out

    def worst_non_ev(self) -> dict[str, float]:
        """Per circuit, the highest non-EV current through it per line that the base steps ever give."""
        own: dict[str, list[tuple[float, ...]]] = {cid: [(0.0,) * self.service.n_lines] for cid in self.circuit_ids()}
        for b in self.base:
            own[b.circuit].append(b.amps)
        return {cid: sum(max(max(a) for a in own[k]) for k in own if cid in self.path(k)) for cid in own}

    def meter_phase_map(self) -> list[str]:
        return ["L1", "L2", "L3"][: self.service.n_lines]

    def site_dict(self) -> dict[str, Any]:
        s = self.service
        svc: dict[str, Any] = {"voltage_ll_v": s.voltage_v, "limit_a": s.limit_a, "margin_a": s.margin_a,
                               "voltage_tolerance_pct": s.voltage_tolerance_pct}
        if s.wiring == "split-phase":
            svc["wiring"] = "split-phase"
        else:
            svc["phases"] = s.n_lines
        worst = self.worst_non_ev()
        svc["worst_case_non_ev_a"] = worst["service"]
        meters = []
        if self.service_metered:
            meters.append({"id": "m-service", "circuit": "service", "host": "127.0.0.1",
                           "phase_map": self.meter_phase_map()})
        circuits = []
        for c in self.circuits:
            circuits.append({"id": c.id, "parent": c.parent, "limit_a": c.limit_a, "margin_a": c.margin_a,
                             "worst_case_non_ev_a": worst[c.id]})
            if c.metered:
                meters.append({"id": f"m-{c.id}", "circuit": c.id, "host": "127.0.0.1",
                               "phase_map": self.meter_phase_map()})
        control = {"tick_s": self.tick_s, "ev_response_s": self.ev_response_s, **self.control}
        return {"site": {"id": "world"}, "service": svc, "circuits": circuits, "meters": meters,
                "chargers": [c.config() for c in self.chargers], "control": control,
                "priorities": {k: {"weight": v} for k, v in self.priorities.items()}}

    def site(self) -> Site:
        return site_from_dict(self.site_dict())

    def meter_of(self, circuit: str) -> str | None:
        if circuit == "service":
            return "m-service" if self.service_metered else None
        c = next(c for c in self.circuits if c.id == circuit)
        return f"m-{circuit}" if c.metered else None

    def exempt_s(self) -> float:
        """How long after a non-EV step a circuit may be over: a tick, the meter's age, the chargers' worst
        confirmation (a delay, one rejection, the retry's delay) and the EVs' response."""
        return 2 * self.tick_s + 2 * ACCEPT_DELAY_MAX_S + RETRY_S + self.ev_response_s


def split_phase_supported() -> bool:
    """Whether the gateway's config accepts a 120/240 V split-phase service yet."""
    spec = WorldSpec(ServiceSpec("split-phase", 240.0, 100.0), (),
                     (ChargerSpec("x", "service", "ac", "L1-L2", 6.0, 32.0, 0.0),), {})
    try:
        return spec.site().service.phases == 2
    except ConfigError:
        return False


# ---- the world's state -------------------------------------------------------------------------------
@dataclass
class _Connector:
    ev: EvSpec | None = None
    draw: float = 0.0  # A per phase or W, what the EV draws now
    delivered_wh: float = 0.0
    offered: list[tuple[float, float]] = field(default_factory=lambda: [(-1e9, 0.0)])  # (t, share) history
    report: tuple[float, float] | None = None  # (value, at) of its last MeterValues
    next_report: float = math.inf
    since: float = 0.0  # session start


@dataclass
class _Charger:
    spec: ChargerSpec
    conns: list[_Connector]
    sent: float | None = None  # the last limit the gateway sent
    pending: tuple[float, float, float, bool] | None = None  # (limit, since, resolves at, rejects)
    accepted: float | None = None
    accepted_at: float | None = None
    rejected_at: float | None = None
    retry_at: float | None = None
    lease_until: float = 0.0
    state: ChargerState = ChargerState.NO_EV
    state_changed_at: float = 0.0
    in_force: list[tuple[float, float]] = field(default_factory=list)  # (t, effective limit) history


@dataclass(frozen=True)
class Violation:
    t: float
    circuit: str
    line: int
    current_a: float
    allowed_a: float

    def __str__(self) -> str:
        return (f"t={self.t:.2f} s: {self.circuit} L{self.line + 1} carries {self.current_a:.2f} A "
                f"> limit - margin = {self.allowed_a:.2f} A")


def allocate_step(snapshot: Snapshot, site: Site, state: object, now: float) -> tuple[Allocation, object]:
    """The allocator, whichever API it has: the new ``allocate(snapshot, site, state, now) -> (Allocation,
    state)`` or the old ``allocate(snapshot, site, previous_allocation, now) -> Allocation``."""
    fn: Callable[..., object] = allocate
    out = fn(snapshot, site, state, now)
    if isinstance(out, tuple):
        alloc, new_state = out
        assert isinstance(alloc, Allocation)
        return alloc, new_state
    assert isinstance(out, Allocation)
    return out, out


class World:
    """Steps the world and the allocator together; records every physical excursion above limit - margin."""

    def __init__(self, spec: WorldSpec) -> None:
        self.spec = spec
        self.site = spec.site()
        self.rng = random.Random(spec.seed)
        self.voltage_factor = 1.0 - spec.service.voltage_tolerance_pct / 100.0 * self.rng.random()
        self.chargers = {c.id: _Charger(c, [_Connector() for _ in range(c.connectors)]) for c in spec.chargers}
        for ch in self.chargers.values():  # the fail-safe profile is in place from the start
            ch.accepted, ch.accepted_at, ch.lease_until = ch.spec.failsafe_limit, 0.0, LEASE_S
        self.state: object = None
        self.energy_wh = 0.0  # delivered to every EV so far
        self.now = 0.0
        self.allocations: list[Allocation] = []
        self.violations: list[Violation] = []
        self.excursions: list[Violation] = []  # above the limit, exempt or not
        self.n_lines = spec.service.n_lines
        self.lines = {c.id: connection_lines(c.connection) for c in spec.chargers}
        self.under = {cid: [k for k in spec.circuit_ids() if cid in spec.path(k)] for cid in spec.circuit_ids()}
        self.feeds = {cid: [ch for ch in self.chargers.values() if cid in spec.path(ch.spec.circuit)]
                      for cid in spec.circuit_ids()}
        self.base_by = {cid: sorted((b for b in spec.base if b.circuit == cid), key=lambda b: b.at_s)
                        for cid in spec.circuit_ids()}
        self.steps_up: dict[str, list[float]] = {cid: [] for cid in spec.circuit_ids()}
        own: dict[str, tuple[float, ...]] = {}
        for b in sorted(spec.base, key=lambda b: b.at_s):
            before = own.get(b.circuit, (0.0,) * self.n_lines)
            if any(x > y + 1e-9 for x, y in zip(b.amps, before, strict=True)):
                for c in spec.path(b.circuit):
                    self.steps_up[c].append(b.at_s)
            own[b.circuit] = b.amps

    # -- physics ---------------------------------------------------------------------------------------
    def base_a(self, circuit: str, t: float) -> tuple[float, ...]:
        cur = (0.0,) * self.n_lines
        for b in self.base_by[circuit]:
            if b.at_s > t:
                break
            cur = b.amps
        return cur

    def charger_line_a(self, ch: _Charger) -> list[float]:
        out = [0.0] * self.n_lines
        s = ch.spec
        total = sum(c.draw for c in ch.conns)
        a = line_current_a(self.spec.service, s.connection, s.kind, total, efficiency=s.efficiency,
                           power_factor=s.power_factor, voltage_factor=self.voltage_factor)
        for ln in self.lines[s.id]:
            out[ln] += a
        return out

    def circuit_a(self, circuit: str, t: float) -> list[float]:
        out = [0.0] * self.n_lines
        for k in self.under[circuit]:
            for ln, a in enumerate(self.base_a(k, t)):
                out[ln] += a
        for ch in self.feeds[circuit]:
            for ln, a in enumerate(self.charger_line_a(ch)):
                out[ln] += a
        return out

    def check(self, t: float) -> None:
        limits = self.spec.limits()
        for cid in self.spec.circuit_ids():
            limit, margin = limits[cid]
            exempt = any(s <= t <= s + self.spec.exempt_s() for s in self.steps_up[cid])
            for ln, a in enumerate(self.circuit_a(cid, t)):
                if a > limit - margin + EPS_A:
                    v = Violation(t, cid, ln, a, limit - margin)
                    self.excursions.append(v)
                    if not exempt:
                        self.violations.append(v)

    # -- chargers and EVs ------------------------------------------------------------------------------
    def effective_limit(self, ch: _Charger, t: float) -> float:
        if ch.accepted is None:
            return ch.spec.max_limit
        return ch.accepted if t < ch.lease_until else ch.spec.failsafe_limit

    def _share(self, ch: _Charger, t: float) -> float:
        active = [c for c in ch.conns if c.ev is not None and c.delivered_wh < c.ev.need_wh]
        return self.effective_limit(ch, t) / max(1, len(active))

    def _step_ev(self, ch: _Charger, c: _Connector, t: float, dt: float) -> None:
        ev = c.ev
        if ev is None:
            return
        # what it was offered one response delay ago (it follows late, each change as late as the others)
        i = bisect.bisect_right([x[0] for x in c.offered], t - ev.response_s) - 1
        offered = c.offered[max(i, 0)][1]
        cap = ev.max_value
        if c.delivered_wh >= 0.8 * ev.need_wh:  # taper over the last fifth
            cap *= max(0.1, (ev.need_wh - c.delivered_wh) / (0.2 * ev.need_wh))
        if c.delivered_wh >= ev.need_wh:
            cap = 0.0
        target = min(offered, cap)
        if ch.spec.kind == "ac" and offered < ev.min_a:
            target = 0.0
        c.draw = target if target <= c.draw else min(target, c.draw + ev.ramp_per_s * dt)
        v_ln = self.spec.service.v_line_neutral
        watts = c.draw if ch.spec.kind == "dc" else c.draw * len(self.lines[ch.spec.id]) * v_ln
        c.delivered_wh += watts * dt / 3600.0
        self.energy_wh += watts * dt / 3600.0

    def _station_cap(self, ch: _Charger, t: float) -> None:
        """A compliant station keeps the sum of its connectors within the highest limit it had over the last
        response window (its EVs follow a decrease late, but a newly started EV does not add to an old share)."""
        if len(ch.conns) < 2:
            return
        eff = self.effective_limit(ch, t)
        if not ch.in_force or ch.in_force[-1][1] != eff:
            ch.in_force.append((t, eff))
        window = max((c.ev.response_s for c in ch.conns if c.ev is not None), default=0.0)
        keep = [e for e in ch.in_force if e[0] >= t - window]
        older = [e for e in ch.in_force if e[0] < t - window]
        ch.in_force = older[-1:] + keep
        cap = max(v for _, v in ch.in_force)
        total = sum(c.draw for c in ch.conns)
        if total > cap > 0.0 or (cap <= 0.0 < total):
            scale = max(cap, 0.0) / total
            for c in ch.conns:
                c.draw *= scale

    def _arrivals(self, ch: _Charger, t: float) -> None:
        for ev in self.spec.evs.get(ch.spec.id, ()):
            c = ch.conns[ev.connector - 1]
            if c.ev is None and ev.arrive_s <= t < ev.depart_s:
                c.ev, c.since, c.report = ev, t, None
                c.next_report = t if ch.spec.report_s is not None else math.inf  # first at the session's start
                c.offered = [(-1e9, 0.0)]
            elif c.ev is ev and t >= ev.depart_s:
                c.ev, c.draw, c.delivered_wh, c.report, c.next_report = None, 0.0, 0.0, None, math.inf
                c.offered = [(-1e9, 0.0)]

    def _actuate(self, ch: _Charger, t: float) -> None:
        p = ch.pending
        if p is not None and t >= p[2]:
            ch.pending = None
            if p[3]:
                ch.rejected_at, ch.retry_at = t, t + RETRY_S
            else:
                ch.accepted, ch.accepted_at, ch.lease_until = p[0], t, t + LEASE_S
        if ch.retry_at is not None and t >= ch.retry_at and ch.pending is None and ch.sent is not None:
            ch.retry_at = None
            ch.pending = (ch.sent, t, t + ch.spec.accept_delay_s, False)
        if ch.accepted is not None and ch.pending is None and ch.retry_at is None:
            ch.lease_until = max(ch.lease_until, t + LEASE_S)  # renewed while the gateway runs

    def send(self, ch: _Charger, limit: float, t: float) -> None:
        if ch.sent is not None and abs(limit - ch.sent) < 1e-9:
            return
        ch.sent = limit
        rejects = self.rng.random() < ch.spec.reject_share
        resolves = ch.pending[2] if ch.pending is not None else t + ch.spec.accept_delay_s
        ch.pending, ch.retry_at = (limit, t, resolves, rejects), None

    def _reports(self, ch: _Charger, t: float) -> None:
        for c in ch.conns:
            if c.ev is not None and t >= c.next_report and ch.spec.report_s is not None:
                c.report, c.next_report = (c.draw, t), c.next_report + ch.spec.report_s

    def _state(self, ch: _Charger, t: float) -> None:
        evs = [c for c in ch.conns if c.ev is not None]
        if not evs:
            st = ChargerState.NO_EV
        elif any(c.draw > 0 for c in evs):
            st = ChargerState.CHARGING
        elif all(c.delivered_wh >= c.ev.need_wh for c in evs if c.ev is not None):
            st = ChargerState.SUSPENDED_EV
        elif self.effective_limit(ch, t) <= 0:
            st = ChargerState.SUSPENDED_EVSE
        elif any(t - c.since < 2.0 for c in evs):
            st = ChargerState.EV_CONNECTED
        else:
            st = ChargerState.CHARGING  # offered a limit, about to draw
        if st != ch.state:
            ch.state, ch.state_changed_at = st, t

    def physics(self, t: float, dt: float) -> None:
        for ch in self.chargers.values():
            self._arrivals(ch, t)
            self._actuate(ch, t)
            share = self._share(ch, t)
            for c in ch.conns:
                if c.ev is not None and abs(c.offered[-1][1] - share) > 1e-9:
                    c.offered.append((t, share))
                self._step_ev(ch, c, t, dt)
            self._station_cap(ch, t)
            self._reports(ch, t)
            self._state(ch, t)
        self.check(t)

    # -- the gateway's view ----------------------------------------------------------------------------
    def charger_snapshot(self, ch: _Charger, t: float) -> ChargerSnapshot:
        s = ch.spec
        reps = [c.report for c in ch.conns if c.ev is not None and c.report is not None]
        draw_a: tuple[float, ...] | None = None
        draw_w: float | None = None
        draw_at = min((r[1] for r in reps), default=None)
        if reps:
            total = sum(r[0] for r in reps)
            if s.kind == "ac":
                draw_a = tuple(total if ln in self.lines[s.id] else 0.0 for ln in range(self.n_lines))
            else:
                draw_w = total
        active = [c for c in ch.conns if c.ev is not None]
        session = Session(started_at=min(c.since for c in active)) if active else None
        act = Actuation(controlled=ch.accepted is not None, failsafe_installed=True, accepted_limit=ch.accepted,
                        accepted_at=ch.accepted_at, pending_limit=None if ch.pending is None else ch.pending[0],
                        pending_since=None if ch.pending is None else ch.pending[1], rejected_at=ch.rejected_at,
                        lease_until=ch.lease_until)
        return ChargerSnapshot(id=s.id, online=True, state=ch.state, draw_a=draw_a, draw_w=draw_w, draw_at=draw_at,
                               session=session, active_connectors=max(1, len(active)),
                               state_changed_at=ch.state_changed_at, actuation=act)

    def meter_reading(self, circuit: str, t: float) -> MeterReading | None:
        for f in self.spec.faults:
            if f.circuit == circuit and f.start_s <= t < f.end_s:
                if f.kind == "invalid":
                    return MeterReading(current_a=tuple(self.circuit_a(circuit, t)), at=t, valid=False,
                                        reason="invalid")
                return MeterReading(current_a=tuple(self.circuit_a(circuit, f.start_s)), at=f.start_s)
        return MeterReading(current_a=tuple(self.circuit_a(circuit, t)), at=t)

    def snapshot(self, t: float) -> Snapshot:
        meters: dict[str, MeterReading | None] = {}
        for cid in self.spec.circuit_ids():
            mid = self.spec.meter_of(cid)
            if mid is not None:
                meters[mid] = self.meter_reading(cid, t)
        chargers = {cid: self.charger_snapshot(ch, t) for cid, ch in self.chargers.items()}
        return Snapshot(taken_at=t, meters=meters, chargers=chargers)

    def tick(self, t: float) -> Allocation:
        alloc, self.state = allocate_step(self.snapshot(t), self.site, self.state, t)
        self.allocations.append(alloc)
        for cid, ch in self.chargers.items():
            lim = alloc.limit_of(cid)
            if lim is not None:
                self.send(ch, lim, t)
        return alloc

    def run(self, until: float | None = None) -> World:
        end = self.spec.duration_s if until is None else until
        dt = self.spec.tick_s / SUBSTEPS
        n = round(self.now / dt)
        while self.now < end - 1e-9:
            t = self.now
            if n % SUBSTEPS == 0:
                self.tick(t)
            self.physics(t, dt)
            n += 1
            self.now = round(n * dt, 9)
        return self

    # -- what the tests look at ------------------------------------------------------------------------
    def limit_series(self, charger: str) -> list[tuple[float, float]]:
        return [(a.at, a.limits[charger].limit) for a in self.allocations if charger in a.limits]

    def first_violation(self) -> Violation | None:
        return self.violations[0] if self.violations else None

    def overload_a_s(self, circuit: str | None = None) -> float:
        """The non-exempt excess above limit - margin, integrated (A*s)."""
        dt = self.spec.tick_s / SUBSTEPS
        return sum((v.current_a - v.allowed_a) * dt for v in self.violations if circuit in (None, v.circuit))
