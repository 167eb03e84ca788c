"""Interop with implementations we did not write: npm ocpp-rpc and npm ocpp-ws-io (strict schema mode),
each as charger and as CMS."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from gateway.model import Allocation, ChargerLimit

from .conftest import wait_for

INTEROP = Path(__file__).resolve().parents[1] / "interop"
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None
    or not (INTEROP / "node_modules" / "ocpp-rpc").is_dir()
    or not (INTEROP / "node_modules" / "ocpp-ws-io").is_dir(),
    reason="node and tests/interop/node_modules (./dev installs them) are needed",
)


class NodePeer:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self._tag = 0
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def start(cls, *args: str, script: str = "peer.js") -> NodePeer:
        proc = await asyncio.create_subprocess_exec(
            "node",
            str(INTEROP / script),
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(INTEROP),
        )
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.events.append(json.loads(line))

    def of(self, ev: str, **match: Any) -> list[dict[str, Any]]:
        return [e for e in self.events if e["ev"] == ev and all(e.get(k) == v for k, v in match.items())]

    async def call(self, identity: str, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self._tag += 1
        tag = self._tag
        assert self.proc.stdin is not None
        cmd = {"cmd": "call", "id": identity, "method": method, "params": params, "tag": tag}
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        got = await wait_for(lambda: [e for e in self.events if e.get("tag") == tag], what=f"{method} answer")
        assert got[0]["ev"] == "result", got[0]
        return got[0]["result"]  # type: ignore[no-any-return]

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


@pytest.mark.parametrize("script", ["peer.js", "peer_wsio.js"])
@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_independent_peers_on_both_sides(make_gateway: Any, version: str, script: str) -> None:
    cms = await NodePeer.start("cms", script=script)
    charger: NodePeer | None = None
    try:
        ready = await wait_for(lambda: cms.of("ready"), what="ocpp-rpc CMS")
        gw = await make_gateway(ready[0]["port"])
        cid, proto = ("CP16", "ocpp1.6") if version == "1.6" else ("CP201", "ocpp2.0.1")
        url = f"ws://127.0.0.1:{gw.ctrl.port}/ocpp"
        args = [url, cid, proto] + (["secret-cp16"] if version == "1.6" else [])
        charger = await NodePeer.start("charger", *args, script=script)
        await wait_for(lambda: charger.of("open") if charger else None, what="ocpp-rpc charger connected")
        await wait_for(lambda: gw.ctrl.cms_online(cid), what="upstream to ocpp-rpc CMS")
        if version == "1.6":
            boot = await charger.call(cid, "BootNotification", {"chargePointVendor": "rpc", "chargePointModel": "m"})
            assert boot["status"] == "Accepted"
            auth = await charger.call(cid, "Authorize", {"idTag": "TAG1"})
            assert auth["idTagInfo"]["status"] == "Accepted"
            start = await charger.call(
                cid, "StartTransaction", {"connectorId": 1, "idTag": "TAG1", "meterStart": 0, "timestamp": _T}
            )
            tx = start["transactionId"]
            await charger.call(
                cid,
                "MeterValues",
                {
                    "connectorId": 1,
                    "transactionId": tx,
                    "meterValue": [
                        {
                            "timestamp": _T,
                            "sampledValue": [
                                {"value": "13.0", "measurand": "Current.Import", "phase": "L1", "unit": "A"}
                            ],
                        }
                    ],
                },
            )
            assert gw.ctrl.snapshot()[cid].draw_a == (13.0, 0.0, 0.0)
            await charger.call(cid, "StopTransaction", {"transactionId": tx, "meterStop": 10, "timestamp": _T})
            remote = await cms.call(cid, "RemoteStartTransaction", {"idTag": "TAG2", "connectorId": 1})
        else:
            boot = await charger.call(
                cid, "BootNotification", {"chargingStation": {"model": "m", "vendorName": "rpc"}, "reason": "PowerUp"}
            )
            assert boot["status"] == "Accepted"
            auth = await charger.call(cid, "Authorize", {"idToken": {"idToken": "TAG1", "type": "ISO14443"}})
            assert auth["idTokenInfo"]["status"] == "Accepted"
            draws: list[float | None] = []
            for seq, ev in enumerate(["Started", "Ended"]):
                await charger.call(
                    cid,
                    "TransactionEvent",
                    {
                        "eventType": ev,
                        "timestamp": _T,
                        "triggerReason": "Authorized",
                        "seqNo": seq,
                        "transactionInfo": {"transactionId": "rpc-tx", "chargingState": "Charging"},
                        "meterValue": [
                            {"timestamp": _T, "sampledValue": [{"value": 11000, "measurand": "Power.Active.Import"}]}
                        ],
                    },
                )
                draws.append(gw.ctrl.snapshot()[cid].draw_w)
            assert draws == [11000.0, None]  # the ended session's draw drops out of the station's total
            remote = await cms.call(
                cid, "RequestStartTransaction", {"idToken": {"idToken": "TAG2", "type": "ISO14443"}, "remoteStartId": 1}
            )
        assert remote["status"] == "Accepted"
        # a vendor DataTransfer passes byte for byte, message id included
        dt = await charger.call(cid, "DataTransfer", {"vendorId": "ACME", "messageId": "m", "data": "ping 1.50"})
        assert dt["data"] == "interop-pong"
        sent = [e["raw"] for e in charger.of("msg", outbound=True) if '"DataTransfer"' in e["raw"]]
        got = [e["raw"] for e in cms.of("msg", outbound=False) if '"DataTransfer"' in e["raw"]]
        assert sent and sent == got
        answers_sent = [e["raw"] for e in cms.of("msg", outbound=True) if "interop-pong" in e["raw"]]
        answers_got = [e["raw"] for e in charger.of("msg", outbound=False) if "interop-pong" in e["raw"]]
        assert answers_sent == answers_got
        # the gateway's profiles satisfy a strict charger
        await gw.ctrl.apply(Allocation(at=0.0, limits={cid: ChargerLimit(limit=16.0, line_a=16.0, reason="t")}))
        await wait_for(
            lambda: len(charger.of("call", method="SetChargingProfile")) >= 2 if charger else None, what="limit"
        )
        assert not charger.of("strict_failure") and not cms.of("strict_failure")
        # the CMS's identity and subprotocol are the charger's
        assert cms.of("open")[0]["id"] == cid and cms.of("open")[0]["protocol"] == proto
    finally:
        if charger is not None:
            await charger.stop()
        await cms.stop()


_T = "2024-01-01T00:00:00.000Z"
