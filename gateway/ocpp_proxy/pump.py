"""The relay pump: every frame from the charger or the CMS, routed.

Frames are relayed as received (the raw text), message ids untouched; the gateway looks at what it must
(state, tokens, transaction ids, charging profiles) and answers locally while the CMS is unreachable.
"""

from __future__ import annotations

from collections.abc import Callable

from structlog.typing import FilteringBoundLogger

from gateway.ocpp_proxy.charger_link import ChargerLink
from gateway.ocpp_proxy.cms_link import CmsLink
from gateway.ocpp_proxy.cms_profiles import PROFILE_CALLS, CmsProfiles
from gateway.ocpp_proxy.config import OcppConfig
from gateway.ocpp_proxy.frames import (
    CALL,
    CALLRESULT,
    Frame,
    FrameError,
    error_text,
    parse_frame,
    result_text,
    validate,
)
from gateway.ocpp_proxy.observe import Observer
from gateway.ocpp_proxy.offline import QUEUED, OfflineResponder
from gateway.ocpp_proxy.ports import Spawn
from gateway.ocpp_proxy.profile_reports import ProfileReports
from gateway.ocpp_proxy.relay import OutCall
from gateway.ocpp_proxy.replay import Replay
from gateway.ocpp_proxy.txids import TxIds

# charger -> CMS messages the gateway inspects (validated against the schema)
INSPECTED = QUEUED | {"BootNotification", "Authorize", "Heartbeat"}
# a transaction message that arrives while the backlog is replayed waits this long for the replay to end, then
# is queued and answered locally (as while the CMS is away); charger CALL timeouts are tens of seconds
REPLAY_WAIT_S = 5.0
# answered locally when the CMS does not answer them in time
ANSWERED_LOCALLY = QUEUED | {"BootNotification", "Heartbeat", "Authorize"}


