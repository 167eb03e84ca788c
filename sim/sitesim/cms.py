"""A simulated cloud CMS (OCPP 1.6J and 2.0.1 CSMS) for the demo site, end-to-end tests and the HIL rig.

Chargers (or the gateway on their behalf) connect to ``ws://HOST:PORT/<charger-id>`` with subprotocol
``ocpp1.6`` or ``ocpp2.0.1``. ``SimCms`` accepts boots, authorises tokens (all, or a set), assigns
1.6 transaction ids, records every CALL it receives per charger with its message id and raw payload
(``received``), answers everything a charger may send, and sends CALLs of its own
(``await cms.call(charger_id, payload)``). ``stop()`` closes the listener and every socket (a cloud
outage); ``start()`` again listens on the same port.

For the tests it also keeps every frame it receives (``frames``), what each connection presented
(``connections``: path, headers, the TLS client certificate's CN), serves TLS (``ssl_context``), lets a
test decide each token's status (``token_status``) and exposes the library peer of each charger
(``peers``) for CALLs sent through the ``ocpp`` library directly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar, cast

import structlog
from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.routing import on as _untyped_on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call_result as result201
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from sitesim import SimCallError, SimError
from sitesim.charger import ReceivedCall, SentCall, iso

log = structlog.get_logger(__name__)

SUBPROTOCOLS = (Subprotocol("ocpp2.0.1"), Subprotocol("ocpp1.6"))

_F = TypeVar("_F", bound=Callable[..., Any])


def on(action: str) -> Callable[[_F], _F]:
    """``ocpp.routing.on`` with a type."""
    return cast(Callable[[_F], _F], _untyped_on(action))


@dataclass
class CmsTransaction:
    """A transaction as the CMS saw it. ``id`` is the 1.6 integer (as a string) or the 2.0.1 id."""

    id: str
    charger_id: str
    connector: int
    id_tag: str | None
    started_at: str | None = None  # the charger's timestamp
    meter_start_wh: float | None = None
    stopped_at: str | None = None
    meter_stop_wh: float | None = None
    stop_reason: str | None = None
    meter_values: list[dict[str, Any]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # 2.0.1: "Started/CablePluggedIn", ...

    start_message_id: str | None = None  # 1.6: the StartTransaction CALL that got this id

    @property
    def ended(self) -> bool:
        return self.stopped_at is not None


@dataclass(frozen=True)
class CmsConnection:
    """What one WebSocket connection presented."""

    charger_id: str
    path: str
    headers: dict[str, str]
    subprotocol: str | None
    client_cn: str | None  # the commonName of the TLS client certificate, if any


def charger_id_from_path(path: str) -> str:
    """The last non-empty segment of the request path (``/ocpp/CP1?x=1`` -> ``CP1``)."""
    segs = [s for s in path.split("?", 1)[0].split("/") if s]
    return segs[-1] if segs else ""


class _Recording:
    cms: SimCms
    charger_id: str

    async def route_message(self, raw_msg: str) -> None:
        self.cms._record_received(self.charger_id, raw_msg)
        await super().route_message(raw_msg)  # type: ignore[misc]


class _Csms16(_Recording, Cp16):  # type: ignore[misc]
    def __init__(self, cms: SimCms, charger_id: str, conn: ServerConnection) -> None:
        super().__init__(charger_id, conn, response_timeout=cms.response_timeout_s)
        self.cms = cms
        self.charger_id = charger_id

    @on("BootNotification")
    def on_boot(self, **_: Any) -> Any:
        return result16.BootNotification(
            current_time=iso(self.cms.clock()),
            interval=int(self.cms.heartbeat_interval_s),
            status=self.cms._boot(self.charger_id),
        )

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return result16.Heartbeat(current_time=iso(self.cms.clock()))

    @on("StatusNotification")
    def on_status(self, connector_id: int, status: str, **_: Any) -> Any:
        self.cms.status.setdefault(self.charger_id, {})[connector_id] = status
        return result16.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_tag: str, **_: Any) -> Any:
        return result16.Authorize(id_tag_info={"status": self.cms._auth(id_tag, "Authorize")})

    @on("StartTransaction")
    def on_start(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **_: Any) -> Any:
        status = self.cms._auth(id_tag, "StartTransaction")
        self.cms._next_tx += 1
        txid = self.cms._next_tx
        self.cms.transactions[str(txid)] = CmsTransaction(
            str(txid), self.charger_id, connector_id, id_tag, timestamp, float(meter_start),
            start_message_id=self.cms._last_message_id(self.charger_id),
        )
        log.info("sim_cms_tx_started", charger=self.charger_id, transaction_id=txid)
        return result16.StartTransaction(transaction_id=txid, id_tag_info={"status": status})

    @on("StopTransaction")
    def on_stop(self, meter_stop: int, timestamp: str, transaction_id: int, reason: str | None = None, **_: Any) -> Any:
        tx = self.cms.transactions.get(str(transaction_id))
        if tx is None:
            log.warning("sim_cms_unknown_transaction", charger=self.charger_id, transaction_id=transaction_id)
        else:
            tx.stopped_at, tx.meter_stop_wh, tx.stop_reason = timestamp, float(meter_stop), reason or "Local"
        return result16.StopTransaction()

    @on("MeterValues")
    def on_meter_values(self, connector_id: int, transaction_id: int | None = None, **_: Any) -> Any:
        tx = None if transaction_id is None else self.cms.transactions.get(str(transaction_id))
        if tx is not None:
            tx.meter_values.extend(self.cms._last_payload(self.charger_id).get("meterValue", []))
        return result16.MeterValues()

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, **_: Any) -> Any:
        return result16.DataTransfer(status="Accepted", data=self.cms.data_transfer_reply)

    @on("DiagnosticsStatusNotification")
    def on_diag(self, **_: Any) -> Any:
        return result16.DiagnosticsStatusNotification()

    @on("FirmwareStatusNotification")
    def on_fw(self, **_: Any) -> Any:
        return result16.FirmwareStatusNotification()


class _Csms201(_Recording, Cp201):  # type: ignore[misc]
    def __init__(self, cms: SimCms, charger_id: str, conn: ServerConnection) -> None:
        super().__init__(charger_id, conn, response_timeout=cms.response_timeout_s)
        self.cms = cms
        self.charger_id = charger_id

    @on("BootNotification")
    def on_boot(self, **_: Any) -> Any:
        return result201.BootNotification(
            current_time=iso(self.cms.clock()),
            interval=int(self.cms.heartbeat_interval_s),
            status=self.cms._boot(self.charger_id),
        )

    @on("Heartbeat")
    def on_heartbeat(self, **_: Any) -> Any:
        return result201.Heartbeat(current_time=iso(self.cms.clock()))

    @on("StatusNotification")
    def on_status(self, connector_status: str, evse_id: int, **_: Any) -> Any:
        self.cms.status.setdefault(self.charger_id, {})[evse_id] = connector_status
        return result201.StatusNotification()

    @on("Authorize")
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
        return result201.Authorize(id_token_info={"status": self.cms._auth(str(id_token.get("id_token")), "Authorize")})

    @on("TransactionEvent")
    def on_transaction_event(
        self,
        event_type: str,
        timestamp: str,
        trigger_reason: str,
        transaction_info: dict[str, Any],
        evse: dict[str, Any] | None = None,
        id_token: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:
        raw = self.cms._last_payload(self.charger_id)
        txid = str(transaction_info.get("transaction_id"))
        tx = self.cms.transactions.get(txid)
        token = None if id_token is None else str(id_token.get("id_token"))
        if tx is None:
            tx = CmsTransaction(txid, self.charger_id, int((evse or {}).get("id", 0)), token, timestamp)
            self.cms.transactions[txid] = tx
        if token and not tx.id_tag:
            tx.id_tag = token
        tx.events.append(f"{event_type}/{trigger_reason}")
        mvs = raw.get("meterValue", [])
        tx.meter_values.extend(mvs)
        energy = _energy_wh(mvs)
        if event_type == "Started" and energy is not None:
            tx.meter_start_wh = energy
        if event_type == "Ended":
            tx.stopped_at, tx.meter_stop_wh = timestamp, energy
            tx.stop_reason = transaction_info.get("stopped_reason", "Local")
        if token is not None:
            return result201.TransactionEvent(id_token_info={"status": self.cms._auth(token, "TransactionEvent")})
        return result201.TransactionEvent()

    @on("MeterValues")
    def on_meter_values(self, **_: Any) -> Any:
        return result201.MeterValues()

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, **_: Any) -> Any:
        return result201.DataTransfer(status="Accepted", data=self.cms.data_transfer_reply)

    @on("NotifyReport")
    def on_notify_report(self, **_: Any) -> Any:
        return result201.NotifyReport()

    @on("NotifyEvent")
    def on_notify_event(self, **_: Any) -> Any:
        return result201.NotifyEvent()

    @on("SecurityEventNotification")
    def on_security_event(self, **_: Any) -> Any:
        return result201.SecurityEventNotification()

    @on("FirmwareStatusNotification")
    def on_fw(self, **_: Any) -> Any:
        return result201.FirmwareStatusNotification()

    @on("LogStatusNotification")
    def on_log_status(self, **_: Any) -> Any:
        return result201.LogStatusNotification()

    @on("NotifyChargingLimit")
    def on_notify_limit(self, **_: Any) -> Any:
        return result201.NotifyChargingLimit()

    @on("ClearedChargingLimit")
    def on_cleared_limit(self, **_: Any) -> Any:
        return result201.ClearedChargingLimit()

    @on("ReportChargingProfiles")
    def on_report_profiles(self, **_: Any) -> Any:
        return result201.ReportChargingProfiles()

    @on("NotifyEVChargingNeeds")
    def on_ev_needs(self, **_: Any) -> Any:
        return result201.NotifyEVChargingNeeds(status="Accepted")


def _energy_wh(meter_values: Iterable[Mapping[str, Any]]) -> float | None:
    last = None
    for mv in meter_values:
        for sv in mv.get("sampledValue", []):
            if sv.get("measurand") == "Energy.Active.Import.Register":
                try:
                    last = float(sv["value"])
                except (KeyError, TypeError, ValueError):
                    continue
    return last


class SimCms:
    """The simulated cloud CMS. See the module docstring."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Callable[[], float] = time.time,
        accept_tokens: Collection[str] | None = None,
        boot_status: str = "Accepted",
        heartbeat_interval_s: float = 60.0,
        basic_auth: Mapping[str, str] | None = None,
        first_transaction_id: int = 1000,
        response_timeout_s: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        token_status: Callable[[str, str], str] | None = None,
        data_transfer_reply: str | None = None,
    ) -> None:
        """``token_status(token, action)`` (action: Authorize, StartTransaction or TransactionEvent) decides a
        token's status where given; otherwise ``accept_tokens`` (None: every token) does."""
        self.host = host
        self.port = port
        self.clock = clock
        self.accept_tokens = None if accept_tokens is None else set(accept_tokens)
        self.boot_status = boot_status
        self.heartbeat_interval_s = heartbeat_interval_s
        self.basic_auth = None if basic_auth is None else dict(basic_auth)
        self.response_timeout_s = response_timeout_s
        self.ssl_context = ssl_context
        self.token_status = token_status
        self.data_transfer_reply = data_transfer_reply
        self.frames: list[tuple[str, str]] = []  # (charger id, raw frame) for every frame received
        self.connections: list[CmsConnection] = []
        self.received: dict[str, list[ReceivedCall]] = {}
        self.sent: dict[str, list[SentCall]] = {}
        self.transactions: dict[str, CmsTransaction] = {}
        self.status: dict[str, dict[int, str]] = {}
        self.boots: dict[str, int] = {}
        self.versions: dict[str, str] = {}
        self.connections_total = 0
        self.refused: list[tuple[str, str]] = []  # (charger id, why)
        self._next_tx = first_transaction_id - 1
        self._handlers: dict[str, Any] = {}
        self._sockets: dict[str, ServerConnection] = {}
        self._server: Server | None = None

    # ---- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> int:
        """Listen; returns the port (the same one again after a stop)."""
        if self._server is not None:
            return self.port
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            subprotocols=list(SUBPROTOCOLS),
            select_subprotocol=_select_subprotocol,
            process_request=self._process_request,
            max_queue=64,
            ssl=self.ssl_context,
        )
        sock = next(iter(self._server.sockets))
        self.port = int(sock.getsockname()[1])
        log.info("sim_cms_started", host=self.host, port=self.port)
        return self.port

    async def stop(self) -> None:
        """Close the listener and every connection (a cloud outage)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        await server.wait_closed()
        self._handlers.clear()
        self._sockets.clear()
        log.info("sim_cms_stopped", port=self.port)

    async def __aenter__(self) -> SimCms:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def peers(self) -> Mapping[str, Any]:
        """The ``ocpp`` library peer (a ChargePoint) of each connected charger: ``await peers[id].call(...)``
        sends a CALL without recording it in ``sent``."""
        return dict(self._handlers)

    @property
    def sockets(self) -> Mapping[str, ServerConnection]:
        """The WebSocket of each connected charger (to send a raw frame)."""
        return dict(self._sockets)

    def is_connected(self, charger_id: str) -> bool:
        return charger_id in self._handlers

    @property
    def connected(self) -> frozenset[str]:
        return frozenset(self._handlers)

    # ---- calls to chargers ---------------------------------------------------------------------
    async def call(self, charger_id: str, payload: Any, *, timeout_s: float | None = None) -> Any:
        """Send a CALL (an ``ocpp.v16.call``/``ocpp.v201.call`` dataclass matching the charger's version)
        and return the ``call_result`` dataclass. Raises SimCallError on CALLERROR, timeout or loss."""
        handler = self._handlers.get(charger_id)
        if handler is None:
            raise SimCallError(f"{charger_id} is not connected")
        body = snake_to_camel_case(remove_nones(serialize_as_dict(payload)))
        uid = str(uuid.uuid4())
        rec = SentCall(uid, type(payload).__name__, body, self.clock())
        self.sent.setdefault(charger_id, []).append(rec)
        try:
            coro = handler.call(payload, suppress=False, unique_id=uid)
            res = await (coro if timeout_s is None else asyncio.wait_for(coro, timeout_s))
        except TimeoutError as e:
            rec.outcome = "timeout"
            raise SimCallError(f"{charger_id}: {rec.action} timed out") from e
        except ConnectionClosed as e:
            rec.outcome = "lost"
            raise SimCallError(f"{charger_id}: connection lost during {rec.action}") from e
        except Exception as e:  # CALLERROR or schema validation (ocpp raises its OCPPError subclasses)
            rec.outcome = "error"
            raise SimCallError(f"{charger_id}: {rec.action} failed: {e!r}") from e
        rec.outcome = "ok"
        rec.response = snake_to_camel_case(remove_nones(serialize_as_dict(res)))
        return res

    # ---- waiting helpers (for tests and the rig) ----------------------------------------------
    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 10.0, poll_s: float = 0.02) -> None:
        """Poll ``predicate`` until true; raise SimError after ``timeout_s``."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while not predicate():
            if loop.time() > end:
                raise SimError(f"condition not met within {timeout_s} s")
            await asyncio.sleep(poll_s)

    async def wait_connected(self, charger_id: str, timeout_s: float = 10.0) -> None:
        await self.wait_for(lambda: self.is_connected(charger_id) and self.boots.get(charger_id, 0) > 0, timeout_s)

    def calls(self, charger_id: str, action: str | None = None) -> list[ReceivedCall]:
        return [r for r in self.received.get(charger_id, []) if action is None or r.action == action]

    async def wait_call(
        self,
        charger_id: str,
        action: str,
        *,
        timeout_s: float = 10.0,
        after: int = 0,
        match: Callable[[ReceivedCall], bool] | None = None,
    ) -> ReceivedCall:
        """The first ``action`` CALL from ``charger_id`` with index >= ``after`` in ``received`` that
        satisfies ``match``; waits for it."""
        found: list[ReceivedCall] = []

        def check() -> bool:
            for r in self.received.get(charger_id, [])[after:]:
                if r.action == action and (match is None or match(r)):
                    found.append(r)
                    return True
            return False

        await self.wait_for(check, timeout_s)
        return found[0]

    # ---- internals -----------------------------------------------------------------------------
    def _boot(self, charger_id: str) -> str:
        if self.boot_status == "Accepted":
            self.boots[charger_id] = self.boots.get(charger_id, 0) + 1
        return self.boot_status

    def _auth(self, token: str, action: str) -> str:
        if self.token_status is not None:
            return self.token_status(token, action)
        return "Accepted" if self.accept_tokens is None or token in self.accept_tokens else "Invalid"

    def _last_message_id(self, charger_id: str) -> str | None:
        recs = self.received.get(charger_id)
        return recs[-1].unique_id if recs else None

    def _last_payload(self, charger_id: str) -> dict[str, Any]:
        recs = self.received.get(charger_id)
        return recs[-1].payload if recs else {}

    def _record_received(self, charger_id: str, raw: str) -> None:
        self.frames.append((charger_id, raw))
        try:
            msg = json.loads(raw)
        except ValueError:
            log.warning("sim_cms_malformed_frame", charger=charger_id, frame=raw[:200])
            return
        if isinstance(msg, list) and len(msg) == 4 and msg[0] == 2 and isinstance(msg[3], dict):
            rec = ReceivedCall(str(msg[1]), str(msg[2]), msg[3], self.clock())
            self.received.setdefault(charger_id, []).append(rec)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        cid = charger_id_from_path(request.path)
        if not cid:
            self.refused.append(("", "no charger id in path"))
            return connection.respond(HTTPStatus.NOT_FOUND, "no charger id in path\n")
        if self.basic_auth is not None and not self._auth_ok(cid, request.headers):
            self.refused.append((cid, "bad credentials"))
            log.warning("sim_cms_auth_failed", charger=cid)
            resp = connection.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")
            resp.headers["WWW-Authenticate"] = 'Basic realm="ocpp"'
            return resp
        return None

    def _auth_ok(self, cid: str, headers: Headers) -> bool:
        assert self.basic_auth is not None
        value = headers.get("Authorization", "")
        if not value.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(value[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == cid and self.basic_auth.get(cid) == password

    async def _handle(self, ws: ServerConnection) -> None:
        cid = charger_id_from_path(ws.request.path if ws.request is not None else "")
        proto = ws.subprotocol
        if proto not in SUBPROTOCOLS:
            self.refused.append((cid, f"subprotocol {proto!r}"))
            log.warning("sim_cms_no_subprotocol", charger=cid)
            await ws.close(1002, "OCPP subprotocol required")
            return
        self.connections.append(_connection_info(cid, ws))
        handler: Any = _Csms16(self, cid, ws) if proto == "ocpp1.6" else _Csms201(self, cid, ws)
        old = self._handlers.get(cid)
        self._handlers[cid] = handler
        self._sockets[cid] = ws
        self.versions[cid] = "1.6" if proto == "ocpp1.6" else "2.0.1"
        self.connections_total += 1
        if old is not None:
            with contextlib.suppress(Exception):
                await old._connection.close(1000, "replaced by a new connection")
        log.info("sim_cms_connected", charger=cid, subprotocol=proto)
        try:
            await handler.start()
        except ConnectionClosed:
            pass
        finally:
            if self._handlers.get(cid) is handler:
                del self._handlers[cid]
                self._sockets.pop(cid, None)
            log.info("sim_cms_disconnected", charger=cid)


def _connection_info(cid: str, ws: ServerConnection) -> CmsConnection:
    request = ws.request
    cn: str | None = None
    sslobj = ws.transport.get_extra_info("ssl_object")
    cert = sslobj.getpeercert() if sslobj is not None else None
    for rdn in (cert or {}).get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
    return CmsConnection(
        charger_id=cid,
        path=request.path if request is not None else "",
        headers=dict(request.headers.raw_items()) if request is not None else {},
        subprotocol=ws.subprotocol,
        client_cn=cn,
    )


def _select_subprotocol(connection: ServerConnection, offered: Iterable[Subprotocol]) -> Subprotocol | None:
    """The first OCPP version the client offers that we speak (the client's preference order)."""
    for p in offered:
        if p in SUBPROTOCOLS:
            return p
    return None


# ---- CLI ----------------------------------------------------------------------------------------
def _parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sitesim.cms", description="Run a simulated cloud CMS (CSMS).")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9100)
    ap.add_argument("--token", action="append", help="accept only these tokens (repeatable; default: all)")
    ap.add_argument("--heartbeat-s", type=float, default=60.0)
    ap.add_argument("--password", action="append", metavar="ID=PASSWORD", help="require HTTP Basic auth")
    return ap.parse_args(None if argv is None else list(argv))


async def _serve_forever(cms: SimCms, until: Callable[[], Awaitable[None]]) -> None:
    port = await cms.start()
    print(f"sim CMS listening on ws://{cms.host}:{port}/<charger-id>", flush=True)
    try:
        await until()
    finally:
        await cms.stop()


def main(argv: Iterable[str] | None = None) -> int:
    args = _parse_args(argv)
    auth = None
    if args.password:
        auth = dict(p.split("=", 1) for p in args.password)
    cms = SimCms(
        args.host, args.port, accept_tokens=args.token, heartbeat_interval_s=args.heartbeat_s, basic_auth=auth
    )

    async def forever() -> None:
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve_forever(cms, forever))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["CmsConnection", "CmsTransaction", "SimCms", "charger_id_from_path", "on"]
