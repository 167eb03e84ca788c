"""2.0.1 GetChargingProfiles from the CMS: the charger's reports collected, the CMS given its view of them
(see :mod:`gateway.ocpp_proxy.reports`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from ocpp.v201 import call as call201
from structlog.typing import FilteringBoundLogger

from gateway.ocpp_proxy.config import OcppConfig
from gateway.ocpp_proxy.frames import CALLRESULT, Frame, result_text
from gateway.ocpp_proxy.ports import Spawn
from gateway.ocpp_proxy.relay import CallChannel, OutCall
from gateway.ocpp_proxy.reports import cms_view
from gateway.ocpp_proxy.store import Store
from gateway.ocpp_proxy.typed import payload_of


class ProfileReport:
    def __init__(self, message_id: str, request: dict[str, Any]) -> None:
        self.message_id = message_id  # the CMS's GetChargingProfiles
        self.request = request
        self.reports: list[dict[str, Any]] = []
        self.answered = False  # the charger answered Accepted/NoProfiles
        self.complete = False  # its last report (tbc false) arrived


class ProfileReports:
    """``to_charger`` is the charger's CALL channel, ``send_charger`` writes to its socket; ``send_cms``
    writes to the CMS, ``call_cms`` queues one of the gateway's CALLs to it."""

    def __init__(
        self,
        charger_id: str,
        ocpp: OcppConfig,
        store: Store,
        log: FilteringBoundLogger,
        *,
        to_charger: CallChannel,
        send_charger: Callable[[str], Awaitable[None]],
        send_cms: Callable[[str], Coroutine[Any, Any, None]],
        call_cms: Callable[[str, dict[str, Any]], OutCall],
        spawn: Spawn,
    ) -> None:
        self.id = charger_id
        self.ocpp = ocpp
        self.store = store
        self.log = log
        self._to_charger = to_charger
        self._send_charger = send_charger
        self._send_cms = send_cms
        self._call_cms = call_cms
        self._spawn = spawn
        self._reports: dict[int, ProfileReport] = {}  # requests being collected, by requestId

    def wants(self, frame: Frame) -> bool:
        """A charger's ReportChargingProfiles for a request being collected."""
        return frame.payload.get("requestId") in self._reports

    def collect(self, frame: Frame) -> None:
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
                self._spawn(self._send_cms(ans.raw))
                return
            rec.answered = True
            if status == "NoProfiles" or rec.complete:
                self._spawn(self._finish(rid))
            else:
                self._spawn(self._deadline(rid))

        self._to_charger.submit(
            OutCall(frame.message_id, frame.raw, "GetChargingProfiles", False, frame.payload, on_answer=answered)
        )

    async def on_report(self, frame: Frame) -> None:
        rid = int(frame.payload["requestId"])
        rec = self._reports[rid]
        rec.reports.append(frame.payload)
        await self._send_charger(result_text(frame.message_id, {}))
        if not frame.payload.get("tbc", False):
            rec.complete = True
            if rec.answered:
                await self._finish(rid)

    async def _deadline(self, rid: int) -> None:
        """The charger accepted but its last report is late: the CMS gets what has come."""
        await asyncio.sleep(self.ocpp.call_timeout_s * 0.5)
        rec = self._reports.get(rid)
        if rec is not None:
            self.log.warning("profile_report_incomplete", request_id=rid, reports=len(rec.reports))
            await self._finish(rid)

    async def _finish(self, rid: int) -> None:
        rec = self._reports.pop(rid, None)
        if rec is None:
            return
        merged = [(int(r.get("evse") or 0), r["profile"]) for r in self.store.cms_profiles(self.id).values()]
        reserved = frozenset({self.ocpp.failsafe_profile_id, self.ocpp.limit_profile_id})
        out = cms_view(rec.reports, merged, reserved, rec.request, self.ocpp.gateway_profiles_report)
        await self._send_cms(result_text(rec.message_id, {"status": "Accepted" if out else "NoProfiles"}))
        for i, part in enumerate(out):
            call = call201.ReportChargingProfiles(
                request_id=rid,
                charging_limit_source=part["chargingLimitSource"],
                charging_profile=[],
                evse_id=part["evseId"],
                tbc=i < len(out) - 1,
            )
            # the profiles as the charger reported them (or the CMS sent them): not re-serialised
            self._call_cms("ReportChargingProfiles", {**payload_of(call), "chargingProfile": part["chargingProfile"]})
