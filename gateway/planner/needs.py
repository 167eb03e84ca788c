"""Session needs (energy wanted, departure) from every source a site has, parsed and merged (pure).

Sources, highest precedence first (a later source fills only what an earlier one left unknown):

1. ``mqtt``: ``<root>cmd/session_needs`` (validated like the remote cap's command: JSON object, known keys only,
   ``ts`` fresh within 120 s, required under MQTT 3.1.1; a reply on ``.../reply``):
   ``{"id": "r1", "charger": "VAN001", "departure": "2026-01-14T05:00:00Z", "energy_kwh": 55, "ts": ...}``
   or ``"target_soc_pct": 100, "capacity_kwh": 75`` (with ``"soc_pct"`` where known) instead of ``energy_kwh``;
   ``"clear": true`` drops the charger's commanded needs.
2. ``cms``: a DataTransfer from the CMS, vendorId ``ems-gateway``, messageId ``SessionNeeds``, data the same JSON
   object as the MQTT command (without ``ts``; the CALL is fresh by construction).
3. ``iso15118``: OCPP 2.0.1 NotifyEVChargingNeeds (the EV's departureTime and energyAmount, or for DC its
   evEnergyCapacity and stateOfCharge with fullSoC/bulkSoC), observed on the relay, never altered.
4. ``vehicle``: the session's idToken mapped to a fleet vehicle profile in the config ([[planner.vehicles]]).
5. ``charger`` / ``class``: the defaults per charger ([planner.chargers.<id>]) or per priority class
   ([planner.defaults.<class>]), e.g. fleet: depart 05:00, 60 kWh.

Unknown needs (no source gives both energy and departure) keep today's behaviour: no plan for that session.
Wall-clock times are UTC epoch seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from gateway.budget.config import zone
from gateway.budget.remote import CommandRejected, check_fresh, json_object, parse_time

VENDOR_ID = "ems-gateway"
MESSAGE_ID = "SessionNeeds"
MAX_ENERGY_KWH = 2000.0
_KEYS = {"id", "charger", "departure", "energy_kwh", "target_soc_pct", "soc_pct", "capacity_kwh", "clear", "ts"}


@dataclass(frozen=True)
class Needs:
    """What is known of a session's needs; either part may be unknown (None)."""

    energy_wh: float | None = None  # energy wanted in this session (from its start)
    departure_wall: float | None = None
    source: str = ""  # "mqtt" | "cms" | "iso15118" | "vehicle:<id>" | "charger" | "class:<name>"
    # a target state of charge, when given that way (the energy then follows from the EV's SoC where known)
    target_soc: float | None = None
    capacity_wh: float | None = None
    soc: float | None = None
    # what the EV says it can take (ISO 15118 AC: EVMaxCurrent per phase, the phases of requestedEnergyTransfer)
    ev_max_a: float | None = None
    ac_phases: int | None = None

    @property
    def complete(self) -> bool:
        return self.energy_wh is not None and self.departure_wall is not None

    def fill(self, other: Needs | None) -> Needs:
        """This, with what it leaves unknown taken from ``other`` (a lower-precedence source)."""
        if other is None:
            return self
        src = self.source if self.complete or not other.source else f"{self.source}+{other.source}".strip("+")
        return replace(
            self,
            energy_wh=self.energy_wh if self.energy_wh is not None else other.energy_wh,
            departure_wall=self.departure_wall if self.departure_wall is not None else other.departure_wall,
            capacity_wh=self.capacity_wh if self.capacity_wh is not None else other.capacity_wh,
            soc=self.soc if self.soc is not None else other.soc,
            ev_max_a=self.ev_max_a if self.ev_max_a is not None else other.ev_max_a,
            ac_phases=self.ac_phases if self.ac_phases is not None else other.ac_phases,
            source=src,
        )


@dataclass(frozen=True)
class NeedsCommand:
    request_id: str | None
    charger: str
    needs: Needs | None  # None: clear


def _num(obj: Mapping[str, Any], key: str, rid: str | None, lo: float, hi: float) -> float:
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        raise CommandRejected(f"{key} must be a number", rid)
    if not lo <= float(v) <= hi:
        raise CommandRejected(f"{key} must be within {lo:g}..{hi:g}", rid)
    return float(v)


