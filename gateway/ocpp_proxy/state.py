"""What chargers tell: StatusNotification, transactions and meter values -> ChargerSnapshot."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog

from gateway import electrical
from gateway.config import ChargerConfig, Site
from gateway.model import Actuation, ChargerSnapshot, ChargerState, Session
from gateway.ocpp_proxy.policy import parse_iso
from gateway.planner.needs import Needs, NeedsCommand, from_notify_ev_charging_needs

log = structlog.get_logger(__name__)

STATUS_16 = {
    "Available": ChargerState.NO_EV,
    "Preparing": ChargerState.EV_CONNECTED,
    "Charging": ChargerState.CHARGING,
    "SuspendedEV": ChargerState.SUSPENDED_EV,
    "SuspendedEVSE": ChargerState.SUSPENDED_EVSE,
    "Finishing": ChargerState.EV_CONNECTED,
    "Reserved": ChargerState.NO_EV,
    "Faulted": ChargerState.FAULTED,
    "Unavailable": ChargerState.UNAVAILABLE,
}
CONNECTOR_201 = {
    "Available": ChargerState.NO_EV,
    "Occupied": ChargerState.EV_CONNECTED,
    "Reserved": ChargerState.NO_EV,
    "Unavailable": ChargerState.UNAVAILABLE,
    "Faulted": ChargerState.FAULTED,
}
CHARGING_201 = {
    "Charging": ChargerState.CHARGING,
    "SuspendedEV": ChargerState.SUSPENDED_EV,
    "SuspendedEVSE": ChargerState.SUSPENDED_EVSE,
    "EVConnected": ChargerState.EV_CONNECTED,
    "Idle": None,  # the connector status tells
}
# aggregation: the state that matters most for the loop wins
_RANK = [
    ChargerState.CHARGING,
    ChargerState.SUSPENDED_EVSE,
    ChargerState.SUSPENDED_EV,
    ChargerState.EV_CONNECTED,
    ChargerState.FAULTED,
    ChargerState.UNAVAILABLE,
    ChargerState.NO_EV,
]
_DRAWING = {ChargerState.CHARGING, ChargerState.SUSPENDED_EV, ChargerState.SUSPENDED_EVSE}
_MULT = {"W": 1.0, "kW": 1000.0, "A": 1.0, "Wh": 1.0, "kWh": 1000.0}


class _Draw:
    """One connector's last report: line current per site phase and power, each with its own time."""

    __slots__ = ("a", "a_at", "w", "w_at")

    def __init__(self) -> None:
        self.a: tuple[float, ...] | None = None
        self.a_at: float | None = None
        self.w: float | None = None
        self.w_at: float | None = None


PLAUSIBLE_TOLERANCE = 0.10  # a reported draw up to this fraction above the physical bound is believed...
PLAUSIBLE_MARGIN_A = 2.0  # ...plus this much (meter error, a rounding charger)


@dataclass(frozen=True)
class DrawBounds:
    """The most a charger can physically draw, per report: line current per phase (AC chargers; a DC
    charger's Current.Import is its DC output, not bounded here) and power (W)."""

    max_a: float = 10_000.0
    max_w: float = 5e6


def draw_bounds(site: Site, cfg: ChargerConfig) -> DrawBounds:
    """A report above its own maximum or its circuits' smallest limit, with PLAUSIBLE_TOLERANCE and
    PLAUSIBLE_MARGIN_A, cannot be a real draw (a breaker would have opened first): it is rejected."""
    circuit_a = min(site.circuits[c].limit_a for c in site.path_to_root[cfg.circuit])
    line_a = min(site.to_line_a(cfg, cfg.max_limit), circuit_a) * (1 + PLAUSIBLE_TOLERANCE) + PLAUSIBLE_MARGIN_A
    volts = 1 + site.service.voltage_tolerance_pct / 100
    max_w = electrical.ac_power_w(site.service, cfg.line_phases, line_a) * volts
    if cfg.kind == "dc":
        return DrawBounds(max_a=10_000.0, max_w=max(max_w, cfg.max_limit * (1 + PLAUSIBLE_TOLERANCE)))
    return DrawBounds(max_a=line_a, max_w=max_w)


