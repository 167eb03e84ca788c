"""Session.energy_wh from what the charger reports: the 1.6 energy register minus the transaction's meterStart,
the 2.0.1 register minus its first reading in the transaction; Wh or kWh by unit; a buffered, older reading
does not replace a newer one; a multi-connector station's sessions apart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.model import Session
from gateway.ocpp_proxy.state import ChargerTracker

from .test_feedback import tracker, wall_iso
from .test_limits import FakeClock

WALL = 1_800_000_000.0


def reg16(conn: int, value: float, unit: str | None, stamp: str) -> dict[str, Any]:
    sv: dict[str, Any] = {"value": str(value), "measurand": "Energy.Active.Import.Register"}
    if unit is not None:
        sv["unit"] = unit
    return {"connectorId": conn, "transactionId": 7, "meterValue": [{"timestamp": stamp, "sampledValue": [sv]}]}


def reg201(value: float, unit: str, stamp: str, context: str = "Sample.Periodic") -> dict[str, Any]:
    return {"timestamp": stamp, "sampledValue": [{"value": value, "context": context, "unitOfMeasure": {"unit": unit},
                                                  "measurand": "Energy.Active.Import.Register"}]}


def session(t: ChargerTracker) -> Session:
    assert t.session is not None
    return t.session


def test_16_register_minus_meter_start(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tracker(tmp_path, "CP16", clock, WALL)
    start = {"connectorId": 1, "idTag": "T1", "meterStart": 120_000, "timestamp": wall_iso(WALL)}
    t.on_start_16(start, None)
    assert session(t).energy_wh == 0.0 and session(t).energy_at is None
    t.on_start_16(start, 7)  # the CMS's answer: the same session, its id now known
    assert session(t).transaction_id == "7" and session(t).started_at == 1000.0
    t.on_meter_values_16(reg16(1, 125_500.0, "Wh", wall_iso(WALL - 10)))
    assert session(t).energy_wh == pytest.approx(5_500.0) and session(t).energy_at == pytest.approx(990.0)
    t.on_meter_values_16(reg16(1, 126.0, "kWh", wall_iso(WALL - 5)))  # kWh by its unit
    assert session(t).energy_wh == pytest.approx(6_000.0)
    t.on_meter_values_16(reg16(1, 125_800.0, None, wall_iso(WALL - 20)))  # older (buffered), Wh by default
    assert session(t).energy_wh == pytest.approx(6_000.0), "an older reading does not replace a newer one"
    t.on_stop_16({"transactionId": 7, "meterStop": 126_000, "timestamp": wall_iso(WALL)})
    assert t.session is None
    t.on_start_16({"connectorId": 1, "idTag": "T2", "meterStart": 126_000, "timestamp": wall_iso(WALL)}, 8)
    assert session(t).energy_wh == 0.0, "the next session counts from its own meterStart"
    t.on_meter_values_16(reg16(1, 127_000.0, "Wh", wall_iso(WALL)))
    assert session(t).energy_wh == pytest.approx(1_000.0)


def test_16_without_meter_start_or_relative(tmp_path: Path) -> None:
    """No meterStart: the first reading in the session is its start; a register below meterStart (a charger that
    reports the transaction's own energy) counts from zero."""
    clock = FakeClock()
    t = tracker(tmp_path, "CP16", clock, WALL)
    t.on_start_16({"connectorId": 1, "idTag": "T1", "timestamp": wall_iso(WALL)}, 7)
    t.on_meter_values_16(reg16(1, 50_000.0, "Wh", wall_iso(WALL - 2)))
    t.on_meter_values_16(reg16(1, 52_000.0, "Wh", wall_iso(WALL - 1)))
    assert session(t).energy_wh == pytest.approx(2_000.0)
    u = tracker(tmp_path, "CP16", clock, WALL)
    u.on_start_16({"connectorId": 1, "idTag": "T1", "meterStart": 900_000, "timestamp": wall_iso(WALL)}, 7)
    u.on_meter_values_16(reg16(1, 1.5, "kWh", wall_iso(WALL - 2)))
    assert session(u).energy_wh == pytest.approx(1_500.0)
    u.on_meter_values_16(reg16(1, 2.5, "kWh", wall_iso(WALL - 1)))
    assert session(u).energy_wh == pytest.approx(2_500.0)


def test_16_station_connectors_apart(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tracker(tmp_path, "ST16", clock, WALL)
    t.on_start_16({"connectorId": 1, "idTag": "A", "meterStart": 1_000, "timestamp": wall_iso(WALL)}, 1)
    clock.t += 1
    t.on_start_16({"connectorId": 2, "idTag": "B", "meterStart": 5_000, "timestamp": wall_iso(WALL)}, 2)
    t.on_meter_values_16(reg16(2, 9_000.0, "Wh", wall_iso(WALL)))
    t.on_meter_values_16(reg16(1, 3_000.0, "Wh", wall_iso(WALL)))
    assert t.conn_sessions[1].energy_wh == pytest.approx(2_000.0)
    assert t.conn_sessions[2].energy_wh == pytest.approx(4_000.0)
    assert session(t) is t.conn_sessions[2]  # the last started is the station's session


def test_201_register_minus_first_reading(tmp_path: Path) -> None:
    clock = FakeClock()
    t = tracker(tmp_path, "CP201", clock, WALL)
    tx = {"transactionId": "tx-1", "chargingState": "Charging"}
    t.on_transaction_event({"eventType": "Started", "seqNo": 0, "timestamp": wall_iso(WALL), "triggerReason":
                            "CablePluggedIn", "transactionInfo": tx, "evse": {"id": 1, "connectorId": 1},
                            "idToken": {"idToken": "T1", "type": "ISO14443"},
                            "meterValue": [reg201(40_000.0, "Wh", wall_iso(WALL - 3), "Transaction.Begin")]})
    assert session(t).energy_wh == 0.0 and session(t).energy_at == pytest.approx(997.0)
    t.on_transaction_event({"eventType": "Updated", "seqNo": 1, "timestamp": wall_iso(WALL), "triggerReason":
                            "MeterValuePeriodic", "transactionInfo": {"transactionId": "tx-1"},
                            "meterValue": [reg201(43.25, "kWh", wall_iso(WALL - 1))]})
    assert session(t).energy_wh == pytest.approx(3_250.0) and session(t).id_token == "T1"
    t.on_meter_values_201({"evseId": 1, "meterValue": [reg201(44_000.0, "Wh", wall_iso(WALL))]})
    assert session(t).energy_wh == pytest.approx(4_000.0)
    t.on_transaction_event({"eventType": "Ended", "seqNo": 2, "timestamp": wall_iso(WALL), "triggerReason":
                            "EVDeparted", "transactionInfo": {"transactionId": "tx-1", "stoppedReason": "Local"},
                            "meterValue": [reg201(45_000.0, "Wh", wall_iso(WALL), "Transaction.End")]})
    assert t.session is None
    t.on_transaction_event({"eventType": "Started", "seqNo": 3, "timestamp": wall_iso(WALL), "triggerReason":
                            "CablePluggedIn", "transactionInfo": {"transactionId": "tx-2"},
                            "evse": {"id": 1, "connectorId": 1}})
    t.on_meter_values_201({"evseId": 1, "meterValue": [reg201(45_000.0, "Wh", wall_iso(WALL))]})
    t.on_meter_values_201({"evseId": 1, "meterValue": [reg201(45_500.0, "Wh", wall_iso(WALL))]})
    assert session(t).transaction_id == "tx-2" and session(t).energy_wh == pytest.approx(500.0)