def parse_needs_command(
    payload: bytes | str, *, chargers: Mapping[str, object], now_wall: float, require_ts: bool = False,
    source: str = "mqtt", charger: str | None = None,
) -> NeedsCommand:
    """Validate a ``cmd/session_needs`` payload (or a SessionNeeds DataTransfer's data, ``source="cms"``, where the
    charger is the one that carried it); raise CommandRejected with the reason."""
    obj = json_object(payload)
    rid_raw = obj.get("id")
    rid: str | None = None
    if rid_raw is not None:
        if not isinstance(rid_raw, str) or not 0 < len(rid_raw) <= 64:
            raise CommandRejected("id must be a string of 1..64 characters")
        rid = rid_raw
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise CommandRejected(f"unknown key(s): {', '.join(unknown)}", rid)
    if source == "mqtt":
        check_fresh(obj, rid, now_wall, require_ts)
    cid = obj.get("charger", charger)
    if not isinstance(cid, str) or cid not in chargers:
        raise CommandRejected(f"charger must name a configured charger (got {cid!r})", rid)
    if charger is not None and cid != charger:
        raise CommandRejected(f"charger {cid!r} is not the charger that sent it ({charger!r})", rid)
    if obj.get("clear") is not None:
        if obj["clear"] is not True or set(obj) - {"id", "charger", "clear", "ts"}:
            raise CommandRejected("clear must be true and takes no other keys but id and charger", rid)
        return NeedsCommand(rid, cid, None)
    departure = parse_time(obj["departure"], "departure", rid) if "departure" in obj else None
    if departure is not None and departure < now_wall - 60.0:
        raise CommandRejected("departure is in the past", rid)
    energy: float | None = None
    target = capacity = soc = None
    if "energy_kwh" in obj:
        if "target_soc_pct" in obj:
            raise CommandRejected("give energy_kwh or target_soc_pct with capacity_kwh, not both", rid)
        energy = _num(obj, "energy_kwh", rid, 0.0, MAX_ENERGY_KWH) * 1000.0
    elif "target_soc_pct" in obj:
        if "capacity_kwh" not in obj:
            raise CommandRejected("target_soc_pct needs capacity_kwh", rid)
        target = _num(obj, "target_soc_pct", rid, 0.0, 100.0) / 100.0
        capacity = _num(obj, "capacity_kwh", rid, 1.0, MAX_ENERGY_KWH) * 1000.0
        if "soc_pct" in obj:
            soc = _num(obj, "soc_pct", rid, 0.0, 100.0) / 100.0
            energy = max(0.0, target - soc) * capacity
    elif "capacity_kwh" in obj or "soc_pct" in obj:
        raise CommandRejected("capacity_kwh and soc_pct go with target_soc_pct", rid)
    if departure is None and energy is None and target is None:
        raise CommandRejected("give a departure, an energy (energy_kwh or target_soc_pct), or both", rid)
    return NeedsCommand(rid, cid, Needs(energy, departure, source, target, capacity, soc))


def from_data_transfer(
    vendor_id: object, message_id: object, data: object, *, charger: str, chargers: Mapping[str, object],
    now_wall: float,
) -> NeedsCommand | None:
    """A CMS DataTransfer to a charger: ours (vendorId ``ems-gateway``, messageId ``SessionNeeds``) parsed, any
    other None (relayed as ever). Raises CommandRejected for ours when malformed."""
    if vendor_id != VENDOR_ID or message_id != MESSAGE_ID:
        return None
    if not isinstance(data, str):
        raise CommandRejected("SessionNeeds data must be a JSON object in a string")
    return parse_needs_command(data, chargers=chargers, now_wall=now_wall, source="cms", charger=charger)


def from_notify_ev_charging_needs(payload: Mapping[str, Any]) -> Needs | None:
    """OCPP 2.0.1 NotifyEVChargingNeeds.req: the ISO 15118 departureTime and energy; None when it has neither."""
    cn = payload.get("chargingNeeds")
    if not isinstance(cn, Mapping):
        return None
    departure = None
    dt = cn.get("departureTime")
    if isinstance(dt, str):
        try:
            d = datetime.fromisoformat(dt.replace("Z", "+00:00"))
            departure = d.timestamp() if d.tzinfo is not None else None
        except ValueError:
            departure = None
    energy = capacity = soc = target = ev_max = None
    ac, dc = cn.get("acChargingParameters"), cn.get("dcChargingParameters")
    if isinstance(ac, Mapping):
        energy = _finite(ac.get("energyAmount"))
        ev_max = _finite(ac.get("evMaxCurrent"))
        ev_max = ev_max if ev_max is not None and 0.0 < ev_max <= 1000.0 else None
    if isinstance(dc, Mapping):
        energy = _finite(dc.get("energyAmount")) if energy is None else energy
        capacity = _finite(dc.get("evEnergyCapacity"))
        soc_pct = _finite(dc.get("stateOfCharge"))
        full = _finite(dc.get("fullSoC"))
        soc = soc_pct / 100.0 if soc_pct is not None else None
        target = full / 100.0 if full is not None else None
        if energy is None and capacity is not None and soc is not None:
            energy = max(0.0, (target if target is not None else 1.0) - soc) * capacity
    if energy is not None and not 0.0 <= energy <= MAX_ENERGY_KWH * 1000.0:
        energy = None
    if departure is None and energy is None:
        return None
    phases = {"AC_single_phase": 1, "AC_two_phase": 2, "AC_three_phase": 3}.get(str(cn.get("requestedEnergyTransfer")))
    return Needs(energy, departure, "iso15118", target, capacity, soc, ev_max if isinstance(ac, Mapping) else None,
                 phases)


def _finite(v: object) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(float(v)):
        return None
    return float(v)


def next_local_time(hhmm_min: int, tz: str, after_wall: float, min_ahead_s: float = 0.0) -> float:
    """The next wall-clock instant at local time ``hhmm_min`` (minutes after midnight) at least ``min_ahead_s``
    after ``after_wall`` (a session that arrives at 04:50 with a 05:00 default leaves the next day)."""
    z = zone(tz)
    local = datetime.fromtimestamp(after_wall + min_ahead_s, z)
    cand = local.replace(hour=hhmm_min // 60, minute=hhmm_min % 60, second=0, microsecond=0)
    if cand.timestamp() <= after_wall + min_ahead_s:
        cand = (cand.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=z)
    return cand.timestamp()
