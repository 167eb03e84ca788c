"""Frozen runtime values: what the loop measures (Snapshot) and what it decides (Allocation).

All times are monotonic seconds (``time.monotonic()`` in the daemon, any float in tests).
Per-phase tuples are indexed by *site* phase (0 = L1, 1 = L2, 2 = L3) and have as many
entries as the service has phases; the layers that measure map device phases to site phases.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class ChargerState(enum.StrEnum):
    NO_EV = "no_ev"
    EV_CONNECTED = "ev_connected"  # plugged in, not (yet) drawing: preparing, authorizing
    CHARGING = "charging"
    SUSPENDED_EV = "suspended_ev"  # the EV paused itself (full, or by its own choice)
    SUSPENDED_EVSE = "suspended_evse"  # the charger paused it (e.g. limit 0)
    FAULTED = "faulted"
    UNAVAILABLE = "unavailable"

    @property
    def has_session(self) -> bool:
        return self in _SESSION_STATES


_SESSION_STATES = {
    ChargerState.EV_CONNECTED,
    ChargerState.CHARGING,
    ChargerState.SUSPENDED_EV,
    ChargerState.SUSPENDED_EVSE,
}


@dataclass(frozen=True)
class MeterReading:
    """One meter's reading, already mapped to site phases, CT ratio and direction applied."""

    current_a: tuple[float, ...]  # per site phase
    at: float  # monotonic time of the reading
    valid: bool = True
    reason: str = ""  # why it is invalid, if it is
    voltage_v: tuple[float, ...] | None = None
    power_w: tuple[float, ...] | None = None
    total_power_w: float | None = None
    frequency_hz: float | None = None
    energy_import_wh: float | None = None


@dataclass(frozen=True)
class Session:
    started_at: float  # monotonic
    transaction_id: str | None = None
    id_token: str | None = None
    priority: str | None = None  # overrides the charger's class when set
    departure_at: float | None = None  # monotonic, if the driver or fleet told us
    energy_wh: float = 0.0  # imported in this session, from the charger's energy register (0 until it reports)
    energy_at: float | None = None  # monotonic time of the register reading energy_wh is from (None: none yet)


@dataclass(frozen=True)
class Actuation:
    """What the OCPP layer knows of the limits a charger was sent: the allocator's feedback.

    Limits are in the charger's unit (A per phase for AC, W for DC); times are monotonic.
    A limit counts from the moment the charger accepted it, not from when it was decided.
    """

    # the fail-safe profile and a limit profile are installed and the charger accepted them:
    # until then the charger may draw anything up to its maximum
    controlled: bool = False
    failsafe_installed: bool = False  # the persistent fail-safe profile was accepted
    accepted_limit: float | None = None  # the limit profile the charger last accepted
    accepted_at: float | None = None  # when that acceptance arrived
    pending_limit: float | None = None  # sent or queued, not answered yet (None: nothing pending)
    pending_since: float | None = None
    rejected_at: float | None = None  # when a limit was last rejected (or its CALL failed)
    lease_until: float | None = None  # when the accepted limit profile lapses (the fail-safe takes over)


@dataclass(frozen=True)
class ChargerSnapshot:
    id: str
    online: bool  # its OCPP connection is up
    state: ChargerState = ChargerState.NO_EV
    # measured line current per *site* phase (A), the station's total over its connectors
    draw_a: tuple[float, ...] | None = None
    draw_w: float | None = None  # measured power (W; DC output or AC active power), the station's total
    # when the draw was measured, by the charger's own timestamp (monotonic); for a station total,
    # the oldest of the connectors' reports in it
    draw_at: float | None = None
    session: Session | None = None
    noncompliant: bool = False  # flagged by the control loop
    active_connectors: int = 1  # connectors with a session (each gets at least the minimum, or none)
    state_changed_at: float | None = None  # when the state last changed (a report before it is stale)
    # None: the caller does not model actuation (unit tests of the allocator): a decided limit counts as
    # accepted at once. The daemon always fills it in.
    actuation: Actuation | None = None


class BudgetCap(NamedTuple):
    """A budget source that lowers the service limit (gateway.budget): the remote cap, the demand window, a
    tariff period's cap. The service constraint per phase is min(service limit, every cap) - service margin."""

    name: str  # "remote:<id>", "demand-window", "tariff:<period>"; a binding cap reads "capped:<name>/L<n>"
    limit_a: tuple[float, ...]  # per service phase, A at the service (before the service's margin)


class ChargerCap(NamedTuple):
    """An upper bound on one charger's share (solar modes; later the planner)."""

    limit_a: float  # line current per loaded site phase (A) the charger may get at most
    reason: str  # e.g. "solar:surplus", "solar:surplus+min"


class ChargerTarget(NamedTuple):
    """The planner's share for one charger (gateway.planner), applied by gateway.allocation.targets inside the
    same safety rules: it lowers a bound or orders the filling, it never raises a limit above the safe cap."""

    target_a: float  # line current per loaded site phase (A) the plan wants the charger to get now
    reason: str  # "plan:deadline" | "plan:cheap-period"
    hold: bool = False  # True: at most the target (deferred); False: the target first, then the max-min rest


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    meters: Mapping[str, MeterReading | None]  # None: never read / unknown
    chargers: Mapping[str, ChargerSnapshot]
    caps: tuple[BudgetCap, ...] = ()  # budget sources on the service (the service limit itself is not one)
    charger_caps: Mapping[str, ChargerCap] = field(default_factory=dict)
    targets: Mapping[str, ChargerTarget] = field(default_factory=dict)  # the planner's (gateway.planner)


class ChargerLimit(NamedTuple):
    """One charger's limit for this tick (immutable; a NamedTuple because the allocator makes
    one per charger per tick and dataclass construction is several times slower)."""

    limit: float  # in the charger's unit: A per phase (AC) or W (DC)
    line_a: float  # line current per loaded site phase that the limit allows (A)
    reason: str
    # the most line current it may draw from now on: the limit, or more while it follows a decrease, while a
    # higher limit is pending, or while offline under its lease or fail-safe (its reserve in the allocation)
    may_draw_a: float = 0.0


class CircuitStatus(NamedTuple):
    """One circuit's figures for this tick (immutable; a NamedTuple, as ChargerLimit, because the allocator makes
    one per circuit per tick)."""

    limit_a: float  # effective per-phase limit (a budget cap may lower the service's)
    measured_a: tuple[float, ...] | None  # None: no meter, or unknown
    non_ev_a: tuple[float, ...]
    headroom_a: tuple[float, ...]  # limit - margin - non-EV load
    allocated_a: tuple[float, ...]  # EV current that may be drawn beneath: every reserve, fixed loads included
    state: str  # "ok" | "unmetered" | "stale:<meter>" | "failsafe:<meter>" (an ancestor's meter)


@dataclass(frozen=True)
class Allocation:
    at: float
    limits: Mapping[str, ChargerLimit]
    circuits: Mapping[str, CircuitStatus] = field(default_factory=dict)
    mode: str = "normal"  # "normal" | "partial-failsafe" | "failsafe"
    failsafe_meters: tuple[str, ...] = ()

    def limit_of(self, charger_id: str) -> float | None:
        cl = self.limits.get(charger_id)
        return None if cl is None else cl.limit
