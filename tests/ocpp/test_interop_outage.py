"""Independent peers through a CMS outage and a gateway SIGKILL: every transaction message the charger
sent reaches the CMS once, in order, as sent (the 1.6 local transaction id apart). Charger and CMS are
different implementations (npm ocpp-rpc and npm ocpp-ws-io, both in strict schema mode)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import free_port, site_text, wait_for
from .test_durability import Proc
from .test_interop import NodePeer, pytestmark  # noqa: F401  (skipped without node and the packages)

T = "2024-01-01T00:00:00.000Z"
TX_ACTIONS = ("StartTransaction", "StopTransaction", "MeterValues", "TransactionEvent")


def _calls(peers: list[NodePeer], outbound: bool) -> list[list[Any]]:
    out = []
    for p in peers:
        for e in p.of("msg", outbound=outbound):
            msg = json.loads(e["raw"])
            if msg[0] == 2 and msg[2] in TX_ACTIONS:
                out.append(msg)
    return out


def _mv16(tx: int, amps: str) -> dict[str, Any]:
    sv = [{"value": amps, "measurand": "Current.Import", "phase": "L1", "unit": "A"}]
    return {"connectorId": 1, "transactionId": tx, "meterValue": [{"timestamp": T, "sampledValue": sv}]}


def _te(seq: int, event: str) -> dict[str, Any]:
    return {
        "eventType": event,
        "timestamp": T,
        "triggerReason": "MeterValuePeriodic" if event == "Updated" else "Authorized",
        "seqNo": seq,
        "transactionInfo": {"transactionId": "iop-1", "chargingState": "Charging"},
        "evse": {"id": 1, "connectorId": 1},
        "meterValue": [{"timestamp": T, "sampledValue": [{"value": 100.0 * seq, "unitOfMeasure": {"unit": "Wh"}}]}],
    }


@pytest.mark.parametrize(("charger_js", "cms_js"), [("peer.js", "peer_wsio.js"), ("peer_wsio.js", "peer.js")])
@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_transaction_across_outage_and_sigkill_reaches_cms_once_as_sent(
    tmp_path: Path, version: str, charger_js: str, cms_js: str
) -> None:
    cms_port = free_port()
    cid, proto = ("CP16", "ocpp1.6") if version == "1.6" else ("CP201", "ocpp2.0.1")
    cfg = tmp_path / "site.toml"
    cfg.write_text(site_text(tmp_path / "state", cms_port, ocpp_extra='offline_allow_list = ["TAG1"]'))
    cms_peers: list[NodePeer] = []
    chargers: list[NodePeer] = []

    async def start_cms() -> NodePeer:
        cms = await NodePeer.start("cms", str(cms_port), script=cms_js)
        cms_peers.append(cms)
        await wait_for(lambda: cms.of("ready"), what="CMS")
        return cms

    async def start_charger(port: int) -> NodePeer:
        args = [f"ws://127.0.0.1:{port}/ocpp", cid, proto] + (["secret-cp16"] if version == "1.6" else [])
        ch = await NodePeer.start("charger", *args, script=charger_js)
        chargers.append(ch)
        await wait_for(lambda: ch.of("open"), what="charger connected")
        return ch

    cms = await start_cms()
    gw = await Proc.spawn(cfg)
    try:
        ch = await start_charger(gw.port)
        await wait_for(lambda: cms.of("open", id=cid), what="upstream")
        # live: the transaction begins with the CMS up
        if version == "1.6":
            start = await ch.call(
                cid, "StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0, "timestamp": T}
            )
            tx = start["transactionId"]
            assert tx > 0
        else:
            await ch.call(cid, "TransactionEvent", _te(0, "Started"))
        # the CMS goes down; the transaction goes on
        await cms.stop()
        await asyncio.sleep(0.5)
        if version == "1.6":
            await ch.call(cid, "MeterValues", _mv16(tx, "16.0"))
            await ch.call(cid, "MeterValues", _mv16(tx, "15.5"))
        else:
            await ch.call(cid, "TransactionEvent", _te(1, "Updated"))
            await ch.call(cid, "TransactionEvent", _te(2, "Updated"))
        # the gateway is killed and comes back, still without a CMS
        await gw.kill()
        await ch.stop()
        gw = await Proc.spawn(cfg)
        ch = await start_charger(gw.port)
        if version == "1.6":
            await ch.call(cid, "StopTransaction", {"transactionId": tx, "meterStop": 900, "timestamp": T})
            # and a whole transaction inside the outage: local id, rewritten on replay
            local = (
                await ch.call(
                    cid, "StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 900, "timestamp": T}
                )
            )["transactionId"]
            assert local < 0
            await ch.call(cid, "MeterValues", _mv16(local, "10.0"))
            await ch.call(cid, "StopTransaction", {"transactionId": local, "meterStop": 1500, "timestamp": T})
        else:
            await ch.call(cid, "TransactionEvent", _te(3, "Ended"))
        sent = _calls(chargers, outbound=True)
        cms = await start_cms()
        await wait_for(lambda: len(_calls(cms_peers, outbound=False)) >= len(sent), 30, what="replay at the CMS")
        await asyncio.sleep(0.5)
        got = _calls(cms_peers, outbound=False)
        assert len({m[1] for m in got}) == len(got), "no message id reaches the CMS twice"
        assert [m[1] for m in got] == [m[1] for m in sent], "the charger's message ids, in order"
        if version == "1.6":
            assert len(cms_peers[1].of("call", method="StartTransaction")) == 1  # the offline one, once
            # the only difference: the local id replaced by the CMS's in the offline transaction's messages
            new_id = next(m for m in got if m[2] == "StopTransaction" and m[3]["meterStop"] == 1500)[3]["transactionId"]
            assert new_id > 0
            for s_msg, g_msg in zip(sent, got, strict=True):
                if s_msg[3].get("transactionId") == local:
                    assert g_msg[3] == {**s_msg[3], "transactionId": new_id}
                else:
                    assert g_msg == s_msg
        else:
            assert got == sent
        assert not [e for p in [*chargers, *cms_peers] for e in p.of("strict_failure")]
    finally:
        for p in [*chargers, *cms_peers]:
            await p.stop()
        await gw.stop()
