"""What the gateway learns from the frames it relays: charger state, tokens, 1.6 transaction ids, session needs."""

from __future__ import annotations

import time
from typing import Any

from structlog.typing import FilteringBoundLogger

from gateway.budget.remote import CommandRejected
from gateway.ocpp_proxy import policy
from gateway.ocpp_proxy.config import OcppConfig
from gateway.ocpp_proxy.ports import SessionEvents
from gateway.ocpp_proxy.state import ChargerTracker
from gateway.ocpp_proxy.store import Store
from gateway.planner.needs import from_data_transfer


class Observer:
    def __init__(
        self,
        charger_id: str,
        version: str,
        ocpp: OcppConfig,
        store: Store,
        tracker: ChargerTracker,
        events: SessionEvents,
        log: FilteringBoundLogger,
    ) -> None:
        self.id = charger_id
        self.version = version
        self.ocpp = ocpp
        self.store = store
        self.tracker = tracker
        self.events = events
        self.log = log

    def request(self, action: str, p: dict[str, Any]) -> None:
        """A charger's CALL (validated): into its tracker."""
        t = self.tracker
        if action == "BootNotification":
            self.events.booted(self.id, p)
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
        self.events.changed(self.id)

    def answer(self, action: str, req: dict[str, Any], ans: dict[str, Any]) -> None:
        """Token cache and 1.6 transaction ids from the CMS's answers."""
        token: Any = None
        info: Any = None
        if self.version == "1.6":
            token, info = req.get("idTag"), ans.get("idTagInfo")
        else:
            token, info = (req.get("idToken") or {}).get("idToken"), ans.get("idTokenInfo")
        if isinstance(token, str) and isinstance(info, dict) and isinstance(info.get("status"), str):
            expiry = policy.parse_iso(info.get("expiryDate" if self.version == "1.6" else "cacheExpiryDateTime"))
            self.store.remember_token(
                token,
                info["status"],
                expires=None if expiry is None else expiry.timestamp(),
                max_entries=self.ocpp.token_cache_max_entries,
            )
        if self.version == "1.6" and action == "StartTransaction" and isinstance(ans.get("transactionId"), int):
            s = self.tracker.session
            if s is not None and s.transaction_id is None:
                self.tracker.on_start_16(req, ans["transactionId"])
                self.events.changed(self.id)

    def ev_needs(self, p: dict[str, Any]) -> None:
        """A 2.0.1 NotifyEVChargingNeeds: the EV's departure and energy for the planner (relayed raw)."""
        self.tracker.on_ev_charging_needs(p)

    def needs(self, p: dict[str, Any]) -> None:
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
