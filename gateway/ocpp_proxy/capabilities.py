"""What a charger can do with profiles: learnt once (GetConfiguration / GetVariables) and kept in the store,
with the profile purpose it takes (``max``, or ``txdefault`` after a rejection)."""

from __future__ import annotations

from typing import Any

from ocpp.v16 import call as call16
from ocpp.v201 import call as call201
from ocpp.v201 import datatypes as dt201
from structlog.typing import FilteringBoundLogger

from gateway.config import ChargerConfig
from gateway.ocpp_proxy import policy
from gateway.ocpp_proxy.frames import CALLRESULT, Frame
from gateway.ocpp_proxy.ports import SessionEvents
from gateway.ocpp_proxy.relay import CallFailed, OutCall
from gateway.ocpp_proxy.store import Store
from gateway.ocpp_proxy.typed import OwnCall

KEYS_16 = ("ChargeProfileMaxStackLevel", "ChargingScheduleAllowedChargingRateUnit", "SupportedFeatureProfiles")
VARIABLES_201 = ("Enabled", "Available", "ProfileStackLevel", "RateUnit")


class Capabilities:
    """``own_call`` sends one of the gateway's own CALLs to the charger."""

    def __init__(
        self,
        cfg: ChargerConfig,
        store: Store,
        events: SessionEvents,
        log: FilteringBoundLogger,
        own_call: OwnCall,
    ) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.version = cfg.ocpp_version
        self.store = store
        self.events = events
        self.log = log
        self._own_call = own_call
        self.mode = self._initial_mode()

    def _initial_mode(self) -> str:
        if self.cfg.ocpp.profile_purpose is not None:
            return self.cfg.ocpp.profile_purpose
        mode = self.store.caps(self.id).get("mode")
        return mode if mode in policy.MODES else "max"

    @property
    def learned(self) -> bool:
        return "learned" in self.store.caps(self.id)

    def _ask(self) -> OutCall:
        if self.version == "1.6":
            return self._own_call(call16.GetConfiguration(key=list(KEYS_16)))
        data = [
            dt201.GetVariableDataType(
                component=dt201.ComponentType(name="SmartChargingCtrlr"), variable=dt201.VariableType(name=n)
            )
            for n in VARIABLES_201
        ]
        return self._own_call(call201.GetVariables(get_variable_data=data))

    @staticmethod
    def _read(version: str, ans: Frame, caps: dict[str, Any]) -> None:
        if ans.kind != CALLRESULT:
            return
        if version == "1.6":
            for kv in ans.payload.get("configurationKey") or []:
                if isinstance(kv, dict) and isinstance(kv.get("key"), str):
                    caps[kv["key"]] = kv.get("value")
            return
        for r in ans.payload.get("getVariableResult") or []:
            if isinstance(r, dict) and r.get("attributeStatus") == "Accepted":
                caps["SmartChargingCtrlr." + str((r.get("variable") or {}).get("name"))] = r.get("attributeValue")

    async def learn(self) -> None:
        store = self.store
        caps = store.caps(self.id)
        if "learned" in caps:
            return
        try:
            ans = await self._ask().result
        except CallFailed:
            return
        self._read(self.version, ans, caps)
        caps["learned"] = True
        profiles = str(caps.get("SupportedFeatureProfiles") or "")
        if (profiles and "SmartCharging" not in profiles) or str(caps.get("SmartChargingCtrlr.Enabled")) == "false":
            self.log.warning("charger_without_smart_charging")
            self.events.event("profile_rejected", charger=self.id, reason="no SmartCharging")
        caps.setdefault("mode", self.mode)
        store.set_caps(self.id, caps)
        self.log.info("capabilities_learned", caps=caps)

    def fall_back(self, ans: Frame) -> bool:
        """A profile rejected: the next purpose, if there is one to try (and the config does not fix it)."""
        reason = ans.payload.get("status") if ans.kind == CALLRESULT else ans.payload.get("code")
        self.events.event(
            "profile_rejected", charger=self.id, purpose=policy.purpose(self.version, self.mode), reason=reason
        )
        self.log.warning("profile_rejected", purpose=policy.purpose(self.version, self.mode), reason=reason)
        nxt = policy.next_mode(self.mode)
        if nxt is None or self.cfg.ocpp.profile_purpose is not None:
            return False
        self.mode = nxt
        caps = self.store.caps(self.id)
        caps["mode"] = nxt
        self.store.set_caps(self.id, caps)
        self.log.info("profile_purpose_fallback", purpose=policy.purpose(self.version, nxt))
        return True
