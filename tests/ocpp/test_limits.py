"""Limits as charging profiles: fail-safe beneath, leased limit, significance, purpose fallback, CMS merge."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from ocpp.v16 import call as c16
from ocpp.v201 import call as c201

from gateway.model import Allocation, ChargerLimit
from gateway.ocpp_proxy import policy
from gateway.ocpp_proxy.typed import payload_of

from .conftest import Cms, connect_charger, wait_for


def alloc(**limits: float) -> Allocation:
    return Allocation(at=0.0, limits={k: ChargerLimit(limit=v, line_a=v, reason="test") for k, v in limits.items()})


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def limits_16(cp: Any) -> list[tuple[int, str, float]]:
    return [
        (
            p["stack_level"],
            p["charging_profile_purpose"],
            float(p["charging_schedule"]["charging_schedule_period"][0]["limit"]),
        )
        for p in cp.of("SetChargingProfile")
    ]


async def test_16_failsafe_lease_significance_and_renewal(cms: Cms, make_gateway: Any) -> None:
    clock = FakeClock()
    gw = await make_gateway(cms.port, clock=clock)
    ch = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    try:
        # at connect: the persistent fail-safe profile at the lower stack level, no duration
        await wait_for(lambda: limits_16(ch.cp), what="fail-safe profile")
        fs = ch.cp.of("SetChargingProfile")[0]
        assert fs["connector_id"] == 0 and fs["stack_level"] == 0
        assert fs["charging_profile_purpose"] == "ChargePointMaxProfile"
        assert fs["charging_schedule"]["charging_rate_unit"] == "A"
        assert "duration" not in fs["charging_schedule"]
        assert fs["charging_schedule"]["charging_schedule_period"][0]["limit"] == 6.0
        await wait_for(lambda: "CP16" in gw.ctrl.sessions and gw.ctrl.sessions["CP16"].profiles_ready.is_set())
        await gw.ctrl.apply(alloc(CP16=20.0))
        await wait_for(lambda: len(limits_16(ch.cp)) == 2, what="limit profile")
        lim = ch.cp.of("SetChargingProfile")[1]
        assert (lim["stack_level"], lim["charging_schedule"]["duration"]) == (1, 120)
        assert lim["charging_profile_id"] == 900002 and fs["charging_profile_id"] == 900001
        assert limits_16(ch.cp)[1][2] == 20.0
        # an increase below the significance threshold is not sent; a decrease is, at once
        await gw.ctrl.apply(alloc(CP16=20.5))
        await gw.ctrl.apply(alloc(CP16=19.9))
        await wait_for(lambda: len(limits_16(ch.cp)) == 3, what="decrease")
        assert limits_16(ch.cp)[2][2] == 19.9
        await gw.ctrl.apply(alloc(CP16=19.9))
        await gw.ctrl.apply(alloc(CP16=21.0))
        await wait_for(lambda: len(limits_16(ch.cp)) == 4, what="significant increase")
        assert limits_16(ch.cp)[3][2] == 21.0
        # the lease is renewed before it lapses (lease 120 s, renew 30 s before)
        clock.t += 80
        await gw.ctrl.apply(alloc(CP16=21.0))
        assert len(limits_16(ch.cp)) == 4
        clock.t += 15
        await gw.ctrl.apply(alloc(CP16=21.0))
        await wait_for(lambda: len(limits_16(ch.cp)) == 5, what="renewal")
        assert limits_16(ch.cp)[4] == (1, "ChargePointMaxProfile", 21.0)
        # the gateway's CALL results are not forwarded to the CMS
        assert not [r for c, r in cms.raw if '"status":"Accepted"' in r.replace(" ", "") and r.startswith("[3")]
    finally:
        await ch.close()


async def test_201_dc_limit_in_watts_on_evse0(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port)
    ch = await connect_charger(gw.ctrl.port, "DC1", "2.0.1")
    try:
        await wait_for(lambda: gw.ctrl.sessions.get("DC1") and gw.ctrl.sessions["DC1"].profiles_ready.is_set())
        await gw.ctrl.apply(alloc(DC1=42000.0))
        await wait_for(lambda: len(ch.cp.of("SetChargingProfile")) == 2, what="limit")
        fs, lim = ch.cp.of("SetChargingProfile")
        assert fs["evse_id"] == 0 and fs["charging_profile_purpose"] == "ChargingStationMaxProfile"
        assert fs["charging_schedule"][0]["charging_rate_unit"] == "W"
        assert fs["charging_schedule"][0]["charging_schedule_period"][0]["limit"] == 10000.0
        assert (
            lim["stack_level"] == 1 and lim["charging_schedule"][0]["charging_schedule_period"][0]["limit"] == 42000.0
        )
        assert ch.cp.of("GetVariables"), "the device model was asked what the station supports"
        await gw.ctrl.apply_failsafe()
        assert (
            ch.cp.of("SetChargingProfile")[-1]["charging_schedule"][0]["charging_schedule_period"][0]["limit"] == 10000
        )
    finally:
        await ch.close()


async def test_rejected_purpose_falls_back_and_is_remembered(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port)
    ch = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    ch.cp.reject_purposes = {"ChargePointMaxProfile"}
    try:
        await wait_for(lambda: gw.ctrl.sessions.get("CP16") and gw.ctrl.sessions["CP16"].profiles_ready.is_set())
        purposes = [p["charging_profile_purpose"] for p in ch.cp.of("SetChargingProfile")]
        assert purposes == ["ChargePointMaxProfile", "TxDefaultProfile"]
        assert any(n == "profile_rejected" for n, _ in gw.events)
        assert gw.ctrl.store.caps("CP16")["mode"] == "txdefault"
        await gw.ctrl.apply(alloc(CP16=16.0))
        await wait_for(lambda: len(ch.cp.of("SetChargingProfile")) == 3, what="limit")
        assert ch.cp.of("SetChargingProfile")[2]["charging_profile_purpose"] == "TxDefaultProfile"
    finally:
        await ch.close()
    # a reconnect uses the learned purpose straight away
    ch2 = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    try:
        await wait_for(lambda: ch2.cp.of("SetChargingProfile"), what="fail-safe after reconnect")
        assert ch2.cp.of("SetChargingProfile")[0]["charging_profile_purpose"] == "TxDefaultProfile"
        assert not ch2.cp.of("GetConfiguration"), "capabilities are remembered"
    finally:
        await ch2.close()


async def test_cms_profile_merged_with_site_limit(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port)
    a = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    b = await connect_charger(gw.ctrl.port, "CP201", "2.0.1")
    try:
        for cid in ("CP16", "CP201"):
            await wait_for(lambda cid=cid: gw.ctrl.sessions.get(cid) and gw.ctrl.sessions[cid].profiles_ready.is_set())
        await wait_for(lambda: "CP16" in cms.peers and "CP201" in cms.peers, what="upstreams")
        await gw.ctrl.apply(alloc(CP16=20.0, CP201=20.0))
        await wait_for(lambda: len(a.cp.of("SetChargingProfile")) == 2 and len(b.cp.of("SetChargingProfile")) == 2)
        # the CMS caps the station at 10 A: a station-wide profile that would collide with the gateway's
        r = await cms.peers["CP16"].call(
            c16.SetChargingProfile(
                connector_id=0,
                cs_charging_profiles={
                    "charging_profile_id": 77,
                    "stack_level": 1,
                    "charging_profile_purpose": "ChargePointMaxProfile",
                    "charging_profile_kind": "Absolute",
                    "charging_schedule": {
                        "charging_rate_unit": "A",
                        "start_schedule": "2020-01-01T00:00:00Z",
                        "charging_schedule_period": [{"start_period": 0, "limit": 10.0}],
                    },
                },
            )
        )
        assert r.status == "Accepted"
        await wait_for(lambda: len(a.cp.of("SetChargingProfile")) == 3, what="merged limit")
        got = a.cp.of("SetChargingProfile")[2]
        assert got["charging_profile_id"] == 900002  # the gateway's own profile, not the CMS's
        assert got["charging_schedule"]["charging_schedule_period"][0]["limit"] == 10.0
        # the site allocation drops below the CMS limit: the lower one wins
        await gw.ctrl.apply(alloc(CP16=8.0, CP201=20.0))
        await wait_for(lambda: len(a.cp.of("SetChargingProfile")) == 4)
        assert a.cp.of("SetChargingProfile")[3]["charging_schedule"]["charging_schedule_period"][0]["limit"] == 8.0
        # the CMS's composite schedule shows what it asked for
        comp = await cms.peers["CP16"].call(c16.GetCompositeSchedule(connector_id=0, duration=3600))
        assert comp.status == "Accepted"
        assert comp.charging_schedule["charging_schedule_period"][0]["limit"] == 10.0
        # a Tx profile does not collide: relayed to the charger untouched
        await cms.peers["CP16"].call(
            c16.SetChargingProfile(
                connector_id=1,
                cs_charging_profiles={
                    "charging_profile_id": 78,
                    "stack_level": 0,
                    "charging_profile_purpose": "TxDefaultProfile",
                    "charging_profile_kind": "Relative",
                    "charging_schedule": {
                        "charging_rate_unit": "A",
                        "charging_schedule_period": [{"start_period": 0, "limit": 16.0}],
                    },
                },
            )
        )
        assert a.cp.of("SetChargingProfile")[-1]["charging_profile_id"] == 78
        # clearing the CMS's station profile lifts its cap: back to the site allocation
        await gw.ctrl.apply(alloc(CP16=20.0, CP201=20.0))
        r2 = await cms.peers["CP16"].call(c16.ClearChargingProfile(id=77))
        assert r2.status == "Accepted"
        await wait_for(
            lambda: (
                a.cp.of("SetChargingProfile")[-1]["charging_schedule"]["charging_schedule_period"][0]["limit"] == 20.0
            ),
            what="cap lifted",
        )
        # 2.0.1: ChargingStationMaxProfile on EVSE 0 from the CMS, in W on an AC charger (converted)
        r3 = await cms.peers["CP201"].call(
            c201.SetChargingProfile(
                evse_id=0,
                charging_profile={
                    "id": 5,
                    "stack_level": 0,
                    "charging_profile_purpose": "ChargingStationMaxProfile",
                    "charging_profile_kind": "Absolute",
                    "charging_schedule": [
                        {
                            "id": 1,
                            "start_schedule": "2020-01-01T00:00:00Z",
                            "charging_rate_unit": "A",
                            "charging_schedule_period": [{"start_period": 0, "limit": 12.0}],
                        }
                    ],
                },
            )
        )
        assert r3.status == "Accepted"
        await wait_for(
            lambda: (
                b.cp.of("SetChargingProfile")[-1]["charging_schedule"][0]["charging_schedule_period"][0]["limit"]
                == 12.0
            ),
            what="2.0.1 merge",
        )
        assert all(p["id"] != 5 for p in b.cp.of("SetChargingProfile"))
        comp2 = await cms.peers["CP201"].call(c201.GetCompositeSchedule(duration=600, evse_id=0))
        assert comp2.status == "Accepted" and comp2.schedule["charging_schedule_period"][0]["limit"] == 12.0
    finally:
        await a.close()
        await b.close()


async def test_stop_transaction_and_cms_clear_reinstalls(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port)
    ch = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    try:
        await wait_for(lambda: gw.ctrl.sessions.get("CP16") and gw.ctrl.sessions["CP16"].profiles_ready.is_set())
        await wait_for(lambda: "CP16" in cms.peers, what="upstream")
        start = await ch.cp.call(
            c16.StartTransaction(connector_id=1, id_tag="OK-1", meter_start=0, timestamp="2024-01-01T00:00:00Z")
        )
        await gw.ctrl.stop_transaction("CP16")
        assert ch.cp.of("RemoteStopTransaction") == [{"transaction_id": start.transaction_id}]
        # a CMS ClearChargingProfile without criteria also clears the gateway's: they are reinstalled
        n = len(ch.cp.of("SetChargingProfile"))
        await cms.peers["CP16"].call(c16.ClearChargingProfile())
        await wait_for(lambda: len(ch.cp.of("SetChargingProfile")) > n, what="reinstall")
        assert ch.cp.of("SetChargingProfile")[n]["charging_profile_id"] == 900001
    finally:
        await ch.close()


async def test_txdefault_charger_cms_txprofile_is_merged_not_relayed(cms: Cms, make_gateway: Any) -> None:
    """A charger that only takes TxDefaultProfile: a CMS TxProfile would override the site limit (OCPP
    stacking), so it is kept by the gateway and applied as min(CMS limit, site allocation)."""
    gw = await make_gateway(cms.port)
    ch = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    ch.cp.reject_purposes = {"ChargePointMaxProfile"}
    try:
        await wait_for(lambda: gw.ctrl.sessions.get("CP16") and gw.ctrl.sessions["CP16"].profiles_ready.is_set())
        await wait_for(lambda: "CP16" in cms.peers, what="upstream")
        start = await ch.cp.call(c16.StartTransaction(connector_id=1, id_tag="OK-1", meter_start=0,
                                                      timestamp="2024-01-01T00:00:00Z"))
        await ch.cp.call(c16.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
        await gw.ctrl.apply(alloc(CP16=16.0))
        await wait_for(lambda: any(p["charging_schedule"]["charging_schedule_period"][0]["limit"] == 16.0
                                   for p in ch.cp.of("SetChargingProfile")), what="site limit")
        n = len(ch.cp.of("SetChargingProfile"))
        r = await cms.peers["CP16"].call(
            c16.SetChargingProfile(
                connector_id=1,
                cs_charging_profiles={
                    "charging_profile_id": 88,
                    "transaction_id": start.transaction_id,
                    "stack_level": 2,
                    "charging_profile_purpose": "TxProfile",
                    "charging_profile_kind": "Relative",
                    "charging_schedule": {"charging_rate_unit": "A",
                                          "charging_schedule_period": [{"start_period": 0, "limit": 10.0}]},
                },
            )
        )
        assert r.status == "Accepted"
        await wait_for(lambda: len(ch.cp.of("SetChargingProfile")) > n, what="merged limit")
        sent = ch.cp.of("SetChargingProfile")[n:]
        assert all(p["charging_profile_purpose"] == "TxDefaultProfile" for p in sent)  # the TxProfile stays out
        assert sent[-1]["charging_schedule"]["charging_schedule_period"][0]["limit"] == 10.0
    finally:
        await ch.close()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_txdefault_profile_shares_the_station_limit_among_its_connectors(version: str) -> None:
    """A TxDefaultProfile on connector 0 is each connector's default: a two-connector station limited to
    32 A gets 16 A per connector, so both EVs together stay within 32 A; a station-wide max profile keeps 32."""
    def limit_in(payload: dict[str, Any]) -> float:
        if version == "1.6":
            return float(payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"])
        return float(payload["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"])

    common: dict[str, Any] = {"profile_id": 1, "stack_level": 1, "unit": "A", "limit": 32.0,
                              "start": datetime(2026, 1, 1, tzinfo=UTC), "duration_s": 60, "connectors": 2}
    assert limit_in(payload_of(policy.set_profile(version, "txdefault", **common))) == 16.0
    assert limit_in(payload_of(policy.set_profile(version, "max", **common))) == 32.0
    three = {**common, "limit": 13.3, "connectors": 3}
    assert limit_in(payload_of(policy.set_profile(version, "txdefault", **three))) == 4.4  # floor(13.3 / 3, 0.1)