class RelayPump:
    """``reinstall`` puts the gateway's own profiles back (after a ClearChargingProfile the charger accepted)."""

    def __init__(
        self,
        version: str,
        ocpp: OcppConfig,
        log: FilteringBoundLogger,
        *,
        charger: ChargerLink,
        cms: CmsLink,
        offline: OfflineResponder,
        replay: Replay,
        txids: TxIds,
        observer: Observer,
        profiles: CmsProfiles,
        reports: ProfileReports,
        reinstall: Callable[[], None],
        spawn: Spawn,
    ) -> None:
        self.version = version
        self.ocpp = ocpp
        self.log = log
        self.charger = charger
        self.cms = cms
        self.offline = offline
        self.replay = replay
        self.txids = txids
        self.observer = observer
        self.profiles = profiles
        self.reports = reports
        self._reinstall = reinstall
        self._spawn = spawn

    # ------------------------------------------------------------------ charger -> gateway
    async def on_charger_frame(self, raw: str | bytes) -> None:
        try:
            frame = parse_frame(raw, self.version, self.ocpp.max_frame_bytes)
        except FrameError as exc:
            self.log.warning("frame_rejected", side="charger", reason=exc.reason, answered=exc.reply is not None)
            if exc.reply is not None:
                await self.charger.ws.send(exc.reply)
            return
        if frame.kind == CALL:
            await self._charger_call(frame)
            return
        to_charger = self.charger.calls
        out = to_charger.on_answer(frame)
        if out is not None or frame.message_id in to_charger.late_own:
            return  # answered CALLs are forwarded (or consumed) by their on_answer
        up = self.cms.up
        if up is not None:
            await up.send(frame.raw)
        else:
            self.log.info("answer_dropped_cms_offline", message_id=frame.message_id)

    async def _charger_call(self, frame: Frame) -> None:
        action = frame.action or ""
        if action == "ReportChargingProfiles" and self.reports.wants(frame):
            await self.reports.on_report(frame)
            return
        if action in INSPECTED:
            code = validate(self.version, CALL, action, frame.payload)
            if code is not None:
                self.log.warning("frame_rejected", side="charger", action=action, reason=code)
                await self.charger.ws.send(error_text(frame.message_id, code, f"{action} payload fails its schema"))
                return
            self.observer.request(action, frame.payload)
        if action == "NotifyEVChargingNeeds":  # the EV's departure and energy for the planner: observed, relayed raw
            self.observer.ev_needs(frame.payload)
        if self.cms.online and action in QUEUED and self.replay.draining:
            # the CMS is there, only the backlog goes first: the CMS answers this one once the backlog is out
            # (a token it knows is not refused from a cache that does not), unless the replay takes long
            self._spawn(self._after_replay(frame))
            return
        await self._route_call(frame)

    async def _after_replay(self, frame: Frame) -> None:
        # the charger waits for this answer before its next CALL (one outstanding per direction): order is kept
        await self.replay.drained(REPLAY_WAIT_S)
        await self._route_call(frame)

    async def _route_call(self, frame: Frame) -> None:
        action = frame.action or ""
        live = self.cms.online and (action not in QUEUED or not self.replay.draining)
        if not live:
            await self.offline.answer(frame)
            return
        text = frame.raw
        if self.version == "1.6" and action in ("StopTransaction", "MeterValues"):
            text = self.txids.up(frame.raw)
        self.cms.calls.submit(
            OutCall(
                frame.message_id,
                text,
                action,
                False,
                frame.payload,
                on_answer=lambda out, ans: self._relayed_up_answered(out, ans, frame),
            )
        )

    def _relayed_up_answered(self, out: OutCall, ans: Frame | None, frame: Frame) -> None:
        if ans is None:
            # the CMS did not answer (timeout or link lost): keep the message (as received) and answer locally
            if out.action in ANSWERED_LOCALLY:
                self._spawn(self.offline.answer(frame))
            else:
                self.charger.send_soon(error_text(out.message_id, "InternalError", "CMS did not answer"))
            return
        self.charger.send_soon(ans.raw)
        if ans.kind == CALLRESULT:
            self.observer.answer(out.action, out.payload, ans.payload)

    # ------------------------------------------------------------------ CMS -> gateway
    async def on_cms_frame(self, raw: str | bytes) -> None:
        up = self.cms.up
        try:
            frame = parse_frame(raw, self.version, self.ocpp.max_frame_bytes)
        except FrameError as exc:
            self.log.warning("frame_rejected", side="cms", reason=exc.reason, answered=exc.reply is not None)
            if exc.reply is not None and up is not None:
                await up.send(exc.reply)
            return
        if frame.kind != CALL:
            to_cms = self.cms.calls
            out = to_cms.on_answer(frame)
            if out is None and frame.message_id in to_cms.late_own:
                return
            if out is None:
                # late answer to a relayed CALL: the charger may still want it
                await self.charger.send(frame.raw)
            return
        action = frame.action or ""
        if action in PROFILE_CALLS:
            code = validate(self.version, CALL, action, frame.payload)
            if code is not None:
                self.log.warning("frame_rejected", side="cms", action=action, reason=code)
                if up is not None:
                    await up.send(error_text(frame.message_id, code, f"{action} payload fails its schema"))
                return
            local = self.profiles.handle(action, frame.payload)
            if local is not None:
                if up is not None:
                    await up.send(result_text(frame.message_id, local))
                return
        if (
            action == "GetChargingProfiles"
            and self.version == "2.0.1"
            and isinstance(frame.payload.get("requestId"), int)
        ):
            self.reports.collect(frame)
            return
        if action == "DataTransfer":
            self.observer.needs(frame.payload)
        text = self.txids.down(frame.raw, frame.payload) if self.version == "1.6" else frame.raw
        self.charger.calls.submit(
            OutCall(frame.message_id, text, action, False, frame.payload, on_answer=self._relayed_down_answered)
        )

    def _relayed_down_answered(self, out: OutCall, ans: Frame | None) -> None:
        if ans is None:
            return  # the charger did not answer: the CMS times out as it would without us
        if self.cms.up is not None:
            self._spawn(self.cms.send(ans.raw))
        if ans.kind == CALLRESULT and ans.payload.get("status") == "Accepted":
            self.profiles.relayed(out.action, out.payload)
        if out.action == "ClearChargingProfile":
            self._reinstall()  # it may have matched the gateway's own profiles: put them back
