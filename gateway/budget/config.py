"""[budget] section: the site budget over time (demand-charge control and a time-of-use tariff).

::

    [budget]
    timezone = "Europe/Berlin"       # the site's IANA timezone: billing intervals, months and tariff periods

    [budget.demand]
    target_kw = 60                   # the highest average demand (kW) of a billing interval to aim for
    interval_min = 15                # billing interval: 15, 30 or 60 minutes, aligned to the site's clock
    raise_to_month_peak = false      # let the target rise to the month's billed peak already set
    measurement = "auto"             # "auto" (the register when the service meter has one) | "register" | "power"
    forecast_s = 300                 # the non-EV load's forecast: its average over about this long

    [budget.tariff]
    timezone = "Europe/Berlin"       # optional: defaults to [budget] timezone
    allow_gaps = false               # true: hours no period covers have no price (and no cap)

    [[budget.tariff.periods]]        # all year; or inside [[budget.tariff.seasons]] (name, start_month, end_month)
    name = "peak"
    days = ["mon-fri"]               # "mon".."sun", ranges "mon-fri"; default every day
    start = "08:00"                  # local time; end "24:00" is midnight; end before start runs past midnight
    end = "20:00"
    price_per_kwh = 0.32
    cap_kw = 40                      # optional: the service's import is capped at this during the period

The tariff can be replaced over MQTT (``cmd/tariff``) with the same table as JSON, validated by `parse_tariff`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway import electrical
from gateway.budget.openadr_config import OpenADRConfig, parse_openadr
from gateway.budget.openadr_config import describe as describe_openadr
from gateway.budget.solar_config import SolarConfig, parse_solar
from gateway.confkit import Table, check_ident
from gateway.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config import ServiceConfig

INTERVALS_MIN = (15, 30, 60)
MINUTES_PER_WEEK = 7 * 1440
DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_PERIODS = 200
MAX_PRICE = 1000.0  # per kWh, in the tariff's currency
Measurement = Literal["auto", "register", "power"]
_TIME_RE = re.compile(r"([01]\d|2[0-4]):([0-5]\d)")


@dataclass(frozen=True)
class DemandConfig:
    target_kw: float
    interval_min: int = 15
    raise_to_month_peak: bool = False
    measurement: Measurement = "auto"
    forecast_s: float = 300.0

    @property
    def interval_s(self) -> float:
        return self.interval_min * 60.0


@dataclass(frozen=True)
class TariffPeriod:
    name: str
    days: frozenset[int]  # 0 = Monday
    start_min: int  # minutes after local midnight
    end_min: int  # exclusive, 1..1440; below start_min: runs past midnight into the next day
    price_per_kwh: float
    cap_kw: float | None = None
    key: str = ""


@dataclass(frozen=True)
class Season:
    name: str
    months: frozenset[int]  # 1..12
    periods: tuple[TariffPeriod, ...]
    # minute of the week (Monday 00:00 = 0) -> index into periods, -1: no period (allow_gaps)
    week: tuple[int, ...] = field(default=(), repr=False, compare=False)


@dataclass(frozen=True)
class TariffConfig:
    timezone: str
    seasons: tuple[Season, ...]
    allow_gaps: bool = False
    source: str = "config"  # "config" | "mqtt:<id>"


@dataclass(frozen=True)
class BudgetConfig:
    timezone: str = "UTC"
    demand: DemandConfig | None = None
    tariff: TariffConfig | None = None
    solar: SolarConfig = field(default_factory=SolarConfig)  # [budget.solar] (gateway/budget/solar_config.py)
    openadr: OpenADRConfig | None = None  # [budget.openadr] (gateway.budget.openadr_config)

    @property
    def active(self) -> bool:
        return self.demand is not None or self.tariff is not None or self.solar.enabled or self.openadr is not None


@functools.lru_cache(maxsize=64)
def zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def check_timezone(t: Table, key: str, default: str | None = None) -> str:
    name = t.str(key, default)
    try:
        if ".." in name or name.startswith("/"):
            raise ValueError(name)
        zone(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise t.error(key, f"unknown timezone {name[:60]!r} (an IANA name such as 'Europe/Berlin')") from None
    return name


def parse_budget(t: Table | None, service: ServiceConfig, service_meter_has_energy: bool | None) -> BudgetConfig:
    """``service``: the ServiceConfig; ``service_meter_has_energy``: None when the service has no meter."""
    if t is None:
        return BudgetConfig()
    tz = check_timezone(t, "timezone", "UTC") if t.has("timezone") else None
    tt = t.table("tariff")
    tariff = parse_tariff(tt, tz or "UTC") if tt is not None else None
    site_tz = tz or (tariff.timezone if tariff is not None else "UTC")
    demand = _parse_demand(t.table("demand"), service, service_meter_has_energy)
    solar = parse_solar(t.table("solar"))  # names checked against the site by solar_config.check_solar
    openadr = parse_openadr(t.table("openadr"), service)
    t.done()
    return BudgetConfig(timezone=site_tz, demand=demand, tariff=tariff, solar=solar, openadr=openadr)


def _parse_demand(t: Table | None, service: ServiceConfig, has_energy: bool | None) -> DemandConfig | None:
    if t is None:
        return None
    for bad, good in (("target_w", "target_kw"), ("target_a", "target_kw"), ("interval_s", "interval_min"),
                      ("interval_h", "interval_min")):
        if t.has(bad):
            raise t.error(bad, f"wrong unit: this key is '{good}'; units are part of key names")
    target = t.float("target_kw", gt=0, max=1e6)
    interval = t.int("interval_min", 15)
    if interval not in INTERVALS_MIN:
        raise t.error("interval_min", f"must be one of {', '.join(map(str, INTERVALS_MIN))} (minutes), got {interval}")
    capacity_kw = electrical.service_power_w(service, service.limit_a) / 1000.0
    if target > capacity_kw + 1e-9:
        raise t.error(
            "target_kw",
            f"{target:g} kW is above the service's capacity ({capacity_kw:.1f} kW = {service.limit_a:g} A per "
            f"line): it could never bind",
        )
    raw = t.choice("measurement", ("auto", "register", "power"), "auto")
    measurement: Measurement = "register" if raw == "register" else "power" if raw == "power" else "auto"
    if has_energy is None:
        raise ConfigError(
            t.path, "demand control needs a meter on the service ([[meters]] with circuit = the service's id)"
        )
    if measurement == "register" and not has_energy:
        raise t.error(
            "measurement",
            "the service meter's register map has no energy_import_wh (or its CT is inverted): use \"power\" "
            "(integrated) or \"auto\"",
        )
    c = DemandConfig(
        target_kw=target,
        interval_min=interval,
        raise_to_month_peak=t.bool("raise_to_month_peak", False),
        measurement=measurement,
        forecast_s=t.float("forecast_s", 300.0, min=10, max=3600),
    )
    t.done()
    return c


def parse_tariff(t: Table, default_tz: str, source: str = "config") -> TariffConfig:
    """[budget.tariff], or the same table received over MQTT as JSON (every refusal names the key path)."""
    for bad in ("price_per_wh", "price_per_mwh"):
        if t.has(bad):
            raise t.error(bad, "wrong unit: prices are per kWh ('price_per_kwh')")
    tz = check_timezone(t, "timezone", default_tz)
    allow_gaps = t.bool("allow_gaps", False)
    seasons_t = t.tables("seasons")
    periods_t = t.tables("periods")
    if seasons_t and periods_t:
        raise t.error("periods", "give periods either here (all year) or inside [[seasons]], not both")
    if not seasons_t and not periods_t:
        raise t.error("periods", "a tariff needs at least one period")
    seasons: list[Season] = []
    if periods_t:
        seasons.append(_season("all-year", frozenset(range(1, 13)), periods_t, allow_gaps, t.key_path("periods")))
    month_of: dict[int, str] = {}
    for st in seasons_t:
        name = check_ident(st.key_path("name"), st.str("name", required=True), "season name")
        a, b = st.int("start_month", min=1, max=12), st.int("end_month", min=1, max=12)
        months = frozenset(range(a, b + 1)) if a <= b else frozenset([*range(a, 13), *range(1, b + 1)])
        for m in sorted(months):
            if m in month_of:
                raise st.error("start_month", f"season {name!r} overlaps season {month_of[m]!r} (month {m})")
            month_of[m] = name
        seasons.append(_season(name, months, st.tables("periods"), allow_gaps, st.key_path("periods")))
        st.done()
    if seasons_t and len(month_of) < 12:
        missing = [m for m in range(1, 13) if m not in month_of]
        raise t.error("seasons", f"months {', '.join(map(str, missing))} are in no season (seasons cover the year)")
    t.done()
    return TariffConfig(timezone=tz, seasons=tuple(seasons), allow_gaps=allow_gaps, source=source)


def _season(name: str, months: frozenset[int], tables: list[Table], allow_gaps: bool, key: str) -> Season:
    if not tables:
        raise ConfigError(key, f"season {name!r} has no periods")
    if len(tables) > MAX_PERIODS:
        raise ConfigError(key, f"at most {MAX_PERIODS} periods")
    periods = tuple(_period(pt) for pt in tables)
    week = [-1] * MINUTES_PER_WEEK
    for i, p in enumerate(periods):
        for m in period_minutes(p):
            if week[m] >= 0:
                other = periods[week[m]]
                raise ConfigError(
                    p.key, f"period {p.name!r} overlaps period {other.name!r} ({other.key}) on "
                    f"{_fmt_minute(m)}" + (f" in season {name!r}" if name != "all-year" else ""),
                )
            week[m] = i
    if not allow_gaps and -1 in week:
        first = week.index(-1)
        raise ConfigError(
            key, f"no period covers {_fmt_minute(first)}" + (f" in season {name!r}" if name != "all-year" else "")
            + ": every hour of the week needs a period, or set allow_gaps = true (gaps then have no price)",
        )
    return Season(name=name, months=months, periods=periods, week=tuple(week))


def period_minutes(p: TariffPeriod) -> list[int]:
    """The minutes of the week a period covers (a period past midnight runs into the next day)."""
    length = (p.end_min - p.start_min) % 1440 or 1440
    out: list[int] = []
    for d in sorted(p.days):
        base = d * 1440 + p.start_min
        out.extend((base + k) % MINUTES_PER_WEEK for k in range(length))
    return out


def _fmt_minute(m: int) -> str:
    d, r = divmod(m, 1440)
    return f"{DAY_NAMES[d]} {r // 60:02d}:{r % 60:02d}"


def _period(t: Table) -> TariffPeriod:
    for bad in ("cap_w", "cap_a", "price_per_wh", "price", "cap"):
        if t.has(bad):
            good = "price_per_kwh" if bad.startswith("price") else "cap_kw"
            raise t.error(bad, f"wrong unit or name: this key is '{good}'; units are part of key names")
    name = check_ident(t.key_path("name"), t.str("name", required=True), "period name")
    start, end = _time(t, "start"), _time(t, "end")
    if start == 1440:
        raise t.error("start", "must be before 24:00")
    if start == end:
        raise t.error("end", "equals start: a period lasts more than 0 minutes (a whole day: 00:00 to 24:00)")
    p = TariffPeriod(
        name=name,
        days=_days(t),
        start_min=start,
        end_min=end,
        price_per_kwh=t.float("price_per_kwh", min=-MAX_PRICE, max=MAX_PRICE),
        cap_kw=t.opt_float("cap_kw", min=0, max=1e6),
        key=t.path,
    )
    t.done()
    return p


def _time(t: Table, key: str) -> int:
    v = t.str(key, required=True)
    m = _TIME_RE.fullmatch(v)
    if m is None or (m.group(1) == "24" and m.group(2) != "00"):
        raise t.error(key, f"a local time \"HH:MM\" (00:00 to 24:00), got {v[:20]!r}")
    return int(m.group(1)) * 60 + int(m.group(2))


def _days(t: Table) -> frozenset[int]:
    raw = t.raw("days")
    if raw is None:
        return frozenset(range(7))
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
        raise t.error("days", 'an array of day names ("mon".."sun") or ranges ("mon-fri")')
    out: set[int] = set()
    for x in raw:
        a, _, b = x.lower().partition("-")
        if a not in DAY_NAMES or (b and b not in DAY_NAMES):
            raise t.error("days", f"unknown day {x!r} (mon, tue, wed, thu, fri, sat, sun, or a range mon-fri)")
        i, j = DAY_NAMES.index(a), DAY_NAMES.index(b or a)
        out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
    return frozenset(out)


def tariff_from_json(obj: Mapping[str, Any], default_tz: str, source: str) -> TariffConfig:
    """A tariff received over MQTT (the [budget.tariff] table as a JSON object), validated like the config."""
    return parse_tariff(Table(obj, "tariff"), default_tz, source)


def describe(cfg: BudgetConfig, service: ServiceConfig) -> list[str]:
    """check-config's lines for the budget: the demand target in A at the service, the tariff's periods."""
    if not cfg.active:
        return []
    out = [f"budget (timezone {cfg.timezone}):"]
    d = cfg.demand
    if d is not None:
        amps = electrical.service_line_current_a(service, d.target_kw * 1000.0)
        out.append(
            f"  demand target {d.target_kw:g} kW per {d.interval_min}-minute interval = {amps:.1f} A per line at "
            f"the service ({amps / service.limit_a:.0%} of its {service.limit_a:g} A); measurement {d.measurement}"
            + (", rises to the month's peak" if d.raise_to_month_peak else "")
        )
    t = cfg.tariff
    if t is not None:
        out.append(f"  tariff ({t.timezone}{', gaps have no price' if t.allow_gaps else ''}):")
        for s in t.seasons:
            months = ",".join(str(m) for m in sorted(s.months))
            out.append(f"    season {s.name} (months {months}):")
            for p in s.periods:
                days = ",".join(DAY_NAMES[i] for i in sorted(p.days))
                cap = ""
                if p.cap_kw is not None:
                    cap = f", cap {p.cap_kw:g} kW = {electrical.service_line_current_a(service, p.cap_kw * 1000):.1f} A"
                out.append(
                    f"      {p.name}: {days} {p.start_min // 60:02d}:{p.start_min % 60:02d}-"
                    f"{p.end_min // 60:02d}:{p.end_min % 60:02d} at {p.price_per_kwh:g}/kWh{cap}"
                )
    return out + (describe_openadr(cfg.openadr, service) if cfg.openadr is not None else [])