class ChargerTracker:
    """Per charger: connector states, the session and the measured draw, per connector and in total.

    A station's draw is the sum over its connectors (1.6 connectorId, 2.0.1 evseId), or its own meter
    (connector/EVSE 0) when it reports one; a connector whose session ends drops out of the sum. A
    report's time is the charger's own timestamp, mapped to the monotonic clock.
    """

    def __init__(
        self,
        cfg: ChargerConfig,
        n_phases: int,
        clock: Callable[[], float],
        wall: Callable[[], float] = time.time,
        bounds: DrawBounds | None = None,
    ) -> None:
        self.cfg = cfg
        self.bounds = bounds or DrawBounds()
        self.n_phases = n_phases
        self.clock = clock
        self.wall = wall
        self.online = False
        self.connectors: dict[int, ChargerState] = {}
        self.charging: dict[int, ChargerState] = {}  # 2.0.1 TransactionEvent chargingState per EVSE
        self.session: Session | None = None  # the station's: the last started, else the earliest ongoing
        self.conn_sessions: dict[int, Session] = {}
        # per connector: the energy register (Wh) at its transaction's start (1.6 meterStart, else the first
        # reading in the transaction); a session's energy is the register minus this
        self.meter_start: dict[int, float] = {}
        self.draws: dict[int, _Draw] = {}  # per connector (0: the station's own meter)
        self.ended_at: dict[int, float] = {}  # per connector: when its last session ended
        self.stopped: set[int] = set()  # session ended, EV maybe still plugged in (Finishing): not drawing
        self.tx_connector: dict[str, int] = {}  # transaction id -> connector (1.6) or EVSE (2.0.1)
        self.draw_a: tuple[float, ...] | None = None  # the station's total, kept up to date by _total()
        self.draw_w: float | None = None
        self.draw_at: float | None = None
        self.current_state = ChargerState.NO_EV
        self.active_connectors = 0
        self.state_changed_at: float | None = None
        self._offset: float | None = None  # wall clock - monotonic clock
        self._gen = 0  # bumped on every change: the snapshot is rebuilt only then
        self._snap: ChargerSnapshot | None = None
        self._snap_key: tuple[int, bool, Session | None, Actuation | None] | None = None
        # the session's needs as the EV (ISO 15118, NotifyEVChargingNeeds) and the CMS (DataTransfer
        # ems-gateway/SessionNeeds) told them: observed, never altered (gateway.planner.needs); cleared when no
        # session is left on the station
        self.ev_needs: Needs | None = None
        self.cms_needs: Needs | None = None

    def on_ev_charging_needs(self, p: dict[str, Any]) -> None:
        """OCPP 2.0.1 NotifyEVChargingNeeds: what the EV says it needs (a later one replaces what it says anew)."""
        n = from_notify_ev_charging_needs(p)
        if n is not None:
            self.ev_needs = n.fill(self.ev_needs)

    def on_needs_command(self, cmd: NeedsCommand) -> None:
        """The CMS's SessionNeeds for this charger (None needs: cleared)."""
        self.cms_needs = None if cmd.needs is None else cmd.needs.fill(self.cms_needs)

    def needs(self) -> Needs | None:
        """The CMS's over the EV's (each fills what the other leaves unknown)."""
        if self.cms_needs is None:
            return self.ev_needs
        return self.cms_needs.fill(self.ev_needs)

    def snapshot(self, actuation: Actuation | None = None) -> ChargerSnapshot:
        k = self._snap_key
        snap = self._snap
        if (
            snap is not None
            and k is not None
            and k[0] == self._gen
            and k[1] == self.online
            and k[2] is self.session
            and k[3] is actuation
        ):
            return snap
        snap = ChargerSnapshot(
            id=self.cfg.id,
            online=self.online,
            state=self.current_state,
            draw_a=self.draw_a,
            draw_w=self.draw_w,
            draw_at=self.draw_at,
            session=self.session,
            active_connectors=self.active_connectors,
            state_changed_at=self.state_changed_at,
            actuation=actuation,
        )
        self._snap, self._snap_key = snap, (self._gen, self.online, self.session, actuation)
        return snap

    def _connector_state(self, k: int) -> ChargerState:
        return self.charging[k] if k in self.charging else self.connectors[k]

    def state(self) -> ChargerState:
        states = [self._connector_state(k) for k in set(self.connectors) | set(self.charging)]
        if not states:
            return ChargerState.NO_EV
        return min(states, key=_RANK.index)

    def _active(self) -> list[int]:
        """Connectors (not the station itself) with a session that has not ended."""
        return [
            k
            for k in set(self.connectors) | set(self.charging)
            if k != 0 and k not in self.stopped and self._connector_state(k).has_session
        ]

    def _changed(self) -> None:
        """After a status or transaction message: the aggregated state, its change time, the totals."""
        self._gen += 1
        st = self.state()
        if st != self.current_state:
            self.current_state = st
            self.state_changed_at = self.clock()
        self.active_connectors = len(self._active())
        self._total()

    def _session_ended(self, conn: int | None) -> None:
        if conn is not None and conn != 0:
            self.draws.pop(conn, None)
            self.meter_start.pop(conn, None)
            self.ended_at[conn] = self.clock()  # a report from before (buffered) does not bring it back
            self.stopped.add(conn)
        if not self._active():
            self.ev_needs = self.cms_needs = None  # the needs were the session's

    def _session_started(self, conn: int) -> None:
        self.stopped.discard(conn)

    def _map_tx(self, tx_id: str, conn: int) -> None:
        """A transaction on a connector (an earlier one there whose end was never seen is forgotten)."""
        for k in [k for k, v in self.tx_connector.items() if v == conn]:
            del self.tx_connector[k]
        self.tx_connector[tx_id] = conn

    def _transaction_ended(self, conn: int | None) -> None:
        """One connector's transaction ended: the station's session is another ongoing one, if any."""
        if conn is None:
            self.conn_sessions.clear()
        else:
            self.conn_sessions.pop(conn, None)
        rest = list(self.conn_sessions.values())
        self.session = min(rest, key=lambda x: x.started_at) if rest else None

    # -- 1.6 ------------------------------------------------------------------------------
    def on_status_16(self, p: dict[str, Any]) -> None:
        conn = int(p.get("connectorId", 0))
        st = STATUS_16.get(str(p.get("status")))
        if st is None:
            return
        if conn == 0:
            if st in (ChargerState.FAULTED, ChargerState.UNAVAILABLE):
                for k in list(self.connectors) or [1]:
                    self.connectors[k] = st
            self._changed()
            return
        self.connectors[conn] = st
        if st == ChargerState.NO_EV:
            self._session_ended(conn)
            self.stopped.discard(conn)  # the next EV plugged in here starts a new session
            if conn in self.conn_sessions:
                self._transaction_ended(conn)
            if self.session is not None and not self._any_session_state():
                self.session = None
        elif p.get("status") == "Finishing":  # the transaction stopped, the EV is still plugged in
            self._session_ended(conn)
        elif st in _DRAWING:
            self._session_started(conn)
        self._changed()

    def on_start_16(self, p: dict[str, Any], transaction_id: int | None) -> None:
        conn = int(p.get("connectorId", 1))
        prev = self.conn_sessions.get(conn)
        if transaction_id is not None and prev is not None and prev.transaction_id is None:
            # the CMS's answer to the StartTransaction already seen: the same session, now with its id
            self.session = replace(prev, transaction_id=str(transaction_id))
        else:
            self.session = Session(
                started_at=self.clock(),
                transaction_id=None if transaction_id is None else str(transaction_id),
                id_token=str(p.get("idTag")) if p.get("idTag") is not None else None,
            )
            start = p.get("meterStart")
            if isinstance(start, int | float) and not isinstance(start, bool) and math.isfinite(start):
                self.meter_start[conn] = float(start)  # Wh by the 1.6 schema
            else:
                self.meter_start.pop(conn, None)
        if transaction_id is not None:
            self._map_tx(str(transaction_id), conn)
        self.conn_sessions[conn] = self.session
        self._session_started(conn)
        if self.connectors.get(conn) in (None, ChargerState.NO_EV):
            self.connectors[conn] = ChargerState.EV_CONNECTED
        self._changed()

    def on_stop_16(self, p: dict[str, Any]) -> None:
        conn = self.tx_connector.pop(str(p.get("transactionId")), None)
        if conn is None and self.cfg.connectors == 1:
            conn = 1
        self._transaction_ended(conn)
        # transactionData is the session's history: the connector's draw ends with it
        self._session_ended(conn)
        self._changed()

    def on_meter_values_16(self, p: dict[str, Any]) -> None:
        conn = _int(p.get("connectorId"), 0)
        for mv in p.get("meterValue") or []:
            self._meter_value_16(mv, conn)
        self._total()

    def _meter_value_16(self, mv: dict[str, Any], conn: int) -> None:
        samples = []
        for sv in mv.get("sampledValue") or []:
            try:
                value = float(sv["value"])
            except (KeyError, TypeError, ValueError):
                continue
            unit = str(sv.get("unit", "Wh" if sv.get("measurand") is None else ""))
            samples.append((str(sv.get("measurand", "Energy.Active.Import.Register")), sv.get("phase"), value, unit))
        self._apply_samples(samples, conn, self._report_time(mv.get("timestamp")))

    # -- 2.0.1 ----------------------------------------------------------------------------
    def on_status_201(self, p: dict[str, Any]) -> None:
        evse = int(p.get("evseId", 0))
        st = CONNECTOR_201.get(str(p.get("connectorStatus")))
        if st is None:
            return
        self.connectors[evse] = st
        if st != ChargerState.EV_CONNECTED:
            self.charging.pop(evse, None)
        if st == ChargerState.NO_EV:
            self._session_ended(evse)
            self.stopped.discard(evse)
            if evse in self.conn_sessions:
                self._transaction_ended(evse)
            if self.session is not None and not self._any_session_state():
                self.session = None
        self._changed()

    def on_transaction_event(self, p: dict[str, Any]) -> None:
        tx = p.get("transactionInfo") or {}
        tx_id = str(tx.get("transactionId"))
        evse_id = (p.get("evse") or {}).get("id")
        if isinstance(evse_id, int) and not isinstance(evse_id, bool):
            evse = evse_id
            if self.tx_connector.get(tx_id) != evse:
                self._map_tx(tx_id, evse)
        else:  # the EVSE is only required in a transaction's first event
            evse = self.tx_connector.get(tx_id, 1)
        cs = tx.get("chargingState")
        if cs is not None:
            mapped = CHARGING_201.get(str(cs))
            if mapped is None:
                self.charging.pop(evse, None)
            else:
                self.charging[evse] = mapped
                if mapped in _DRAWING:
                    self._session_started(evse)
        event = p.get("eventType")
        if event == "Started":
            self._session_started(evse)
        token = (p.get("idToken") or {}).get("idToken")
        if event == "Started" or (self.session is None and event == "Updated"):
            self.meter_start.pop(evse, None)  # the transaction's first register reading is its start
            self.session = Session(
                started_at=self.clock(),
                transaction_id=str(tx.get("transactionId")),
                id_token=str(token) if token is not None else None,
            )
            self.conn_sessions[evse] = self.session
        elif event == "Updated" and self.session is not None and token is not None and self.session.id_token is None:
            self.session = replace(self.session, id_token=str(token))
            self.conn_sessions[evse] = self.session
        if event == "Ended":
            self._transaction_ended(evse)
            self.charging.pop(evse, None)
            self.tx_connector.pop(tx_id, None)
            self._session_ended(evse)
        else:
            for mv in p.get("meterValue") or []:
                self._meter_value_201(mv, evse)
        self._changed()

    def on_meter_values_201(self, p: dict[str, Any]) -> None:
        evse = _int(p.get("evseId"), 0)
        for mv in p.get("meterValue") or []:
            self._meter_value_201(mv, evse)
        self._total()

    def _meter_value_201(self, mv: dict[str, Any], evse: int) -> None:
        samples = []
        for sv in mv.get("sampledValue") or []:
            v = sv.get("value")
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            uom = sv.get("unitOfMeasure") or {}
            mult = uom.get("multiplier", 0)
            value = float(v) * (10.0**mult if isinstance(mult, int) and -9 <= mult <= 9 else float("inf")) if v else 0.0
            unit = str(uom.get("unit", ""))
            samples.append((str(sv.get("measurand", "Energy.Active.Import.Register")), sv.get("phase"), value, unit))
        self._apply_samples(samples, evse, self._report_time(mv.get("timestamp")))

    # -- common -----------------------------------------------------------------------------
    def _any_session_state(self) -> bool:
        return any(s.has_session for s in self.connectors.values()) or bool(self.charging)

    def _report_time(self, stamp: Any) -> float:
        """A report's own time on the monotonic clock: its age by the wall clock, never in the future;
        the arrival time when it has no parseable timestamp."""
        now = self.clock()
        dt = parse_iso(stamp)
        if dt is None:
            return now
        # wall - monotonic, kept while it holds within half a second: a timestamp repeated (reports within
        # the charger's clock resolution) maps to the same time, not one a few microseconds older
        offset = self.wall() - now
        if self._offset is None or abs(offset - self._offset) > 0.5:
            self._offset = offset
        return min(dt.timestamp() - self._offset, now)

    def _apply_samples(self, samples: list[tuple[str, Any, float, str]], conn: int, at: float) -> None:
        currents: dict[int, float] = {}
        unphased_current: float | None = None
        power: float | None = None
        phase_power = 0.0
        have_phase_power = False
        register: float | None = None
        phase_register = 0.0
        have_phase_register = False
        for measurand, phase, value, unit in samples:
            if measurand == "Energy.Active.Import.Register":
                wh = value * _MULT.get(unit, 1.0)  # Wh by default, kWh by unit
                if phase is None:
                    register = wh
                elif _phase_index(phase) is not None:
                    phase_register += wh
                    have_phase_register = True
            elif measurand == "Current.Import":
                idx = _phase_index(phase)
                if idx is None:
                    unphased_current = value
                else:
                    currents[idx] = value
            elif measurand == "Power.Active.Import":
                w = value * _MULT.get(unit, 1.0)
                if phase is None:
                    power = w
                elif _phase_index(phase) is not None:
                    phase_power += w
                    have_phase_power = True
        if power is None and have_phase_power:
            power = phase_power
        if at < self.ended_at.get(conn, -math.inf):
            return
        if register is None and have_phase_register:
            register = phase_register
        if register is not None:
            self._session_energy(conn, register, at)
        rec = self.draws.get(conn) or _Draw()
        touched = False
        draw = self._map_currents(currents, unphased_current)
        if draw is not None:
            if any(x < 0 or x > self.bounds.max_a for x in draw):
                log.warning("meter_value_implausible", charger=self.cfg.id, connector=conn, draw_a=draw,
                            max_a=round(self.bounds.max_a, 1))
            elif rec.a_at is None or at >= rec.a_at:  # an older (buffered) value does not replace a newer one
                rec.a, rec.a_at = draw, at
                touched = True
        if power is not None:
            if power < -1e6 or power > self.bounds.max_w:
                log.warning("meter_value_implausible", charger=self.cfg.id, connector=conn, draw_w=power,
                            max_w=round(self.bounds.max_w))
            elif rec.w_at is None or at >= rec.w_at:
                rec.w, rec.w_at = power, at
                touched = True
        if touched:
            self.draws[conn] = rec
            self._gen += 1

    def _session_energy(self, conn: int, register_wh: float, at: float) -> None:
        """A connector's energy register reading: its session's energy (register minus the transaction's start;
        an older, buffered reading does not replace a newer one; a register that went back counts from there)."""
        s = self.conn_sessions.get(conn)
        if s is None or not math.isfinite(register_wh) or register_wh < 0:
            return
        if s.energy_at is not None and at < s.energy_at:
            return
        start = self.meter_start.setdefault(conn, register_wh)
        if register_wh < start:  # a meter reset or a relative register: count from this reading
            start = self.meter_start[conn] = 0.0 if s.energy_at is None else register_wh - s.energy_wh
        new = replace(s, energy_wh=max(0.0, register_wh - start), energy_at=at)
        self.conn_sessions[conn] = new
        if self.session is s:
            self.session = new
        self._gen += 1

    def _total(self) -> None:
        """The station's draw: its own meter (connector 0) where it reports one at least as recent as the
        connectors' sum, else the sum over the connectors that reported or have a session (unknown if
        one of those has not reported it); its time is the oldest report in it."""
        own = self.draws.get(0)
        parts = [self.draws.get(k) for k in set(self.draws) | set(self._active()) if k != 0]
        draw_a: tuple[float, ...] | None = None
        a_at: float | None = None
        if parts and all(r is not None and r.a is not None for r in parts):
            tot = [0.0] * self.n_phases
            for r in parts:
                assert r is not None and r.a is not None and r.a_at is not None
                for i, x in enumerate(r.a):
                    tot[i] += x
                a_at = r.a_at if a_at is None else min(a_at, r.a_at)
            draw_a = tuple(tot)
        if own is not None and own.a is not None and own.a_at is not None and (a_at is None or own.a_at >= a_at):
            draw_a, a_at = own.a, own.a_at
        draw_w: float | None = None
        w_at: float | None = None
        if parts and all(r is not None and r.w is not None for r in parts):
            draw_w = 0.0
            for r in parts:
                assert r is not None and r.w is not None and r.w_at is not None
                draw_w += r.w
                w_at = r.w_at if w_at is None else min(w_at, r.w_at)
        if own is not None and own.w is not None and own.w_at is not None and (w_at is None or own.w_at >= w_at):
            draw_w, w_at = own.w, own.w_at
        self.draw_a, self.draw_w = draw_a, draw_w
        ats = [t for t in (a_at, w_at) if t is not None]
        self.draw_at = min(ats) if ats else None

    def _map_currents(self, currents: dict[int, float], unphased: float | None) -> tuple[float, ...] | None:
        out = [0.0] * self.n_phases
        if self.cfg.phases == 1:
            amps = currents.get(0, unphased)
            if amps is None and currents:
                amps = max(currents.values())
            if amps is None:
                return None
            for p in self.cfg.line_phases:
                if p < self.n_phases:
                    out[p] = amps
            return tuple(out)
        if not currents:
            if unphased is None:
                return None
            currents = {0: unphased, 1: unphased, 2: unphased}
        for i, amps in currents.items():
            if i < len(self.cfg.phase_map) and self.cfg.phase_map[i] < self.n_phases:
                out[self.cfg.phase_map[i]] = amps
        return tuple(out)


def _phase_index(phase: Any) -> int | None:
    if not isinstance(phase, str):
        return None
    if phase.startswith("L1") and phase != "L1-L2":
        return 0
    if phase.startswith("L2") and phase != "L2-L3":
        return 1
    if phase.startswith("L3") and phase != "L3-L1":
        return 2
    return None


def _int(v: Any, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default
