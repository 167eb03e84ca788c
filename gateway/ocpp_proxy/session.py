"""One charger's pair of sockets: the charger's connection and its upstream to the CMS.

A thin composition of the parts, each given what it needs: the links (:mod:`charger_link`,
:mod:`cms_link`), the relay pump (:mod:`pump`), the offline responder (:mod:`offline`), the replay
(:mod:`replay`) with the 1.6 transaction ids (:mod:`txids`), what the gateway learns from the frames
(:mod:`observe`), the limit actuator (:mod:`actuator`), the CMS-profile merge (:mod:`cms_profiles`,
:mod:`profile_reports`) and capability learning (:mod:`capabilities`). The session reports through
:class:`~gateway.ocpp_proxy.ports.SessionEvents`; it never sees the controller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from ocpp.v16 import call as call16
from ocpp.v201 import call as call201
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from gateway import electrical
from gateway.config import ChargerConfig
from gateway.ocpp_proxy.actuator import HeldLimit, LimitActuator
from gateway.ocpp_proxy.capabilities import Capabilities
from gateway.ocpp_proxy.charger_link import ChargerLink
from gateway.ocpp_proxy.cms_link import CmsLink
from gateway.ocpp_proxy.cms_profiles import CmsProfiles
from gateway.ocpp_proxy.config import OcppConfig
from gateway.ocpp_proxy.frames import CALLRESULT
from gateway.ocpp_proxy.limits import LimitState
from gateway.ocpp_proxy.observe import Observer
from gateway.ocpp_proxy.offline import Backlog, OfflineResponder
from gateway.ocpp_proxy.ports import Clock, SessionEvents
from gateway.ocpp_proxy.profile_reports import ProfileReports
from gateway.ocpp_proxy.pump import RelayPump
from gateway.ocpp_proxy.relay import CallFailed, OutCall
from gateway.ocpp_proxy.replay import Replay
from gateway.ocpp_proxy.state import ChargerTracker
from gateway.ocpp_proxy.store import Store
from gateway.ocpp_proxy.txids import TxIds
from gateway.ocpp_proxy.typed import Call
from gateway.ocpp_proxy.upstream import UpstreamTarget

log = structlog.get_logger(__name__)


class ChargerSession:
    def __init__(
        self,
        cfg: ChargerConfig,
        ws: ServerConnection,
        *,
        ocpp: OcppConfig,
        store: Store,
        tracker: ChargerTracker,
        limit: LimitState,
        target: UpstreamTarget | None,
        events: SessionEvents,
        clock: Clock,
        service: Callable[[], electrical.Service],
    ) -> None:
        self.cfg = cfg
        self.id = cid = cfg.id
        self.version = version = cfg.ocpp_version
        self.ws = ws
        self.tracker = tracker
        self.limit = limit
        self.events = events
        self.closed = False
        self.log = slog = log.bind(charger=cid)
        self._tasks: set[asyncio.Task[Any]] = set()
        spawn = self.spawn

        self.charger = ChargerLink(ws, cid, ocpp.call_timeout_s, spawn, slog)
        self.cms = CmsLink(
            cid, target, ocpp, events, slog,
            on_frame=self._on_cms_frame, on_up=self._cms_up, on_down=self._cms_down,
            close_charger=ws.close, is_closed=lambda: self.closed,
        )
        self.to_charger, self.to_cms = self.charger.calls, self.cms.calls
        self.caps = Capabilities(cfg, store, events, slog, self.charger.own_call)
        self.profiles = CmsProfiles(
            cfg, ocpp, store, tracker, events, slog,
            mode=lambda: self.caps.mode, limit_changed=lambda: self.actuator.push_soon(), service=service,
        )
        self.actuator = LimitActuator(
            cfg, ocpp, limit, self.caps, events, slog,
            own_call=self.charger.own_call, own_json=self.charger.own_json_call, channel=self.to_charger,
            cms_limit=self.profiles.cms_limit, clock=clock, spawn=spawn,
        )
        self.profiles_ready = self.actuator.profiles_ready
        backlog = Backlog()
        observer = Observer(cid, version, ocpp, store, tracker, events, slog)
        txids = TxIds(store, cid)
        self.offline = OfflineResponder(
            cid, version, ocpp, store, tracker, events, slog,
            send=self.charger.send, keep=target is not None, backlog=backlog,
        )
        self.replay = Replay(cid, version, ocpp, store, self.cms, observer, txids, backlog, events, slog)
        reports = ProfileReports(
            cid, ocpp, store, slog,
            to_charger=self.to_charger, send_charger=self.charger.send, send_cms=self.cms.send,
            call_cms=self.cms.own_dict_call, spawn=spawn,
        )
        self.pump = RelayPump(
            version, ocpp, slog,
            charger=self.charger, cms=self.cms, offline=self.offline, replay=self.replay, txids=txids,
            observer=observer, profiles=self.profiles, reports=reports, reinstall=self.actuator.reinstall,
            spawn=spawn,
        )

    # ------------------------------------------------------------------ lifecycle
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.log.error("session_task_failed", error=repr(exc))

    @property
    def cms_online(self) -> bool:
        return self.cms.online

    @property
    def mode(self) -> str:
        """The profile purpose the charger takes (``max`` or ``txdefault``)."""
        return self.caps.mode

    async def run(self) -> None:
        self.tracker.online = True
        self.events.changed(self.id)
        self.events.event("charger_connected", charger=self.id, version=self.version)
        if self.cms.target is not None:
            self.spawn(self.cms.run())
        self.spawn(self._init_charger())
        try:
            async for raw in self.ws:
                try:
                    await self.pump.on_charger_frame(raw)
                except (ConnectionClosed, CallFailed):
                    raise
                except Exception:
                    self.log.exception("charger_frame_failed")
        except ConnectionClosed:
            pass
        finally:
            await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.tracker.online = False
        self.to_charger.fail_all("charger disconnected")
        self.to_cms.fail_all("charger disconnected")
        for t in list(self._tasks):
            t.cancel()
        await self.cms.close()
        await self.ws.close()
        self.events.changed(self.id)
        self.events.event("charger_disconnected", charger=self.id)

    async def _init_charger(self) -> None:
        await self.caps.learn()
        await self.actuator.install_profiles()

    async def _on_cms_frame(self, raw: str | bytes) -> None:
        await self.pump.on_cms_frame(raw)

    def _cms_up(self) -> asyncio.Task[Any]:
        self.replay.draining = True
        return self.spawn(self.replay.drain())

    def _cms_down(self) -> None:
        self.replay.draining = False

    # ------------------------------------------------------------------ the controller's API
    def due(self, now: float) -> int:
        return self.actuator.due(now)

    def submit_limit(
        self, now: float, *, force: bool = False, held: list[HeldLimit] | None = None
    ) -> asyncio.Future[None] | None:
        return self.actuator.submit_limit(now, force=force, held=held)

    async def failsafe_now(self) -> bool:
        return await self.actuator.failsafe_now()

    async def test_lease(self, lease_s: int) -> bool:
        return await self.actuator.test_lease(lease_s)

    async def resume_limit(self) -> None:
        await self.actuator.resume_limit()

    async def ask(self, call: Call) -> dict[str, Any] | None:
        """One CALL of the gateway's own to the charger (an ``ocpp`` call dataclass): its result's payload, None
        if it failed."""
        return await self._result(self.charger.own_call(call))

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The same for a read-back whose payload is JSON already (handed over the control socket)."""
        return await self._result(self.charger.own_dict_call(action, payload))

    @staticmethod
    async def _result(out: OutCall) -> dict[str, Any] | None:
        try:
            ans = await out.result
        except CallFailed:
            return None
        return ans.payload if ans.kind == CALLRESULT else None

    async def stop_transaction(self) -> bool:
        s = self.tracker.session
        if s is None or s.transaction_id is None:
            return False
        if self.version == "1.6":
            try:
                stop: Any = call16.RemoteStopTransaction(transaction_id=int(s.transaction_id))
            except ValueError:
                return False
        else:
            stop = call201.RequestStopTransaction(transaction_id=s.transaction_id)
        try:
            ans = await self.charger.own_call(stop).result
        except CallFailed:
            return False
        return ans.kind == CALLRESULT and ans.payload.get("status") == "Accepted"
