"""Cloud outage: chargers stay connected, the gateway answers locally, queues durably and replays once."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ocpp.v16 import call as c16
from ocpp.v201 import call as c201

from gateway.ocpp_proxy.store import Store

from .conftest import Cms, connect_charger, site_text, wait_for

T0 = "2024-01-01T00:00:00Z"


def _mv16(tx: int, amps: str) -> c16.MeterValues:
    return c16.MeterValues(
        connector_id=1,
        transaction_id=tx,
        meter_value=[
            {
                "timestamp": T0,
                "sampledValue": [{"value": amps, "measurand": "Current.Import", "phase": "L1", "unit": "A"}],
            }
        ],
    )


async def _outage_transaction_16(ch: Any, cached: bool = True) -> int:
    boot = await ch.cp.call(c16.BootNotification(charge_point_model="M", charge_point_vendor="V"))
    assert boot.status == "Accepted"
    hb = await ch.cp.call(c16.Heartbeat())
    assert hb.current_time
    expected = "Accepted" if cached else "Invalid"
    assert (await ch.cp.call(c16.Authorize(id_tag="OK-cached"))).id_tag_info["status"] == expected
    assert (await ch.cp.call(c16.Authorize(id_tag="never-seen"))).id_tag_info["status"] == "Invalid"
    assert (await ch.cp.call(c16.Authorize(id_tag="FLEET-1"))).id_tag_info["status"] == "Accepted"
    start = await ch.cp.call(c16.StartTransaction(connector_id=1, id_tag="OK-cached", meter_start=0, timestamp=T0))
    assert start.transaction_id < 0 and start.id_tag_info["status"] == expected
    await ch.cp.call(c16.StatusNotification(connector_id=1, error_code="NoError", status="Charging"))
    await ch.cp.call(_mv16(start.transaction_id, "16.0"))
    await ch.cp.call(c16.StopTransaction(meter_stop=1000, timestamp=T0, transaction_id=start.transaction_id))
    return int(start.transaction_id)


async def test_16_outage_transaction_replayed_once_with_cms_ids(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port, ocpp_extra='offline_allow_list = ["FLEET-1"]')
    ch = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    try:
        await wait_for(lambda: gw.ctrl.cms_online("CP16"), what="CMS link")
        assert (await ch.cp.call(c16.Authorize(id_tag="OK-cached"))).id_tag_info["status"] == "Accepted"
        await cms.stop()
        await wait_for(lambda: not gw.ctrl.cms_online("CP16"), what="CMS link down")
        assert any(n == "cms_link_down" for n, _ in gw.events)
        local_tx = await _outage_transaction_16(ch)
        assert gw.ctrl.store.count_pending("CP16") == 4
        assert gw.ctrl.snapshot()["CP16"].online, "the charger stays connected"
        # a second transaction starts offline and is still running when the CMS returns
        start2 = await ch.cp.call(c16.StartTransaction(connector_id=1, id_tag="FLEET-1", meter_start=0, timestamp=T0))
        before = len(cms.messages)
        await cms.start()
        await wait_for(lambda: gw.ctrl.store.count_pending("CP16") == 0, what="queue drained")
        replay = [(a, p) for c, a, p in cms.messages[before:] if c == "CP16"]
        actions = [a for a, _ in replay]
        assert actions == [
            "BootNotification",
            "StartTransaction",
            "StatusNotification",
            "MeterValues",
            "StopTransaction",
            "StartTransaction",
        ]
        cms_tx1 = replay[1][1]["assigned"]
        assert replay[3][1]["transaction_id"] == cms_tx1
        assert replay[4][1]["transaction_id"] == cms_tx1
        cms_tx2 = replay[5][1]["assigned"]
        assert gw.ctrl.store.cms_tx("CP16", local_tx) == cms_tx1
        # live frames of the running transaction carry the CMS's id upstream...
        await ch.cp.call(_mv16(start2.transaction_id, "10.0"))
        assert cms.of("CP16", "MeterValues")[-1]["transaction_id"] == cms_tx2
        # ...and the CMS's id maps back to the charger's in RemoteStopTransaction
        r = await cms.peers["CP16"].call(c16.RemoteStopTransaction(transaction_id=cms_tx2))
        assert r.status == "Accepted"
        assert ch.cp.of("RemoteStopTransaction")[-1] == {"transaction_id": start2.transaction_id}
        # nothing is replayed twice
        await asyncio.sleep(0.3)
        assert len([a for c, a, _ in cms.messages if c == "CP16" and a == "StopTransaction"]) == 1
    finally:
        await ch.close()


async def test_201_outage_transaction_events_replayed_once(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port)
    ch = await connect_charger(gw.ctrl.port, "CP201", "2.0.1")
    try:
        await wait_for(lambda: gw.ctrl.cms_online("CP201"), what="CMS link")
        await cms.stop()
        await wait_for(lambda: not gw.ctrl.cms_online("CP201"), what="CMS link down")
        tok = {"id_token": "OK-x", "type": "ISO14443"}
        assert (await ch.cp.call(c201.Authorize(id_token=tok))).id_token_info["status"] == "Invalid"
        for seq, (event, state) in enumerate([("Started", "Charging"), ("Updated", "SuspendedEV"), ("Ended", "Idle")]):
            r = await ch.cp.call(
                c201.TransactionEvent(
                    event_type=event,
                    timestamp=T0,
                    trigger_reason="ChargingStateChanged",
                    seq_no=seq,
                    offline=True,
                    transaction_info={"transaction_id": "tx-off", "charging_state": state},
                    evse={"id": 1, "connector_id": 1},
                    meter_value=[{"timestamp": T0, "sampledValue": [{"value": 1000.0 * (seq + 1)}]}],
                )
            )
            assert r is not None
        assert gw.ctrl.store.count_pending("CP201") == 3
        await cms.start()
        await wait_for(lambda: gw.ctrl.store.count_pending("CP201") == 0, what="queue drained")
        events = [(p["seq_no"], p["event_type"]) for p in cms.of("CP201", "TransactionEvent")]
        assert events == [(0, "Started"), (1, "Updated"), (2, "Ended")]
        # the charger got one answer per CALL (the local ones); the CMS's replay results stayed in the gateway
        await asyncio.sleep(0.2)
        assert len([f for f in ch.cp.raw_in if f.startswith("[3")]) == 4
    finally:
        await ch.close()


async def test_strict_offline_closes_chargers(make_gateway: Any) -> None:
    cms = Cms()  # never started: the CMS is down
    gw = await make_gateway(cms.port, ocpp_extra="strict_offline = true")
    ch = await connect_charger(gw.ctrl.port, "CP201", "2.0.1")
    await asyncio.wait_for(ch.ws.wait_closed(), 15)
    assert ch.ws.close_code == 1011
    ch.task.cancel()


async def _spawn_gateway(cfg: Path) -> tuple[asyncio.subprocess.Process, int]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.ocpp_proxy", str(cfg), stdout=asyncio.subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert line, "the gateway exited"
        if line.startswith("ocpp_proxy_listening"):
            port = int(line.split("port=")[1].split()[0])
            break

    async def drain() -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    asyncio.get_running_loop().create_task(drain())
    return proc, port


async def test_sigkill_during_outage_loses_nothing(tmp_path: Path) -> None:
    cms = Cms()  # down for now: its port is only reserved
    cfg = tmp_path / "site.toml"
    cfg.write_text(site_text(tmp_path / "state", cms.port, ocpp_extra='offline_allow_list = ["FLEET-1"]'))
    proc, port = await _spawn_gateway(cfg)
    try:
        ch = await connect_charger(port, "CP16", "1.6", password="secret-cp16")
        local_tx = await _outage_transaction_16(ch, cached=False)
        start2 = await ch.cp.call(c16.StartTransaction(connector_id=1, id_tag="FLEET-1", meter_start=5, timestamp=T0))
        assert start2.transaction_id == local_tx - 1
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await ch.close()
        store = Store(tmp_path / "state" / "ocpp.sqlite")
        assert store.count_pending("CP16") == 5  # acknowledged means on disk
        store.close()
        proc, port = await _spawn_gateway(cfg)
        await cms.start()
        ch = await connect_charger(port, "CP16", "1.6", password="secret-cp16")
        await ch.cp.call(c16.BootNotification(charge_point_model="M", charge_point_vendor="V"))

        def drained() -> bool:
            s = Store(tmp_path / "state" / "ocpp.sqlite")
            try:
                return s.count_pending() == 0
            finally:
                s.close()

        await wait_for(drained, 20, what="replay after restart")
        acts = [a for c, a, _ in cms.messages if c == "CP16" and a != "BootNotification"]
        assert acts == ["StartTransaction", "StatusNotification", "MeterValues", "StopTransaction", "StartTransaction"]
        starts = cms.of("CP16", "StartTransaction")
        assert cms.of("CP16", "StopTransaction")[0]["transaction_id"] == starts[0]["assigned"]
        assert starts[1]["meter_start"] == 5
        await ch.close()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 10)
        await cms.stop()


async def test_16_offline_accept_unknown_starts_sessions_for_new_tokens_only(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port, ocpp_extra="offline_accept_unknown = true")
    ch = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    try:
        await wait_for(lambda: gw.ctrl.cms_online("CP16"), what="CMS link")
        await cms.stop()
        await wait_for(lambda: not gw.ctrl.cms_online("CP16"), what="CMS link down")
        # a driver the CMS has never seen may charge while it is down; the session is settled on replay
        assert (await ch.cp.call(c16.Authorize(id_tag="walk-in"))).id_tag_info["status"] == "Accepted"
        start = await ch.cp.call(c16.StartTransaction(connector_id=1, id_tag="walk-in", meter_start=0, timestamp=T0))
        assert start.id_tag_info["status"] == "Accepted" and start.transaction_id < 0
        await cms.start()
        await wait_for(lambda: gw.ctrl.store.count_pending("CP16") == 0, what="queue drained")
        assert [p["id_tag"] for p in cms.of("CP16", "StartTransaction")] == ["walk-in"]
    finally:
        await ch.close()
