"""Harness for the OCPP controller tests: the gateway in-process, a CMS and chargers from the
`ocpp` library over real WebSockets on 127.0.0.1, ephemeral ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from ocpp.routing import on
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call_result as cr16
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call_result as cr201
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve

from gateway.config import Site, site_from_text
from gateway.ocpp_proxy.controller import OcppController
from hil.support import eventually
from hil.support import free_port as free_port

wait_for = eventually  # the name the OCPP tests know


def site_text(state_dir: Path, cms_port: int | None, *, ocpp_extra: str = "", chargers: str | None = None) -> str:
    cms = f'cms_url = "ws://127.0.0.1:{cms_port}/ocpp"' if cms_port else ""
    chargers = chargers if chargers is not None else CHARGERS
    return f"""
[site]
id = "t"
state_dir = "{state_dir}"
[service]
voltage_ll_v = 400
phases = 3
limit_a = 400
margin_a = 10
worst_case_non_ev_a = 50
[[circuits]]
id = "p1"
parent = "service"
limit_a = 200
[ocpp]
listen_host = "127.0.0.1"
listen_port = 0
{cms}
reconnect_min_s = 0.05
reconnect_max_s = 0.3
call_timeout_s = 5
lease_s = 120
renew_before_s = 30
significance_a = 1.0
{ocpp_extra}
{chargers}
"""


CHARGERS = """
[[chargers]]
id = "CP16"
ocpp_version = "1.6J"
kind = "ac"
circuit = "p1"
phases = 3
max_current_a = 32
failsafe_current_a = 6
[chargers.ocpp]
password = "secret-cp16"
[[chargers]]
id = "CP201"
ocpp_version = "2.0.1"
kind = "ac"
circuit = "p1"
phases = 3
phase_rotation = "L2L3L1"
max_current_a = 32
failsafe_current_a = 6
[[chargers]]
id = "DC1"
ocpp_version = "2.0.1"
kind = "dc"
circuit = "p1"
max_power_w = 50000
failsafe_power_w = 10000
min_power_w = 5000
"""


# ---------------------------------------------------------------- CMS (ocpp library, central system side)
class Cms16(CP16):
    def __init__(self, cid: str, conn: Any, cms: Cms) -> None:
        super().__init__(cid, conn, response_timeout=10)
        self.cms = cms
        self.next_tx = 1000

    async def route_message(self, raw_msg: str) -> None:
        self.cms.raw.append((self.id, raw_msg))
        await super().route_message(raw_msg)

    @on("BootNotification")
    def boot(self, **kw: Any) -> Any:
        self.cms.got(self.id, "BootNotification", kw)
        return cr16.BootNotification(current_time="2024-01-01T00:00:00Z", interval=300, status="Accepted")

    @on("Heartbeat")
    def hb(self, **kw: Any) -> Any:
        self.cms.got(self.id, "Heartbeat", kw)
        return cr16.Heartbeat(current_time="2024-01-01T00:00:00Z")

    @on("Authorize")
    def auth(self, id_tag: str) -> Any:
        self.cms.got(self.id, "Authorize", {"id_tag": id_tag})
        return cr16.Authorize(id_tag_info={"status": "Accepted" if id_tag.startswith("OK") else "Invalid"})

    @on("StartTransaction")
    def start_tx(self, **kw: Any) -> Any:
        self.next_tx += 1
        kw["assigned"] = self.next_tx
        self.cms.got(self.id, "StartTransaction", kw)
        return cr16.StartTransaction(transaction_id=self.next_tx, id_tag_info={"status": "Accepted"})

    @on("StopTransaction")
    def stop_tx(self, **kw: Any) -> Any:
        self.cms.got(self.id, "StopTransaction", kw)
        return cr16.StopTransaction()

    @on("MeterValues")
    def mv(self, **kw: Any) -> Any:
        self.cms.got(self.id, "MeterValues", kw)
        return cr16.MeterValues()

    @on("StatusNotification")
    def status(self, **kw: Any) -> Any:
        self.cms.got(self.id, "StatusNotification", kw)
        return cr16.StatusNotification()

    @on("DataTransfer")
    def dt(self, **kw: Any) -> Any:
        self.cms.got(self.id, "DataTransfer", kw)
        return cr16.DataTransfer(status="Accepted", data="pong")


class Cms201(CP201):
    def __init__(self, cid: str, conn: Any, cms: Cms) -> None:
        super().__init__(cid, conn, response_timeout=10)
        self.cms = cms

    async def route_message(self, raw_msg: str) -> None:
        self.cms.raw.append((self.id, raw_msg))
        await super().route_message(raw_msg)

    @on("BootNotification")
    def boot(self, **kw: Any) -> Any:
        self.cms.got(self.id, "BootNotification", kw)
        return cr201.BootNotification(current_time="2024-01-01T00:00:00Z", interval=300, status="Accepted")

    @on("Heartbeat")
    def hb(self, **kw: Any) -> Any:
        self.cms.got(self.id, "Heartbeat", kw)
        return cr201.Heartbeat(current_time="2024-01-01T00:00:00Z")

    @on("Authorize")
    def auth(self, id_token: dict[str, Any], **kw: Any) -> Any:
        self.cms.got(self.id, "Authorize", {"id_token": id_token})
        ok = str(id_token.get("id_token", "")).startswith("OK")
        return cr201.Authorize(id_token_info={"status": "Accepted" if ok else "Invalid"})

    @on("TransactionEvent")
    def tx(self, **kw: Any) -> Any:
        self.cms.got(self.id, "TransactionEvent", kw)
        if kw.get("id_token"):
            return cr201.TransactionEvent(id_token_info={"status": "Accepted"})
        return cr201.TransactionEvent()

    @on("MeterValues")
    def mv(self, **kw: Any) -> Any:
        self.cms.got(self.id, "MeterValues", kw)
        return cr201.MeterValues()

    @on("StatusNotification")
    def status(self, **kw: Any) -> Any:
        self.cms.got(self.id, "StatusNotification", kw)
        return cr201.StatusNotification()

    @on("DataTransfer")
    def dt(self, **kw: Any) -> Any:
        self.cms.got(self.id, "DataTransfer", kw)
        return cr201.DataTransfer(status="Accepted", data="pong")

    @on("ReportChargingProfiles")
    def rcp(self, **kw: Any) -> Any:
        self.cms.got(self.id, "ReportChargingProfiles", kw)
        return cr201.ReportChargingProfiles()


class Cms:
    """A CMS on 127.0.0.1 that can be stopped and restarted on the same port (an outage)."""

    def __init__(self, port: int | None = None, ssl_context: Any = None) -> None:
        self.port = port or free_port()
        self.ssl_context = ssl_context
        self.server: Server | None = None
        self.peers: dict[str, CP16 | CP201] = {}
        self.conns: dict[str, ServerConnection] = {}
        self.messages: list[tuple[str, str, dict[str, Any]]] = []
        self.raw: list[tuple[str, str]] = []
        self.paths: list[str] = []
        self.headers: list[dict[str, str]] = []
        self.client_cns: list[str | None] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def got(self, cid: str, action: str, payload: dict[str, Any]) -> None:
        self.messages.append((cid, action, payload))

    def of(self, cid: str, action: str) -> list[dict[str, Any]]:
        return [p for c, a, p in self.messages if c == cid and a == action]

    async def _handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cid = ws.request.path.rstrip("/").rsplit("/", 1)[-1]
        self.paths.append(ws.request.path)
        self.headers.append(dict(ws.request.headers.raw_items()))
        sslobj = ws.transport.get_extra_info("ssl_object")
        cn = None
        if sslobj is not None and sslobj.getpeercert():
            for rdn in sslobj.getpeercert()["subject"]:
                for k, v in rdn:
                    if k == "commonName":
                        cn = v
        self.client_cns.append(cn)
        peer: CP16 | CP201 = Cms16(cid, ws, self) if ws.subprotocol == "ocpp1.6" else Cms201(cid, ws, self)
        self.peers[cid] = peer
        self.conns[cid] = ws
        try:
            await peer.start()
        except Exception:
            pass
        finally:
            if self.peers.get(cid) is peer:
                del self.peers[cid]
                del self.conns[cid]

    async def start(self) -> None:
        self.server = await serve(
            self._handler, "127.0.0.1", self.port, subprotocols=["ocpp1.6", "ocpp2.0.1"], ssl=self.ssl_context
        )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


# ---------------------------------------------------------------- chargers (ocpp library, charging station side)
class Charger16(CP16):
    def __init__(self, cid: str, conn: Any) -> None:
        super().__init__(cid, conn, response_timeout=10)
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.raw_in: list[str] = []
        self.reject_purposes: set[str] = set()

    async def route_message(self, raw_msg: str) -> None:
        self.raw_in.append(raw_msg)
        await super().route_message(raw_msg)

    def of(self, action: str) -> list[dict[str, Any]]:
        return [p for a, p in self.received if a == action]

    @on("SetChargingProfile")
    def scp(self, connector_id: int, cs_charging_profiles: dict[str, Any]) -> Any:
        self.received.append(("SetChargingProfile", {"connector_id": connector_id, **cs_charging_profiles}))
        purpose = cs_charging_profiles["charging_profile_purpose"]
        return cr16.SetChargingProfile(status="Rejected" if purpose in self.reject_purposes else "Accepted")

    @on("ClearChargingProfile")
    def ccp(self, **kw: Any) -> Any:
        self.received.append(("ClearChargingProfile", kw))
        return cr16.ClearChargingProfile(status="Accepted")

    @on("GetConfiguration")
    def getconf(self, key: list[str] | None = None) -> Any:
        self.received.append(("GetConfiguration", {"key": key}))
        return cr16.GetConfiguration(
            configuration_key=[
                {"key": "ChargeProfileMaxStackLevel", "readonly": True, "value": "8"},
                {"key": "SupportedFeatureProfiles", "readonly": True, "value": "Core,SmartCharging"},
            ]
        )

    @on("RemoteStartTransaction")
    def rst(self, **kw: Any) -> Any:
        self.received.append(("RemoteStartTransaction", kw))
        return cr16.RemoteStartTransaction(status="Accepted")

    @on("RemoteStopTransaction")
    def rstop(self, **kw: Any) -> Any:
        self.received.append(("RemoteStopTransaction", kw))
        return cr16.RemoteStopTransaction(status="Accepted")

    @on("DataTransfer")
    def dt(self, **kw: Any) -> Any:
        self.received.append(("DataTransfer", kw))
        return cr16.DataTransfer(status="Accepted")


class Charger201(CP201):
    def __init__(self, cid: str, conn: Any) -> None:
        super().__init__(cid, conn, response_timeout=10)
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.raw_in: list[str] = []
        self.reject_purposes: set[str] = set()

    async def route_message(self, raw_msg: str) -> None:
        self.raw_in.append(raw_msg)
        await super().route_message(raw_msg)

    def of(self, action: str) -> list[dict[str, Any]]:
        return [p for a, p in self.received if a == action]

    @on("SetChargingProfile")
    def scp(self, evse_id: int, charging_profile: dict[str, Any], **kw: Any) -> Any:
        self.received.append(("SetChargingProfile", {"evse_id": evse_id, **charging_profile}))
        purpose = charging_profile["charging_profile_purpose"]
        return cr201.SetChargingProfile(status="Rejected" if purpose in self.reject_purposes else "Accepted")

    @on("ClearChargingProfile")
    def ccp(self, **kw: Any) -> Any:
        self.received.append(("ClearChargingProfile", kw))
        return cr201.ClearChargingProfile(status="Accepted")

    @on("GetVariables")
    def getvars(self, get_variable_data: list[dict[str, Any]], **kw: Any) -> Any:
        self.received.append(("GetVariables", {"data": get_variable_data}))
        return cr201.GetVariables(
            get_variable_result=[
                {
                    "attribute_status": "Accepted",
                    "attribute_value": "true" if d["variable"]["name"] in ("Enabled", "Available") else "3",
                    "component": d["component"],
                    "variable": d["variable"],
                }
                for d in get_variable_data
            ]
        )

    @on("RequestStartTransaction")
    def rst(self, **kw: Any) -> Any:
        self.received.append(("RequestStartTransaction", kw))
        return cr201.RequestStartTransaction(status="Accepted")

    @on("RequestStopTransaction")
    def rstop(self, **kw: Any) -> Any:
        self.received.append(("RequestStopTransaction", kw))
        return cr201.RequestStopTransaction(status="Accepted")


class Running:
    """A connected library charger and the task reading its socket."""

    def __init__(self, cp: Any, ws: ClientConnection, task: asyncio.Task[Any]) -> None:
        self.cp = cp
        self.ws = ws
        self.task = task

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task
        await self.ws.close()


async def connect_charger(
    port: int, cid: str, version: str, *, password: str | None = None, ssl_context: Any = None, scheme: str = "ws"
) -> Running:
    import base64

    headers = []
    if password is not None:
        headers.append(("Authorization", "Basic " + base64.b64encode(f"{cid}:{password}".encode()).decode()))
    sub = "ocpp1.6" if version == "1.6" else "ocpp2.0.1"
    ws = await connect(
        f"{scheme}://127.0.0.1:{port}/ocpp/{cid}",
        subprotocols=[sub],  # type: ignore[list-item]
        additional_headers=headers,
        ssl=ssl_context,
        open_timeout=10,
    )
    cp: Any = Charger16(cid, ws) if version == "1.6" else Charger201(cid, ws)
    task = asyncio.create_task(cp.start())
    return Running(cp, ws, task)


class Gateway:
    def __init__(self, site: Site, clock: Callable[[], float] | None = None) -> None:
        self.events: list[tuple[str, dict[str, object]]] = []
        self.changes: list[str] = []
        kw: dict[str, Any] = {}
        if clock is not None:
            kw["clock"] = clock
        self.ctrl = OcppController(
            site, on_event=lambda n, f: self.events.append((n, f)), on_change=self.changes.append, **kw
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.task = asyncio.create_task(self.ctrl.run())
        await asyncio.wait_for(self.ctrl.wait_started(), 10)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


@pytest.fixture
async def cms() -> AsyncIterator[Cms]:
    c = Cms()
    await c.start()
    yield c
    await c.stop()


@pytest.fixture
async def make_gateway(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Gateway]]]:
    made: list[Gateway] = []

    async def make(cms_port: int | None, *, ocpp_extra: str = "", chargers: str | None = None, **kw: Any) -> Gateway:
        site = site_from_text(site_text(tmp_path / "state", cms_port, ocpp_extra=ocpp_extra, chargers=chargers))
        gw = Gateway(site, **kw)
        await gw.start()
        made.append(gw)
        return gw

    yield make
    for gw in made:
        await gw.stop()


def frames_of(raw: list[tuple[str, str]], cid: str) -> list[list[Any]]:
    return [json.loads(r) for c, r in raw if c == cid]
