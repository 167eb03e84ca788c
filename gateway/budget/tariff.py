"""Time-of-use: which tariff period is active, its price and cap, and the schedule ahead (pure).

Periods are in the tariff's local time (its timezone): across a DST change the clock times stay, so the
period 08:00-20:00 is 12 real hours on most days, 11 or 13 on the days the clocks change.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import NamedTuple

from gateway.budget.config import MINUTES_PER_WEEK, Season, TariffConfig, TariffPeriod, zone

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
    """The period now and when it ends: found on the season's week table in local time, checked on the real
    clock (a DST change in between); where that check fails, by a scan minute by minute."""
    season, period = period_at(cfg, now_wall)
    end = now_wall + horizon_s
    until = _end_by_table(cfg, now_wall, season)
    if until is not None:
        until = min(until, end)
        same = _key(*period_at(cfg, max(now_wall, until - STEP_S / 2))) == _key(season, period)
        if same and (until >= end or _key(*period_at(cfg, until)) != _key(season, period)):
            return Active(season, period, until)
    key = _key(season, period)
    t = (now_wall // STEP_S + 1) * STEP_S
    while t < end:
        if _key(*period_at(cfg, t)) != key:
            return Active(season, period, t)
        t += STEP_S
    return Active(season, period, end)


def _key(season: Season, period: TariffPeriod | None) -> tuple[str, int]:
    return season.name, id(period)


def _end_by_table(cfg: TariffConfig, now_wall: float, season: Season) -> float | None:
    tz = zone(cfg.timezone)
    local = datetime.fromtimestamp(now_wall, tz)
    week = season.week
    m0 = local.weekday() * 1440 + local.hour * 60 + local.minute
    cur = week[m0]
    n = 1
    while n <= MINUTES_PER_WEEK and week[(m0 + n) % MINUTES_PER_WEEK] == cur:
        n += 1
    naive = local.replace(second=0, microsecond=0, tzinfo=None) + timedelta(minutes=n)
    month = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    for _ in range(12):  # the season ends at the start of the first month outside it
        month = month.replace(year=month.year + 1, month=1) if month.month == 12 else month.replace(
            month=month.month + 1)
        if month.month not in season.months:
            break
    else:
        if n > MINUTES_PER_WEEK:
            return math.inf  # one period all year round
    if n > MINUTES_PER_WEEK or naive > month:
        naive = month
    try:
        return naive.replace(tzinfo=tz).timestamp()
    except (OverflowError, ValueError):
        return None


def schedule(cfg: TariffConfig, now_wall: float, horizon_s: float = 48 * 3600.0) -> list[Slot]:
    """The periods from now over the horizon (for the planner and the cloud), as contiguous slots; neighbours
    with the same season, period, price and cap are one slot."""
    out: list[Slot] = []
    t, end = now_wall, now_wall + horizon_s
    while t < end:
        a = active(cfg, t, end - t)
        p = a.period
        slot = Slot(t, a.until, a.season.name, None if p is None else p.name,
                    None if p is None else p.price_per_kwh, None if p is None else p.cap_kw)
        if out and out[-1][2:] == slot[2:]:  # the same period in two pieces (e.g. Friday night and Saturday)
            slot = slot._replace(start=out.pop().start)
        out.append(slot)
        t = a.until
    return out
