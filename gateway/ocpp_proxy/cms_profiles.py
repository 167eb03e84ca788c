"""The CMS's charging profiles where they would collide with the gateway's: kept by the gateway and merged.

A station-wide profile of the gateway's purpose (or its profile ids) from the CMS is not installed: the
gateway keeps it in the store and sends min(CMS limit, site allocation) in its own limit profile. Its
ClearChargingProfile and GetCompositeSchedule are answered as the CMS would see them had it been installed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from structlog.typing import FilteringBoundLogger

from gateway import electrical
from gateway.config import ChargerConfig
from gateway.ocpp_proxy import policy
from gateway.ocpp_proxy.config import OcppConfig
from gateway.ocpp_proxy.ports import SessionEvents
from gateway.ocpp_proxy.state import ChargerTracker
from gateway.ocpp_proxy.store import Store
from gateway.ocpp_proxy.typed import payload_of

# the CMS's CALLs handled here (they are validated first)
PROFILE_CALLS = frozenset({"SetChargingProfile", "ClearChargingProfile", "GetCompositeSchedule"})


def _now() -> datetime:
    return datetime.now(UTC)


class CmsProfiles:
    """``mode`` is the profile purpose the charger takes now; ``limit_changed`` sends the limit profile
    again (merged); ``service`` is the site's electrical service (for A <-> W)."""

    def __init__(
        self,
        cfg: ChargerConfig,
        ocpp: OcppConfig,
        store: Store,
        tracker: ChargerTracker,
        events: SessionEvents,
        log: FilteringBoundLogger,
        *,
        mode: Callable[[], str],
        limit_changed: Callable[[], None],
        service: Callable[[], electrical.Service],
    ) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.version = cfg.ocpp_version
        self.ocpp = ocpp
        self.store = store
        self.tracker = tracker
        self.events = events
        self.log = log
        self._mode = mode
        self._limit_changed = limit_changed
        self._service = service
        self.installed: dict[int, dict[str, Any]] = {}  # CMS profiles relayed to the charger and accepted

    def _collides(self, conn: int | None, prof: dict[str, Any]) -> bool:
        pid = policy.profile_id(self.version, prof)
        if pid in (self.ocpp.failsafe_profile_id, self.ocpp.limit_profile_id):
            return True
        purpose = prof.get("chargingProfilePurpose")
        if purpose == policy.purpose(self.version, "max"):
            return True
        # a charger that only takes TxDefaultProfile carries the site limit in it: a CMS TxProfile would
        # override it for the transaction (OCPP stacking), so it is merged too, as min(CMS, site)
        return self._mode() == "txdefault" and purpose in ("TxDefaultProfile", "TxProfile")

    def handle(self, action: str, p: dict[str, Any]) -> dict[str, Any] | None:
        """Handle a CMS profile CALL locally where it would collide with the gateway's profiles: the answer,
        or None to relay it."""
        if action == "SetChargingProfile":
            return self._set(p)
        if action == "ClearChargingProfile":
            return self._clear(p)
        if action == "GetCompositeSchedule":
            return self._composite(p)
        return None

    def _set(self, p: dict[str, Any]) -> dict[str, Any] | None:
        conn, prof = policy.profile_of(self.version, p)
        if not self._collides(conn, prof):
            return None
        pid = policy.profile_id(self.version, prof)
        if pid is None:
            return {"status": "Rejected"}
        self.store.put_cms_profile(self.id, pid, {"profile": prof, "received_at": policy.iso(_now()), "evse": conn})
        self.log.info("cms_profile_merged", profile_id=pid, purpose=prof.get("chargingProfilePurpose"))
        self.events.event("cms_profile_merged", charger=self.id, profile_id=pid)
        self._limit_changed()
        return {"status": "Accepted"}

    def _clear(self, p: dict[str, Any]) -> dict[str, Any] | None:
        store = self.store
        pid = p.get("id" if self.version == "1.6" else "chargingProfileId")
        mine = store.cms_profiles(self.id)
        if isinstance(pid, int) and pid in mine:
            store.delete_cms_profile(self.id, pid)
            self._limit_changed()
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
            self._limit_changed()
            if purpose == policy.purpose(self.version, self._mode()):
                return {"status": "Accepted"}  # nothing of the CMS's own left on the charger to clear
        return None

    def _composite(self, p: dict[str, Any]) -> dict[str, Any] | None:
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
            return payload_of(policy.composite_16(int(p.get("connectorId", 0)), duration, unit, value, _now()))
        return payload_of(policy.composite_201(int(p.get("evseId", 0)), duration, unit, value, _now()))

    def relayed(self, action: str, p: dict[str, Any]) -> None:
        """A CMS profile CALL the charger accepted: what its composite schedule is made of (in memory)."""
        if action == "SetChargingProfile":
            conn, prof = policy.profile_of(self.version, p)
            pid = policy.profile_id(self.version, prof)
            if pid is not None:
                self.installed[pid] = {"profile": prof, "received_at": policy.iso(_now()), "evse": conn}
        elif action == "ClearChargingProfile":
            pid = p.get("id" if self.version == "1.6" else "chargingProfileId")
            crit = p if self.version == "1.6" else (p.get("chargingProfileCriteria") or {})
            for key, rec in list(self.installed.items()):
                prof = rec["profile"]
                if (pid is None or key == pid) and all(
                    crit.get(k) is None or prof.get(k) == crit.get(k) for k in ("chargingProfilePurpose", "stackLevel")
                ):
                    del self.installed[key]

    def _convert(self, value: float, unit: str, to_unit: str) -> float:
        return policy.convert(value, unit, to_unit, service=self._service(), line_phases=self.cfg.line_phases)

    def cms_limit(self) -> float | None:
        """The lowest limit the CMS's merged profiles set now, in the charger's unit."""
        if not self.store.has_cms_profiles(self.id):  # the common case, asked for every charger on every tick
            return None
        return self._lowest_limit(list(self.store.cms_profiles(self.id).values()))

    def cms_view_limit(self) -> float | None:
        """The lowest limit of all the CMS's profiles now (merged, and those the charger accepted): what
        its GetCompositeSchedule shows when the gateway's profiles are hidden."""
        return self._lowest_limit([*self.store.cms_profiles(self.id).values(), *self.installed.values()])

    def _lowest_limit(self, records: list[dict[str, Any]]) -> float | None:
        if not records:
            return None
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
