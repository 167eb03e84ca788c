"""The offline responder: what the charger hears while the CMS is unreachable (or replaying).

Its answers are the ``ocpp`` library's call_result dataclasses (an empty answer is ``{}``).

Transaction-related CALLs are written to the durable queue before they are acknowledged; tokens are
judged from the allow list and the cache of the CMS's answers; notifications are acknowledged.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from ocpp.v16 import call_result as result16
from ocpp.v16 import datatypes as dt16
from ocpp.v16 import enums as enums16
from ocpp.v201 import call_result as result201
from ocpp.v201 import datatypes as dt201
from ocpp.v201 import enums as enums201
from structlog.typing import FilteringBoundLogger

from gateway.errors import StoreError
from gateway.ocpp_proxy import policy
from gateway.ocpp_proxy.config import OcppConfig
from gateway.ocpp_proxy.frames import Frame, error_text, result_text
from gateway.ocpp_proxy.ports import SessionEvents
from gateway.ocpp_proxy.state import ChargerTracker
from gateway.ocpp_proxy.store import QueueFull, Store
from gateway.ocpp_proxy.typed import payload_of

T = TypeVar("T")

# charger -> CMS messages that are queued durably while the CMS is unreachable
QUEUED = frozenset({"StartTransaction", "StopTransaction", "TransactionEvent", "MeterValues", "StatusNotification"})
# kept while the queue is full (within its reserve): a transaction's begin and end; the periodic rest is dropped
ESSENTIAL = frozenset({"StartTransaction", "StopTransaction"})
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


@dataclass
class Backlog:
    """What the charger said offline that the replay must send first: its boot, and queue rows being written."""

    boot: dict[str, Any] | None = None
    writing: int = 0  # queue writes not yet committed (the replay waits for them before going live)


class OfflineResponder:
    """``keep``: whether there is a CMS to replay to (without one nothing is queued)."""

    def __init__(
        self,
        charger_id: str,
        version: str,
        ocpp: OcppConfig,
        store: Store,
        tracker: ChargerTracker,
        events: SessionEvents,
        log: FilteringBoundLogger,
        *,
        send: Callable[[str], Awaitable[None]],
        keep: bool,
        backlog: Backlog,
    ) -> None:
        self.id = charger_id
        self.version = version
        self.ocpp = ocpp
        self.store = store
        self.tracker = tracker
        self.events = events
        self.log = log
        self._send = send
        self._keep_rows = keep
        self.backlog = backlog
        self._queue_full = False  # an episode of the queue refusing rows: reported once

    def token_status(self, token: Any) -> str:
        if not isinstance(token, str):
            return "Invalid"
        if token in self.ocpp.offline_allow_list:
            return "Accepted"
        status = self.store.token_status(token, max_age_s=self.ocpp.token_cache_max_age_s)
        if status is None and self.ocpp.offline_accept_unknown:
            return "Accepted"
        return "Accepted" if status == "Accepted" else "Invalid"

    def _token_info(self, token: Any) -> Any:
        """What the charger is told of a token (its version's IdTagInfo / IdTokenInfoType)."""
        status = self.token_status(token)
        if self.version == "1.6":
            return dt16.IdTagInfo(status=enums16.AuthorizationStatus(status))
        return dt201.IdTokenInfoType(status=enums201.AuthorizationStatusEnumType(status))

    async def answer(self, frame: Frame) -> None:
        action, p, mid = frame.action or "", frame.payload, frame.message_id
        now = policy.iso(datetime.now(UTC))
        keep = self._keep_rows  # nothing to replay to without a CMS
        v16 = self.version == "1.6"
        result = result16 if v16 else result201
        answer: Any  # an ocpp call_result dataclass, {} (an empty answer) or None (none to give)
        try:
            if action == "BootNotification":
                self.backlog.boot = p if keep else None
                answer = result.BootNotification(current_time=now, interval=self.ocpp.heartbeat_interval_s,
                                                 status="Accepted")
            elif action == "Heartbeat":
                answer = result.Heartbeat(current_time=now)
            elif action == "Authorize":
                if v16:
                    answer = result16.Authorize(id_tag_info=self._token_info(p.get("idTag")))
                else:
                    token = (p.get("idToken") or {}).get("idToken")
                    answer = result201.Authorize(id_token_info=self._token_info(token))
            elif action == "StartTransaction" and v16:
                info = self._token_info(p.get("idTag"))
                if keep:
                    local_id = await self._writing(self.store.enqueue_start_16(self.id, mid, frame.raw))
                else:
                    local_id = -int(time.time() * 1000) % 2_000_000_000 or 1
                self.tracker.on_start_16(p, local_id)
                self.events.changed(self.id)
                answer = result16.StartTransaction(transaction_id=local_id, id_tag_info=info)
            elif action in QUEUED:
                if keep:
                    await self._enqueue(frame)
                answer = {}
                if action == "StopTransaction" and p.get("idTag") is not None:
                    answer = result16.StopTransaction(id_tag_info=self._token_info(p.get("idTag")))
                if action == "TransactionEvent" and isinstance(p.get("idToken"), dict):
                    answer = result201.TransactionEvent(id_token_info=self._token_info(p["idToken"].get("idToken")))
            elif action == "DataTransfer":
                answer = result.DataTransfer(status="Rejected")
            elif action in NOTIFICATIONS:
                answer = {} if action != "SignCertificate" else result.SignCertificate(status="Rejected")
            else:
                answer = None
        except StoreError as exc:
            # a transaction's begin or end that is not on disk is not acknowledged: the charger keeps it, retries
            self._report_refused(action, exc, kept_by_charger=True)
            await self._send(error_text(mid, "InternalError", "durable queue unavailable"))
            return
        if answer is None:
            await self._send(error_text(mid, "InternalError", "CMS unavailable"))
        else:
            if action in QUEUED:
                self.log.info("queued_offline", action=action)
            await self._send(result_text(mid, answer if isinstance(answer, dict) else payload_of(answer)))

    async def _writing(self, write: Awaitable[T]) -> T:
        self.backlog.writing += 1
        try:
            return await write
        finally:
            self.backlog.writing -= 1

    @staticmethod
    def _essential(frame: Frame) -> bool:
        if frame.action == "TransactionEvent":
            return frame.payload.get("eventType") in ("Started", "Ended")
        return frame.action in ESSENTIAL

    async def _enqueue(self, frame: Frame) -> None:
        """Keep a CALL for replay. A periodic message the queue cannot take is dropped (and counted);
        a transaction's begin or end raises, so that it is not acknowledged."""
        store = self.store
        essential = self._essential(frame)
        try:
            await self._writing(
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
            self.log.error("queue_full", reason=reason, error=str(exc), dropped_total=self.store.dropped)
            self.events.event("queue_full", charger=self.id, reason=reason, error=str(exc))
