"""The facade the daemon uses: :class:`OcppController`."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response
from websockets.typing import Subprotocol

from gateway.config import ChargerConfig, Site
from gateway.errors import StoreError
from gateway.model import Allocation, ChargerSnapshot
from gateway.ocpp_proxy.actuator import DUE_DECREASE, DUE_NOT, HeldLimit
from gateway.ocpp_proxy.frames import SUBPROTOCOLS
from gateway.ocpp_proxy.leases import LeaseKeeper
from gateway.ocpp_proxy.limits import LimitState
from gateway.ocpp_proxy.ports import EventHooks
from gateway.ocpp_proxy.server import check_request, credential_strength, identity_of, is_tls, server_ssl_context
from gateway.ocpp_proxy.session import ChargerSession
from gateway.ocpp_proxy.state import ChargerTracker, draw_bounds
from gateway.ocpp_proxy.store import QueueLimits, Store
from gateway.ocpp_proxy.upstream import UpstreamTarget, target_for

log = structlog.get_logger(__name__)
COMMIT_WAIT_S = 0.5  # apply() waits this long for the increases' lease records (then they go when committed)
CHUNK = 100  # increases written between two looks at the readings (a reading waits behind at most these)


def _open_store(path: str, limits: QueueLimits) -> Store:
    """The durable store, or, when it cannot be opened (a full or broken disk), one in memory: the chargers are
    still managed (profiles and limits never depend on a disk write); what is queued is then not durable,
    which is logged as an error (queue rows already on disk stay there for the next start)."""
    try:
        return Store(path, limits)
    except StoreError as exc:
        log.error("ocpp_store_unavailable", path=path, error=str(exc), fallback="memory")
        return Store(":memory:", limits)


class OcppController:
    def __init__(
        self,
        site: Site,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_event: Callable[[str, dict[str, object]], None] | None = None,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        self.site = site
        self.clock = clock
        self._on_event = on_event
        self._on_change = on_change
        self.store = _open_store(os.path.join(site.state_dir, "ocpp.sqlite"), QueueLimits(site.ocpp.queue_max_messages))
        self._trackers: dict[str, ChargerTracker] = {}
        self._limits: dict[str, LimitState] = {}
        self.sessions: dict[str, ChargerSession] = {}
        self._strength: dict[str, int] = {}  # the live session's credential_strength, per identity
        self._servers: list[Server] = []
        self._started = asyncio.Event()
        self._port = 0
        self._tls_port: int | None = None
        self._cms_contexts: dict[int, ssl.SSLContext] = {}
        # per charger, what its last BootNotification said (vendor, model, serial, firmware), for commissioning
        self.boots: dict[str, dict[str, str]] = {}
        # what a session may tell its controller (it never holds the controller itself)
        self._session_events = EventHooks(self._event, self.changed, self.booted)
        for ch in site.chargers.values():
            self.tracker(ch.id)
        # what the chargers may still hold from the earlier life (persisted on every change)
        self.leases = LeaseKeeper(self.store, clock, lease_s=site.ocpp.lease_s,
                                  ev_response_s=site.control.ev_response_s)
        self.leases.restore_all(site.chargers, self.limit_state)

    # ------------------------------------------------------------------ plumbing for sessions
    def tracker(self, charger_id: str) -> ChargerTracker:
        tr = self._trackers.get(charger_id)
        cfg = self.site.chargers[charger_id]
        if tr is None or tr.cfg is not cfg:
            old = tr
            tr = ChargerTracker(cfg, self.site.service.phases, self.clock, bounds=draw_bounds(self.site, cfg))
            if old is not None:
                tr.__dict__.update({k: v for k, v in old.__dict__.items() if k not in ("cfg", "n_phases", "bounds")})
            self._trackers[charger_id] = tr
        return tr

    def limit_state(self, charger_id: str) -> LimitState:
        ls = self._limits.get(charger_id)
        if ls is None:
            ls = self._limits[charger_id] = LimitState()
            ls.on_bound = lambda st: self.leases.changed(charger_id, st)
            ls.durable = lambda limit, until, decrease: self.leases.durable(charger_id, ls, limit, until,
                                                                            decrease=decrease)
        return ls

    def upstream_target(self, cfg: ChargerConfig) -> UpstreamTarget | None:
        return target_for(self.site.ocpp, cfg, self._cms_contexts)

    def event(self, name: str, **fields: object) -> None:
        self._event(name, fields)

    def _event(self, name: str, fields: dict[str, object]) -> None:
        if self._on_event is not None:
            try:
                self._on_event(name, fields)
            except Exception:
                log.exception("on_event_failed", event_name=name)

    def booted(self, charger_id: str, p: dict[str, Any]) -> None:
        """Keep what a BootNotification said (1.6 flat, 2.0.1 under chargingStation); a new firmware is an event."""
        cs = p.get("chargingStation")
        src: dict[str, Any] = cs if isinstance(cs, dict) else p
        keys = {
            "vendor": ("vendorName", "chargePointVendor"),
            "model": ("model", "chargePointModel"),
            "serial": ("serialNumber", "chargePointSerialNumber", "chargeBoxSerialNumber"),
            "firmware": ("firmwareVersion",),
        }
        info = {k: next((str(src[n]) for n in names if src.get(n) is not None), "") for k, names in keys.items()}
        old = self.boots.get(charger_id)
        self.boots[charger_id] = info
        if old is not None and old.get("firmware") != info["firmware"]:
            self.event("charger_firmware_changed", charger=charger_id, previous=old.get("firmware"),
                       firmware=info["firmware"])

    def changed(self, charger_id: str) -> None:
        if self._on_change is not None:
            try:
                self._on_change(charger_id)
            except Exception:
                log.exception("on_change_failed", charger=charger_id)

    # ------------------------------------------------------------------ serving
    @property
    def port(self) -> int:
        return self._port

    @property
    def tls_port(self) -> int | None:
        return self._tls_port

    async def wait_started(self) -> None:
        await self._started.wait()

    def _select_subprotocol(self, conn: ServerConnection, offered: Sequence[Subprotocol]) -> Subprotocol | None:
        ch = self.site.chargers.get(identity_of(conn.request.path)) if conn.request is not None else None
        if ch is None:
            return None
        sub = SUBPROTOCOLS[ch.ocpp_version]
        return Subprotocol(sub) if sub in offered else None

    def _process_request(self, tls: bool) -> Callable[[ServerConnection, Request], Response | None]:
        def check(conn: ServerConnection, request: Request) -> Response | None:
            refusal, cid = check_request(conn, request, self.site.chargers, tls)
            if refusal is not None:
                return refusal
            live = self._strength.get(cid)
            new = credential_strength(self.site.chargers[cid], tls)
            if cid in self.sessions and live is not None and new < live:
                log.warning("charger_refused", charger=cid, reason="weaker credentials than the connected session",
                            strength=new, connected_strength=live)
                return conn.respond(409, "this identity is connected with stronger credentials\n")
            return None

        return check

    async def _handle(self, ws: ServerConnection) -> None:
        cid = identity_of(ws.request.path) if ws.request is not None else ""
        cfg = self.site.chargers.get(cid)
        if cfg is None:
            await ws.close(1008, "unknown identity")
            return
        strength = credential_strength(cfg, is_tls(ws))
        old = self.sessions.get(cid)
        if old is not None:
            if strength < self._strength.get(cid, 0):  # raced past the handshake check
                await ws.close(1008, "identity connected with stronger credentials")
                return
            log.info("charger_replaced_connection", charger=cid)
            await old.close()
        self._strength[cid] = strength
        self.limit_state(cid).connected()  # online now, but not controlled until its profiles are accepted
        session = ChargerSession(
            cfg,
            ws,
            ocpp=self.site.ocpp,
            store=self.store,
            tracker=self.tracker(cid),
            limit=self.limit_state(cid),
            target=self.upstream_target(cfg),
            events=self._session_events,
            clock=self.clock,
            service=lambda: self.site.service,
        )
        self.sessions[cid] = session
        try:
            await session.run()
        finally:
            if self.sessions.get(cid) is session:
                del self.sessions[cid]

    async def run(self) -> None:
        oc = self.site.ocpp
        common: dict[str, Any] = {
            "select_subprotocol": self._select_subprotocol,
            "max_size": oc.max_frame_bytes * 4,
            "compression": None,
            "ping_interval": 60,
            "ping_timeout": 60,
            "server_header": None,
        }
        try:
            srv = await serve(
                self._handle, oc.listen_host, oc.listen_port, process_request=self._process_request(False), **common
            )
            self._servers.append(srv)
            self._port = int(next(iter(srv.sockets)).getsockname()[1])
            if oc.tls_listen_port is not None:
                ctx = server_ssl_context(oc)
                tsrv = await serve(
                    self._handle,
                    oc.listen_host,
                    oc.tls_listen_port,
                    ssl=ctx,
                    process_request=self._process_request(True),
                    **common,
                )
                self._servers.append(tsrv)
                self._tls_port = int(next(iter(tsrv.sockets)).getsockname()[1])
            log.info("ocpp_listening", port=self._port, tls_port=self._tls_port, chargers=len(self.site.chargers))
            unauth = [cid for cid, ch in self.site.chargers.items() if ch.ocpp.allow_unauthenticated]
            if unauth:
                log.warning("ocpp_unauthenticated_chargers", chargers=unauth, listen_host=oc.listen_host)
            self._started.set()
            await asyncio.Future()
        finally:
            for s in self._servers:
                s.close(close_connections=False)
            for sess in list(self.sessions.values()):
                await sess.close()
            for s in self._servers:
                await s.wait_closed()
            self._servers.clear()
            self.store.close()
            log.info("ocpp_stopped")

    # ------------------------------------------------------------------ the daemon's API
    def snapshot(self) -> dict[str, ChargerSnapshot]:
        """Every charger's state, draw and actuation feedback (unchanged ones cost two lookups)."""
        now = self.clock()
        out: dict[str, ChargerSnapshot] = {}
        trackers, limits = self._trackers, self._limits
        for cid, cfg in self.site.chargers.items():
            tr, ls = trackers.get(cid), limits.get(cid)
            if tr is None or tr.cfg is not cfg:  # new, or its config changed: made (or remade) there
                tr = self.tracker(cid)
            if ls is None:
                ls = self.limit_state(cid)
            out[cid] = tr.snapshot(ls.actuation(now, tr.online))
        return out

    async def apply(self, allocation: Allocation, preempt: Callable[[], bool] | None = None) -> bool:
        """Queue every due limit frame on its charger's socket, in one pass, and return: frames are written to the
        sockets (or wait behind a CALL in flight, or for a full write buffer), never awaited. Every decrease is
        written before any increase, all at once. With ``preempt``, the loop runs between the decreases and the
        increases, and between every ``CHUNK`` increases (readings that came in meanwhile land); once
        ``preempt()`` is true, the increases not yet written are dropped, their targets left as they were, and
        False is returned: the caller re-ticks at once. An increase whose lease record is not yet on disk waits
        for its commit (one for all of them) before it is written."""
        before = self._set_targets(allocation)
        now = self.clock()
        decreases, others = self._due(now)
        for s in decreases:
            s.submit_limit(now, force=True)
        held: list[HeldLimit] = []
        for i in range(0, len(others), CHUNK):
            if preempt is not None:
                await asyncio.sleep(0)
                if preempt():
                    self._drop(others[i:], held, before, len(decreases))
                    return False
            for s in others[i:i + CHUNK]:
                s.submit_limit(now, force=True, held=held)
        if not held or not await self._committed(held):
            return True
        for i in range(0, len(held), CHUNK):
            if preempt is not None:
                if i:
                    await asyncio.sleep(0)
                if preempt():
                    self._drop([], held[i:], before, len(decreases))
                    return False
            for h in held[i:i + CHUNK]:
                h.release()
        return True

    def _set_targets(self, allocation: Allocation) -> dict[str, float | None]:
        """Every charger's new target; returns the ones before (to restore for an increase dropped)."""
        chargers = self.site.chargers
        before: dict[str, float | None] = {}
        for cid, cl in allocation.limits.items():
            if cid in chargers:
                ls = self.limit_state(cid)
                before[cid] = ls.target
                ls.target = cl.limit
        return before

    def _due(self, now: float) -> tuple[list[ChargerSession], list[ChargerSession]]:
        """The sessions whose limit frame is due: (decreases, the others)."""
        decreases: list[ChargerSession] = []
        others: list[ChargerSession] = []
        for s in self.sessions.values():
            d = s.actuator.due(now)  # every session, every tick: no hop through the session
            if d == DUE_DECREASE:
                decreases.append(s)
            elif d != DUE_NOT:
                others.append(s)
        return decreases, others

    async def _committed(self, held: list[HeldLimit]) -> bool:
        """Wait for the held increases' lease records; a slow disk must not hold the loop: False, and each goes
        out by itself when its commit lands."""
        try:
            async with asyncio.timeout(COMMIT_WAIT_S):
                await asyncio.wait({h.gate for h in held})
        except TimeoutError:
            log.warning("lease_commit_slow", held=len(held), waited_s=COMMIT_WAIT_S)
            for h in held:
                h.release()
            return False
        return True

    def _drop(self, unsent: list[ChargerSession], held: list[HeldLimit], before: dict[str, float | None],
              decreases: int) -> None:
        """A wake preempted the increases: those not written keep their earlier targets (and limits sent)."""
        for h in held:
            h.drop()
        for cid in [s.id for s in unsent] + [h.actuator.id for h in held]:
            if cid in before:
                self.limit_state(cid).target = before[cid]
        log.info("increases_preempted", decreases=decreases, dropped=len(unsent) + len(held))

    async def apply_failsafe(self) -> None:
        sessions = list(self.sessions.values())
        if not sessions:
            return
        try:
            async with asyncio.timeout(self.site.ocpp.failsafe_timeout_s):
                results = await asyncio.gather(*(s.failsafe_now() for s in sessions), return_exceptions=True)
        except TimeoutError:
            log.warning("failsafe_timeout", chargers=len(sessions))
            return
        for s, r in zip(sessions, results, strict=True):
            if r is not True:
                log.warning("failsafe_not_confirmed", charger=s.id, result=repr(r))

    async def stop_transaction(self, charger_id: str) -> None:
        s = self.sessions.get(charger_id)
        if s is None:
            log.warning("stop_transaction_offline", charger=charger_id)
            return
        ok = await s.stop_transaction()
        log.info("stop_transaction_requested", charger=charger_id, accepted=ok)

    def cms_online(self, charger_id: str) -> bool:
        s = self.sessions.get(charger_id)
        return s is not None and s.cms_online

    def update_site(self, site: Site) -> None:
        old = self.site
        self.site = site
        self._cms_contexts.clear()
        for cid in site.chargers:
            self.tracker(cid)
        for cid in list(self._trackers):
            if cid not in site.chargers:
                del self._trackers[cid]
        for cid, s in list(self.sessions.items()):
            if cid not in site.chargers or site.chargers[cid] != old.chargers.get(cid):
                # removed or changed (credentials, version, limits): let it reconnect under the new config
                asyncio.get_running_loop().create_task(s.close())
        log.info("ocpp_site_updated", chargers=len(site.chargers))
