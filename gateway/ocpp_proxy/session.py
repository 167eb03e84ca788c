"""One charger's pair of sockets: the charger's connection and its upstream to the CMS.

Frames are relayed as received (the raw text), message ids untouched; the gateway looks at
what it must (state, tokens, transaction ids, charging profiles) and answers locally while
the CMS is unreachable, writing transaction-related messages to the durable queue first.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from gateway.backoff import Backoff
from gateway.budget.remote import CommandRejected
from gateway.config import ChargerConfig
from gateway.errors import OcppError, StoreError
from gateway.model import Actuation
from gateway.ocpp_proxy import policy
from gateway.ocpp_proxy.frames import (
    CALL,
    CALLRESULT,
    Frame,
    FrameError,
    call_text,
    error_text,
    new_message_id,
    parse_frame,
    result_text,
    set_member,
    splice,
    validate,
    value_span,
)
from gateway.ocpp_proxy.relay import CallChannel, CallFailed, OutCall
from gateway.ocpp_proxy.reports import cms_view
from gateway.ocpp_proxy.state import ChargerTracker
from gateway.ocpp_proxy.store import QueueFull
from gateway.ocpp_proxy.upstream import UpstreamTarget, open_upstream
from gateway.planner.needs import from_data_transfer

if TYPE_CHECKING:
    from gateway.ocpp_proxy.controller import OcppController

log = structlog.get_logger(__name__)

# charger -> CMS messages that are queued durably while the CMS is unreachable
QUEUED = frozenset({"StartTransaction", "StopTransaction", "TransactionEvent", "MeterValues", "StatusNotification"})
# kept while the queue is full (within its reserve): a transaction's begin and end; the periodic rest is dropped
ESSENTIAL = frozenset({"StartTransaction", "StopTransaction"})
# charger -> CMS messages the gateway inspects (validated against the schema)
INSPECTED = QUEUED | {"BootNotification", "Authorize", "Heartbeat"}
# notifications acknowledged (and not kept) while the CMS is unreachable
NOTIFICATIONS = frozenset(
    {
        "FirmwareStatusNotification",
        "DiagnosticsStatusNotification",
        "SecurityEventNotification",
        "LogStatusNotification",
        "NotifyEvent",
        "NotifyReport",
        "NotifyChargingLimit",
        "NotifyMonitoringReport",
        "NotifyCustomerInformation",
        "NotifyDisplayMessages",
        "NotifyEVChargingSchedule",
        "PublishFirmwareStatusNotification",
        "ReservationStatusUpdate",
        "ClearedChargingLimit",
        "ReportChargingProfiles",
        "SignCertificate",
    }
)
FAILSAFE_START = datetime(2020, 1, 1, tzinfo=UTC)


DUE_NOT, DUE_DECREASE, DUE_OTHER = 0, 1, 2


def _now() -> datetime:
    return datetime.now(UTC)


# how a limit profile's CALL ended (for the actuation feedback)
ACCEPTED, REJECTED, UNANSWERED = 0, 1, 2


class LimitState:
    """One charger's limit profile: what was decided and sent, and what the charger answered.

    Kept by the controller across connections (an offline charger keeps its leased limit); the
    per-connection part (capabilities, fail-safe, a limit accepted on this socket) is reset on connect.
    """

    def __init__(self) -> None:
        self.target: float | None = None  # last allocation (charger unit)
        self.sent: float | None = None  # limit in the last profile written
        self.sent_at: float = 0.0  # clock() when written
        self.ok = False  # the charger accepted it
        self.retry_at: float = 0.0
        # actuation feedback (times are clock())
        self.caps_learned = False
        self.failsafe_ok = False
        self.confirmed = False  # a limit profile was accepted on this connection
        self.accepted: float | None = None
        self.accepted_at: float | None = None
        self.lease_until: float | None = None
        self.pending: float | None = None
        self.pending_since: float | None = None
        self.pending_id: str | None = None
        self.rejected_at: float | None = None
        self.unsure: tuple[float, float] | None = None  # (limit, queued at) of a CALL written, never answered
        self._act: Actuation | None = None
        self._act_online = False

    def connected(self) -> None:
        """A new socket: nothing is known to be installed on it yet."""
        self.caps_learned = self.failsafe_ok = self.confirmed = False
        self._act = None

    def installing(self, caps_learned: bool) -> None:
        """The profiles are being (re)installed: not controlled until the charger accepted them again."""
        self.caps_learned = caps_learned
        self.failsafe_ok = self.confirmed = False
        self._act = None

    def learned(self, ok: bool) -> None:
        self.caps_learned = ok
        self._act = None

    def failsafe_answered(self, ok: bool) -> None:
        self.failsafe_ok = ok
        self._act = None

    def queued(self, message_id: str, limit: float, now: float) -> None:
        self.pending, self.pending_since, self.pending_id = limit, now, message_id
        self._act = None

    def answered(
        self, message_id: str, limit: float, queued_at: float, lease_until: float, outcome: int, now: float
    ) -> None:
        """A limit CALL ended. A CALL written but never answered may have been applied: its limit stays
        pending (unconfirmed) until a later acceptance tells what the charger holds."""
        if outcome == ACCEPTED:
            self.accepted, self.accepted_at, self.lease_until = limit, now, lease_until
            self.confirmed = True
            self.unsure = None
        else:
            self.rejected_at = now
            if outcome == UNANSWERED:
                self.unsure = (limit, queued_at)
        if message_id == self.pending_id:
            if outcome == UNANSWERED:
                pass  # stays pending
            elif outcome == REJECTED and self.unsure is not None:
                self.pending, self.pending_since = self.unsure
                self.pending_id = None
            else:
                self.pending = self.pending_since = self.pending_id = None
        self._act = None

    def actuation(self, now: float, online: bool) -> Actuation:
        """The allocator's feedback (cached: rebuilt only on a change or when the lease lapses)."""
        act = self._act
        if act is not None and online == self._act_online and not (act.controlled and now >= (act.lease_until or 0.0)):
            return act
        controlled = (
            online
            and self.caps_learned
            and self.failsafe_ok
            and self.confirmed
            and self.lease_until is not None
            and now < self.lease_until
        )
        act = Actuation(
            controlled=controlled,
            failsafe_installed=self.failsafe_ok,
            accepted_limit=self.accepted,
            accepted_at=self.accepted_at,
            pending_limit=self.pending,
            pending_since=self.pending_since,
            rejected_at=self.rejected_at,
            lease_until=self.lease_until,
        )
        self._act, self._act_online = act, online
        return act


