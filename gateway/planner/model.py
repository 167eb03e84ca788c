"""Frozen values the planner reads and returns (no IO, no clock: every time is a float on one clock)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple


class Taper(NamedTuple):
    """The EV's charging curve where known: flat up to ``taper_start_soc``, then linear down to
    ``end_fraction`` of its maximum at SoC 1 (the curve of sitesim.ev and hil.ideal)."""

    capacity_wh: float
    soc: float  # now, 0..1
    taper_start_soc: float = 0.8
    end_fraction: float = 0.1


@dataclass(frozen=True)
class PlanSession:
    """One session as the planner sees it. ``need_wh`` None or ``departure_at`` None: unknown needs, the
    session keeps today's behaviour (max-min fairness) and the plan reserves ``reserve_a`` for it."""

    charger_id: str
    need_wh: float | None  # still wanted (energy wanted - delivered so far)
    departure_at: float | None
    weight: float = 1.0  # its priority class's weight
    ev_max_a: float | None = None  # the EV's maximum line current (A per loaded phase) where known
    ac_phases: int | None = None  # phases the EV's on-board charger uses (three-phase chargers); None: all
    taper: Taper | None = None
    reserve_a: float | None = None  # unknown needs: line A held for it over the horizon (None: the charger's minimum)
    source: str = ""  # where the needs came from (telemetry)
    delivered_wh: float = 0.0  # the session's energy so far (with need_wh: what it wants in all)
    # an expected session (a free charger of a class that expects its vehicles back, e.g. a fleet depot): in
    # the plan it holds room for a vehicle not here yet (no energy is deferred onto room it will need), it gets
    # no target and no projection
    expected: bool = False


class PriceSlot(NamedTuple):
    start: float
    end: float
    price_per_kwh: float | None  # None: no price (a gap)
    cap_kw: float | None = None  # a tariff period's cap on the service (import)


@dataclass(frozen=True)
class BudgetView:
    """What the planner reads of gateway.budget: the tariff schedule ahead (tariff.schedule), the budget caps in
    force now (per service phase, A at the service, before the margin) and the demand target."""

    slots: tuple[PriceSlot, ...] = ()
    caps_now_a: tuple[float, ...] | None = None
    demand_target_kw: float | None = None


@dataclass(frozen=True)
class Forecast:
    """The non-EV load per circuit subtree and site phase (A), as a step function: ``points`` sorted by time,
    each the load from then on (before the first point: the first). Empty: the circuits' worst case."""

    points: tuple[tuple[float, Mapping[str, tuple[float, ...]]], ...] = ()

    @classmethod
    def flat(cls, load: Mapping[str, tuple[float, ...]]) -> Forecast:
        return cls(((float("-inf"), dict(load)),))


class ChargerPlan(NamedTuple):
    target_a: float  # line A per loaded phase for the next ticks
    reason: str  # "plan:deadline" | "plan:cheap-period"
    hold: bool  # True: not above the target (deferred to a cheaper period); False: at least the target


class Projection(NamedTuple):
    projected_wh: float  # energy the plan delivers before departure (from now)
    need_wh: float
    at_risk: bool  # the plan cannot deliver the need by departure
    departure_at: float


@dataclass(frozen=True)
class Plan:
    at: float
    status: str  # "optimal" | "no-sessions" | "failed:<why>" | "time-limit"
    targets: Mapping[str, ChargerPlan] = field(default_factory=dict)
    projections: Mapping[str, Projection] = field(default_factory=dict)
    slot_s: float = 900.0
    horizon_end: float = 0.0
    cost: float = 0.0  # energy cost of the plan over the horizon
    peak_kw: float = 0.0  # the plan's highest service import (EV + forecast non-EV)

    @property
    def ok(self) -> bool:
        return self.status in ("optimal", "no-sessions")


@dataclass(frozen=True)
class PlannerState:
    """What the planner remembers between plans: which sessions it already announced as at risk (the event
    goes out once per session, again only after it recovered)."""

    at_risk: frozenset[str] = frozenset()
    events: tuple[tuple[str, Mapping[str, object]], ...] = ()  # this plan's events (session_at_risk)
    targets: Mapping[str, float] = field(default_factory=dict)  # the last plan's share now per charger (line A)


@dataclass(frozen=True)
class PlannerConfig:
    slot_s: float = 900.0  # the LP's time step
    max_horizon_s: float = 36 * 3600.0  # departures beyond this are planned as if at its end
    time_limit_s: float = 0.8  # HiGHS's limit; beyond it the plan fails (the allocator falls back)
    at_risk_wh: float = 100.0  # a projected shortfall above this (and 1 % of the need) is at risk
    # robustness: the plan counts on this share of the room after the present slot (the real chargers and EVs
    # lose some to ramps, response delays, floors and hysteresis), and plans each need this much higher
    future_room_fraction: float = 0.92
    need_margin: float = 0.02
    # tie-break among equally good plans: a slot's delay costs each session this much more per slot of its own
    # laxity lost (least laxity first); 0: only the horizon's "sooner is slightly preferred"
    laxity_weight: float = 1.0
    # stability: a share now below the last plan's costs this (per Wh, relative to the tie-breaks
    # above; far below the shortfall's and a tariff's price steps): an LP has many equally good splits of the
    # room, and every switch between them waits for EVs to follow decreases before increases are granted
    stickiness: float = 100.0
    # an EV that does not tell its battery (ISO 15118 AC: energy and departure only) is planned with a taper
    # all the same: the last assumed_taper_wh of its session (at most assumed_taper_share of what it wants in
    # all: a small top-up is not assumed to end at a full battery) at a rate falling linearly to
    # assumed_taper_end_fraction of its maximum (a plan that counts on the full rate to the last Wh leaves it
    # short at departure); 0: none
    assumed_taper_wh: float = 15000.0
    assumed_taper_share: float = 0.25
    assumed_taper_end_fraction: float = 0.2
