"""A simulated OCPP 1.6J / 2.0.1 charger with EVs, for the demo site, end-to-end tests and the HIL rig.

``SimCharger`` connects to ``{url}/{charger_id}`` (subprotocol ``ocpp1.6`` or ``ocpp2.0.1``), boots,
heartbeats, reports status, runs transactions for the EVs plugged into it (``plug_in``), sends meter
values every ``meter_interval_s`` while a session runs (each connector on its own schedule from its
transaction's start, stamped with the time of the sample; ``meter_interval_s = 0``: a charger that reports
no current or power at all, only its energy register in the transaction messages), and obeys charging
profiles through a
:class:`ProfileEngine` that follows OCPP 1.6 §3.13 / 2.0.1 K01-K10:

* profiles per purpose (``ChargePointMaxProfile``/``ChargingStationMaxProfile``, ``TxDefaultProfile``,
  ``TxProfile``) and stack level; in each purpose the valid profile with the highest stack level wins
  (a connector-specific one beats a station-wide one of the same level);
* a profile is valid at ``t`` if ``validFrom <= t < validTo`` *and* its schedule has a period at ``t``
  (``startSchedule <= t < startSchedule + duration``): a schedule ``duration`` is a lease, and when it
  lapses the next lower stack level applies;
* the limit is ``min(Max, TxProfile if one is valid else TxDefaultProfile)`` (TxProfile overrules
  TxDefaultProfile; it does not merely lower it), converted to the charger's unit (A per phase for
  AC, W for DC; A <-> W with ``voltage_v`` x phases);
* TxProfiles need a running transaction on their connector and go away when it ends.

Relative schedules start at the transaction start (or, without a transaction, when installed).

Time is the injected wall clock (epoch seconds). All chargers of one event loop share one ticker task
per tick interval that steps their EVs and schedules messages: a charger costs two idle tasks (reader,
sender) while connected and no CPU between ticks.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import random
import time
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, cast

import structlog
from ocpp.charge_point import remove_nones, serialize_as_dict, snake_to_camel_case
from ocpp.routing import on as _untyped_on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.typing import Subprotocol

from gateway.model import ChargerState
from sitesim import SimError
from sitesim.ev import EvModel, EvSpec, Kind, Outlet

log = structlog.get_logger(__name__)

Version = Literal["1.6", "2.0.1"]

PURPOSE_MAX = "max"
PURPOSE_TX_DEFAULT = "tx_default"
PURPOSE_TX = "tx"
_PURPOSES = {
    "ChargePointMaxProfile": PURPOSE_MAX,
    "ChargingStationMaxProfile": PURPOSE_MAX,
    "TxDefaultProfile": PURPOSE_TX_DEFAULT,
    "TxProfile": PURPOSE_TX,
    PURPOSE_MAX: PURPOSE_MAX,
    PURPOSE_TX_DEFAULT: PURPOSE_TX_DEFAULT,
    PURPOSE_TX: PURPOSE_TX,
}
_RECURRENCE_S = {"Daily": 86400.0, "Weekly": 7 * 86400.0}


# ---- time -----------------------------------------------------------------------------------------
def iso(t: float) -> str:
    """Epoch seconds as an OCPP timestamp (UTC, millisecond precision, ``Z``)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(s: str) -> float:
    """OCPP timestamp to epoch seconds. Naive timestamps are taken as UTC."""
    try:
        dt = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
    except (ValueError, AttributeError) as e:
        raise SimError(f"bad timestamp {s!r}") from e
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


# ---- charging profiles ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Period:
    start_s: float
    limit: float
    phases: int | None = None


@dataclass(frozen=True)
class Profile:
    """A charging profile, version-neutral. Times are epoch seconds."""

    id: int
    connector: int  # 0: the whole station
    purpose: str  # PURPOSE_MAX | PURPOSE_TX_DEFAULT | PURPOSE_TX
    stack_level: int
    kind: str  # Absolute | Recurring | Relative
    unit: str  # A | W
    periods: tuple[Period, ...]
    installed_at: float
    recurrency: str | None = None
    valid_from: float | None = None
    valid_to: float | None = None
    transaction_id: str | None = None
    start_schedule: float | None = None
    duration_s: float | None = None
    min_rate: float | None = None


