"""Time-of-use: which tariff period is active, its price and cap, and the schedule ahead (pure).

Periods are in the tariff's local time (its timezone): across a DST change the clock times stay, so the
period 08:00-20:00 is 12 real hours on most days, 11 or 13 on the days the clocks change.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from gateway.budget.config import Season, TariffConfig, TariffPeriod, zone

STEP_S = 60.0  # periods start and end on whole minutes


class Active(NamedTuple):
    season: Season
    period: TariffPeriod | None  # None: no period (allow_gaps): no price, no cap
    until: float  # wall (UTC epoch): when this period ends (bounded by the look-ahead)


class Slot(NamedTuple):
    start: float  # wall
    end: float
    season: str
    period: str | None
    price_per_kwh: float | None
    cap_kw: float | None


def _lookup(cfg: TariffConfig, local: datetime) -> tuple[Season, TariffPeriod | None]:
    season = next((s for s in cfg.seasons if local.month in s.months), cfg.seasons[0])
    i = season.week[local.weekday() * 1440 + local.hour * 60 + local.minute]
    return season, (season.periods[i] if i >= 0 else None)


def period_at(cfg: TariffConfig, wall: float) -> tuple[Season, TariffPeriod | None]:
    """The season and the period at a wall-clock instant."""
    return _lookup(cfg, datetime.fromtimestamp(wall, zone(cfg.timezone)))


def active(cfg: TariffConfig, now_wall: float, horizon_s: float = 8 * 86400.0) -> Active:
    season, period = period_at(cfg, now_wall)
    key = (season.name, id(period))
    t = (now_wall // STEP_S + 1) * STEP_S
    end = now_wall + horizon_s
    while t < end:
        s, p = period_at(cfg, t)
        if (s.name, id(p)) != key:
            return Active(season, period, t)
        t += STEP_S
    return Active(season, period, end)


def schedule(cfg: TariffConfig, now_wall: float, horizon_s: float = 48 * 3600.0) -> list[Slot]:
    """The periods from now over the horizon (for the planner and the cloud), as contiguous slots."""
    out: list[Slot] = []
    t, end = now_wall, now_wall + horizon_s
    while t < end:
        a = active(cfg, t, end - t)
        p = a.period
        out.append(Slot(t, a.until, a.season.name, None if p is None else p.name,
                        None if p is None else p.price_per_kwh, None if p is None else p.cap_kw))
        t = a.until
    return out
