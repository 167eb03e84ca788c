"""The site budget over time: the sources that lower the service limit, and the caps on single chargers.

* ``remote``: the cloud's temporary cap over MQTT (``remote:<id>``);
* ``demand``: demand-charge control, the billing interval's average kept under a target (``demand-window``);
* ``tariff``: a time-of-use schedule, whose active period's cap is a source (``tariff:<period>``);
* ``solar`` (the solar branch): surplus modes as caps on chargers.

``compute.budget(inputs, cfg, state, now_mono, now_wall) -> (Budget, BudgetState)`` is pure; ``service``
holds the state, persists it under state_dir and receives the commands; the control loop calls
``BudgetService.tick`` once per tick and puts ``Budget.caps`` / ``Budget.charger_caps`` in the snapshot. The
allocator takes min(service limit, every cap) per phase; the binding cap names the reason
(``capped:demand-window/L1``). A cap only ever lowers the limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.budget.solar_config import SolarFigures
from gateway.model import BudgetCap, ChargerCap


@dataclass(frozen=True)
class DemandFigures:
    """The billing interval now (wall-clock times are UTC epoch seconds)."""

    interval_start: float
    interval_end: float
    energy_wh: float  # imported since the interval began
    projected_kw: float  # the interval's average if the present import went on to its end
    target_kw: float  # as configured
    effective_target_kw: float  # raised to the month's peak when raise_to_month_peak
    month_peak_kw: float  # the highest interval average of the calendar month (site time) so far
    allowed_ev_kw: float  # what the EVs may draw for the rest of the interval
    forecast_non_ev_kw: float
    cap_a: float  # the demand-window cap at the service, A per line
    measurement: str  # "register" | "power" (integrated)
    estimated_s: float = 0.0  # seconds of the interval whose energy is an estimate (a restart, a meter gap)


@dataclass(frozen=True)
class TariffFigures:
    season: str
    period: str | None  # None: a gap (no price)
    price_per_kwh: float | None
    cap_kw: float | None
    until: float  # wall: when the period ends
    source: str  # "config" | "mqtt:<id>"


@dataclass(frozen=True)
class DemandState:
    """What the demand window remembers between ticks (and across a restart, from state_dir)."""

    interval_start: float  # wall (UTC epoch) of the interval's start
    energy_wh: float  # imported in this interval so far: max(integrated, register difference)
    integrated_wh: float  # the integrated power (gaps: the register's difference, or the high-side estimate)
    register_wh: float | None  # the service meter's register at the last tick (None: it has none)
    register_start_wh: float | None  # the register at the interval's start (None: unknown, a fresh start)
    last_wall: float
    last_mono: float | None  # None: restored from disk (another boot's monotonic clock)
    power_w: float | None  # the import at the last tick
    non_ev_avg_w: float | None  # the non-EV load's moving average
    month: str  # "YYYY-MM" of the interval, site time
    month_peak_kw: float
    warned: bool = False  # the projected-over event went out for this interval
    estimated_s: float = 0.0


@dataclass(frozen=True)
class TariffMemo:
    """The active tariff period until it ends (finding the end scans ahead: done once per period)."""

    source: str
    season: str
    index: int  # into the season's periods; -1: a gap
    until: float  # wall


@dataclass(frozen=True)
class BudgetState:
    demand: DemandState | None = None
    tariff: TariffMemo | None = None


Event = tuple[str, Mapping[str, object]]


@dataclass(frozen=True)
class Budget:
    caps: tuple[BudgetCap, ...] = ()
    charger_caps: Mapping[str, ChargerCap] = field(default_factory=dict)
    demand: DemandFigures | None = None
    tariff: TariffFigures | None = None
    solar: SolarFigures | None = None  # PV power, surplus, export (gateway.budget.solar)
    events: tuple[Event, ...] = ()  # this tick's: demand_projected_over, demand_interval_over, clock_jump

    def binding(self) -> BudgetCap | None:
        """The lowest cap (on its lowest phase), if any."""
        return min(self.caps, key=lambda c: min(c.limit_a, default=float("inf")), default=None)


__all__ = ["Budget", "BudgetCap", "BudgetState", "ChargerCap", "DemandFigures", "DemandState", "TariffFigures"]