class ChargerSession:
    def __init__(self, ctrl: OcppController, cfg: ChargerConfig, ws: ServerConnection) -> None:
        self.ctrl = ctrl
        self.cfg = cfg
        self.id = cfg.id
        self.version = cfg.ocpp_version
        self.ws = ws
        self.ocpp = ctrl.site.ocpp
        self.log = log.bind(charger=cfg.id)
        self.tracker: ChargerTracker = ctrl.tracker(cfg.id)
        self._sends = 0  # frames handed to ws.send and not yet written (a CALL written at once must not pass them)
        self.to_charger = CallChannel("to_charger", cfg.id, ws.send, self.ocpp.call_timeout_s, send_now=self._write_now)
        self.to_cms = CallChannel("to_cms", cfg.id, None, self.ocpp.call_timeout_s)
        self.up: ClientConnection | None = None
        self.draining = False
        self.closed = False
        self.pending_boot: dict[str, Any] | None = None
        self.limit = ctrl.limit_state(cfg.id)
        self.mode = self._initial_mode()
        self.profiles_ready = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self.target: UpstreamTarget | None = ctrl.upstream_target(cfg)
        self._enqueuing = 0  # queue writes not yet committed (the replay waits for them before going live)
        self._queue_full = False  # an episode of the queue refusing rows: reported once
        self._reports: dict[int, ProfileReport] = {}  # 2.0.1 GetChargingProfiles being collected, by requestId
        self._installed: dict[int, dict[str, Any]] = {}  # CMS profiles relayed to the charger and accepted

    # ------------------------------------------------------------------ lifecycle
    def _initial_mode(self) -> str:
        if self.cfg.ocpp.profile_purpose is not None:
            return self.cfg.ocpp.profile_purpose
        mode = self.ctrl.store.caps(self.id).get("mode")
        return mode if mode in policy.MODES else "max"

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
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
        return self.up is not None

    async def run(self) -> None:
        self.tracker.online = True
        self.ctrl.changed(self.id)
        self.ctrl.event("charger_connected", charger=self.id, version=self.version)
        if self.target is not None:
            self.spawn(self._upstream_loop())
        self.spawn(self._init_charger())
        try:
            async for raw in self.ws:
                try:
                    await self.on_charger_frame(raw)
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
        up, self.up = self.up, None
        if up is not None:
            await up.close()
        await self.ws.close()
        self.ctrl.changed(self.id)
        self.ctrl.event("charger_disconnected", charger=self.id)

    # ------------------------------------------------------------------ upstream
    async def _upstream_loop(self) -> None:
        assert self.target is not None
        backoff = Backoff(self.ocpp.reconnect_min_s, self.ocpp.reconnect_max_s)
        while not self.closed:
            try:
                up = await open_upstream(
                    self.target, max_size=self.ocpp.max_frame_bytes * 4, open_timeout_s=self.ocpp.call_timeout_s
                )
            except (OSError, InvalidHandshake, InvalidURI, TimeoutError, OcppError, ConnectionClosed) as exc:
                refused = refusal(exc)
                delay = backoff.next_delay()
                if refused is not None:
                    # the CMS answered and said no: retrying at full speed cannot help
                    delay = max(delay, self.ocpp.reconnect_refused_s)
                    self.log.warning("cms_refused", url=self.target.url, reason=refused, retry_s=round(delay, 1))
                    self.ctrl.event("cms_refused", charger=self.id, reason=refused)
                else:
                    self.log.info("cms_connect_failed", url=self.target.url, error=str(exc) or type(exc).__name__)
                if self.ocpp.strict_offline:
                    self.log.warning("charger_closed_strict_offline")
                    await self.ws.close(1011, "CMS unavailable")
                    return
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            self.up = up
            self.draining = True
            self.to_cms.attach(up.send)
            self.ctrl.event("cms_link_up", charger=self.id)
            self.ctrl.changed(self.id)
            drain = self.spawn(self._drain())
            try:
                async for raw in up:
                    try:
                        await self.on_cms_frame(raw)
                    except ConnectionClosed:
                        if self.closed:
                            raise
                    except Exception:
                        self.log.exception("cms_frame_failed")
            except ConnectionClosed:
                pass
            finally:
                drain.cancel()
                self.up = None
                self.draining = False
                self.to_cms.attach(None)
            if self.closed:
                return
            self.ctrl.event("cms_link_down", charger=self.id)
            self.ctrl.changed(self.id)
            if self.ocpp.strict_offline:
                self.log.warning("charger_closed_strict_offline")
                await self.ws.close(1011, "CMS unavailable")
                return
            await asyncio.sleep(backoff.next_delay())

    def _own_to_cms(self, action: str, payload: dict[str, Any]) -> OutCall:
        mid = new_message_id()
        return self.to_cms.submit(OutCall(mid, call_text(mid, action, payload), action, True, payload))

    async def _drain(self) -> None:
        """Replay the durable queue in order; only then relay transaction messages live.

        Each row goes out as the charger sent it, with its own message id (a repeat after a crash is
        recognisable); the CMS's answer is recorded on the row before anything else is sent, answered
        rows are never sent again and are deleted a batch at a time."""
        store = self.ctrl.store
        if self.pending_boot is not None:
            boot = self.pending_boot
            try:
                ans = await self._own_to_cms("BootNotification", boot).result
                if ans.kind == CALLRESULT:
                    self.pending_boot = None
            except CallFailed:
                return
        await store.delete_answered(self.id)  # answered before a crash or a lost link: never sent again
        while self.up is not None:
            batch = store.pending(self.id, self.ocpp.replay_batch_messages)
            if not batch:
                if self._enqueuing:
                    await asyncio.sleep(0.005)  # a row being written: it goes first
                    continue
                self.draining = False
                self.log.info("replay_done")
                return
            for m in batch:
                if not await self._replay_one(m):
                    return  # the link went down: replay resumes on reconnect (answered rows are skipped)
            await store.delete_answered(self.id)

    def replay_text(self, raw: str, action: str) -> str:
        """What goes to the CMS for a queued CALL: its text, the 1.6 transaction id and the offline
        marking (if configured) spliced in; every other byte as the charger sent it."""
        if self.version == "1.6" and action in ("StopTransaction", "MeterValues"):
            return self._rewrite_tx_up(raw)
        if self.version == "2.0.1" and action == "TransactionEvent" and self.ocpp.offline_mark_events:
            return set_member(raw, (3,), "offline", True)
        return raw

    async def _replay_one(self, m: Any) -> bool:
        store = self.ctrl.store
        if m.raw is not None and m.message_id is not None:
            mid, text = m.message_id, self.replay_text(m.raw, m.action)
        else:  # a row queued by an older gateway: only its payload was kept
            mid = new_message_id()
            text = self.replay_text(call_text(mid, m.action, m.payload), m.action)
        try:
            ans = await self.to_cms.submit(OutCall(mid, text, m.action, True, m.payload)).result
        except CallFailed:
            return False
        if ans.kind == CALLRESULT:
            self._learn_from_answer(m.action, m.payload, ans.payload)
            cms_id = ans.payload.get("transactionId")
            if m.action == "StartTransaction" and isinstance(m.local_tx, int) and isinstance(cms_id, int):
                await store.map_tx(self.id, m.local_tx, cms_id, seq=m.seq, answer=ans.raw)
                self.log.info("tx_id_mapped", local_tx=m.local_tx, cms_tx=cms_id)
                self.ctrl.event("replayed", charger=self.id, action=m.action, seq=m.seq)
                return True
        else:
            self.log.warning("replay_rejected", action=m.action, seq=m.seq, error=ans.payload.get("code"))
        # on disk (group-committed with the other chargers' writes) before the next row goes out: a kill
        # repeats at most the one row in flight, with its own message id
        await asyncio.wrap_future(store.answered(m.seq, ans.raw))
        self.ctrl.event("replayed", charger=self.id, action=m.action, seq=m.seq)
        return True

    # ------------------------------------------------------------------ charger -> gateway
    async def on_charger_frame(self, raw: str | bytes) -> None:
        try:
            frame = parse_frame(raw, self.version, self.ocpp.max_frame_bytes)
        except FrameError as exc:
            self.log.warning("frame_rejected", side="charger", reason=exc.reason, answered=exc.reply is not None)
            if exc.reply is not None:
                await self.ws.send(exc.reply)
            return
        if frame.kind == CALL:
            await self._charger_call(frame)
            return
        out = self.to_charger.on_answer(frame)
        if out is not None or frame.message_id in self.to_charger.late_own:
            return  # answered CALLs are forwarded (or consumed) by their on_answer
        if self.up is not None:
            await self.up.send(frame.raw)
        else:
            self.log.info("answer_dropped_cms_offline", message_id=frame.message_id)

    async def _charger_call(self, frame: Frame) -> None:
        action = frame.action or ""
        if action == "ReportChargingProfiles" and frame.payload.get("requestId") in self._reports:
            await self._charger_report(frame)
            return
        if action in INSPECTED:
            code = validate(self.version, CALL, action, frame.payload)
            if code is not None:
                self.log.warning("frame_rejected", side="charger", action=action, reason=code)
                await self.ws.send(error_text(frame.message_id, code, f"{action} payload fails its schema"))
                return
            self._track_request(action, frame.payload)
        if action == "NotifyEVChargingNeeds":  # the EV's departure and energy for the planner: observed, relayed raw
            self.tracker.on_ev_charging_needs(frame.payload)
        live = self.up is not None and (action not in QUEUED or not self.draining)
        if not live:
            await self._answer_locally(frame)
            return
        text = frame.raw
        if self.version == "1.6" and action in ("StopTransaction", "MeterValues"):
            text = self._rewrite_tx_up(frame.raw)
        self.to_cms.submit(
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
            if out.action in QUEUED or out.action in ("BootNotification", "Heartbeat", "Authorize"):
                self.spawn(self._answer_locally(frame))
            else:
                code = "InternalError"
                self._send_charger_soon(error_text(out.message_id, code, "CMS did not answer"))
            return
        self._send_charger_soon(ans.raw)
        if ans.kind == CALLRESULT:
            self._learn_from_answer(out.action, out.payload, ans.payload)

    async def _send_charger(self, text: str, *, counted: bool = False) -> None:
        if not counted:
            self._sends += 1
        try:
            await self.ws.send(text)
        except ConnectionClosed:
            self.log.info("charger_send_failed_closed")
        finally:
            self._sends -= 1

    def _send_charger_soon(self, text: str) -> None:
        self._sends += 1  # from now: a CALL written at once would overtake it
        self.spawn(self._send_charger(text, counted=True))

    def _write_now(self, text: str) -> bool:
        """Write a text frame to the charger's socket at once, as ``ws.send`` does when it need not wait: the
        connection open, no other frame waiting to be written before it, the write buffer below its limit.
        False: not written (the caller sends it with ``ws.send``, which waits or fails as it must)."""
        ws = self.ws
        if (
            self._sends
            or ws.protocol.state is not State.OPEN
            or ws.send_in_progress is not None
            or ws.paused
            or ws.transport.is_closing()
        ):
            return False
        ws.protocol.send_text(text.encode())
        ws.send_data()
        return True

    def _track_request(self, action: str, p: dict[str, Any]) -> None:
        t = self.tracker
        if action == "BootNotification":
            self.ctrl.booted(self.id, p)
            return
        if self.version == "1.6":
            if action == "StatusNotification":
                t.on_status_16(p)
            elif action == "MeterValues":
                t.on_meter_values_16(p)
            elif action == "StartTransaction":
                t.on_start_16(p, None)
            elif action == "StopTransaction":
                t.on_stop_16(p)
            else:
                return
        else:
            if action == "StatusNotification":
                t.on_status_201(p)
            elif action == "MeterValues":
                t.on_meter_values_201(p)
            elif action == "TransactionEvent":
                t.on_transaction_event(p)
            else:
                return
        self.ctrl.changed(self.id)

    def _learn_from_answer(self, action: str, req: dict[str, Any], ans: dict[str, Any]) -> None:
        """Token cache and 1.6 transaction ids from the CMS's answers."""
        token: Any = None
        info: Any = None
        if self.version == "1.6":
            token, info = req.get("idTag"), ans.get("idTagInfo")
        else:
            token, info = (req.get("idToken") or {}).get("idToken"), ans.get("idTokenInfo")
        if isinstance(token, str) and isinstance(info, dict) and isinstance(info.get("status"), str):
            expiry = policy.parse_iso(info.get("expiryDate" if self.version == "1.6" else "cacheExpiryDateTime"))
            self.ctrl.store.remember_token(
                token,
                info["status"],
                expires=None if expiry is None else expiry.timestamp(),
                max_entries=self.ocpp.token_cache_max_entries,
            )
        if self.version == "1.6" and action == "StartTransaction" and isinstance(ans.get("transactionId"), int):
            s = self.tracker.session
            if s is not None and s.transaction_id is None:
                self.tracker.on_start_16(req, ans["transactionId"])
                self.ctrl.changed(self.id)

    def _token_status(self, token: Any) -> str:
        if not isinstance(token, str):
            return "Invalid"
        if token in self.ocpp.offline_allow_list:
            return "Accepted"
        status = self.ctrl.store.token_status(token, max_age_s=self.ocpp.token_cache_max_age_s)
        if status is None and self.ocpp.offline_accept_unknown:
            return "Accepted"
        return "Accepted" if status == "Accepted" else "Invalid"

    async def _answer_locally(self, frame: Frame) -> None:
        action, p, mid = frame.action or "", frame.payload, frame.message_id
        now = policy.iso(_now())
        keep = self.target is not None  # nothing to replay to without a CMS
        answer: dict[str, Any] | None
        try:
            if action == "BootNotification":
                self.pending_boot = p if keep else None
                answer = {"status": "Accepted", "currentTime": now, "interval": self.ocpp.heartbeat_interval_s}
            elif action == "Heartbeat":
                answer = {"currentTime": now}
            elif action == "Authorize":
                if self.version == "1.6":
                    answer = {"idTagInfo": {"status": self._token_status(p.get("idTag"))}}
                else:
                    tok = (p.get("idToken") or {}).get("idToken")
                    answer = {"idTokenInfo": {"status": self._token_status(tok)}}
            elif action == "StartTransaction" and self.version == "1.6":
                status = self._token_status(p.get("idTag"))
                if keep:
                    local_id = await self._keep(self.ctrl.store.enqueue_start_16(self.id, mid, frame.raw))
                else:
                    local_id = -int(time.time() * 1000) % 2_000_000_000 or 1
                self.tracker.on_start_16(p, local_id)
                self.ctrl.changed(self.id)
                answer = {"idTagInfo": {"status": status}, "transactionId": local_id}
            elif action in QUEUED:
                if keep:
                    await self._enqueue(frame)
                answer = {}
                if action == "StopTransaction" and p.get("idTag") is not None:
                    answer = {"idTagInfo": {"status": self._token_status(p.get("idTag"))}}
                if action == "TransactionEvent" and isinstance(p.get("idToken"), dict):
                    answer = {"idTokenInfo": {"status": self._token_status(p["idToken"].get("idToken"))}}
            elif action == "DataTransfer":
                answer = {"status": "Rejected"}
            elif action in NOTIFICATIONS:
                answer = {} if action != "SignCertificate" else {"status": "Rejected"}
            else:
                answer = None
        except StoreError as exc:
            # a transaction's begin or end that is not on disk is not acknowledged: the charger keeps it, retries
            self._report_refused(action, exc, kept_by_charger=True)
            await self._send_charger(error_text(mid, "InternalError", "durable queue unavailable"))
            return
        if answer is None:
            await self._send_charger(error_text(mid, "InternalError", "CMS unavailable"))
        else:
            if action in QUEUED:
                self.log.info("queued_offline", action=action)
            await self._send_charger(result_text(mid, answer))

    async def _keep(self, write: Any) -> Any:
        self._enqueuing += 1
        try:
            return await write
        finally:
            self._enqueuing -= 1

    def _essential(self, frame: Frame) -> bool:
        if frame.action == "TransactionEvent":
            return frame.payload.get("eventType") in ("Started", "Ended")
        return frame.action in ESSENTIAL

    async def _enqueue(self, frame: Frame) -> None:
        """Keep a CALL for replay. A periodic message the queue cannot take is dropped (and counted);
        a transaction's begin or end raises, so that it is not acknowledged."""
        store = self.ctrl.store
        essential = self._essential(frame)
        try:
            await self._keep(
                store.enqueue(self.id, frame.action or "", frame.message_id, frame.raw, essential=essential)
            )
        except StoreError as exc:
            if essential:
                raise
            store.dropped += 1
            self._report_refused(frame.action or "", exc, kept_by_charger=False)
            return
        self._queue_full = False

    def _report_refused(self, action: str, exc: Exception, *, kept_by_charger: bool) -> None:
        """The operator learns of it once per episode (log and event), then each refusal is logged."""
        self.log.info("queue_write_refused", action=action, error=str(exc), kept_by_charger=kept_by_charger)
        if not self._queue_full:
            self._queue_full = True
            reason = "limit" if isinstance(exc, QueueFull) and "limit" in str(exc) else "disk"
            self.log.error("queue_full", reason=reason, error=str(exc), dropped_total=self.ctrl.store.dropped)
            self.ctrl.event("queue_full", charger=self.id, reason=reason, error=str(exc))

    # ------------------------------------------------------------------ CMS -> gateway
    async def on_cms_frame(self, raw: str | bytes) -> None:
        up = self.up
        try:
            frame = parse_frame(raw, self.version, self.ocpp.max_frame_bytes)
        except FrameError as exc:
            self.log.warning("frame_rejected", side="cms", reason=exc.reason, answered=exc.reply is not None)
            if exc.reply is not None and up is not None:
                await up.send(exc.reply)
            return
        if frame.kind != CALL:
            out = self.to_cms.on_answer(frame)
            if out is None and frame.message_id in self.to_cms.late_own:
                return
            if out is None:
                # late answer to a relayed CALL: the charger may still want it
                await self._send_charger(frame.raw)
            return
        action = frame.action or ""
        if action in ("SetChargingProfile", "ClearChargingProfile", "GetCompositeSchedule"):
            code = validate(self.version, CALL, action, frame.payload)
            if code is not None:
                self.log.warning("frame_rejected", side="cms", action=action, reason=code)
                if up is not None:
                    await up.send(error_text(frame.message_id, code, f"{action} payload fails its schema"))
                return
            local = self._cms_profile_call(action, frame.payload)
            if local is not None:
                if up is not None:
                    await up.send(result_text(frame.message_id, local))
                return
        if (
            action == "GetChargingProfiles"
            and self.version == "2.0.1"
            and isinstance(frame.payload.get("requestId"), int)
        ):
            self._collect_reports(frame)
            return
        if action == "DataTransfer":
            self._observe_needs(frame.payload)
        text = self._rewrite_tx_down(frame.raw, frame.payload) if self.version == "1.6" else frame.raw
        self.to_charger.submit(
            OutCall(frame.message_id, text, action, False, frame.payload, on_answer=self._relayed_down_answered)
        )

    def _observe_needs(self, p: dict[str, Any]) -> None:
        """A CMS DataTransfer ems-gateway/SessionNeeds: the session's needs for the planner (relayed raw as ever)."""
        try:
            cmd = from_data_transfer(p.get("vendorId"), p.get("messageId"), p.get("data"), charger=self.id,
                                     chargers={self.id: None}, now_wall=time.time())
        except CommandRejected as exc:
            self.log.warning("session_needs_rejected", source="cms", reason=exc.reason)
            return
        if cmd is not None:
            self.tracker.on_needs_command(cmd)
            self.log.info("session_needs", source="cms", energy_wh=cmd.needs and cmd.needs.energy_wh,
                          departure=cmd.needs and cmd.needs.departure_wall)

    def _relayed_down_answered(self, out: OutCall, ans: Frame | None) -> None:
        if ans is None:
            return  # the charger did not answer: the CMS times out as it would without us
        if self.up is not None:
            self.spawn(self._send_up(ans.raw))
        if ans.kind == CALLRESULT and ans.payload.get("status") == "Accepted":
            self._track_installed(out.action, out.payload)
        if out.action == "ClearChargingProfile":
            # it may have matched the gateway's own profiles: put them back
            self.limit.sent = None
            self.spawn(self.install_profiles())

    def _track_installed(self, action: str, p: dict[str, Any]) -> None:
        """The CMS profiles the charger holds (in memory: what its composite schedule is made of)."""
        if action == "SetChargingProfile":
            conn, prof = policy.profile_of(self.version, p)
            pid = policy.profile_id(self.version, prof)
            if pid is not None:
                self._installed[pid] = {"profile": prof, "received_at": policy.iso(_now()), "evse": conn}
        elif action == "ClearChargingProfile":
            pid = p.get("id" if self.version == "1.6" else "chargingProfileId")
            crit = p if self.version == "1.6" else (p.get("chargingProfileCriteria") or {})
            for key, rec in list(self._installed.items()):
                prof = rec["profile"]
                if (pid is None or key == pid) and all(
                    crit.get(k) is None or prof.get(k) == crit.get(k) for k in ("chargingProfilePurpose", "stackLevel")
                ):
                    del self._installed[key]

    async def _send_up(self, text: str) -> None:
        up = self.up
        if up is None:
            return
        try:
            await up.send(text)
        except ConnectionClosed:
            self.log.info("cms_send_failed_closed")

    # ------------------------------------------------------------------ 2.0.1 GetChargingProfiles
    def _collect_reports(self, frame: Frame) -> None:
        """Relay the request; the charger's answer and reports are collected, then the CMS gets its view."""
        rid = int(frame.payload["requestId"])
        self._reports[rid] = ProfileReport(frame.message_id, frame.payload)

        def answered(out: OutCall, ans: Frame | None) -> None:
            rec = self._reports.get(rid)
            if rec is None:
                return
            if ans is None:
                del self._reports[rid]  # the charger did not answer: the CMS times out as it would without us
                return
            status = ans.payload.get("status") if ans.kind == CALLRESULT else None
            if status not in ("Accepted", "NoProfiles"):
                del self._reports[rid]
                self.spawn(self._send_up(ans.raw))
                return
            rec.answered = True
            if status == "NoProfiles" or rec.complete:
                self.spawn(self._finish_reports(rid))
            else:
                self.spawn(self._reports_deadline(rid))

        self.to_charger.submit(
            OutCall(frame.message_id, frame.raw, "GetChargingProfiles", False, frame.payload, on_answer=answered)
        )

    async def _charger_report(self, frame: Frame) -> None:
        rid = int(frame.payload["requestId"])
        rec = self._reports[rid]
        rec.reports.append(frame.payload)
        await self._send_charger(result_text(frame.message_id, {}))
        if not frame.payload.get("tbc", False):
            rec.complete = True
            if rec.answered:
                await self._finish_reports(rid)

    async def _reports_deadline(self, rid: int) -> None:
        """The charger accepted but its last report is late: the CMS gets what has come."""
        await asyncio.sleep(self.ocpp.call_timeout_s * 0.5)
        rec = self._reports.get(rid)
        if rec is not None:
            self.log.warning("profile_report_incomplete", request_id=rid, reports=len(rec.reports))
            await self._finish_reports(rid)

    async def _finish_reports(self, rid: int) -> None:
        rec = self._reports.pop(rid, None)
        if rec is None:
            return
        merged = [(int(r.get("evse") or 0), r["profile"]) for r in self.ctrl.store.cms_profiles(self.id).values()]
        reserved = frozenset({self.ocpp.failsafe_profile_id, self.ocpp.limit_profile_id})
        out = cms_view(rec.reports, merged, reserved, rec.request, self.ocpp.gateway_profiles_report)
        await self._send_up(result_text(rec.message_id, {"status": "Accepted" if out else "NoProfiles"}))
        for i, part in enumerate(out):
            self._own_to_cms("ReportChargingProfiles", {"requestId": rid, **part, "tbc": i < len(out) - 1})

    # ------------------------------------------------------------------ 1.6 transaction ids
    # the ids are spliced into the text: every other byte stays as sent
    def _rewrite_tx_up(self, raw: str) -> str:
        span = value_span(raw, (3, "transactionId"))
        if span is None:
            return raw
        tx = json.loads(raw[span[0] : span[1]])
        if isinstance(tx, int) and not isinstance(tx, bool) and tx < 0:
            cms = self.ctrl.store.cms_tx(self.id, tx)
            if cms is not None:
                return raw[: span[0]] + str(cms) + raw[span[1] :]
        return raw

    def _rewrite_tx_down(self, raw: str, p: dict[str, Any]) -> str:
        tx = p.get("transactionId")
        if isinstance(tx, int) and not isinstance(tx, bool):
            local = self.ctrl.store.local_tx(self.id, tx)
            if local is not None:
                return splice(raw, (3, "transactionId"), local)
        prof = p.get("csChargingProfiles")
        if isinstance(prof, dict) and isinstance(prof.get("transactionId"), int):
            local = self.ctrl.store.local_tx(self.id, prof["transactionId"])
            if local is not None:
                return splice(raw, (3, "csChargingProfiles", "transactionId"), local)
        return raw

    # ------------------------------------------------------------------ profiles
    def _collides(self, conn: int | None, prof: dict[str, Any]) -> bool:
        pid = policy.profile_id(self.version, prof)
        if pid in (self.ocpp.failsafe_profile_id, self.ocpp.limit_profile_id):
            return True
        purpose = prof.get("chargingProfilePurpose")
        if purpose == policy.purpose(self.version, "max"):
            return True
        # a charger that only takes TxDefaultProfile carries the site limit in it: a CMS TxProfile would
        # override it for the transaction (OCPP stacking), so it is merged too, as min(CMS, site)
        return self.mode == "txdefault" and purpose in ("TxDefaultProfile", "TxProfile")

    def _cms_profile_call(self, action: str, p: dict[str, Any]) -> dict[str, Any] | None:
        """Handle a CMS profile CALL locally where it would collide with the gateway's profiles."""
        store = self.ctrl.store
        if action == "SetChargingProfile":
            conn, prof = policy.profile_of(self.version, p)
            if not self._collides(conn, prof):
                return None
            pid = policy.profile_id(self.version, prof)
            if pid is None:
                return {"status": "Rejected"}
            store.put_cms_profile(self.id, pid, {"profile": prof, "received_at": policy.iso(_now()), "evse": conn})
            self.log.info("cms_profile_merged", profile_id=pid, purpose=prof.get("chargingProfilePurpose"))
            self.ctrl.event("cms_profile_merged", charger=self.id, profile_id=pid)
            self.spawn(self.push_limit(force=True))
            return {"status": "Accepted"}
        if action == "ClearChargingProfile":
            pid = p.get("id" if self.version == "1.6" else "chargingProfileId")
            mine = store.cms_profiles(self.id)
            if isinstance(pid, int) and pid in mine:
                store.delete_cms_profile(self.id, pid)
                self.spawn(self.push_limit(force=True))
                return {"status": "Accepted"}
            if pid in (self.ocpp.failsafe_profile_id, self.ocpp.limit_profile_id):
                return {"status": "Unknown"}
            crit = p if self.version == "1.6" else (p.get("chargingProfileCriteria") or {})
            purpose = crit.get("chargingProfilePurpose")
            level = crit.get("stackLevel")
            cleared = False
            if pid is None:
                for mpid, rec in mine.items():
                    prof = rec["profile"]
                    if (purpose is None or prof.get("chargingProfilePurpose") == purpose) and (
                        level is None or prof.get("stackLevel") == level
                    ):
                        store.delete_cms_profile(self.id, mpid)
                        cleared = True
            if cleared:
                self.spawn(self.push_limit(force=True))
                if purpose == policy.purpose(self.version, self.mode):
                    return {"status": "Accepted"}  # nothing of the CMS's own left on the charger to clear
            return None
        if action == "GetCompositeSchedule":
            if self.ocpp.gateway_profiles_report == "ems":
                limit = self.cms_limit()
                if limit is None:
                    return None  # the charger's own composite: the site (EMS) limit in it, reported as such
            else:  # hidden: made of the CMS's profiles only; none in force, the charger's rating
                limit = self.cms_view_limit()
                limit = self.cfg.max_limit if limit is None else limit
            duration = int(p.get("duration", 0))
            unit = str(p.get("chargingRateUnit") or self.cfg.unit)
            value = self._convert(limit, self.cfg.unit, unit)
            if self.version == "1.6":
                return policy.composite_16(int(p.get("connectorId", 0)), duration, unit, value, _now())
            return policy.composite_201(int(p.get("evseId", 0)), duration, unit, value, _now())
        return None

    def _convert(self, value: float, unit: str, to_unit: str) -> float:
        return policy.convert(
            value,
            unit,
            to_unit,
            service=self.ctrl.site.service,
            line_phases=self.cfg.line_phases,
        )

    def cms_limit(self) -> float | None:
        """The lowest limit the CMS's merged profiles set now, in the charger's unit."""
        return self._lowest_limit(list(self.ctrl.store.cms_profiles(self.id).values()))

    def cms_view_limit(self) -> float | None:
        """The lowest limit of all the CMS's profiles now (merged, and those the charger accepted): what
        its GetCompositeSchedule shows when the gateway's profiles are hidden."""
        return self._lowest_limit([*self.ctrl.store.cms_profiles(self.id).values(), *self._installed.values()])

    def _lowest_limit(self, records: list[dict[str, Any]]) -> float | None:
        now = _now()
        best: float | None = None
        for rec in records:
            if rec["profile"].get("chargingProfilePurpose") == "TxProfile" and self.tracker.session is None:
                continue  # a TxProfile ends with its transaction
            received = policy.parse_iso(rec.get("received_at")) or now
            got = policy.profile_limit_at(self.version, rec["profile"], received, now)
            if got is None:
                continue
            value = self._convert(got[0], got[1], self.cfg.unit)
            best = value if best is None else min(best, value)
        return best

    def _own_to_charger(self, action: str, payload: dict[str, Any], key: str | None = None) -> OutCall:
        mid = new_message_id()
        return self.to_charger.submit(OutCall(mid, call_text(mid, action, payload), action, True, payload, key=key))

    async def _init_charger(self) -> None:
        await self.learn_capabilities()
        await self.install_profiles()

    async def learn_capabilities(self) -> None:
        store = self.ctrl.store
        caps = store.caps(self.id)
        if "learned" in caps:
            return
        try:
            if self.version == "1.6":
                keys = [
                    "ChargeProfileMaxStackLevel",
                    "ChargingScheduleAllowedChargingRateUnit",
                    "SupportedFeatureProfiles",
                ]
                ans = await self._own_to_charger("GetConfiguration", {"key": keys}).result
                if ans.kind == CALLRESULT:
                    for kv in ans.payload.get("configurationKey") or []:
                        if isinstance(kv, dict) and isinstance(kv.get("key"), str):
                            caps[kv["key"]] = kv.get("value")
            else:
                names = ["Enabled", "Available", "ProfileStackLevel", "RateUnit"]
                req = {
                    "getVariableData": [
                        {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": n}} for n in names
                    ]
                }
                ans = await self._own_to_charger("GetVariables", req).result
                if ans.kind == CALLRESULT:
                    for r in ans.payload.get("getVariableResult") or []:
                        if isinstance(r, dict) and r.get("attributeStatus") == "Accepted":
                            caps["SmartChargingCtrlr." + str((r.get("variable") or {}).get("name"))] = r.get(
                                "attributeValue"
                            )
        except CallFailed:
            return
        caps["learned"] = True
        profiles = str(caps.get("SupportedFeatureProfiles") or "")
        if (profiles and "SmartCharging" not in profiles) or str(caps.get("SmartChargingCtrlr.Enabled")) == "false":
            self.log.warning("charger_without_smart_charging")
            self.ctrl.event("profile_rejected", charger=self.id, reason="no SmartCharging")
        caps.setdefault("mode", self.mode)
        store.set_caps(self.id, caps)
        self.log.info("capabilities_learned", caps=caps)

    async def _set_profile(
        self, payload_for: Callable[[str], dict[str, Any]], key: str, wait: bool, limit: float | None = None
    ) -> bool | None:
        """Send a profile; on rejection fall back to the next purpose. None: sent, answer not awaited.
        With `limit`, it is a limit profile: its answer is recorded for the actuation feedback."""
        while True:
            built_at = self.ctrl.clock()
            out = self._own_to_charger("SetChargingProfile", payload_for(self.mode), key=key)
            if limit is not None:
                self._track_limit(out, limit, built_at, self._limit_answered if not wait else None)
            if not wait:
                if self.to_charger.in_flight is out:
                    # written now; one queued behind a CMS CALL in flight goes out after its answer
                    await asyncio.wait({out.written}, timeout=self.ocpp.call_timeout_s)
                return None
            try:
                ans = await out.result
            except CallFailed:
                return False
            if ans.kind == CALLRESULT and ans.payload.get("status") == "Accepted":
                return True
            if not self._fall_back(ans):
                return False

    def _fall_back(self, ans: Frame) -> bool:
        reason = ans.payload.get("status") if ans.kind == CALLRESULT else ans.payload.get("code")
        self.ctrl.event(
            "profile_rejected", charger=self.id, purpose=policy.purpose(self.version, self.mode), reason=reason
        )
        self.log.warning("profile_rejected", purpose=policy.purpose(self.version, self.mode), reason=reason)
        nxt = policy.next_mode(self.mode)
        if nxt is None or self.cfg.ocpp.profile_purpose is not None:
            return False
        self.mode = nxt
        caps = self.ctrl.store.caps(self.id)
        caps["mode"] = nxt
        self.ctrl.store.set_caps(self.id, caps)
        self.log.info("profile_purpose_fallback", purpose=policy.purpose(self.version, nxt))
        return True

    def _track_limit(
        self, out: OutCall, limit: float, built_at: float, then: Callable[[OutCall, Frame | None], None] | None
    ) -> None:
        """Record a limit profile as pending, and its answer when it comes (then call `then`). Its lease runs
        from the profile's start (when it was built), whenever the charger answers."""
        ls = self.limit
        queued_at = self.ctrl.clock()
        ls.queued(out.message_id, limit, queued_at)
        lease_until = built_at + self.ocpp.lease_s

        def answered(o: OutCall, ans: Frame | None) -> None:
            if ans is not None:
                ok = ans.kind == CALLRESULT and ans.payload.get("status") == "Accepted"
                outcome = ACCEPTED if ok else REJECTED
            else:
                w = o.written
                outcome = UNANSWERED if w.done() and not w.cancelled() and w.exception() is None else REJECTED
            ls.answered(o.message_id, limit, queued_at, lease_until, outcome, self.ctrl.clock())
            if then is not None:
                then(o, ans)

        out.on_answer = answered

    def _limit_answered(self, out: OutCall, ans: Frame | None) -> None:
        if ans is not None and ans.kind == CALLRESULT and ans.payload.get("status") == "Accepted":
            self.limit.ok = True
            return
        self.limit.ok = False
        self.limit.sent = None  # resend (after a fallback, or later)
        self.limit.retry_at = self.ctrl.clock() + 5.0
        if ans is not None and self._fall_back(ans):
            self.limit.retry_at = 0.0
            self.spawn(self.install_profiles())

    def failsafe_payload(self, mode: str) -> dict[str, Any]:
        return policy.set_profile_payload(
            self.version,
            mode,
            profile_id=self.ocpp.failsafe_profile_id,
            stack_level=self.ocpp.failsafe_stack_level,
            unit=self.cfg.unit,
            limit=self.cfg.failsafe_limit,
            start=FAILSAFE_START,
            duration_s=None,
            connectors=self.cfg.connectors,
        )

    def limit_payload(self, mode: str, limit: float) -> dict[str, Any]:
        return policy.set_profile_payload(
            self.version,
            mode,
            profile_id=self.ocpp.limit_profile_id,
            stack_level=self.ocpp.limit_stack_level,
            unit=self.cfg.unit,
            limit=limit,
            start=_now(),
            duration_s=int(self.ocpp.lease_s),
            connectors=self.cfg.connectors,
        )

    async def install_profiles(self) -> None:
        """The persistent fail-safe profile, then the current limit (at boot and after every reconnect).
        A rejected fail-safe profile does not stop the session; it is reported (not controlled)."""
        learned = "learned" in self.ctrl.store.caps(self.id)
        self.limit.installing(learned)
        ok = await self._set_profile(self.failsafe_payload, "failsafe", wait=True)
        self.limit.failsafe_answered(bool(ok))
        if ok:
            self.log.info(
                "failsafe_installed", limit=self.cfg.failsafe_limit, purpose=policy.purpose(self.version, self.mode)
            )
        else:
            self.log.warning("failsafe_not_installed", limit=self.cfg.failsafe_limit)
            self.ctrl.event("failsafe_not_installed", charger=self.id)
        self.profiles_ready.set()
        self.limit.sent = None
        await self.push_limit(force=True)
        if not learned:  # the first attempt got no answer: once more (after the profiles), control needs them
            await self.learn_capabilities()
            self.limit.learned("learned" in self.ctrl.store.caps(self.id))

    def effective_limit(self) -> float | None:
        target = self.limit.target
        if target is None:
            return None
        cms = self.cms_limit()
        return policy.round_limit(target if cms is None else min(target, cms))

    def needs_send(self, now: float) -> bool:
        return self.due(now) != DUE_NOT

    def due(self, now: float) -> int:
        """Whether the limit profile must go out: DUE_DECREASE (at once, first), DUE_OTHER, DUE_NOT."""
        eff = self.effective_limit()
        st = self.limit
        if eff is None or not self.profiles_ready.is_set():
            return DUE_NOT
        if st.sent is None:
            return DUE_OTHER if now >= st.retry_at else DUE_NOT
        if eff < st.sent - 1e-9:
            return DUE_DECREASE
        sig = self.ocpp.significance_a if self.cfg.unit == "A" else self.ocpp.significance_w
        if eff - st.sent >= max(sig, 0.1) - 1e-9:
            return DUE_OTHER
        return DUE_OTHER if now >= st.sent_at + self.ocpp.lease_s - self.ocpp.renew_before_s else DUE_NOT

    async def push_limit(self, *, force: bool = False) -> None:
        written = self.submit_limit(self.ctrl.clock(), force=force)
        if written is not None:
            await asyncio.wait({written}, timeout=self.ocpp.call_timeout_s)

    def submit_limit(self, now: float, *, force: bool = False) -> asyncio.Future[None] | None:
        """Queue the limit profile if it is due. Returns the frame's `written` future when it goes out
        now, None when nothing is due or it waits behind a CALL in flight (it follows that answer)."""
        if not force and not self.needs_send(now):
            return None
        eff = self.effective_limit()
        if eff is None or not self.profiles_ready.is_set():
            return None
        self.limit.sent = eff
        self.limit.sent_at = now
        self.limit.ok = False
        out = self._own_to_charger("SetChargingProfile", self.limit_payload(self.mode, eff), key="limit")
        self._track_limit(out, eff, now, self._limit_answered)
        return out.written if self.to_charger.in_flight is out else None

    async def failsafe_now(self) -> bool:
        """Set the limit profile to the fail-safe limit and wait for the answer."""
        self.limit.target = self.cfg.failsafe_limit
        self.limit.sent = self.cfg.failsafe_limit
        self.limit.sent_at = self.ctrl.clock()
        limit = self.cfg.failsafe_limit
        return bool(
            await self._set_profile(lambda mode: self.limit_payload(mode, limit), "limit", wait=True, limit=limit)
        )

    async def call(self, action: str, payload: dict[str, Any]) -> dict[str, Any] | None:
        """One CALL of the gateway's own to the charger (commissioning read-backs): its result, None if it failed."""
        try:
            ans = await self._own_to_charger(action, payload).result
        except CallFailed:
            return None
        return ans.payload if ans.kind == CALLRESULT else None

    async def test_lease(self, lease_s: int) -> bool:
        """Commissioning: the limit in force again, as a profile lasting only lease_s (then the fail-safe
        profile governs); the next allocation or renewal replaces it (see :meth:`resume_limit`)."""
        limit = self.limit.sent
        if limit is None:
            return False
        payload = self.limit_payload(self.mode, limit)
        prof = payload["csChargingProfiles"] if self.version == "1.6" else payload["chargingProfile"]
        sched = prof["chargingSchedule"]
        (sched if isinstance(sched, dict) else sched[0])["duration"] = int(lease_s)
        self.limit.sent_at = self.ctrl.clock()  # a renewal now would end the test: it is due a lease from now
        ans = await self.call("SetChargingProfile", payload)
        return ans is not None and ans.get("status") == "Accepted"

    async def resume_limit(self) -> None:
        """Send the limit profile again now (with its full lease)."""
        self.limit.sent = None
        await self.push_limit(force=True)

    async def stop_transaction(self) -> bool:
        s = self.tracker.session
        if s is None or s.transaction_id is None:
            return False
        payload: dict[str, Any]
        if self.version == "1.6":
            try:
                tx = int(s.transaction_id)
            except ValueError:
                return False
            action, payload = "RemoteStopTransaction", {"transactionId": tx}
        else:
            action, payload = "RequestStopTransaction", {"transactionId": s.transaction_id}
        try:
            ans = await self._own_to_charger(action, payload).result
        except CallFailed:
            return False
        return ans.kind == CALLRESULT and ans.payload.get("status") == "Accepted"


class ProfileReport:
    def __init__(self, message_id: str, request: dict[str, Any]) -> None:
        self.message_id = message_id  # the CMS's GetChargingProfiles
        self.request = request
        self.reports: list[dict[str, Any]] = []
        self.answered = False  # the charger answered Accepted/NoProfiles
        self.complete = False  # its last report (tbc false) arrived


def refusal(exc: BaseException) -> str | None:
    """Why the CMS refused a connection it answered (HTTP status, subprotocol), or None for a network failure."""
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, OcppError) and "subprotocol" in str(exc):
        return "subprotocol"
    if isinstance(exc, InvalidHandshake) and "subprotocol" in str(exc).lower():
        return "subprotocol"
    return None


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))