def parse_profile(d: Mapping[str, Any], *, version: Version, connector: int, now: float) -> Profile:
    """A profile from the snake_case dict the ``ocpp`` library hands to handlers. Raises SimError."""
    try:
        sched = d["charging_schedule"]
        if version == "2.0.1":
            if not isinstance(sched, list) or not sched:
                raise SimError("chargingSchedule must be a non-empty list")
            sched = sched[0]
        pid = int(d["charging_profile_id"] if version == "1.6" else d["id"])
        purpose = _PURPOSES.get(str(d["charging_profile_purpose"]))
        if purpose is None:
            raise SimError(f"unsupported purpose {d['charging_profile_purpose']}")
        periods = tuple(
            Period(float(p["start_period"]), float(p["limit"]), p.get("number_phases"))
            for p in sched["charging_schedule_period"]
        )
        tx = d.get("transaction_id")
        return Profile(
            id=pid,
            connector=connector,
            purpose=purpose,
            stack_level=int(d["stack_level"]),
            kind=str(d["charging_profile_kind"]),
            unit=str(sched["charging_rate_unit"]),
            periods=periods,
            installed_at=now,
            recurrency=d.get("recurrency_kind"),
            valid_from=parse_iso(d["valid_from"]) if d.get("valid_from") else None,
            valid_to=parse_iso(d["valid_to"]) if d.get("valid_to") else None,
            transaction_id=None if tx is None else str(tx),
            start_schedule=parse_iso(sched["start_schedule"]) if sched.get("start_schedule") else None,
            duration_s=float(sched["duration"]) if sched.get("duration") is not None else None,
            min_rate=sched.get("min_charging_rate"),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise SimError(f"malformed charging profile: {e!r}") from e


@dataclass(frozen=True)
class TxRef:
    """What the profile engine needs to know of a running transaction."""

    id: str | None
    started_at: float


@dataclass(frozen=True)
class EffectiveLimit:
    """The limit in force at one connector: ``limit`` in ``unit`` (the charger's native unit),
    ``phases`` from the schedule period (None: all), the profile(s) it comes from, and ``until``: the
    next instant it may change (None: never, as far as the installed profiles go)."""

    limit: float
    unit: str
    phases: int | None
    profile_ids: tuple[int, ...]
    purposes: tuple[str, ...]
    until: float | None


class ProfileEngine:
    """Installed charging profiles of one charger and the effective limit they give (pure, no IO)."""

    def __init__(
        self,
        *,
        version: Version,
        kind: Kind,
        phases: int,
        connectors: int,
        hardware_max: float,
        voltage_v: float = 230.0,
        accept_purposes: Collection[str] = (PURPOSE_MAX, PURPOSE_TX_DEFAULT, PURPOSE_TX),
        rate_units: Collection[str] = ("A", "W"),
        max_stack_level: int = 8,
        max_periods: int = 24,
    ) -> None:
        self.version = version
        self.kind = kind
        self.phases = phases if kind == "ac" else 3
        self.connectors = connectors
        self.hardware_max = hardware_max
        self.voltage_v = voltage_v
        try:
            self.accept_purposes = frozenset(_PURPOSES[p] for p in accept_purposes)
        except KeyError as e:
            raise SimError(f"unknown charging profile purpose {e}") from e
        self.rate_units = frozenset(rate_units)
        self.max_stack_level = max_stack_level
        self.max_periods = max_periods
        self.profiles: list[Profile] = []

    @property
    def native_unit(self) -> str:
        return "A" if self.kind == "ac" else "W"

    # ---- install / clear ----------------------------------------------------------------------
    def install(self, p: Profile, tx: TxRef | None) -> tuple[bool, str]:
        """Validate and install ``p``; ``tx`` is the transaction running on ``p.connector``.
        Returns (accepted, reason)."""
        reason = self._check(p, tx)
        if reason:
            return False, reason
        if p.purpose == PURPOSE_TX and p.transaction_id is None and tx is not None:
            p = Profile(**{**p.__dict__, "transaction_id": tx.id})
        keep: list[Profile] = []
        for q in self.profiles:
            if q.id == p.id:
                continue  # same id: replaced (both versions)
            same_slot = q.purpose == p.purpose and q.stack_level == p.stack_level and q.connector == p.connector
            if same_slot and self.version == "1.6":
                continue  # 1.6: same stackLevel/purpose replaces
            if same_slot and self._overlaps(q, p):
                return False, "conflicting stack level"  # 2.0.1 K01.FR.06 / FR.39
            keep.append(q)
        keep.append(p)
        self.profiles = keep
        return True, ""

    def _check(self, p: Profile, tx: TxRef | None) -> str:
        if p.purpose not in self.accept_purposes:
            return f"purpose {p.purpose} not supported"
        if p.unit not in self.rate_units:
            return f"rate unit {p.unit} not supported"
        if not 0 <= p.stack_level <= self.max_stack_level:
            return f"stack level {p.stack_level} out of range"
        if not p.periods or len(p.periods) > self.max_periods:
            return f"{len(p.periods)} periods (1..{self.max_periods})"
        if p.periods[0].start_s != 0:
            return "first period must start at 0"
        if any(b.start_s <= a.start_s for a, b in zip(p.periods, p.periods[1:], strict=False)):
            return "periods out of order"
        if any(q.limit < 0 or not math.isfinite(q.limit) for q in p.periods):
            return "negative or non-finite limit"
        if not 0 <= p.connector <= self.connectors:
            return f"no connector {p.connector}"
        if p.kind not in ("Absolute", "Recurring", "Relative"):
            return f"unknown kind {p.kind}"
        if p.kind == "Recurring" and p.recurrency not in _RECURRENCE_S:
            return "recurring profile without recurrencyKind"
        if p.purpose == PURPOSE_MAX and p.connector != 0:
            return "max profile must be on connector 0"
        if p.purpose == PURPOSE_TX:
            if p.connector == 0:
                return "TxProfile needs a connector"
            if tx is None:
                return "no transaction on the connector"
            if self.version == "2.0.1" and p.transaction_id is None:
                return "TxProfile without transactionId"
            if p.transaction_id is not None and p.transaction_id != tx.id:
                return "transactionId does not match"
        if self.version == "2.0.1":
            if p.purpose == PURPOSE_MAX and p.kind == "Relative":
                return "ChargingStationMaxProfile cannot be Relative"
            if p.kind in ("Absolute", "Recurring") and p.start_schedule is None:
                return "startSchedule missing"
            if p.kind == "Relative" and p.start_schedule is not None:
                return "Relative profile with startSchedule"
        return ""

    @staticmethod
    def _overlaps(a: Profile, b: Profile) -> bool:
        if a.purpose == PURPOSE_TX:
            return a.transaction_id == b.transaction_id
        a0 = -math.inf if a.valid_from is None else a.valid_from
        a1 = math.inf if a.valid_to is None else a.valid_to
        b0 = -math.inf if b.valid_from is None else b.valid_from
        b1 = math.inf if b.valid_to is None else b.valid_to
        return a0 < b1 and b0 < a1

    def clear(
        self,
        *,
        profile_id: int | None = None,
        connector: int | None = None,
        purpose: str | None = None,
        stack_level: int | None = None,
    ) -> int:
        """Remove by id, else by every criterion given (none: all). Returns how many were removed."""
        pkey = None if purpose is None else _PURPOSES.get(purpose, purpose)

        def matches(q: Profile) -> bool:
            if profile_id is not None:
                return q.id == profile_id
            return (
                (connector is None or q.connector == connector)
                and (pkey is None or q.purpose == pkey)
                and (stack_level is None or q.stack_level == stack_level)
            )

        before = len(self.profiles)
        self.profiles = [q for q in self.profiles if not matches(q)]
        return before - len(self.profiles)

    def end_transaction(self, connector: int) -> None:
        self.profiles = [q for q in self.profiles if not (q.purpose == PURPOSE_TX and q.connector == connector)]

    # ---- evaluation ---------------------------------------------------------------------------
    def _schedule_start(self, p: Profile, t: float, tx: TxRef | None) -> float | None:
        if p.kind == "Relative":
            return tx.started_at if tx is not None and p.purpose != PURPOSE_MAX else p.installed_at
        base = p.installed_at if p.start_schedule is None else p.start_schedule
        if p.kind == "Recurring":
            if t < base:
                return None
            cycle = _RECURRENCE_S[p.recurrency or "Daily"]
            return base + math.floor((t - base) / cycle) * cycle
        return base

    def _period_at(self, p: Profile, t: float, tx: TxRef | None) -> Period | None:
        if p.valid_from is not None and t < p.valid_from:
            return None
        if p.valid_to is not None and t >= p.valid_to:
            return None
        s = self._schedule_start(p, t, tx)
        if s is None or t < s:
            return None
        off = t - s
        if p.duration_s is not None and off >= p.duration_s:
            return None
        found = None
        for q in p.periods:
            if q.start_s <= off:
                found = q
            else:
                break
        return found

    def _changes_after(self, p: Profile, t: float, tx: TxRef | None) -> float | None:
        cands: list[float] = [x for x in (p.valid_from, p.valid_to) if x is not None]
        starts: list[float] = []
        if p.kind == "Recurring":
            base = p.installed_at if p.start_schedule is None else p.start_schedule
            s = self._schedule_start(p, t, tx)
            starts = [base] if s is None else [s, s + _RECURRENCE_S[p.recurrency or "Daily"]]
        else:
            s = self._schedule_start(p, t, tx)
            if s is not None:
                starts = [s]
        for s in starts:
            cands.extend(s + q.start_s for q in p.periods)
            if p.duration_s is not None:
                cands.append(s + p.duration_s)
        later = [c for c in cands if c > t + 1e-9]
        return min(later) if later else None

    def _to_native(self, limit: float, unit: str, phases: int | None) -> float:
        if unit == self.native_unit:
            return limit
        n = self.phases if phases is None else max(1, min(phases, self.phases))
        if self.kind == "ac":  # W -> A per phase
            return limit / (self.voltage_v * n)
        return limit * self.voltage_v * n  # DC: A (input, per phase) -> W

    def _from_native(self, limit: float, unit: str, phases: int | None) -> float:
        if unit == self.native_unit:
            return limit
        n = self.phases if phases is None else max(1, min(phases, self.phases))
        if self.kind == "ac":
            return limit * self.voltage_v * n
        return limit / (self.voltage_v * n)

    def _pick(self, purpose: str, connector: int, t: float, tx: TxRef | None) -> tuple[Profile, Period] | None:
        best: tuple[tuple[int, bool], Profile, Period] | None = None
        for p in self.profiles:
            if p.purpose != purpose:
                continue
            if purpose == PURPOSE_MAX:
                if p.connector != 0:
                    continue
            elif purpose == PURPOSE_TX:
                if tx is None or p.connector != connector or p.transaction_id not in (None, tx.id):
                    continue
            elif p.connector not in (0, connector) or connector == 0:
                continue
            per = self._period_at(p, t, tx)
            if per is None:
                continue
            key = (p.stack_level, p.connector != 0)
            if best is None or key > best[0]:
                best = (key, p, per)
        return None if best is None else (best[1], best[2])

    def limit_at(self, connector: int, t: float, tx: TxRef | None = None) -> EffectiveLimit:
        """The effective limit at ``connector`` at time ``t`` in the native unit, capped at the hardware
        maximum. Connector 0 gives the station-wide (max profile) limit."""
        chosen: list[tuple[Profile, Period]] = []
        mx = self._pick(PURPOSE_MAX, connector, t, tx)
        if mx is not None:
            chosen.append(mx)
        if connector != 0:
            txp = self._pick(PURPOSE_TX, connector, t, tx)
            if txp is None:
                txp = self._pick(PURPOSE_TX_DEFAULT, connector, t, tx)
            if txp is not None:
                chosen.append(txp)
        limit, phases = self.hardware_max, None
        ids: list[int] = []
        purposes: list[str] = []
        for p, per in chosen:
            v = self._to_native(per.limit, p.unit, per.phases)
            ids.append(p.id)
            purposes.append(p.purpose)
            if v < limit or (v == limit and per.phases is not None):
                limit, phases = v, per.phases
        changes = [c for c in (self._changes_after(p, t, tx) for p in self.profiles) if c is not None]
        return EffectiveLimit(
            limit=limit,
            unit=self.native_unit,
            phases=phases,
            profile_ids=tuple(ids),
            purposes=tuple(purposes),
            until=min(changes) if changes else None,
        )

    def composite(
        self, connector: int, t0: float, duration_s: float, unit: str | None, tx: TxRef | None
    ) -> list[tuple[int, float, int | None]]:
        """The composite schedule over [t0, t0 + duration_s): (startPeriod s, limit in ``unit``, phases)."""
        unit = unit or self.native_unit
        out: list[tuple[int, float, int | None]] = []
        t, end = t0, t0 + duration_s
        for _ in range(10_000):
            if t >= end:
                break
            eff = self.limit_at(connector, t, tx)
            value = round(self._from_native(eff.limit, unit, eff.phases), 3)
            if not out or (out[-1][1], out[-1][2]) != (value, eff.phases):
                out.append((round(t - t0), value, eff.phases))
            if eff.until is None:
                break
            t = eff.until
        return out


# ---- records -------------------------------------------------------------------------------------
@dataclass
class SentCall:
    """One CALL the charger sent (for loss accounting). ``outcome``: pending, ok, error, timeout, lost."""

    unique_id: str
    action: str
    payload: dict[str, Any]
    sent_at: float
    outcome: str = "pending"
    response: dict[str, Any] | None = None


@dataclass(frozen=True)
class ReceivedCall:
    unique_id: str
    action: str
    payload: dict[str, Any]
    at: float


@dataclass
class _Tx:
    local_id: str  # 2.0.1 transactionId; 1.6: a local handle until the CSMS assigns the id
    id_tag: str
    started_at: float
    meter_start_wh: float
    remote_start_id: int | None = None
    csms_id: int | None = None  # 1.6 transactionId from StartTransaction.conf
    seq_no: int = 0
    ended: bool = False

    @property
    def ref_id(self) -> str | None:
        """The id the CSMS knows: 2.0.1 the charger's own; 1.6 the assigned one (None until known)."""
        if self.local_id.startswith("local-"):
            return None if self.csms_id is None else str(self.csms_id)
        return self.local_id


@dataclass
class _Connector:
    id: int
    model: EvModel | None = None
    tx: _Tx | None = None
    status: str = "Available"
    register_wh: float = 0.0  # energy register before the present EV
    pending_remote: tuple[str, int | None, dict[str, Any] | None] | None = None
    charging_state: str = "Idle"
    limit: EffectiveLimit | None = None
    next_meter: float = 0.0  # when this connector's next periodic MeterValues is due


@dataclass
class _Out:
    build: Callable[[], Any | None]
    on_result: Callable[[Any], None] | None = None
    durable: bool = False  # transaction message: kept while offline, retried
    attempts: int = 0


# ---- ticker --------------------------------------------------------------------------------------
class Ticker:
    """One task per event loop and interval that calls ``tick()`` on every registered charger."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.members: set[SimCharger] = set()
        self._task: asyncio.Task[None] | None = None

    def add(self, ch: SimCharger) -> None:
        self.members.add(ch)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def remove(self, ch: SimCharger) -> None:
        self.members.discard(ch)

    async def _run(self) -> None:
        while self.members:
            await asyncio.sleep(self.interval_s)
            for ch in list(self.members):
                try:
                    ch.tick()
                except Exception:
                    log.exception("sim_tick_failed", charger=ch.charger_id)


_TICKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[float, Ticker]] = (
    weakref.WeakKeyDictionary()
)


def shared_ticker(interval_s: float) -> Ticker:
    per_loop = _TICKERS.setdefault(asyncio.get_running_loop(), {})
    if interval_s not in per_loop:
        per_loop[interval_s] = Ticker(interval_s)
    return per_loop[interval_s]


# ---- OCPP handler classes (one instance per connection) ------------------------------------------
_F = TypeVar("_F", bound=Callable[..., Any])


def on(action: str) -> Callable[[_F], _F]:
    """``ocpp.routing.on`` with a type."""
    return cast(Callable[[_F], _F], _untyped_on(action))


class _Recording:
    owner: SimCharger

    async def route_message(self, raw_msg: str) -> None:
        self.owner._record_received(raw_msg)
        await super().route_message(raw_msg)  # type: ignore[misc]


class _Handler16(_Recording, Cp16):  # type: ignore[misc]
    def __init__(self, owner: SimCharger, conn: ClientConnection) -> None:
        super().__init__(owner.charger_id, conn, response_timeout=owner.response_timeout_s)
        self.owner = owner

    @on("SetChargingProfile")
    def on_set_profile(self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any) -> Any:
        return result16.SetChargingProfile(status=self.owner._set_profile(connector_id, cs_charging_profiles))

    @on("ClearChargingProfile")
    def on_clear_profile(
        self,
        id: int | None = None,
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **_: Any,
    ) -> Any:
        n = self.owner.engine.clear(
            profile_id=id, connector=connector_id, purpose=charging_profile_purpose, stack_level=stack_level
        )
        self.owner._limits_changed()
        return result16.ClearChargingProfile(status="Accepted" if n else "Unknown")

    @on("GetCompositeSchedule")
    def on_composite(self, connector_id: int, duration: int, charging_rate_unit: str | None = None, **_: Any) -> Any:
        if connector_id > self.owner.connectors or (
            charging_rate_unit is not None and charging_rate_unit not in self.owner.engine.rate_units
        ):
            return result16.GetCompositeSchedule(status="Rejected")
        now = self.owner.clock()
        unit = charging_rate_unit or self.owner.engine.native_unit
        periods = self.owner._composite(connector_id, now, duration, unit)
        return result16.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=iso(now),
            charging_schedule={
                "duration": duration,
                "startSchedule": iso(now),
                "chargingRateUnit": unit,
                "chargingSchedulePeriod": [_period_json(*p) for p in periods],
            },
        )

    @on("GetConfiguration")
    def on_get_configuration(self, key: list[str] | None = None, **_: Any) -> Any:
        conf = self.owner._config16()
        keys = key if key else list(conf)
        known = [
            {"key": k, "readonly": conf[k][1], "value": conf[k][0]} for k in keys if k in conf
        ]
        unknown = [k for k in keys if k not in conf]
        return result16.GetConfiguration(configuration_key=known, unknown_key=unknown or None)

    @on("ChangeConfiguration")
    def on_change_configuration(self, key: str, value: str, **_: Any) -> Any:
        return result16.ChangeConfiguration(status=self.owner._change_config(key, value))

    @on("RemoteStartTransaction")
    def on_remote_start(
        self, id_tag: str, connector_id: int | None = None, charging_profile: dict[str, Any] | None = None, **_: Any
    ) -> Any:
        return result16.RemoteStartTransaction(
            status=self.owner._remote_start(id_tag, connector_id, None, charging_profile)
        )

    @on("RemoteStopTransaction")
    def on_remote_stop(self, transaction_id: int, **_: Any) -> Any:
        return result16.RemoteStopTransaction(status=self.owner._remote_stop(str(transaction_id)))

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, message_id: str | None = None, data: Any = None, **_: Any) -> Any:
        status, reply = self.owner._data_transfer(vendor_id, message_id, data)
        return result16.DataTransfer(status=status, data=reply)

    @on("Reset")
    def on_reset(self, type: str, **_: Any) -> Any:
        self.owner._schedule_reset(type)
        return result16.Reset(status="Accepted")

    @on("TriggerMessage")
    def on_trigger(self, requested_message: str, connector_id: int | None = None, **_: Any) -> Any:
        return result16.TriggerMessage(status=self.owner._trigger(requested_message, connector_id))

    @on("ChangeAvailability")
    def on_change_availability(self, connector_id: int, type: str, **_: Any) -> Any:
        return result16.ChangeAvailability(status="Accepted")


class _Handler201(_Recording, Cp201):  # type: ignore[misc]
    def __init__(self, owner: SimCharger, conn: ClientConnection) -> None:
        super().__init__(owner.charger_id, conn, response_timeout=owner.response_timeout_s)
        self.owner = owner

    @on("SetChargingProfile")
    def on_set_profile(self, evse_id: int, charging_profile: dict[str, Any], **_: Any) -> Any:
        return result201.SetChargingProfile(status=self.owner._set_profile(evse_id, charging_profile))

    @on("ClearChargingProfile")
    def on_clear_profile(
        self,
        charging_profile_id: int | None = None,
        charging_profile_criteria: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:
        c = charging_profile_criteria or {}
        n = self.owner.engine.clear(
            profile_id=charging_profile_id,
            connector=c.get("evse_id"),
            purpose=c.get("charging_profile_purpose"),
            stack_level=c.get("stack_level"),
        )
        self.owner._limits_changed()
        return result201.ClearChargingProfile(status="Accepted" if n else "Unknown")

    @on("GetCompositeSchedule")
    def on_composite(self, duration: int, evse_id: int, charging_rate_unit: str | None = None, **_: Any) -> Any:
        if evse_id > self.owner.connectors or (
            charging_rate_unit is not None and charging_rate_unit not in self.owner.engine.rate_units
        ):
            return result201.GetCompositeSchedule(status="Rejected")
        now = self.owner.clock()
        unit = charging_rate_unit or self.owner.engine.native_unit
        periods = self.owner._composite(evse_id, now, duration, unit)
        return result201.GetCompositeSchedule(
            status="Accepted",
            schedule={
                "evseId": evse_id,
                "duration": duration,
                "scheduleStart": iso(now),
                "chargingRateUnit": unit,
                "chargingSchedulePeriod": [_period_json(*p) for p in periods],
            },
        )

    @on("GetVariables")
    def on_get_variables(self, get_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        return result201.GetVariables(get_variable_result=[self.owner._get_variable(d) for d in get_variable_data])

    @on("SetVariables")
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        return result201.SetVariables(set_variable_result=[self.owner._set_variable(d) for d in set_variable_data])

    @on("RequestStartTransaction")
    def on_request_start(
        self,
        id_token: dict[str, Any],
        remote_start_id: int,
        evse_id: int | None = None,
        charging_profile: dict[str, Any] | None = None,
        **_: Any,
    ) -> Any:
        status = self.owner._remote_start(str(id_token.get("id_token", "")), evse_id, remote_start_id, charging_profile)
        return result201.RequestStartTransaction(status=status)

    @on("RequestStopTransaction")
    def on_request_stop(self, transaction_id: str, **_: Any) -> Any:
        return result201.RequestStopTransaction(status=self.owner._remote_stop(transaction_id))

    @on("DataTransfer")
    def on_data_transfer(self, vendor_id: str, message_id: str | None = None, data: Any = None, **_: Any) -> Any:
        status, reply = self.owner._data_transfer(vendor_id, message_id, data)
        return result201.DataTransfer(status=status, data=reply)

    @on("Reset")
    def on_reset(self, type: str, evse_id: int | None = None, **_: Any) -> Any:
        self.owner._schedule_reset(type)
        return result201.Reset(status="Accepted")

    @on("TriggerMessage")
    def on_trigger(self, requested_message: str, evse: dict[str, Any] | None = None, **_: Any) -> Any:
        cid = None if evse is None else evse.get("id")
        return result201.TriggerMessage(status=self.owner._trigger(requested_message, cid))

    @on("ChangeAvailability")
    def on_change_availability(self, operational_status: str, evse: dict[str, Any] | None = None, **_: Any) -> Any:
        return result201.ChangeAvailability(status="Accepted")


def _period_json(start: int, limit: float, phases: int | None) -> dict[str, Any]:
    d: dict[str, Any] = {"startPeriod": start, "limit": limit}
    if phases is not None:
        d["numberPhases"] = phases
    return d


# ---- the charger ---------------------------------------------------------------------------------
class SimCharger:
    """A simulated charger. See the module docstring. Connector ids are 1-based (1.6 connectorId, 2.0.1
    evseId with one connector per EVSE)."""

    def __init__(
        self,
        charger_id: str,
        version: Version = "1.6",
        kind: Kind = "ac",
        phases: int = 3,
        connectors: int = 1,
        url: str = "ws://127.0.0.1:9000",
        *,
        clock: Callable[[], float] = time.time,
        max_a: float = 32.0,
        min_a: float = 6.0,
        max_w: float = 150_000.0,
        voltage_v: float = 230.0,
        ramp_up_per_s: float | None = None,
        ramp_down_per_s: float | None = None,
        password: str | None = None,
        vendor: str = "SimVendor",
        model: str = "SimCharger",
        firmware: str = "sim-1",
        meter_interval_s: float = 10.0,
        heartbeat_s: float | None = None,
        accept_purposes: Collection[str] = (PURPOSE_MAX, PURPOSE_TX_DEFAULT, PURPOSE_TX),
        rate_units: Collection[str] = ("A", "W"),
        max_stack_level: int = 8,
        max_periods: int = 24,
        noncompliant: bool = False,
        data_transfer_vendors: Collection[str] | None = None,
        tick_s: float = 1.0,
        reconnect_s: tuple[float, float] = (1.0, 30.0),
        response_timeout_s: float = 30.0,
        validate_schemas: bool = True,
        offline_queue_max: int = 1000,
        seed: int | None = None,
    ) -> None:
        if version not in ("1.6", "2.0.1"):
            raise SimError(f"version must be '1.6' or '2.0.1', got {version!r}")
        if connectors < 1:
            raise SimError("connectors must be >= 1")
        self.charger_id = charger_id
        self.version: Version = version
        self.kind: Kind = kind
        self.connectors = connectors
        self.url = url.rstrip("/")
        self.clock = clock
        self.outlet = Outlet(
            kind=kind,
            phases=phases if kind == "ac" else 3,
            max_a=max_a,
            min_a=min_a,
            max_w=max_w,
            voltage_v=voltage_v,
            ramp_up_per_s=ramp_up_per_s,
            ramp_down_per_s=ramp_down_per_s,
        )
        self.engine = ProfileEngine(
            version=version,
            kind=kind,
            phases=self.outlet.phases,
            connectors=connectors,
            hardware_max=self.outlet.native_max,
            voltage_v=voltage_v,
            accept_purposes=accept_purposes,
            rate_units=rate_units,
            max_stack_level=max_stack_level,
            max_periods=max_periods,
        )
        self.password = password
        self.vendor = vendor
        self.model_name = model
        self.firmware = firmware
        self.meter_interval_s = meter_interval_s
        self.heartbeat_s = heartbeat_s
        self._noncompliant = noncompliant
        self.data_transfer_vendors = None if data_transfer_vendors is None else frozenset(data_transfer_vendors)
        self.tick_s = tick_s
        self.reconnect_s = reconnect_s
        self.response_timeout_s = response_timeout_s
        self.validate_schemas = validate_schemas
        self.offline_queue_max = offline_queue_max
        self._rng = random.Random(charger_id if seed is None else seed)

        self.online = False  # connected and boot accepted
        self.boot_status: str | None = None
        self.heartbeat_interval_s: float = heartbeat_s or 60.0
        self.messages_sent: list[SentCall] = []
        self.calls_received: list[ReceivedCall] = []
        self.data_transfers: list[tuple[str, str | None, Any]] = []
        self.boots = 0  # accepted boots
        self._conns = [_Connector(i) for i in range(1, connectors + 1)]
        self._queue: deque[_Out] = deque()
        self._wake = asyncio.Event()
        self._arrivals: list[tuple[EvSpec, int]] = []
        self._next_heartbeat = 0.0
        self._tx_counter = 0
        self._ws: ClientConnection | None = None
        self._reset_pending: str | None = None
        self._config_extra: dict[str, str] = {"MeterValuesSampledData": _MEASURANDS_16}

    # ---- public API for the rig ---------------------------------------------------------------
    @property
    def noncompliant(self) -> bool:
        return self._noncompliant

    @noncompliant.setter
    def noncompliant(self, value: bool) -> None:
        self._noncompliant = value
        for c in self._conns:
            if c.model is not None:
                c.model.noncompliant = value

    def connector(self, connector: int = 1) -> _Connector:
        if not 1 <= connector <= self.connectors:
            raise SimError(f"{self.charger_id}: no connector {connector}")
        return self._conns[connector - 1]

    def model(self, connector: int = 1) -> EvModel | None:
        """The EV physics model of the EV plugged into ``connector`` (None: no EV)."""
        return self.connector(connector).model

    def state(self, connector: int = 1) -> ChargerState:
        c = self.connector(connector)
        if c.model is None:
            return ChargerState.NO_EV
        if c.tx is None or not c.model.enabled:
            return ChargerState.EV_CONNECTED
        return ChargerState(c.model.state) if c.model.state != "ev_connected" else ChargerState.EV_CONNECTED

    def transaction_id(self, connector: int = 1) -> str | None:
        tx = self.connector(connector).tx
        return None if tx is None else tx.ref_id

    def plug_in(self, ev: EvSpec, connector: int = 1, *, id_tag: str | None = None) -> EvModel:
        """Plug ``ev`` in now. With a token (``id_tag`` or ``ev.id_tag``) the driver authorises at once;
        without one the session waits for a remote start."""
        c = self.connector(connector)
        if c.model is not None:
            raise SimError(f"{self.charger_id}/{connector}: an EV is already plugged in")
        now = self.clock()
        eff = self._effective(c, now)
        c.model = EvModel(
            ev, self.outlet, now, limit=eff.limit, phases=eff.phases, noncompliant=self._noncompliant, enabled=False
        )
        c.limit = eff
        log.info("sim_ev_plugged_in", charger=self.charger_id, connector=connector, ev=ev.name)
        token = id_tag or ev.id_tag
        if self.version == "1.6":
            self._status16(c, "Preparing")
            if c.pending_remote is not None:
                tag, _, prof = c.pending_remote
                c.pending_remote = None
                self._start_tx(c, tag, None, prof)
            elif token is not None:
                self._authorize_then_start(c, token)
        else:
            self._status201(c, "Occupied")
            if c.tx is not None:  # remote start came first
                self._enable(c, now)
                self._tx_event(c, "Updated", "CablePluggedIn")
            else:
                self._start_tx(c, token or "", None, None, authorized=False)
                if token is not None:
                    self._authorize_then_start(c, token)
            if ev.iso15118:
                self._notify_ev_charging_needs(c, ev)
        self._wake.set()
        return c.model

    def _notify_ev_charging_needs(self, c: _Connector, ev: EvSpec) -> None:
        """OCPP 2.0.1 NotifyEVChargingNeeds: what an ISO 15118 EV says of its departure and energy (queued after
        the transaction's first event)."""
        ac = self.kind != "dc"
        needs: dict[str, Any] = {"requestedEnergyTransfer": "AC_three_phase" if ac and ev.ac_phases == 3 else
                                 "AC_single_phase" if ac else "DC"}
        if ev.departure_at is not None:
            needs["departureTime"] = iso(ev.departure_at)
        energy = round(ev.energy_wanted_wh)
        if ac:
            needs["acChargingParameters"] = {"energyAmount": energy, "evMinCurrent": 6,
                                             "evMaxCurrent": int(ev.max_ac_a), "evMaxVoltage": 400}
        else:
            needs["dcChargingParameters"] = {"evMaxCurrent": 500, "evMaxVoltage": 900, "energyAmount": energy,
                                             "evEnergyCapacity": round(ev.capacity_kwh * 1000.0),
                                             "stateOfCharge": round(ev.soc_start * 100),
                                             "fullSoC": round(ev.soc_target * 100)}
        self._enqueue(_Out(lambda: call201.NotifyEVChargingNeeds(charging_needs=needs, evse_id=c.id)))

    def schedule(self, ev: EvSpec, connector: int = 1) -> None:
        """Plug ``ev`` in when the clock reaches ``ev.arrival_at`` (checked every tick)."""
        self._arrivals.append((ev, connector))

    def unplug(self, connector: int = 1) -> None:
        c = self.connector(connector)
        if c.model is None:
            return
        now = self.clock()
        c.model.step(now)
        if c.tx is not None:
            self._stop_tx(c, "EVDisconnected", "EVCommunicationLost")
        c.register_wh += c.model.energy_wh
        c.model = None
        log.info("sim_ev_unplugged", charger=self.charger_id, connector=connector)
        if self.version == "1.6":
            self._status16(c, "Available")
        else:
            self._status201(c, "Available")

    def effective_limit(self, connector: int = 1) -> EffectiveLimit:
        c = self.connector(connector)
        return self._effective(c, self.clock())

    def draw_a(self, connector: int = 1) -> tuple[float, ...]:
        m = self.connector(connector).model
        return tuple(0.0 for _ in range(self.outlet.phases)) if m is None or self.kind == "dc" else m.draw_a

    def draw_w(self, connector: int = 1) -> float:
        m = self.connector(connector).model
        return 0.0 if m is None else m.draw_w

    @property
    def energy_wh(self) -> float:
        """The charger's energy register (all connectors, all sessions)."""
        return sum(self._register(c) for c in self._conns)

    def tick(self, now: float | None = None) -> None:
        """Advance the EVs and the profile schedule to ``now`` and queue what is due (the shared ticker
        calls this; tests may too)."""
        now = self.clock() if now is None else now
        if self._arrivals:
            due = [a for a in self._arrivals if (a[0].arrival_at or 0.0) <= now]
            for ev, cid in due:
                self._arrivals.remove((ev, cid))
                if self.connector(cid).model is None:
                    self.plug_in(ev, cid)
        for c in self._conns:
            m = c.model
            if m is None:
                continue
            dep = m.ev.departure_at
            if dep is not None and now >= dep:
                self.unplug(c.id)
                continue
            if c.limit is None or (c.limit.until is not None and now >= c.limit.until):
                self._apply_limit(c, now)
            m.step(now)
            self._refresh_status(c)
            if c.tx is not None and self.meter_interval_s > 0 and now >= c.next_meter:
                # the next report one interval after this one was due (no drift with the tick)
                next_at = c.next_meter + self.meter_interval_s
                c.next_meter = next_at if next_at > now else now + self.meter_interval_s
                self._queue_meter_values(c)
        if self.online and now >= self._next_heartbeat:
            self._next_heartbeat = now + self.heartbeat_interval_s
            self._enqueue(_Out(self._heartbeat))

    async def run(self) -> None:
        """Connect (and reconnect with exponential backoff and jitter) until cancelled."""
        ticker = shared_ticker(self.tick_s)
        ticker.add(self)
        attempt = 0
        proto = Subprotocol("ocpp1.6" if self.version == "1.6" else "ocpp2.0.1")
        headers = {}
        if self.password is not None:
            cred = base64.b64encode(f"{self.charger_id}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {cred}"
        try:
            while True:
                try:
                    async with connect(
                        f"{self.url}/{self.charger_id}",
                        subprotocols=[proto],
                        additional_headers=headers,
                        open_timeout=10,
                        ping_interval=None,
                        max_queue=64,
                    ) as ws:
                        if ws.subprotocol != proto:
                            log.warning("sim_subprotocol_refused", charger=self.charger_id, got=ws.subprotocol)
                            raise SimError("subprotocol not accepted")
                        attempt = 0
                        self._ws = ws
                        await self._session(ws)
                except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError, SimError) as e:
                    log.info("sim_connection_lost", charger=self.charger_id, error=repr(e))
                except Exception:
                    log.exception("sim_session_failed", charger=self.charger_id)
                finally:
                    self._ws = None
                    self.online = False
                lo, hi = self.reconnect_s
                delay = min(hi, lo * 2**attempt) * (0.5 + 0.5 * self._rng.random())
                if self._reset_pending is not None:
                    delay, self._reset_pending = min(delay, lo), None
                attempt = min(attempt + 1, 16)
                await asyncio.sleep(delay)
        finally:
            ticker.remove(self)
            self.online = False

    async def disconnect(self) -> None:
        """Drop the present connection (run() reconnects)."""
        if self._ws is not None:
            await self._ws.close()

    # ---- connection -----------------------------------------------------------------------------
    async def _session(self, ws: ClientConnection) -> None:
        handler: Any = _Handler16(self, ws) if self.version == "1.6" else _Handler201(self, ws)
        alive = [True]  # the sender's loop condition: a cancel swallowed by wait_for (3.11) cannot keep it going
        reader = asyncio.create_task(handler.start())
        sender = asyncio.create_task(self._boot_and_send(handler, alive))
        try:
            done, _ = await asyncio.wait({reader, sender}, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                t.result()  # raise what ended it
        finally:
            alive[0] = False
            self._wake.set()
            pending = {reader, sender}
            while pending:
                for t in pending:
                    t.cancel()
                _, pending = await asyncio.wait(pending, timeout=1.0)

    async def _boot_and_send(self, handler: Any, alive: list[bool]) -> None:
        while alive[0]:
            reason = "RemoteReset" if self.boots else "PowerUp"
            if self.version == "1.6":
                payload: Any = call16.BootNotification(
                    charge_point_model=self.model_name,
                    charge_point_vendor=self.vendor,
                    charge_point_serial_number=self.charger_id,
                    firmware_version=self.firmware,
                )
            else:
                payload = call201.BootNotification(
                    charging_station={
                        "model": self.model_name,
                        "vendorName": self.vendor,
                        "serialNumber": self.charger_id,
                        "firmwareVersion": self.firmware,
                    },
                    reason=reason,
                )
            res = await self._call(handler, payload)
            status = None if res is None else str(res.status)
            self.boot_status = status
            interval = float(getattr(res, "interval", 0) or 0)
            if status == "Accepted":
                if self.heartbeat_s is None and interval > 0:
                    self.heartbeat_interval_s = interval
                break
            await asyncio.sleep(interval if interval > 0 else 10.0)
        if not alive[0]:
            return
        self.boots += 1
        self.online = True
        now = self.clock()
        self._next_heartbeat = now + self.heartbeat_interval_s
        log.info("sim_charger_booted", charger=self.charger_id, version=self.version)
        # Report every connector's state first, ahead of anything queued while offline.
        statuses = [self._status_out(c) for c in reversed(self._conns)]
        if self.version == "1.6":
            statuses.append(self._status_out(None))
        for out in statuses:
            self._queue.appendleft(out)
        while alive[0]:
            while not self._queue and alive[0]:
                self._wake.clear()
                await self._wake.wait()
            if not alive[0]:
                break
            out = self._queue.popleft()
            payload = out.build()
            if payload is None:
                continue
            out.attempts += 1
            try:
                res = await self._call(handler, payload, requeue=out)
            except asyncio.CancelledError:
                raise
            if res is not None and out.on_result is not None:
                out.on_result(res)

    async def _call(self, handler: Any, payload: Any, requeue: _Out | None = None) -> Any:
        uid = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        body = snake_to_camel_case(remove_nones(serialize_as_dict(payload)))
        rec = SentCall(uid, type(payload).__name__, body, self.clock())
        self.messages_sent.append(rec)
        try:
            res = await handler.call(
                payload, suppress=False, unique_id=uid, skip_schema_validation=not self.validate_schemas
            )
        except asyncio.CancelledError:
            rec.outcome = "lost"
            if requeue is not None and requeue.durable:
                self._queue.appendleft(requeue)
            raise
        except TimeoutError:
            rec.outcome = "timeout"
            log.warning("sim_call_timeout", charger=self.charger_id, action=rec.action, unique_id=uid)
            if requeue is not None and requeue.durable and requeue.attempts < 3:
                self._queue.appendleft(requeue)
            return None
        except ConnectionClosed:
            rec.outcome = "lost"
            if requeue is not None and requeue.durable:
                self._queue.appendleft(requeue)
            raise
        except Exception as e:  # a CALLERROR (ocpp raises its OCPPError subclasses) or a schema error
            rec.outcome = "error"
            log.warning("sim_call_error", charger=self.charger_id, action=rec.action, error=repr(e))
            return None
        rec.outcome = "ok"
        rec.response = snake_to_camel_case(remove_nones(serialize_as_dict(res)))
        return res

    def _enqueue(self, out: _Out) -> None:
        if not self.online and not out.durable:
            return
        if len(self._queue) >= self.offline_queue_max:
            for i, o in enumerate(self._queue):
                if not o.durable:
                    del self._queue[i]
                    break
            else:
                self._queue.popleft()
                log.warning("sim_queue_overflow", charger=self.charger_id)
        self._queue.append(out)
        self._wake.set()

    def _record_received(self, raw: str) -> None:
        try:
            import json

            msg = json.loads(raw)
            if isinstance(msg, list) and len(msg) == 4 and msg[0] == 2:
                self.calls_received.append(ReceivedCall(str(msg[1]), str(msg[2]), dict(msg[3]), self.clock()))
        except (ValueError, TypeError):
            log.warning("sim_malformed_frame", charger=self.charger_id, frame=raw[:200])

    # ---- state machine ------------------------------------------------------------------------
    def _register(self, c: _Connector) -> float:
        return c.register_wh + (0.0 if c.model is None else c.model.energy_wh)

    def _txref(self, c: _Connector) -> TxRef | None:
        return None if c.tx is None else TxRef(c.tx.ref_id, c.tx.started_at)

    def _effective(self, c: _Connector, now: float) -> EffectiveLimit:
        return self.engine.limit_at(c.id, now, self._txref(c))

    def _apply_limit(self, c: _Connector, now: float) -> None:
        eff = self._effective(c, now)
        old = c.limit
        c.limit = eff
        if c.model is not None and (old is None or (old.limit, old.phases) != (eff.limit, eff.phases)):
            c.model.set_limit(eff.limit, now, eff.phases)
            log.info("sim_limit_changed", charger=self.charger_id, connector=c.id, limit=eff.limit, unit=eff.unit)

    def _limits_changed(self) -> None:
        now = self.clock()
        for c in self._conns:
            self._apply_limit(c, now)

    def _set_profile(self, connector: int, raw: dict[str, Any]) -> str:
        now = self.clock()
        try:
            p = parse_profile(raw, version=self.version, connector=connector, now=now)
        except SimError as e:
            log.warning("sim_profile_rejected", charger=self.charger_id, reason=str(e))
            return "Rejected"
        tx = self._txref(self._conns[connector - 1]) if 1 <= connector <= self.connectors else None
        ok, reason = self.engine.install(p, tx)
        if not ok:
            log.warning("sim_profile_rejected", charger=self.charger_id, profile=p.id, reason=reason)
            return "Rejected"
        self._limits_changed()
        return "Accepted"

    def _composite(self, connector: int, now: float, duration: int, unit: str) -> list[tuple[int, float, int | None]]:
        tx = self._txref(self._conns[connector - 1]) if connector >= 1 else None
        return self.engine.composite(connector, now, float(duration), unit, tx)

    def _enable(self, c: _Connector, now: float) -> None:
        if c.model is not None:
            self._apply_limit(c, now)
            c.model.set_enabled(True, now)

    def _authorize_then_start(self, c: _Connector, token: str) -> None:
        if not self.online:  # LocalAuthorizeOffline
            self._start_tx(c, token, None, None)
            return

        def done(res: Any) -> None:
            info = getattr(res, "id_tag_info", None) or getattr(res, "id_token_info", None) or {}
            status = info.get("status") if isinstance(info, dict) else getattr(info, "status", None)
            if status == "Accepted":
                self._start_tx(c, token, None, None)
            else:
                log.info("sim_authorize_refused", charger=self.charger_id, token=token, status=status)

        if self.version == "1.6":
            self._enqueue(_Out(lambda: call16.Authorize(id_tag=token), done))
        else:
            self._enqueue(_Out(lambda: call201.Authorize(id_token={"idToken": token, "type": "ISO14443"}), done))

    def _start_tx(
        self,
        c: _Connector,
        id_tag: str,
        remote_start_id: int | None,
        profile: dict[str, Any] | None,
        *,
        authorized: bool = True,
    ) -> None:
        now = self.clock()
        if self.version == "1.6":
            if c.tx is not None or c.model is None:
                return
            self._tx_counter += 1
            tx = _Tx(f"local-{self._tx_counter}", id_tag, now, self._register(c))
            c.tx = tx
            c.next_meter = now
            self._install_tx_profile(c, profile)
            self._enable(c, now)

            def started(res: Any) -> None:
                tx.csms_id = int(res.transaction_id)
                info = res.id_tag_info if isinstance(res.id_tag_info, dict) else {}
                if info.get("status") not in (None, "Accepted") and c.tx is tx:
                    log.info("sim_tx_deauthorized", charger=self.charger_id, status=info.get("status"))
                    self._stop_tx(c, "DeAuthorized", "Deauthorized")

            meter_start = int(tx.meter_start_wh)
            self._enqueue(
                _Out(
                    lambda: call16.StartTransaction(
                        connector_id=c.id, id_tag=id_tag, meter_start=meter_start, timestamp=iso(now)
                    ),
                    started,
                    durable=True,
                )
            )
            self._status16(c, "Charging")
            return
        # 2.0.1
        if c.tx is None:
            self._tx_counter += 1
            txid = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
            c.tx = _Tx(txid, id_tag, now, self._register(c), remote_start_id=remote_start_id)
            c.next_meter = now
            trigger = "RemoteStart" if remote_start_id is not None else "CablePluggedIn"
            if remote_start_id is not None and c.model is not None:
                self._enable(c, now)
            self._install_tx_profile(c, profile)
            self._tx_event(c, "Started", trigger, id_token=id_tag or None)
        elif authorized:
            c.tx.id_tag = id_tag
            self._enable(c, now)
            self._tx_event(c, "Updated", "Authorized", id_token=id_tag)

    def _install_tx_profile(self, c: _Connector, profile: dict[str, Any] | None) -> None:
        if profile is None:
            return
        d = dict(profile)
        if self.version == "2.0.1" and c.tx is not None:
            d.setdefault("transaction_id", c.tx.local_id)
        try:
            p = parse_profile(d, version=self.version, connector=c.id, now=self.clock())
        except SimError as e:
            log.warning("sim_profile_rejected", charger=self.charger_id, reason=str(e))
            return
        ok, reason = self.engine.install(p, self._txref(c))
        if not ok:
            log.warning("sim_profile_rejected", charger=self.charger_id, profile=p.id, reason=reason)
        self._apply_limit(c, self.clock())

    def _stop_tx(self, c: _Connector, reason16: str, trigger201: str) -> None:
        tx = c.tx
        if tx is None:
            return
        now = self.clock()
        if c.model is not None:
            c.model.step(now)
        meter_stop = self._register(c)
        if self.version == "1.6":
            final = self._sampled16(c, "Transaction.End")

            def build() -> Any:
                return call16.StopTransaction(
                    meter_stop=int(meter_stop),
                    timestamp=iso(now),
                    transaction_id=tx.csms_id if tx.csms_id is not None else -1,
                    reason=reason16,
                    id_tag=tx.id_tag,
                    transaction_data=[final],
                )

            self._enqueue(_Out(build, durable=True))
        else:
            stopped = {"EVCommunicationLost": "EVDisconnected", "RemoteStop": "Remote"}.get(trigger201, "Other")
            if trigger201 == "Deauthorized":
                stopped = "DeAuthorized"
            if trigger201 == "ResetCommand":
                stopped = "ImmediateReset"
            self._tx_event(c, "Ended", trigger201, stopped_reason=stopped)
        tx.ended = True
        c.tx = None
        self.engine.end_transaction(c.id)
        if c.model is not None:
            c.model.set_enabled(False, now)
        self._apply_limit(c, now)
        if self.version == "1.6" and c.model is not None:
            self._status16(c, "Finishing")

    def _remote_start(
        self, id_tag: str, connector: int | None, remote_start_id: int | None, profile: dict[str, Any] | None
    ) -> str:
        if connector is not None and not 1 <= connector <= self.connectors:
            return "Rejected"
        if profile is not None and _PURPOSES.get(str(profile.get("charging_profile_purpose"))) != PURPOSE_TX:
            return "Rejected"
        cands = [self.connector(connector)] if connector else self._conns
        free = [c for c in cands if c.tx is None or (self.version == "2.0.1" and c.tx.id_tag == "")]
        if not free:
            return "Rejected"
        c = next((x for x in free if x.model is not None), free[0])
        if self.version == "1.6":
            if c.model is None:
                c.pending_remote = (id_tag, remote_start_id, profile)
            else:
                self._start_tx(c, id_tag, None, profile)
            return "Accepted"
        if c.tx is not None:  # EV plugged in, waiting for authorisation
            self._install_tx_profile(c, profile)
            c.tx.remote_start_id = remote_start_id
            c.tx.id_tag = id_tag
            self._enable(c, self.clock())
            self._tx_event(c, "Updated", "RemoteStart", id_token=id_tag)
        else:
            self._start_tx(c, id_tag, remote_start_id, profile)
        return "Accepted"

    def _remote_stop(self, transaction_id: str) -> str:
        for c in self._conns:
            if c.tx is not None and c.tx.ref_id == transaction_id:
                self._stop_tx(c, "Remote", "RemoteStop")
                return "Accepted"
        return "Rejected"

    def _data_transfer(self, vendor_id: str, message_id: str | None, data: Any) -> tuple[str, Any]:
        self.data_transfers.append((vendor_id, message_id, data))
        if self.data_transfer_vendors is not None and vendor_id not in self.data_transfer_vendors:
            return "UnknownVendorId", None
        return "Accepted", data

    def _schedule_reset(self, kind: str) -> None:
        async def later() -> None:
            await asyncio.sleep(0.05)
            for c in self._conns:
                if c.tx is not None:
                    self._stop_tx(c, "HardReset" if kind == "Hard" else "SoftReset", "ResetCommand")
            self._reset_pending = kind
            await asyncio.sleep(0.05)
            await self.disconnect()

        asyncio.get_running_loop().create_task(later())

    def _trigger(self, what: str, connector: int | None) -> str:
        targets = [self.connector(connector)] if connector else self._conns
        if what == "BootNotification":
            self._queue.appendleft(_Out(self._boot_payload))
        elif what == "Heartbeat":
            self._enqueue(_Out(self._heartbeat))
        elif what == "StatusNotification":
            for c in targets:
                self._enqueue(self._status_out(c))
        elif what == "MeterValues":
            for c in targets:
                self._queue_meter_values(c, trigger=True)
        elif what == "TransactionEvent" and self.version == "2.0.1":
            for c in targets:
                if c.tx is not None:
                    self._tx_event(c, "Updated", "Trigger", with_meter=True)
        else:
            return "NotImplemented"
        self._wake.set()
        return "Accepted"

    def _boot_payload(self) -> Any:
        if self.version == "1.6":
            return call16.BootNotification(charge_point_model=self.model_name, charge_point_vendor=self.vendor)
        return call201.BootNotification(
            charging_station={"model": self.model_name, "vendorName": self.vendor}, reason="Triggered"
        )

    def _heartbeat(self) -> Any:
        return call16.Heartbeat() if self.version == "1.6" else call201.Heartbeat()

    # ---- status ---------------------------------------------------------------------------------
    def _status16(self, c: _Connector, status: str) -> None:
        if status != c.status:
            c.status = status
            self._enqueue(self._status_out(c))

    def _status201(self, c: _Connector, status: str) -> None:
        if status != c.status:
            c.status = status
            self._enqueue(self._status_out(c))

    def _status_out(self, c: _Connector | None) -> _Out:
        now = self.clock()
        if self.version == "1.6":
            cid = 0 if c is None else c.id
            status = "Available" if c is None else c.status
            return _Out(
                lambda: call16.StatusNotification(
                    connector_id=cid, error_code="NoError", status=status, timestamp=iso(now)
                )
            )
        assert c is not None
        status = c.status
        return _Out(
            lambda: call201.StatusNotification(
                timestamp=iso(now), connector_status=status, evse_id=c.id, connector_id=1
            )
        )

    def _refresh_status(self, c: _Connector) -> None:
        if c.model is None or c.tx is None:
            return
        st = {
            "charging": ("Charging", "Charging"),
            "suspended_ev": ("SuspendedEV", "SuspendedEV"),
            "suspended_evse": ("SuspendedEVSE", "SuspendedEVSE"),
            "ev_connected": ("Preparing", "EVConnected"),
        }[c.model.state]
        if self.version == "1.6":
            self._status16(c, st[0])
        elif st[1] != c.charging_state and c.tx.id_tag:
            self._tx_event(c, "Updated", "ChargingStateChanged")

    # ---- meter values ---------------------------------------------------------------------------
    def _samples(self, c: _Connector) -> list[tuple[str, str | None, float, str, str]]:
        """(measurand, phase, value, unit, location)."""
        m = c.model
        out: list[tuple[str, str | None, float, str, str]] = []
        if m is not None and self.meter_interval_s > 0:  # 0: a charger that reports no current at all
            if self.kind == "ac":
                for i, a in enumerate(m.draw_a):
                    out.append(("Current.Import", f"L{i + 1}", round(a, 2), "A", "Outlet"))
            else:
                out.append(("Current.Import", None, round(m.dc_current_a, 2), "A", "Outlet"))
            offered = c.limit.limit if c.limit is not None else self.outlet.native_max
            if self.kind == "ac":
                out.append(("Current.Offered", None, round(offered, 2), "A", "Outlet"))
            else:
                out.append(("Power.Offered", None, round(offered, 1), "W", "Outlet"))
            out.append(("Power.Active.Import", None, round(m.draw_w, 1), "W", "Outlet"))
            out.append(("SoC", None, round(m.soc * 100.0, 1), "Percent", "EV"))
        out.append(("Energy.Active.Import.Register", None, round(self._register(c), 1), "Wh", "Outlet"))
        return out

    def _sampled16(self, c: _Connector, context: str) -> dict[str, Any]:
        values = []
        for meas, phase, v, unit, loc in self._samples(c):
            d = {"value": str(v), "context": context, "measurand": meas, "unit": unit, "location": loc}
            if phase:
                d["phase"] = phase
            values.append(d)
        return {"timestamp": iso(self.clock()), "sampledValue": values}

    def _sampled201(self, c: _Connector, context: str) -> dict[str, Any]:
        values = []
        for meas, phase, v, unit, loc in self._samples(c):
            d: dict[str, Any] = {
                "value": v,
                "context": context,
                "measurand": meas,
                "unitOfMeasure": {"unit": unit},
                "location": loc,
            }
            if phase:
                d["phase"] = phase
            values.append(d)
        return {"timestamp": iso(self.clock()), "sampledValue": values}

    def _queue_meter_values(self, c: _Connector, trigger: bool = False) -> None:
        context = "Trigger" if trigger else "Sample.Periodic"
        if self.version == "1.6":
            mv = self._sampled16(c, context)
            tx = c.tx

            def build() -> Any:
                tid = None if tx is None or tx.csms_id is None else tx.csms_id
                return call16.MeterValues(connector_id=c.id, meter_value=[mv], transaction_id=tid)

            self._enqueue(_Out(build, durable=tx is not None))
        elif c.tx is not None and not trigger:
            self._tx_event(c, "Updated", "MeterValuePeriodic", with_meter=True)
        else:
            mv201 = self._sampled201(c, context)
            self._enqueue(_Out(lambda: call201.MeterValues(evse_id=c.id, meter_value=[mv201])))

    def _tx_event(
        self,
        c: _Connector,
        event: str,
        trigger: str,
        *,
        id_token: str | None = None,
        stopped_reason: str | None = None,
        with_meter: bool = False,
    ) -> None:
        tx = c.tx
        if tx is None:
            return
        now = self.clock()
        state = "Idle"
        if c.model is not None:
            state = {"charging": "Charging", "suspended_ev": "SuspendedEV", "suspended_evse": "SuspendedEVSE"}.get(
                c.model.state, "EVConnected"
            )
        if event == "Ended":
            state = "EVConnected" if c.model is not None and trigger != "EVCommunicationLost" else "Idle"
        c.charging_state = state
        info: dict[str, Any] = {"transactionId": tx.local_id, "chargingState": state}
        if stopped_reason is not None:
            info["stoppedReason"] = stopped_reason
        if tx.remote_start_id is not None and event != "Ended":
            info["remoteStartId"] = tx.remote_start_id
        seq = tx.seq_no
        tx.seq_no += 1
        meter = None
        if with_meter or event in ("Started", "Ended"):
            ctx = {"Started": "Transaction.Begin", "Ended": "Transaction.End"}.get(event, "Sample.Periodic")
            if trigger == "Trigger":
                ctx = "Trigger"
            meter = [self._sampled201(c, ctx)]
        token = None if not id_token else {"idToken": id_token, "type": "ISO14443"}
        payload = call201.TransactionEvent(
            event_type=event,
            timestamp=iso(now),
            trigger_reason=trigger,
            seq_no=seq,
            transaction_info=info,
            meter_value=meter,
            evse={"id": c.id, "connectorId": 1},
            id_token=token,
            offline=not self.online or None,
        )
        self._enqueue(_Out(lambda: payload, durable=True))

    # ---- configuration --------------------------------------------------------------------------
    def _config16(self) -> dict[str, tuple[str, bool]]:
        units = ",".join({"A": "Current", "W": "Power"}[u] for u in sorted(self.engine.rate_units))
        return {
            "HeartbeatInterval": (str(int(self.heartbeat_interval_s)), False),
            "MeterValueSampleInterval": (str(int(self.meter_interval_s)), False),
            "MeterValuesSampledData": (self._config_extra["MeterValuesSampledData"], False),
            "NumberOfConnectors": (str(self.connectors), True),
            "AuthorizeRemoteTxRequests": ("false", True),
            "LocalAuthorizeOffline": ("true", True),
            "ChargingScheduleAllowedChargingRateUnit": (units, True),
            "ChargeProfileMaxStackLevel": (str(self.engine.max_stack_level), True),
            "ChargingScheduleMaxPeriods": (str(self.engine.max_periods), True),
            "MaxChargingProfilesInstalled": ("64", True),
            "SupportedFeatureProfiles": ("Core,SmartCharging,RemoteTrigger", True),
        }

    def _change_config(self, key: str, value: str) -> str:
        conf = self._config16()
        if key not in conf:
            return "NotSupported"
        if conf[key][1]:
            return "Rejected"
        if key == "MeterValuesSampledData":
            self._config_extra[key] = value
            return "Accepted"
        try:
            v = float(value)
        except ValueError:
            return "Rejected"
        if v <= 0:
            return "Rejected"
        if key == "HeartbeatInterval":
            self.heartbeat_interval_s = v
            self._next_heartbeat = self.clock() + v
        else:
            self.meter_interval_s = v
        return "Accepted"

    def _variables(self) -> dict[tuple[str, str], tuple[str, bool]]:
        return {
            ("SmartChargingCtrlr", "Enabled"): ("true", False),
            ("SmartChargingCtrlr", "Available"): ("true", True),
            ("SmartChargingCtrlr", "RateUnit"): (",".join(sorted(self.engine.rate_units)), True),
            ("SmartChargingCtrlr", "PeriodsPerSchedule"): (str(self.engine.max_periods), True),
            ("SmartChargingCtrlr", "ProfileStackLevel"): (str(self.engine.max_stack_level), True),
            ("SmartChargingCtrlr", "Entries"): (str(len(self.engine.profiles)), True),
            ("SmartChargingCtrlr", "ExternalControlSignalsEnabled"): ("false", True),
            ("SmartChargingCtrlr", "LimitChangeSignificance"): ("0.1", False),
            ("SmartChargingCtrlr", "PhaseSwitchingAvailable"): ("false", True),
            ("OCPPCommCtrlr", "HeartbeatInterval"): (str(int(self.heartbeat_interval_s)), False),
            ("SampledDataCtrlr", "TxUpdatedInterval"): (str(int(self.meter_interval_s)), False),
            ("SampledDataCtrlr", "TxUpdatedMeasurands"): (_MEASURANDS_201, True),
        }

    def _get_variable(self, d: Mapping[str, Any]) -> dict[str, Any]:
        comp, var = d.get("component", {}), d.get("variable", {})
        key = (str(comp.get("name")), str(var.get("name")))
        out: dict[str, Any] = {"component": snake_to_camel_case(comp), "variable": snake_to_camel_case(var)}
        table = self._variables()
        if key in table:
            out.update(attributeStatus="Accepted", attributeType="Actual", attributeValue=table[key][0])
        elif not any(k[0] == key[0] for k in table):
            out["attributeStatus"] = "UnknownComponent"
        else:
            out["attributeStatus"] = "UnknownVariable"
        return out

    def _set_variable(self, d: Mapping[str, Any]) -> dict[str, Any]:
        comp, var = d.get("component", {}), d.get("variable", {})
        key = (str(comp.get("name")), str(var.get("name")))
        out: dict[str, Any] = {
            "component": snake_to_camel_case(comp),
            "variable": snake_to_camel_case(var),
            "attributeType": "Actual",
        }
        table = self._variables()
        if key not in table:
            known = any(k[0] == key[0] for k in table)
            out["attributeStatus"] = "UnknownVariable" if known else "UnknownComponent"
            return out
        if table[key][1]:
            out["attributeStatus"] = "Rejected"
            return out
        try:
            v = float(d.get("attribute_value", ""))
        except ValueError:
            out["attributeStatus"] = "Rejected"
            return out
        if key[1] == "HeartbeatInterval" and v > 0:
            self.heartbeat_interval_s = v
            self._next_heartbeat = self.clock() + v
        elif key[1] == "TxUpdatedInterval" and v > 0:
            self.meter_interval_s = v
        elif key[0] != "SmartChargingCtrlr" or v < 0:
            out["attributeStatus"] = "Rejected"
            return out
        out["attributeStatus"] = "Accepted"
        return out


_MEASURANDS_16 = "Current.Import,Current.Offered,Power.Active.Import,Energy.Active.Import.Register,SoC"
_MEASURANDS_201 = _MEASURANDS_16


# ---- CLI ----------------------------------------------------------------------------------------
def _parse_args(argv: Iterable[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m sitesim.charger", description="Run simulated OCPP chargers.")
    ap.add_argument("--url", default="ws://127.0.0.1:9000", help="server URL; the charger id is appended")
    ap.add_argument("--id", default="CP1", help="charger id (with --count: prefix)")
    ap.add_argument("--count", type=int, default=1, help="how many chargers (ids ID1..IDn when > 1)")
    ap.add_argument("--version", choices=("1.6", "2.0.1"), default="1.6")
    ap.add_argument("--kind", choices=("ac", "dc"), default="ac")
    ap.add_argument("--phases", type=int, choices=(1, 3), default=3)
    ap.add_argument("--connectors", type=int, default=1)
    ap.add_argument("--password", default=None, help="HTTP Basic auth password")
    ap.add_argument("--meter-interval-s", type=float, default=10.0)
    ap.add_argument("--ev", action="store_true", help="plug in a random EV with token TAG-<id> at start")
    ap.add_argument("--seed", type=int, default=1)
    return ap.parse_args(None if argv is None else list(argv))


async def _main_async(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    ids = [args.id] if args.count == 1 else [f"{args.id}{i}" for i in range(1, args.count + 1)]
    chargers = [
        SimCharger(
            cid,
            args.version,
            args.kind,
            args.phases,
            args.connectors,
            args.url,
            password=args.password,
            meter_interval_s=args.meter_interval_s,
            validate_schemas=args.count <= 50,
        )
        for cid in ids
    ]
    tasks = [asyncio.create_task(ch.run()) for ch in chargers]
    if args.ev:
        for ch in chargers:
            ch.plug_in(EvSpec.random(rng, now=time.time(), id_tag=f"TAG-{ch.charger_id}"))
    await asyncio.gather(*tasks)


def main(argv: Iterable[str] | None = None) -> int:
    args = _parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main_async(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "EffectiveLimit",
    "Period",
    "Profile",
    "ProfileEngine",
    "ReceivedCall",
    "SentCall",
    "SimCharger",
    "Ticker",
    "TxRef",
    "iso",
    "parse_iso",
    "parse_profile",
    "shared_ticker",
]
