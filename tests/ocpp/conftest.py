"""Harness for the OCPP controller tests: the gateway in-process, a CMS and chargers from the
`ocpp` library over real WebSockets on 127.0.0.1, ephemeral ports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from ocpp.charge_point import camel_to_snake_case
from ocpp.v16 import ChargePoint as CP16
from ocpp.v16 import call_result as cr16
from ocpp.v201 import ChargePoint as CP201
from ocpp.v201 import call_result as cr201
from sitesim.cms import SimCms, on
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection

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


# ---------------------------------------------------------------- CMS (sitesim's, with the views these tests read)
def _token_status(token: str, action: str) -> str:
    """Authorize accepts the tokens that start with OK; a transaction's token is always accepted."""
    return "Accepted" if action != "Authorize" or token.startswith("OK") else "Invalid"


class Cms(SimCms):
    """sitesim's CMS on 127.0.0.1 (stopped and started again on the same port: an outage) with the views these
    tests read: ``messages`` and ``of`` (each CALL received, its payload as the ``ocpp`` library's handler gets
    it, snake_case; a 1.6 StartTransaction with the transaction id it was ``assigned``), ``raw`` (every frame
    received), ``conns`` (the sockets), and each connection's ``paths``, ``headers`` and TLS client CN. The
    port is taken when it is made, so that a test can start it later (a CMS down at first)."""

    def __init__(self, port: int | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(
            "127.0.0.1", port or free_port(), heartbeat_interval_s=300, first_transaction_id=1001,
            response_timeout_s=10, ssl_context=ssl_context, token_status=_token_status, data_transfer_reply="pong",
        )

    @property
    def raw(self) -> list[tuple[str, str]]:
        return self.frames

    @property
    def conns(self) -> Mapping[str, ServerConnection]:
        return self.sockets

    @property
    def paths(self) -> list[str]:
        return [c.path for c in self.connections]

    @property
    def headers(self) -> list[dict[str, str]]:
        return [c.headers for c in self.connections]

    @property
    def client_cns(self) -> list[str | None]:
        return [c.client_cn for c in self.connections]

    @property
    def messages(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(charger id, action, payload) of every CALL received, in the order they arrived."""
        assigned = {tx.start_message_id: int(tx.id) for tx in self.transactions.values() if tx.start_message_id}
        out: list[tuple[str, str, dict[str, Any]]] = []
        for cid, frame in self.frames:
            with contextlib.suppress(ValueError):
                msg = json.loads(frame)
                if isinstance(msg, list) and len(msg) == 4 and msg[0] == 2 and isinstance(msg[3], dict):
                    payload: dict[str, Any] = camel_to_snake_case(msg[3])
                    if msg[2] == "StartTransaction" and msg[1] in assigned:
                        payload["assigned"] = assigned[msg[1]]
                    out.append((cid, str(msg[2]), payload))
        return out

    def of(self, cid: str, action: str) -> list[dict[str, Any]]:
        return [p for c, a, p in self.messages if c == cid and a == action]


# ---------------------------------------------------------------- chargers (ocpp library, charging station side)
class _Recording:
    """What a library charger received: each CALL handled (``received``, ``of``), every raw frame (``raw_in``);
    the profile purposes it rejects (``reject_purposes``)."""

    def __init__(self, cid: str, conn: Any) -> None:
        super().__init__(cid, conn, response_timeout=10)  # type: ignore[call-arg]  # the ChargePoint's
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.raw_in: list[str] = []
        self.reject_purposes: set[str] = set()

    async def route_message(self, raw_msg: str) -> None:
        self.raw_in.append(raw_msg)
        await super().route_message(raw_msg)  # type: ignore[misc]  # the ChargePoint's

    def of(self, action: str) -> list[dict[str, Any]]:
        return [p for a, p in self.received if a == action]


class Charger16(_Recording, CP16):  # type: ignore[misc]  # the ocpp library is untyped
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


class Charger201(_Recording, CP201):  # type: ignore[misc]  # the ocpp library is untyped
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
        async with asyncio.timeout(10):
            await self.ctrl.wait_started()

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
