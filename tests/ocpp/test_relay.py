"""Relay through the gateway: the ocpp library as charger and as CMS, both OCPP versions."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from ocpp.v16 import call as c16
from ocpp.v201 import call as c201

from gateway.model import ChargerState

from .conftest import Cms, connect_charger, wait_for


async def test_16_boot_authorize_transaction_meter_values(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port)
    ch = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    try:
        await wait_for(lambda: gw.ctrl.cms_online("CP16"), what="CMS link")
        boot = await ch.cp.call(c16.BootNotification(charge_point_model="M", charge_point_vendor="V"))
        assert boot.status == "Accepted"
        assert cms.paths[0] == "/ocpp/CP16"
        # the charger's frame reached the CMS byte for byte
        sent_boot = [r for c, r in cms.raw if '"BootNotification"' in r]
        assert len(sent_boot) == 1 and json.loads(sent_boot[0])[3] == {
            "chargePointModel": "M",
            "chargePointVendor": "V",
        }
        auth = await ch.cp.call(c16.Authorize(id_tag="OK-1"))
        assert auth.id_tag_info["status"] == "Accepted"
        await ch.cp.call(c16.StatusNotification(connector_id=1, error_code="NoError", status="Preparing"))
        start = await ch.cp.call(
            c16.StartTransaction(connector_id=1, id_tag="OK-1", meter_start=0, timestamp="2024-01-01T00:00:00Z")
        )
        assert start.transaction_id == 1001
        await ch.cp.call(c16.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
        mv = [
            {
                "timestamp": "2024-01-01T00:01:00Z",
                "sampledValue": [
                    {"value": "16.0", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                    {"value": "15.5", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
                    {"value": "15.0", "measurand": "Current.Import", "phase": "L3", "unit": "A"},
                    {"value": "10.9", "measurand": "Power.Active.Import", "unit": "kW"},
                ],
            }
        ]
        await ch.cp.call(c16.MeterValues(connector_id=1, transaction_id=1001, meter_value=mv))
        snap = gw.ctrl.snapshot()["CP16"]
        assert snap.online and snap.state == ChargerState.CHARGING
        assert snap.draw_a == (16.0, 15.5, 15.0)
        assert snap.draw_w == 10900.0 and snap.draw_at is not None
        assert snap.session is not None and snap.session.transaction_id == "1001" and snap.session.id_token == "OK-1"
        assert "CP16" in gw.changes
        await ch.cp.call(c16.StopTransaction(meter_stop=5000, timestamp="2024-01-01T01:00:00Z", transaction_id=1001))
        await ch.cp.call(c16.StatusNotification(connector_id=1, error_code="NoError", status="Available"))
        snap = gw.ctrl.snapshot()["CP16"]
        assert snap.state == ChargerState.NO_EV and snap.session is None
        assert [p["transaction_id"] for p in cms.of("CP16", "StopTransaction")] == [1001]
        assert len(cms.of("CP16", "MeterValues")) == 1
        assert gw.ctrl.cms_online("CP16")
        assert ("charger_connected", {"charger": "CP16", "version": "1.6"}) in gw.events
    finally:
        await ch.close()
    await wait_for(lambda: not gw.ctrl.snapshot()["CP16"].online, what="offline after close")


async def test_201_transaction_event_and_phase_map(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port)
    ch = await connect_charger(gw.ctrl.port, "CP201", "2.0.1")
    try:
        await wait_for(lambda: gw.ctrl.cms_online("CP201"), what="CMS link")
        boot = await ch.cp.call(
            c201.BootNotification(charging_station={"model": "M", "vendor_name": "V"}, reason="PowerUp")
        )
        assert boot.status == "Accepted"
        auth = await ch.cp.call(c201.Authorize(id_token={"id_token": "OK-2", "type": "ISO14443"}))
        assert auth.id_token_info["status"] == "Accepted"
        await ch.cp.call(
            c201.StatusNotification(
                timestamp="2024-01-01T00:00:00Z", connector_status="Occupied", evse_id=1, connector_id=1
            )
        )
        assert gw.ctrl.snapshot()["CP201"].state == ChargerState.EV_CONNECTED
        meter = [
            {
                "timestamp": "2024-01-01T00:01:00Z",
                "sampledValue": [
                    {"value": 10.0, "measurand": "Current.Import", "phase": "L1"},
                    {"value": 11.0, "measurand": "Current.Import", "phase": "L2"},
                    {"value": 12.0, "measurand": "Current.Import", "phase": "L3"},
                    {
                        "value": 7.5,
                        "measurand": "Power.Active.Import",
                        "unitOfMeasure": {"unit": "kW", "multiplier": 0},
                    },
                ],
            }
        ]
        await ch.cp.call(
            c201.TransactionEvent(
                event_type="Started",
                timestamp="2024-01-01T00:00:10Z",
                trigger_reason="Authorized",
                seq_no=0,
                transaction_info={"transaction_id": "tx-1", "charging_state": "Charging"},
                id_token={"id_token": "OK-2", "type": "ISO14443"},
                evse={"id": 1, "connector_id": 1},
                meter_value=meter,
            )
        )
        snap = gw.ctrl.snapshot()["CP201"]
        assert snap.state == ChargerState.CHARGING
        # phase_rotation L2L3L1: charger L1 is site L2, L2 is L3, L3 is L1
        assert snap.draw_a == (12.0, 10.0, 11.0)
        assert snap.draw_w == 7500.0
        assert snap.session is not None and snap.session.transaction_id == "tx-1"
        await ch.cp.call(
            c201.TransactionEvent(
                event_type="Ended",
                timestamp="2024-01-01T01:00:00Z",
                trigger_reason="EVDeparted",
                seq_no=1,
                transaction_info={"transaction_id": "tx-1", "charging_state": "Idle"},
            )
        )
        await ch.cp.call(
            c201.StatusNotification(
                timestamp="2024-01-01T01:00:01Z", connector_status="Available", evse_id=1, connector_id=1
            )
        )
        snap = gw.ctrl.snapshot()["CP201"]
        assert snap.state == ChargerState.NO_EV and snap.session is None
        assert [p["event_type"] for p in cms.of("CP201", "TransactionEvent")] == ["Started", "Ended"]
    finally:
        await ch.close()


async def test_remote_start_from_cms_keeps_message_id(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port)
    a = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    b = await connect_charger(gw.ctrl.port, "CP201", "2.0.1")
    try:
        await wait_for(lambda: "CP16" in cms.peers and "CP201" in cms.peers, what="upstreams")
        r16 = await cms.peers["CP16"].call(c16.RemoteStartTransaction(id_tag="OK-9", connector_id=1))
        assert r16.status == "Accepted"
        assert a.cp.of("RemoteStartTransaction") == [{"id_tag": "OK-9", "connector_id": 1}]
        r201 = await cms.peers["CP201"].call(
            c201.RequestStartTransaction(id_token={"id_token": "OK-9", "type": "ISO14443"}, remote_start_id=7)
        )
        assert r201.status == "Accepted"
        assert b.cp.of("RequestStartTransaction")[0]["remote_start_id"] == 7
        # the message id the CMS chose is the one the charger saw
        cms_call = next(f for f in a.cp.raw_in if '"RemoteStartTransaction"' in f)
        assert json.loads(cms_call)[0] == 2
    finally:
        await a.close()
        await b.close()


async def test_vendor_frames_pass_byte_for_byte(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port)
    ch = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    try:
        await wait_for(lambda: "CP16" in cms.peers, what="upstream")
        # odd spacing, key order and a vendor action the library does not know
        dt = '[2,  "dt-1" ,"DataTransfer",{"vendorId":"ACME","messageId":"x","data":"{\\"a\\": [1, 2.50]}"}]'
        vendor = '[2,"v-1","AcmeSecretThing",{"z":1,"a":{"b":[true,null]}}]'
        await ch.ws.send(dt)
        await wait_for(lambda: any(r == dt for _, r in cms.raw), what="DataTransfer at the CMS")
        await ch.ws.send(vendor)
        await wait_for(lambda: any(r == vendor for _, r in cms.raw), what="vendor CALL at the CMS")
        # the library CMS answered NotImplemented; the answer came back to the charger untouched
        await wait_for(lambda: any('"v-1"' in r and r.startswith("[4") for r in ch.cp.raw_in), what="CALLERROR back")
        # the other way: the CMS's vendor DataTransfer reaches the charger untouched
        down = '[2,"cms-dt-7","DataTransfer",{"vendorId":"ACME","data":"ping"}]'
        await cms.conns["CP16"].send(down)
        await wait_for(lambda: down in ch.cp.raw_in, what="DataTransfer at the charger")
        await wait_for(lambda: any(r.startswith('[3,"cms-dt-7"') for _, r in cms.raw), what="answer at the CMS")
    finally:
        await ch.close()


async def test_one_outstanding_call_per_direction(cms: Cms, make_gateway: Any) -> None:
    """The gateway's own CALL waits while a CMS CALL is in flight on the same socket."""
    from websockets.asyncio.client import connect

    from gateway.model import Allocation, ChargerLimit

    gw = await make_gateway(cms.port, chargers=_ONE_201)
    ws = await connect(f"ws://127.0.0.1:{gw.ctrl.port}/ocpp/CP201", subprotocols=["ocpp2.0.1"])  # type: ignore[list-item]

    async def answer_until(action: str) -> list[Any]:
        while True:
            f = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if f[2] == action:
                return f  # type: ignore[no-any-return]
            await ws.send(json.dumps([3, f[1], _auto_answer(f[2])]))

    try:
        await wait_for(lambda: "CP201" in cms.peers, what="upstream")
        # the gateway's start-up CALLs (capabilities, fail-safe profile) are answered
        fs = await answer_until("SetChargingProfile")  # fail-safe: not answered yet, so...
        # ...a CMS CALL now waits behind the gateway's CALL in flight
        cms_task = asyncio.create_task(cms.peers["CP201"].call(c201.GetLocalListVersion()))
        await asyncio.sleep(0.3)
        # answer the fail-safe; then the CMS CALL arrives
        await ws.send(json.dumps([3, fs[1], {"status": "Accepted"}]))
        f = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert f[2] == "GetLocalListVersion"
        # while the CMS CALL is in flight, the gateway's limit waits
        await gw.ctrl.apply(Allocation(at=0.0, limits={"CP201": ChargerLimit(limit=20.0, line_a=20.0, reason="t")}))
        try:
            extra = await asyncio.wait_for(ws.recv(), 0.5)
            raise AssertionError(f"a second CALL was sent while one was in flight: {extra!r}")
        except TimeoutError:
            pass
        await ws.send(json.dumps([3, f[1], {"versionNumber": 3}]))
        assert (await asyncio.wait_for(cms_task, 10)).version_number == 3
        f2 = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert (
            f2[2] == "SetChargingProfile"
            and f2[3]["chargingProfile"]["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"] == 20.0
        )
        import uuid

        uuid.UUID(f2[1])  # the gateway's own message ids are UUIDs
    finally:
        await ws.close()


_ONE_201 = """
[[chargers]]
id = "CP201"
ocpp_version = "2.0.1"
kind = "ac"
circuit = "p1"
phases = 3
max_current_a = 32
failsafe_current_a = 6
"""


def _auto_answer(action: str) -> dict[str, Any]:
    if action == "GetVariables":
        return {"getVariableResult": []}
    return {"status": "Accepted"}
