"""Limits as charging profiles: the gateway's lease and fail-safe profiles, the CMS's merged in.

The gateway owns two profiles per charger, both station-wide (1.6 connector 0, 2.0.1 EVSE 0):
a persistent fail-safe profile at ``failsafe_stack_level`` and the leased limit profile at
``limit_stack_level`` whose schedule lapses after ``lease_s``. Station-wide profiles of the
same purpose from the CMS would collide with them: the gateway keeps those itself and sends
min(CMS limit, site allocation) in its own limit profile instead.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16 import datatypes as dt16
from ocpp.v16 import enums as enums16
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201 import datatypes as dt201
from ocpp.v201 import enums as enums201

from gateway import electrical
from gateway.ocpp_proxy.typed import action_of, payload_of

MODES = ("max", "txdefault")


def purpose(version: str, mode: str) -> str:
    if mode == "txdefault":
        return "TxDefaultProfile"
    return "ChargePointMaxProfile" if version == "1.6" else "ChargingStationMaxProfile"


def next_mode(mode: str) -> str | None:
    i = MODES.index(mode)
    return MODES[i + 1] if i + 1 < len(MODES) else None


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(s: Any) -> datetime | None:
    if not isinstance(s, str):
        return None
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def round_limit(limit: float) -> float:
    return math.floor(max(limit, 0.0) * 10.0 + 1e-6) / 10.0


def set_profile(
    version: str,
    mode: str,
    *,
    profile_id: int,
    stack_level: int,
    unit: str,
    limit: float,
    start: datetime,
    duration_s: int | None,
    connectors: int = 1,
) -> Any:
    """A SetChargingProfile call (``ocpp.v16.call`` or ``ocpp.v201.call``) for a station-wide single-period
    profile.

    A TxDefaultProfile on connector/EVSE 0 is the default of *each* connector (OCPP 1.6 §3.13.2, 2.0.1
    K01): the station's limit is shared out, each connector getting limit / connectors, so that the
    station as a whole never draws more than its limit."""
    per = limit / connectors if mode == "txdefault" and connectors > 1 else limit
    kind = "Absolute"
    if version == "1.6":
        return call16.SetChargingProfile(
            connector_id=0,
            cs_charging_profiles=dt16.ChargingProfile(
                charging_profile_id=profile_id,
                stack_level=stack_level,
                charging_profile_purpose=enums16.ChargingProfilePurposeType(purpose(version, mode)),
                charging_profile_kind=enums16.ChargingProfileKindType(kind),
                charging_schedule=dt16.ChargingSchedule(
                    charging_rate_unit=enums16.ChargingRateUnitType(unit),
                    charging_schedule_period=[dt16.ChargingSchedulePeriod(start_period=0, limit=round_limit(per))],
                    duration=duration_s,
                    start_schedule=iso(start),
                ),
            ),
        )
    return call201.SetChargingProfile(
        evse_id=0,
        charging_profile=dt201.ChargingProfileType(
            id=profile_id,
            stack_level=stack_level,
            charging_profile_purpose=enums201.ChargingProfilePurposeEnumType(purpose(version, mode)),
            charging_profile_kind=enums201.ChargingProfileKindEnumType(kind),
            charging_schedule=[
                dt201.ChargingScheduleType(
                    id=profile_id,
                    charging_rate_unit=enums201.ChargingRateUnitEnumType(unit),
                    charging_schedule_period=[
                        dt201.ChargingSchedulePeriodType(start_period=0, limit=round_limit(per))
                    ],
                    start_schedule=iso(start),
                    duration=duration_s,
                )
            ],
        ),
    )


_START_MARK = datetime(1999, 1, 1, tzinfo=UTC)  # stands for the start in a cached profile's JSON
_TEMPLATES: dict[tuple[Any, ...], tuple[str, str, str]] = {}
_ISO_NOW: tuple[int, str] = (-1, "")


def iso_now() -> str:
    """:func:`iso` of now (the same text within a millisecond, built once)."""
    global _ISO_NOW
    ms = int(time.time() * 1000)
    if ms != _ISO_NOW[0]:
        _ISO_NOW = (ms, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}Z")
    return _ISO_NOW[1]


def set_profile_json(
    version: str,
    mode: str,
    *,
    profile_id: int,
    stack_level: int,
    unit: str,
    limit: float,
    start_iso: str,
    duration_s: int | None,
    connectors: int = 1,
) -> tuple[str, str]:
    """(action, payload JSON) of :func:`set_profile` starting at ``start_iso``. The library's typed call is
    built and serialised once per profile shape; a limit pass of 1000 chargers, most at a few limits, then
    costs a string replace per frame instead of a call, a serialisation and a ``json.dumps``."""
    key = (version, mode, profile_id, stack_level, unit, limit, duration_s, connectors)
    t = _TEMPLATES.get(key)
    if t is None:
        call = set_profile(version, mode, profile_id=profile_id, stack_level=stack_level, unit=unit, limit=limit,
                           start=_START_MARK, duration_s=duration_s, connectors=connectors)
        text = json.dumps(payload_of(call), separators=(",", ":"))
        mark = json.dumps(iso(_START_MARK))
        if text.count(mark) != 1:
            raise AssertionError(f"the start mark is not once in {text}")
        if len(_TEMPLATES) >= 4096:
            _TEMPLATES.clear()
        t = _TEMPLATES[key] = (action_of(call), text, mark)
    action, text, mark = t
    return action, text.replace(mark, json.dumps(start_iso))


def profile_of(version: str, set_payload: dict[str, Any]) -> tuple[int | None, dict[str, Any]]:
    """(connector/EVSE id, profile) from a SetChargingProfile request."""
    if version == "1.6":
        prof = set_payload.get("csChargingProfiles")
        conn = set_payload.get("connectorId")
    else:
        prof = set_payload.get("chargingProfile")
        conn = set_payload.get("evseId")
    return (conn if isinstance(conn, int) else None), (prof if isinstance(prof, dict) else {})


def profile_id(version: str, prof: dict[str, Any]) -> int | None:
    v = prof.get("chargingProfileId" if version == "1.6" else "id")
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def schedule_of(version: str, prof: dict[str, Any]) -> dict[str, Any]:
    s = prof.get("chargingSchedule")
    if version != "1.6" and isinstance(s, list):
        s = s[0] if s else {}
    return s if isinstance(s, dict) else {}


def profile_limit_at(
    version: str, prof: dict[str, Any], received_at: datetime, now: datetime
) -> tuple[float, str] | None:
    """The limit (value, unit) a profile sets at ``now``, or None when it sets none then."""
    vf, vt = parse_iso(prof.get("validFrom")), parse_iso(prof.get("validTo"))
    if (vf is not None and now < vf) or (vt is not None and now >= vt):
        return None
    sched = schedule_of(version, prof)
    periods = sched.get("chargingSchedulePeriod")
    if not isinstance(periods, list) or not periods:
        return None
    kind = prof.get("chargingProfileKind")
    start = parse_iso(sched.get("startSchedule")) or received_at
    if kind == "Relative":
        start = received_at
    elif kind == "Recurring":
        span = timedelta(days=7 if prof.get("recurrencyKind") == "Weekly" else 1)
        if now >= start:
            start = start + span * ((now - start) // span)
    elapsed = (now - start).total_seconds()
    if elapsed < 0:
        return None
    duration = sched.get("duration")
    if isinstance(duration, int | float) and not isinstance(duration, bool) and elapsed >= duration:
        return None
    limit: float | None = None
    for p in sorted((p for p in periods if isinstance(p, dict)), key=lambda p: float(p.get("startPeriod", 0))):
        if float(p.get("startPeriod", 0)) <= elapsed:
            v = p.get("limit")
            if isinstance(v, int | float) and not isinstance(v, bool):
                limit = float(v)
    if limit is None:
        return None
    return limit, str(sched.get("chargingRateUnit", "A"))


def convert(
    value: float, unit: str, to_unit: str, *, service: electrical.Service, line_phases: Sequence[int]
) -> float:
    """Convert a charging rate between A per phase and W for a charger on ``line_phases`` (nominal voltage,
    unity power factor: `gateway.electrical.ac_power_w` and its inverse)."""
    if unit.upper() == to_unit.upper():
        return value
    if to_unit.upper() == "A":
        return electrical.ac_line_current_a(service, line_phases, value)
    return electrical.ac_power_w(service, line_phases, value)


def composite_16(connector_id: int, duration: int, unit: str, limit: float | None, now: datetime) -> Any:
    """A GetCompositeSchedule answer (``ocpp.v16.call_result``) that shows the CMS its own limit."""
    if limit is None:
        return result16.GetCompositeSchedule(status=enums16.GetCompositeScheduleStatus.rejected)
    return result16.GetCompositeSchedule(
        status=enums16.GetCompositeScheduleStatus.accepted,
        connector_id=connector_id,
        schedule_start=iso(now),
        charging_schedule=dt16.ChargingSchedule(
            charging_rate_unit=enums16.ChargingRateUnitType(unit),
            charging_schedule_period=[dt16.ChargingSchedulePeriod(start_period=0, limit=round_limit(limit))],
            duration=duration,
            start_schedule=iso(now),
        ),
    )


def composite_201(evse_id: int, duration: int, unit: str, limit: float | None, now: datetime) -> Any:
    """The same answer in 2.0.1 (``ocpp.v201.call_result``)."""
    if limit is None:
        return result201.GetCompositeSchedule(status=enums201.GenericStatusEnumType.rejected)
    return result201.GetCompositeSchedule(
        status=enums201.GenericStatusEnumType.accepted,
        schedule=dt201.CompositeScheduleType(
            evse_id=evse_id,
            duration=duration,
            schedule_start=iso(now),
            charging_rate_unit=enums201.ChargingRateUnitEnumType(unit),
            charging_schedule_period=[dt201.ChargingSchedulePeriodType(start_period=0, limit=round_limit(limit))],
        ),
    )
