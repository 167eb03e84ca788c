"""PV, demand and tariff settings of a HIL scenario (``[pv]``, ``[demand]``, ``[tariff]``), and the physics the
scorecard and the ideal share with the simulators.

``[pv]``: a PV inverter feeding the site, simulated as a SunSpec inverter (``sim/sitesim/meter.py`` serves the
``sunspec_inverter_*`` maps) and, for the site, as a negative base load on its circuit::

    [pv]
    meter = "pv-roof"          # the site config's meter with role = "pv"
    points = [[0, 0], [600, 8.0], [1200, 3.0]]   # [scenario s, kW fed in], linear between points
    ramp = true                # false: each value holds until the next point

``[demand]``: the billing interval and the target the scorecard and the ideal judge by (the gateway's own
demand control is configured in the scenario's ``[gateway.budget]``; the "without" run drops its ``demand``)::

    [demand]
    target_kw = 15.0
    interval_s = 900

``[tariff]``: prices for the scorecard's energy cost (UTC hours)::

    [tariff]
    periods = [[0, 7, 0.12], [7, 23, 0.30], [23, 24, 0.12]]   # [from h, to h, price per kWh]
    export_price_per_kwh = 0.05
    demand_charge_per_kw = 12.0    # per kW of the month's peak interval average

Power everywhere is what the simulated meters measure: per line I x V_LN x ``METER_PF`` (the meter simulator's
power factor), summed over the lines; PV kW converts to amperes with the same factor, so the service meter reads
the PV's kW.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateway.confkit import Table

METER_PF = 0.98  # sitesim.meter.MeterSimulator's default power factor


@dataclass(frozen=True)
class PvProfile:
    meter: str
    points: tuple[tuple[float, float], ...]  # (scenario s, kW), sorted
    ramp: bool = True

    def kw(self, t_s: float) -> float:
        pts = self.points
        cur = pts[0][1]
        for i, (ti, vi) in enumerate(pts):
            if t_s >= ti:
                cur = vi
                if self.ramp and i + 1 < len(pts) and t_s < pts[i + 1][0]:
                    t1, v1 = pts[i + 1]
                    cur = vi + (v1 - vi) * (t_s - ti) / (t1 - ti)
        return cur


@dataclass(frozen=True)
class DemandSpec:
    target_kw: float
    interval_s: float = 900.0


@dataclass(frozen=True)
class Tariff:
    periods: tuple[tuple[float, float, float], ...] = ((0.0, 24.0, 0.25),)  # (from h, to h, price per kWh), UTC
    export_price_per_kwh: float = 0.0
    demand_charge_per_kw: float = 0.0

    def price_at(self, epoch_s: float) -> float:
        h = (epoch_s % 86400.0) / 3600.0
        for lo, hi, price in self.periods:
            if lo <= h < hi:
                return price
        return self.periods[-1][2]


def pv_amps(kw: float, v_ln: float, lines: int) -> float:
    """The current per line of ``kw`` fed in evenly over ``lines`` lines, at the meters' physics."""
    return kw * 1000.0 / (lines * v_ln * METER_PF)


def _points(t: Table, key: str) -> tuple[tuple[float, float], ...]:
    raw = t.raw(key)
    if not isinstance(raw, list) or not raw or not all(
        isinstance(p, list) and len(p) == 2 and all(isinstance(x, int | float) and not isinstance(x, bool) for x in p)
        and p[1] >= 0 for p in raw
    ):
        raise t.error(key, "expected a list of [time_s, kW >= 0] points")
    return tuple(sorted((float(a), float(b)) for a, b in raw))


def parse_pv(t: Table | None, pv_meters: Sequence[str]) -> PvProfile | None:
    if t is None:
        return None
    meter = t.str("meter", required=True)
    if meter not in pv_meters:
        raise t.error("meter", f"{meter!r} is not a meter with role = \"pv\" in the site config")
    p = PvProfile(meter=meter, points=_points(t, "points"), ramp=t.bool("ramp", True))
    t.done()
    return p


def parse_demand(t: Table | None) -> DemandSpec | None:
    if t is None:
        return None
    d = DemandSpec(target_kw=t.float("target_kw", gt=0), interval_s=t.float("interval_s", 900.0, gt=0, max=3600))
    t.done()
    return d


def parse_tariff(t: Table | None) -> Tariff | None:
    if t is None:
        return None
    raw = t.raw("periods")
    periods = Tariff().periods
    if raw is not None:
        if not isinstance(raw, list) or not raw or not all(
            isinstance(p, list) and len(p) == 3 and all(isinstance(x, int | float) for x in p)
            and 0 <= p[0] < p[1] <= 24 for p in raw
        ):
            raise t.error("periods", "expected a list of [from_h, to_h, price_per_kwh] with 0 <= from_h < to_h <= 24")
        periods = tuple((float(a), float(b), float(c)) for a, b, c in raw)
    tf = Tariff(periods=periods, export_price_per_kwh=t.float("export_price_per_kwh", 0.0, min=0),
                demand_charge_per_kw=t.float("demand_charge_per_kw", 0.0, min=0))
    t.done()
    return tf
