"""What chargers tell: StatusNotification, transactions and meter values -> ChargerSnapshot."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog

from gateway.config import ChargerConfig
from gateway.model import ChargerSnapshot, ChargerState, Session

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
_MULT = {"W": 1.0, "kW": 1000.0, "A": 1.0, "Wh": 1.0, "kWh": 1000.0}


class ChargerTracker:
    """Per charger: connector states, the session and the last measured draw."""

    def __init__(self, cfg: ChargerConfig, n_phases: int, clock: Callable[[], float]) -> None:
        self.cfg = cfg
        self.n_phases = n_phases
        self.clock = clock
        self.online = False
        self.connectors: dict[int, ChargerState] = {}
        self.charging: dict[int, ChargerState] = {}  # 2.0.1 TransactionEvent chargingState per EVSE
        self.session: Session | None = None
        self.draw_a: tuple[float, ...] | None = None
        self.draw_w: float | None = None
        self.draw_at: float | None = None

    def snapshot(self) -> ChargerSnapshot:
        return ChargerSnapshot(
            id=self.cfg.id,
            online=self.online,
            state=self.state(),
            draw_a=self.draw_a,
            draw_w=self.draw_w,
            draw_at=self.draw_at,
            session=self.session,
        )

    def state(self) -> ChargerState:
        states: list[ChargerState] = []
        keys = set(self.connectors) | set(self.charging)
        for k in keys:
            if k in self.charging:
                states.append(self.charging[k])
            else:
                states.append(self.connectors[k])
        if not states:
            return ChargerState.NO_EV
        return min(states, key=_RANK.index)

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
            return
        self.connectors[conn] = st
        if st == ChargerState.NO_EV and self.session is not None and not self._any_session_state():
            self.session = None

    def on_start_16(self, p: dict[str, Any], transaction_id: int | None) -> None:
        conn = int(p.get("connectorId", 1))
        self.session = Session(
            started_at=self.clock(),
            transaction_id=None if transaction_id is None else str(transaction_id),
            id_token=str(p.get("idTag")) if p.get("idTag") is not None else None,
        )
        if self.connectors.get(conn) in (None, ChargerState.NO_EV):
            self.connectors[conn] = ChargerState.EV_CONNECTED

    def on_stop_16(self, p: dict[str, Any]) -> None:
        self.session = None
        for md in p.get("transactionData") or []:
            self._meter_value_16(md)

    def on_meter_values_16(self, p: dict[str, Any]) -> None:
        for mv in p.get("meterValue") or []:
            self._meter_value_16(mv)

    def _meter_value_16(self, mv: dict[str, Any]) -> None:
        samples = []
        for sv in mv.get("sampledValue") or []:
            try:
                value = float(sv["value"])
            except (KeyError, TypeError, ValueError):
                continue
            unit = str(sv.get("unit", "Wh" if sv.get("measurand") is None else ""))
            samples.append((str(sv.get("measurand", "Energy.Active.Import.Register")), sv.get("phase"), value, unit))
        self._apply_samples(samples)

    # -- 2.0.1 ----------------------------------------------------------------------------
    def on_status_201(self, p: dict[str, Any]) -> None:
        evse = int(p.get("evseId", 0))
        st = CONNECTOR_201.get(str(p.get("connectorStatus")))
        if st is None:
            return
        self.connectors[evse] = st
        if st != ChargerState.EV_CONNECTED:
            self.charging.pop(evse, None)
        if st == ChargerState.NO_EV and self.session is not None and not self._any_session_state():
            self.session = None

    def on_transaction_event(self, p: dict[str, Any]) -> None:
        evse = int((p.get("evse") or {}).get("id", 1))
        tx = p.get("transactionInfo") or {}
        cs = tx.get("chargingState")
        if cs is not None:
            mapped = CHARGING_201.get(str(cs))
            if mapped is None:
                self.charging.pop(evse, None)
            else:
                self.charging[evse] = mapped
        event = p.get("eventType")
        token = (p.get("idToken") or {}).get("idToken")
        if event == "Started" or (self.session is None and event == "Updated"):
            self.session = Session(
                started_at=self.clock(),
                transaction_id=str(tx.get("transactionId")),
                id_token=str(token) if token is not None else None,
            )
        elif event == "Updated" and self.session is not None and token is not None and self.session.id_token is None:
            self.session = Session(self.session.started_at, self.session.transaction_id, str(token))
        if event == "Ended":
            self.session = None
            self.charging.pop(evse, None)
        for mv in p.get("meterValue") or []:
            self._meter_value_201(mv)

    def on_meter_values_201(self, p: dict[str, Any]) -> None:
        for mv in p.get("meterValue") or []:
            self._meter_value_201(mv)

    def _meter_value_201(self, mv: dict[str, Any]) -> None:
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
        self._apply_samples(samples)

    # -- common -----------------------------------------------------------------------------
    def _any_session_state(self) -> bool:
        return any(s.has_session for s in self.connectors.values()) or bool(self.charging)

    def _apply_samples(self, samples: list[tuple[str, Any, float, str]]) -> None:
        currents: dict[int, float] = {}
        unphased_current: float | None = None
        power: float | None = None
        phase_power = 0.0
        have_phase_power = False
        for measurand, phase, value, unit in samples:
            if measurand == "Current.Import":
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
        now = self.clock()
        touched = False
        draw = self._map_currents(currents, unphased_current)
        if draw is not None:
            if any(x < 0 or x > 10_000 for x in draw):
                log.warning("meter_value_implausible", charger=self.cfg.id, draw_a=draw)
            else:
                self.draw_a = draw
                touched = True
        if power is not None:
            if power < -1e6 or power > 5e6:
                log.warning("meter_value_implausible", charger=self.cfg.id, draw_w=power)
            else:
                self.draw_w = power
                touched = True
        if touched:
            self.draw_at = now

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
