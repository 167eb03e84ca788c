"""2.0.1 GetChargingProfiles: the CMS reads back its own profiles, not the gateway's reserved ones."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ocpp.v201 import call as c201

from .conftest import Cms, wait_for
from .test_exact import RawCharger


def _prof(pid: int, purpose: str, level: int, limit: float) -> dict[str, Any]:
    return {
        "id": pid,
        "stackLevel": level,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Absolute",
        "chargingSchedule": [
            {
                "id": pid,
                "chargingRateUnit": "A",
                "startSchedule": "2024-01-01T00:00:00Z",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}],
            }
        ],
    }


def _reported(cms: Cms) -> list[tuple[str, int]]:
    out = []
    for p in cms.of("CP201", "ReportChargingProfiles"):
        for prof in p["charging_profile"]:
            out.append((p["charging_limit_source"], prof["id"]))
    return sorted(out)


@pytest.mark.parametrize("mode", ["hide", "ems"])
async def test_get_charging_profiles_shows_the_cms_its_own_profiles(cms: Cms, make_gateway: Any, mode: str) -> None:
    gw = await make_gateway(cms.port, ocpp_extra=f'gateway_profiles_report = "{mode}"')
    ch = await RawCharger.open(gw.ctrl.port, "CP201", "2.0.1")

    async def report(msg: list[Any]) -> None:
        if msg[2] != "GetChargingProfiles":
            return
        rid = msg[3]["requestId"]
        first = {
            "requestId": rid,
            "chargingLimitSource": "CSO",
            "evseId": 0,
            "tbc": True,
            "chargingProfile": [_prof(900001, "ChargingStationMaxProfile", 0, 6.0)],
        }
        second = {
            "requestId": rid,
            "chargingLimitSource": "CSO",
            "evseId": 1,
            "tbc": False,
            "chargingProfile": [_prof(900002, "ChargingStationMaxProfile", 1, 16.0), _prof(7, "TxProfile", 2, 20.0)],
        }
        for i, p in enumerate((first, second)):
            await ch.ws.send(json.dumps([2, f"r-{rid}-{i}", "ReportChargingProfiles", p]))

    ch.after_answer = report
    try:
        await wait_for(lambda: gw.ctrl.cms_online("CP201") and "CP201" in cms.peers, what="CMS link")
        peer = cms.peers["CP201"]
        # a station-wide maximum from the CMS is merged by the gateway (not installed on the charger)
        r = await peer.call(
            c201.SetChargingProfile(evse_id=0, charging_profile=_prof(5, "ChargingStationMaxProfile", 3, 25.0))
        )
        assert r.status == "Accepted"
        got = await peer.call(c201.GetChargingProfiles(request_id=42, charging_profile={}))
        assert got.status == "Accepted"
        expected = [("CSO", 5), ("CSO", 7)]
        if mode == "ems":
            expected = sorted([*expected, ("EMS", 900001), ("EMS", 900002)])
        await wait_for(lambda: _reported(cms) == expected, what=f"reports {expected}, got {_reported(cms)}")
        reports = cms.of("CP201", "ReportChargingProfiles")
        assert {p["request_id"] for p in reports} == {42}
        assert [p.get("tbc", False) for p in reports] == [True] * (len(reports) - 1) + [False]
        # the charger's own reports were answered by the gateway and not relayed as such
        assert not [r for c, r in cms.raw if c == "CP201" and '"r-42-' in r]
    finally:
        await ch.close()


async def test_get_charging_profiles_with_only_reserved_profiles_is_no_profiles(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port)
    ch = await RawCharger.open(gw.ctrl.port, "CP201", "2.0.1")

    async def report(msg: list[Any]) -> None:
        if msg[2] == "GetChargingProfiles":
            p = {
                "requestId": msg[3]["requestId"],
                "chargingLimitSource": "CSO",
                "evseId": 0,
                "chargingProfile": [_prof(900001, "ChargingStationMaxProfile", 0, 6.0)],
            }
            await ch.ws.send(json.dumps([2, "only", "ReportChargingProfiles", p]))

    ch.after_answer = report
    try:
        await wait_for(lambda: gw.ctrl.cms_online("CP201") and "CP201" in cms.peers, what="CMS link")
        got = await cms.peers["CP201"].call(c201.GetChargingProfiles(request_id=3, charging_profile={}))
        assert got.status == "NoProfiles"
        assert cms.of("CP201", "ReportChargingProfiles") == []
    finally:
        await ch.close()


def _prof16(pid: int, purpose: str, level: int, limit: float) -> dict[str, Any]:
    return {
        "charging_profile_id": pid,
        "stack_level": level,
        "charging_profile_purpose": purpose,
        "charging_profile_kind": "Absolute",
        "charging_schedule": {
            "charging_rate_unit": "A",
            "start_schedule": "2024-01-01T00:00:00Z",
            "charging_schedule_period": [{"start_period": 0, "limit": limit}],
        },
    }


async def test_16_composite_schedule_is_made_of_the_cms_profiles_only(cms: Cms, make_gateway: Any) -> None:
    from ocpp.v16 import call as c16

    from .conftest import connect_charger

    gw = await make_gateway(cms.port)
    ch = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    try:
        await wait_for(lambda: gw.ctrl.sessions.get("CP16") and gw.ctrl.sessions["CP16"].profiles_ready.is_set())
        await wait_for(lambda: "CP16" in cms.peers, what="upstream")
        peer = cms.peers["CP16"]

        async def composite() -> float:
            r = await peer.call(c16.GetCompositeSchedule(connector_id=1, duration=3600, charging_rate_unit="A"))
            assert r.status == "Accepted"
            return float(r.charging_schedule["charging_schedule_period"][0]["limit"])

        assert await composite() == 32.0  # the CMS set nothing: the charger's rating, not the site's fail-safe
        # a TxDefaultProfile goes to the charger (no collision in max mode) and shows in the composite
        r = await peer.call(
            c16.SetChargingProfile(connector_id=1, cs_charging_profiles=_prof16(11, "TxDefaultProfile", 2, 20.0))
        )
        assert r.status == "Accepted" and ch.cp.of("SetChargingProfile")[-1]["charging_profile_id"] == 11
        assert await composite() == 20.0
        # a station maximum is merged by the gateway; the composite is the lower of the CMS's two
        await peer.call(
            c16.SetChargingProfile(connector_id=0, cs_charging_profiles=_prof16(12, "ChargePointMaxProfile", 3, 12.5))
        )
        assert await composite() == 12.5
        assert not [c for c in ch.cp.received if c[0] == "GetCompositeSchedule"]
    finally:
        await ch.close()


@pytest.mark.parametrize("mode", ["hide", "ems"])
async def test_201_composite_schedule_hidden_or_the_chargers(cms: Cms, make_gateway: Any, mode: str) -> None:
    gw = await make_gateway(cms.port, ocpp_extra=f'gateway_profiles_report = "{mode}"')
    ch = await RawCharger.open(gw.ctrl.port, "CP201", "2.0.1")
    try:
        await wait_for(lambda: gw.ctrl.cms_online("CP201") and "CP201" in cms.peers, what="CMS link")
        peer = cms.peers["CP201"]
        r = await peer.call(c201.SetChargingProfile(evse_id=1, charging_profile=_prof(21, "TxDefaultProfile", 2, 16.0)))
        assert r.status == "Accepted"
        got = await peer.call(c201.GetCompositeSchedule(duration=600, evse_id=1, charging_rate_unit="A"))
        assert got.status == "Accepted"
        asked = [c for c in ch.calls if c[2] == "GetCompositeSchedule"]
        if mode == "hide":
            assert got.schedule["charging_schedule_period"][0]["limit"] == 16.0
            assert not asked
        else:
            assert len(asked) == 1  # the charger's own composite, the site limit in it (reported as EMS)
    finally:
        await ch.close()
