"""Session needs from each source: the MQTT command, the CMS DataTransfer, NotifyEVChargingNeeds, the defaults."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from gateway.budget.remote import CommandRejected
from gateway.planner.needs import (
    Needs,
    from_data_transfer,
    from_notify_ev_charging_needs,
    next_local_time,
    parse_needs_command,
)

NOW = datetime(2026, 1, 13, 18, 0, tzinfo=UTC).timestamp()
DEP = "2026-01-14T05:00:00Z"
DEP_WALL = datetime(2026, 1, 14, 5, 0, tzinfo=UTC).timestamp()
CHARGERS = {"VAN001": object(), "VAN002": object()}


def _cmd(**kw: object) -> bytes:
    return json.dumps({"charger": "VAN001", "ts": "2026-01-13T18:00:00Z", **kw}).encode()


def test_mqtt_energy_and_departure() -> None:
    c = parse_needs_command(_cmd(id="r1", departure=DEP, energy_kwh=55), chargers=CHARGERS, now_wall=NOW)
    assert c.request_id == "r1" and c.charger == "VAN001"
    assert c.needs == Needs(55_000.0, DEP_WALL, "mqtt")


def test_mqtt_target_soc_with_capacity() -> None:
    c = parse_needs_command(_cmd(departure=DEP, target_soc_pct=90, capacity_kwh=75, soc_pct=30), chargers=CHARGERS,
                            now_wall=NOW)
    assert c.needs is not None and c.needs.energy_wh == pytest.approx(45_000.0)
    # without the present SoC the energy waits for the EV's (ISO 15118) or stays unknown
    c2 = parse_needs_command(_cmd(target_soc_pct=90, capacity_kwh=75), chargers=CHARGERS, now_wall=NOW)
    assert c2.needs is not None and c2.needs.energy_wh is None and c2.needs.target_soc == 0.9


@pytest.mark.parametrize(("payload", "reason"), [
    (_cmd(departure=DEP, energy_kwh=55, watts=3), "unknown key(s): watts"),
    (_cmd(departure=DEP, energy_kwh=-1), "energy_kwh must be within"),
    (_cmd(departure=DEP, energy_kwh="55"), "energy_kwh must be a number"),
    (_cmd(departure="2026-01-14T05:00:00", energy_kwh=5), "needs a UTC offset"),
    (_cmd(departure="2026-01-12T05:00:00Z", energy_kwh=5), "departure is in the past"),
    (_cmd(target_soc_pct=90), "target_soc_pct needs capacity_kwh"),
    (_cmd(energy_kwh=5, target_soc_pct=90, capacity_kwh=50), "not both"),
    (_cmd(), "give a departure"),
    (json.dumps({"charger": "NOPE", "energy_kwh": 5, "ts": "2026-01-13T18:00:00Z"}).encode(), "configured charger"),
    (json.dumps({"charger": "VAN001", "energy_kwh": 5, "ts": "2026-01-13T17:00:00Z"}).encode(), "stale command"),
    (b"[1]", "expected a JSON object"),
    (b"{", "not a JSON document"),
    (b'{"energy_kwh": NaN}', "not a JSON document"),
])
def test_mqtt_refused_with_the_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(CommandRejected) as ei:
        parse_needs_command(payload, chargers=CHARGERS, now_wall=NOW)
    assert reason in ei.value.reason


def test_mqtt_ts_required_under_3_1_1_and_clear() -> None:
    raw = json.dumps({"charger": "VAN001", "energy_kwh": 5}).encode()
    with pytest.raises(CommandRejected, match="ts is required"):
        parse_needs_command(raw, chargers=CHARGERS, now_wall=NOW, require_ts=True)
    c = parse_needs_command(_cmd(clear=True), chargers=CHARGERS, now_wall=NOW)
    assert c.needs is None and c.charger == "VAN001"


def test_cms_data_transfer() -> None:
    data = json.dumps({"departure": DEP, "energy_kwh": 40})
    c = from_data_transfer("ems-gateway", "SessionNeeds", data, charger="VAN002", chargers=CHARGERS, now_wall=NOW)
    assert c is not None and c.charger == "VAN002" and c.needs == Needs(40_000.0, DEP_WALL, "cms")
    assert from_data_transfer("acme", "SessionNeeds", data, charger="VAN002", chargers=CHARGERS, now_wall=NOW) is None
    assert from_data_transfer("ems-gateway", "Other", data, charger="VAN002", chargers=CHARGERS, now_wall=NOW) is None
    with pytest.raises(CommandRejected, match="not the charger that sent it"):
        from_data_transfer("ems-gateway", "SessionNeeds", json.dumps({"charger": "VAN001", "energy_kwh": 1}),
                           charger="VAN002", chargers=CHARGERS, now_wall=NOW)
    with pytest.raises(CommandRejected, match="JSON object in a string"):
        from_data_transfer("ems-gateway", "SessionNeeds", {"energy_kwh": 1}, charger="VAN002", chargers=CHARGERS,
                           now_wall=NOW)


def test_notify_ev_charging_needs_ac_and_dc() -> None:
    ac = {"evseId": 1, "chargingNeeds": {"requestedEnergyTransfer": "AC_three_phase", "departureTime": DEP,
                                         "acChargingParameters": {"energyAmount": 42000, "evMinCurrent": 6,
                                                                  "evMaxCurrent": 16, "evMaxVoltage": 400}}}
    # the EV's own maximum (16 A per phase on three phases) goes with its needs: the plan counts on no more
    assert from_notify_ev_charging_needs(ac) == Needs(42_000.0, DEP_WALL, "iso15118", ev_max_a=16.0, ac_phases=3)
    dc = {"evseId": 1, "chargingNeeds": {"requestedEnergyTransfer": "DC",
                                         "dcChargingParameters": {"evMaxCurrent": 300, "evMaxVoltage": 800,
                                                                  "evEnergyCapacity": 80000, "stateOfCharge": 25,
                                                                  "fullSoC": 90}}}
    n = from_notify_ev_charging_needs(dc)
    assert n is not None and n.energy_wh == pytest.approx(52_000.0) and n.departure_wall is None and not n.complete
    assert from_notify_ev_charging_needs({"evseId": 1, "chargingNeeds": {"requestedEnergyTransfer": "DC"}}) is None
    assert from_notify_ev_charging_needs({"evseId": 1}) is None
    bad = {"chargingNeeds": {"departureTime": "soon", "acChargingParameters": {"energyAmount": float("nan")}}}
    assert from_notify_ev_charging_needs(bad) is None


def test_precedence_fills_only_what_is_unknown() -> None:
    ev = Needs(None, DEP_WALL, "iso15118")
    default = Needs(60_000.0, DEP_WALL + 3600, "class:fleet")
    merged = ev.fill(default)
    assert merged.energy_wh == 60_000.0 and merged.departure_wall == DEP_WALL and merged.complete
    assert merged.source == "iso15118+class:fleet"


def test_a_default_departure_is_the_next_one() -> None:
    # a van back at 18:00 with a 05:00 default leaves tomorrow at 05:00 (Europe/Berlin: 04:00 UTC in winter)
    assert next_local_time(300, "UTC", NOW) == DEP_WALL
    assert next_local_time(300, "Europe/Berlin", NOW) == DEP_WALL - 3600
    # at 04:50 with at least 1 h ahead: the day after
    early = datetime(2026, 1, 14, 4, 50, tzinfo=UTC).timestamp()
    assert next_local_time(300, "UTC", early, 3600.0) == DEP_WALL + 86400


def test_the_tracker_observes_needs_and_drops_them_with_the_session() -> None:
    from gateway.config import site_from_dict
    from gateway.ocpp_proxy.state import ChargerTracker
    from tests.factories import ac, site_dict

    site = site_from_dict(site_dict(chargers=[ac("VAN001", phases=3, ocpp_version="2.0.1")]))
    t = ChargerTracker(site.chargers["VAN001"], 3, lambda: 100.0, wall=lambda: NOW)
    t.on_status_201({"timestamp": "2026-01-13T18:00:00Z", "connectorStatus": "Occupied", "evseId": 1,
                     "connectorId": 1})
    t.on_ev_charging_needs({"evseId": 1, "chargingNeeds": {"requestedEnergyTransfer": "AC_three_phase",
                                                           "departureTime": DEP,
                                                           "acChargingParameters": {"energyAmount": 30000,
                                                                                    "evMinCurrent": 6,
                                                                                    "evMaxCurrent": 16,
                                                                                    "evMaxVoltage": 400}}})
    cms = from_data_transfer("ems-gateway", "SessionNeeds", json.dumps({"energy_kwh": 45}), charger="VAN001",
                             chargers={"VAN001": None}, now_wall=NOW)
    assert cms is not None
    t.on_needs_command(cms)
    n = t.needs()
    assert n is not None and n.energy_wh == 45_000.0 and n.departure_wall == DEP_WALL  # the CMS's energy, the EV's time
    t.on_status_201({"timestamp": "2026-01-13T18:10:00Z", "connectorStatus": "Available", "evseId": 1,
                     "connectorId": 1})
    assert t.needs() is None
