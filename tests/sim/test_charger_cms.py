"""SimCharger (1.6J and 2.0.1) against SimCms over real WebSockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import pytest
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201
from sitesim import SimCallError
from sitesim.charger import SimCharger, iso, parse_iso
from sitesim.cms import SimCms
from sitesim.ev import EvSpec
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.model import ChargerState

from .conftest import ShiftClock, wait_until

VERSIONS = ["1.6", "2.0.1"]
Runner = Callable[[SimCharger], "asyncio.Task[None]"]


def make(cms: SimCms, clock: ShiftClock, version: str, cid: str = "CP1", **kw: Any) -> SimCharger:
    args: dict[str, Any] = dict(clock=clock, meter_interval_s=0.5, tick_s=0.05, reconnect_s=(0.1, 0.5))
    args.update(kw)
    return SimCharger(cid, version, "ac", 3, 1, cms.url, **args)  # type: ignore[arg-type]


async def up(cms: SimCms, ch: SimCharger) -> None:
    """Both sides see the connection booted."""
    await cms.wait_connected(ch.charger_id)
    await wait_until(lambda: ch.online, what="charger online")


def ev(**kw: Any) -> EvSpec:
    args: dict[str, Any] = dict(capacity_kwh=80.0, soc_start=0.3, response_delay_s=5.0)
    args.update(kw)
    return EvSpec(**args)


def samples(payload: dict[str, Any]) -> dict[tuple[str, str | None], float]:
    out: dict[tuple[str, str | None], float] = {}
    for mv in payload.get("meterValue", []):
        for sv in mv["sampledValue"]:
            out[(sv["measurand"], sv.get("phase"))] = float(sv["value"])
    return out


def profile(version: str, pid: int, purpose: str, level: int, limit: float, now: float,
            duration: float | None = None, tx: str | None = None) -> dict[str, Any]:
    sched: dict[str, Any] = {"startSchedule": iso(now), "chargingRateUnit": "A",
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}
    if duration is not None:
        sched["duration"] = int(duration)
    if version == "1.6":
        p: dict[str, Any] = {"chargingProfileId": pid, "stackLevel": level, "chargingProfilePurpose": purpose,
                             "chargingProfileKind": "Absolute", "chargingSchedule": sched}
        if tx is not None:
            p["transactionId"] = int(tx)
        return p
    sched["id"] = pid
    p = {"id": pid, "stackLevel": level, "chargingProfilePurpose": purpose, "chargingProfileKind": "Absolute",
         "chargingSchedule": [sched]}
    if tx is not None:
        p["transactionId"] = tx
    return p


async def set_profile(cms: SimCms, version: str, cid: str, connector: int, prof: dict[str, Any]) -> str:
    if version == "1.6":
        res = await cms.call(cid, call16.SetChargingProfile(connector_id=connector, cs_charging_profiles=prof))
    else:
        res = await cms.call(cid, call201.SetChargingProfile(evse_id=connector, charging_profile=prof))
    return str(res.status)


@pytest.mark.parametrize("version", VERSIONS)
async def test_boot_session_meter_values_and_loss_accounting(
    cms: SimCms, clock: ShiftClock, run_charger: Runner, version: str
) -> None:
    ch = make(cms, clock, version)
    run_charger(ch)
    await up(cms, ch)
    assert cms.versions["CP1"] == version and ch.online and ch.boot_status == "Accepted"
    assert ch.heartbeat_interval_s == 30.0  # from the boot answer

    ch.plug_in(ev(), id_tag="TAG-1")
    await cms.wait_call("CP1", "Authorize")
    await wait_until(lambda: ch.transaction_id() is not None and ch.state() == ChargerState.CHARGING)
    txid = ch.transaction_id()
    assert txid is not None and txid in cms.transactions
    if version == "1.6":
        assert int(txid) >= 1000  # the CMS chose it
        mv = await cms.wait_call("CP1", "MeterValues", match=lambda r: r.payload.get("transactionId") == int(txid))
    else:
        mv = await cms.wait_call("CP1", "TransactionEvent",
                                 match=lambda r: r.payload["triggerReason"] == "MeterValuePeriodic"
                                 and samples(r.payload)[("Current.Import", "L1")] > 0)
    s = samples(mv.payload)
    assert s[("Current.Import", "L1")] == s[("Current.Import", "L2")] == s[("Current.Import", "L3")] == 32.0
    assert s[("Power.Active.Import", None)] == pytest.approx(32.0 * 230.0 * 3)
    assert ("Energy.Active.Import.Register", None) in s and 30.0 <= s[("SoC", None)] <= 31.0

    await wait_until(lambda: ch.energy_wh > 5.0, what="energy")
    ch.unplug()
    tx = cms.transactions[txid]
    await wait_until(lambda: tx.ended, what="transaction end")
    assert tx.id_tag == "TAG-1" and tx.stop_reason in ("EVDisconnected",)
    assert tx.meter_stop_wh is not None and tx.meter_stop_wh >= 5.0
    assert len(tx.meter_values) >= 2
    await wait_until(lambda: cms.status["CP1"].get(1) == "Available", what="Available status")

    # every CALL the charger sent arrived, with its message id, in order
    await wait_until(lambda: all(m.outcome == "ok" for m in ch.messages_sent), what="all answered")
    assert [m.unique_id for m in ch.messages_sent] == [r.unique_id for r in cms.received["CP1"]]
    assert [m.action for m in ch.messages_sent] == [r.action for r in cms.received["CP1"]]


@pytest.mark.parametrize("version", VERSIONS)
async def test_remote_start_then_remote_stop(cms: SimCms, clock: ShiftClock, run_charger: Runner,
                                             version: str) -> None:
    ch = make(cms, clock, version)
    run_charger(ch)
    await up(cms, ch)
    ch.plug_in(ev())  # no token: waits for the CMS
    await asyncio.sleep(0.3)
    assert ch.state() == ChargerState.EV_CONNECTED and ch.draw_w() == 0.0
    if version == "1.6":
        res = await cms.call("CP1", call16.RemoteStartTransaction(id_tag="REMOTE", connector_id=1))
    else:
        res = await cms.call("CP1", call201.RequestStartTransaction(
            id_token={"idToken": "REMOTE", "type": "Central"}, remote_start_id=42, evse_id=1))
    assert res.status == "Accepted"
    await wait_until(lambda: ch.state() == ChargerState.CHARGING and ch.transaction_id() in cms.transactions)
    txid = ch.transaction_id()
    assert txid is not None
    await wait_until(lambda: cms.transactions[txid].id_tag == "REMOTE", what="token reaches the CMS")
    assert ch.draw_a() == (32.0, 32.0, 32.0)
    if version == "1.6":
        res = await cms.call("CP1", call16.RemoteStopTransaction(transaction_id=int(txid)))
    else:
        res = await cms.call("CP1", call201.RequestStopTransaction(transaction_id=txid))
        assert "Updated/RemoteStart" in cms.transactions[txid].events
    assert res.status == "Accepted"
    await wait_until(lambda: cms.transactions[txid].ended, what="remote stop")
    assert cms.transactions[txid].stop_reason == "Remote"
    assert ch.draw_w() == 0.0 and ch.state() == ChargerState.EV_CONNECTED
    # an unknown transaction is refused
    if version == "1.6":
        res = await cms.call("CP1", call16.RemoteStopTransaction(transaction_id=99999))
    else:
        res = await cms.call("CP1", call201.RequestStopTransaction(transaction_id="nope"))
    assert res.status == "Rejected"


@pytest.mark.parametrize("version", VERSIONS)
async def test_profile_lowers_draw_after_response_delay_and_lease_lapses(
    cms: SimCms, clock: ShiftClock, run_charger: Runner, version: str
) -> None:
    ch = make(cms, clock, version)
    run_charger(ch)
    await up(cms, ch)
    ch.plug_in(ev(response_delay_s=5.0), id_tag="T")
    await wait_until(lambda: ch.state() == ChargerState.CHARGING and ch.transaction_id() in cms.transactions)
    now = clock()
    # fail-safe floor at stack level 0, a 120 s lease at level 1
    assert await set_profile(cms, version, "CP1", 0, profile(version, 1, "TxDefaultProfile", 0, 8.0, now)) \
        == "Accepted"
    assert await set_profile(cms, version, "CP1", 0,
                             profile(version, 2, "TxDefaultProfile", 1, 16.0, now, duration=120)) == "Accepted"
    assert ch.effective_limit().limit == 16.0
    await asyncio.sleep(0.3)
    assert ch.draw_a() == (32.0, 32.0, 32.0)  # the EV has not reacted yet (5 s delay, clock not moved)
    clock.advance(5.5)
    await wait_until(lambda: ch.draw_a() == (16.0, 16.0, 16.0), what="draw lowered to 16 A")
    mv_index = len(cms.received["CP1"])
    action = "MeterValues" if version == "1.6" else "TransactionEvent"
    mv = await cms.wait_call("CP1", action, after=mv_index, match=lambda r: "meterValue" in r.payload)
    assert samples(mv.payload)[("Current.Import", "L1")] == 16.0
    assert samples(mv.payload)[("Current.Offered", None)] == 16.0

    # composite schedule reports the lease and what follows it
    if version == "1.6":
        comp = await cms.call("CP1", call16.GetCompositeSchedule(connector_id=1, duration=300))
        periods = comp.charging_schedule["charging_schedule_period"]
    else:
        comp = await cms.call("CP1", call201.GetCompositeSchedule(duration=300, evse_id=1))
        periods = comp.schedule["charging_schedule_period"]
    assert comp.status == "Accepted"
    assert [p["limit"] for p in periods] == [16.0, 8.0]

    clock.advance(120.0)  # the lease lapses: the level-0 fail-safe applies (after the EV's delay)
    await wait_until(lambda: ch.effective_limit().limit == 8.0, what="lease lapsed")
    clock.advance(6.0)  # past the EV's response delay
    await wait_until(lambda: ch.draw_a() == (8.0, 8.0, 8.0), what="draw at fail-safe")

    # a TxProfile overrules the TxDefaultProfiles; it is dropped when the transaction ends
    txid = ch.transaction_id()
    assert await set_profile(cms, version, "CP1", 1, profile(version, 3, "TxProfile", 0, 20.0, clock(), tx=txid)) \
        == "Accepted"
    assert ch.effective_limit().limit == 20.0
    ch.unplug()
    assert ch.effective_limit().limit == 8.0


@pytest.mark.parametrize("version", VERSIONS)
async def test_charger_that_only_takes_tx_default_profiles(
    cms: SimCms, clock: ShiftClock, run_charger: Runner, version: str
) -> None:
    ch = make(cms, clock, version, accept_purposes=("TxDefaultProfile",), rate_units=("A",))
    run_charger(ch)
    await up(cms, ch)
    ch.plug_in(ev(), id_tag="T")
    await wait_until(lambda: ch.transaction_id() in cms.transactions)
    now, txid = clock(), ch.transaction_id()
    maxp = "ChargePointMaxProfile" if version == "1.6" else "ChargingStationMaxProfile"
    assert await set_profile(cms, version, "CP1", 0, profile(version, 1, maxp, 0, 10.0, now)) == "Rejected"
    assert await set_profile(cms, version, "CP1", 1, profile(version, 2, "TxProfile", 0, 10.0, now, tx=txid)) \
        == "Rejected"
    assert await set_profile(cms, version, "CP1", 0, profile(version, 3, "TxDefaultProfile", 0, 10.0, now)) \
        == "Accepted"
    assert ch.effective_limit().limit == 10.0
    if version == "1.6":
        conf = await cms.call("CP1", call16.GetConfiguration(key=[
            "ChargingScheduleAllowedChargingRateUnit", "ChargeProfileMaxStackLevel", "ChargingScheduleMaxPeriods",
            "SupportedFeatureProfiles", "NoSuchKey"]))
        got = {k["key"]: k["value"] for k in conf.configuration_key}
        assert got["ChargingScheduleAllowedChargingRateUnit"] == "Current"
        assert got["ChargeProfileMaxStackLevel"] == "8" and got["ChargingScheduleMaxPeriods"] == "24"
        assert "SmartCharging" in got["SupportedFeatureProfiles"]
        assert conf.unknown_key == ["NoSuchKey"]
        res = await cms.call("CP1", call16.ClearChargingProfile(charging_profile_purpose="TxDefaultProfile"))
    else:
        gv = await cms.call("CP1", call201.GetVariables(get_variable_data=[
            {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "RateUnit"}},
            {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "ProfileStackLevel"}},
            {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "Nope"}},
            {"component": {"name": "NoCtrlr"}, "variable": {"name": "X"}},
        ]))
        r = gv.get_variable_result
        assert [x["attribute_status"] for x in r] == ["Accepted", "Accepted", "UnknownVariable", "UnknownComponent"]
        assert r[0]["attribute_value"] == "A" and r[1]["attribute_value"] == "8"
        res = await cms.call("CP1", call201.ClearChargingProfile(
            charging_profile_criteria={"chargingProfilePurpose": "TxDefaultProfile"}))
    assert res.status == "Accepted"
    assert ch.effective_limit().limit == 32.0


@pytest.mark.parametrize("version", VERSIONS)
async def test_data_transfer_trigger_and_malformed_frame(
    cms: SimCms, clock: ShiftClock, run_charger: Runner, version: str
) -> None:
    ch = make(cms, clock, version)
    run_charger(ch)
    await up(cms, ch)
    mod = call16 if version == "1.6" else call201
    res = await cms.call("CP1", mod.DataTransfer(vendor_id="com.example", message_id="hello", data="42"))
    assert res.status == "Accepted" and res.data == "42"
    assert ch.data_transfers == [("com.example", "hello", "42")]
    assert ch.calls_received[-1].action == "DataTransfer"
    # garbage on the wire is logged and ignored; the charger keeps working
    await cms._handlers["CP1"]._connection.send("this is not OCPP")
    await cms._handlers["CP1"]._connection.send('[2, "x", "SetChargingProfile", {"bogus": 1}]')
    n = len(cms.calls("CP1", "Heartbeat"))
    res = await cms.call("CP1", mod.TriggerMessage(requested_message="Heartbeat"))
    assert res.status == "Accepted"
    await wait_until(lambda: len(cms.calls("CP1", "Heartbeat")) > n, what="triggered heartbeat")
    assert ch.online


@pytest.mark.parametrize("version", VERSIONS)
async def test_cloud_outage_and_restart_on_same_port(
    cms: SimCms, clock: ShiftClock, run_charger: Runner, version: str
) -> None:
    ch = make(cms, clock, version)
    run_charger(ch)
    await up(cms, ch)
    ch.plug_in(ev(), id_tag="T")
    await wait_until(lambda: ch.transaction_id() in cms.transactions)
    port = cms.port
    await cms.stop()
    await wait_until(lambda: not ch.online, what="charger notices the outage")
    with pytest.raises(SimCallError):
        await cms.call("CP1", call16.Heartbeat())
    ch.unplug()  # the transaction ends while offline: its stop message is kept
    assert await cms.start() == port
    await wait_until(lambda: cms.boots.get("CP1", 0) >= 2 and ch.online, what="reconnect")
    txid = next(iter(cms.transactions))
    await wait_until(lambda: cms.transactions[txid].ended, what="offline stop delivered")
    await wait_until(lambda: all(m.outcome != "pending" for m in ch.messages_sent), what="calls settled")
    # everything the CMS got is in the charger's log under the same message id; the stop came exactly once
    sent_ids = {m.unique_id for m in ch.messages_sent}
    assert all(r.unique_id in sent_ids for r in cms.received["CP1"])
    ends = [r for r in cms.received["CP1"] if r.action == "StopTransaction"
            or (r.action == "TransactionEvent" and r.payload["eventType"] == "Ended")]
    assert len(ends) == 1
    if version == "2.0.1":
        assert ends[0].payload["offline"] is True


async def test_basic_auth_and_subprotocol(clock: ShiftClock, run_charger: Runner) -> None:
    cms = SimCms(clock=clock, basic_auth={"CP1": "s3cret"})
    await cms.start()
    try:
        bad = make(cms, clock, "1.6", "CP1", password="wrong")
        run_charger(bad)
        await wait_until(lambda: cms.refused, what="refusal")
        assert cms.refused[0] == ("CP1", "bad credentials") and not cms.is_connected("CP1")
        with pytest.raises(InvalidStatus):
            async with connect(f"{cms.url}/CP1", subprotocols=["ocpp1.6"]):  # type: ignore[list-item]
                pass
        good = make(cms, clock, "2.0.1", "CP1", password="s3cret")
        run_charger(good)
        await up(cms, good)
        assert cms.versions["CP1"] == "2.0.1"
    finally:
        await cms.stop()


async def test_meter_values_per_connector_on_their_own_schedule_or_none(
    cms: SimCms, clock: ShiftClock, run_charger: Runner
) -> None:
    ch = SimCharger("CP2", "1.6", "ac", 3, 2, cms.url, clock=clock, meter_interval_s=0.3, tick_s=0.05,
                    reconnect_s=(0.1, 0.5))
    run_charger(ch)
    await up(cms, ch)
    ch.plug_in(ev(), 1, id_tag="TAG-1")
    await asyncio.sleep(0.15)
    second_at = clock()
    ch.plug_in(ev(), 2, id_tag="TAG-2")

    def reports(connector: int) -> list[float]:
        return [parse_iso(r.payload["meterValue"][0]["timestamp"]) for r in cms.received.get("CP2", [])
                if r.action == "MeterValues" and r.payload["connectorId"] == connector
                and ("Current.Import", "L1") in samples(r.payload)]

    await wait_until(lambda: len(reports(1)) >= 3 and len(reports(2)) >= 3, what="three reports per connector")
    one, two = reports(1), reports(2)
    # each connector on its own schedule from its own session start (not every 0.05 s tick), stamped with
    # the time of its sample
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(one)), one
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(two)), two
    assert two[0] >= second_at

    ch.meter_interval_s = 0.0  # a charger that reports no current at all
    n = len(cms.received["CP2"])
    await asyncio.sleep(0.5)
    later = [r for r in cms.received["CP2"][n:] if r.action == "MeterValues"]
    assert later == []
    ch.unplug(1)
    stop = await cms.wait_call("CP2", "StopTransaction")
    assert stop.payload["meterStop"] >= 0  # the energy register still goes out with the transaction
    assert ("Current.Import", "L1") not in samples({"meterValue": stop.payload.get("transactionData") or []})
