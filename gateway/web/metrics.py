"""``/metrics``: the loop's figures in the Prometheus exposition format (prometheus-client).

A custom collector reads the control loop's latest frozen values at scrape time: nothing is updated on the tick.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.config import PHASES, Site
from gateway.model import Allocation, Snapshot
from gateway.web import views

_MODES = ("normal", "partial-failsafe", "failsafe")


def _q(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class TickHistograms:
    """Cumulative histograms of the loop's phases, fed from ControlLoop.records by the web's sampler (once a
    second, off the tick): every record is observed once."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.phase = Histogram("ems_control_phase_seconds", "control loop: time per tick phase",
                               ["phase"], registry=registry, buckets=_BUCKETS_S)
        self.latency = Histogram("ems_control_reading_to_actuated_seconds",
                                 "control loop: from the meter reading that woke it to the last limit frame written",
                                 registry=registry, buckets=_BUCKETS_S)

    def observe(self, record: Any) -> None:
        self.phase.labels("allocation").observe(record.allocation_s)
        self.phase.labels("actuation").observe(record.actuation_s)
        self.phase.labels("publish").observe(record.publish_s)
        if record.reading_to_actuated_s is not None:
            self.latency.observe(record.reading_to_actuated_s)


class LoopCollector(Collector):
    def __init__(self, state: Callable[[], tuple[Site, Snapshot | None, Allocation | None, Sequence[Any], int, float]]):
        """``state()``: (site, snapshot, allocation, tick records, ticks seen in total, now)."""
        self._state = state

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        site, snap, alloc, records, ticks_total, now = self._state()
        yield CounterMetricFamily("ems_control_ticks", "control-loop ticks since start", value=ticks_total)
        recent = list(records)[-300:]
        for name, attr in (("allocation", "allocation_s"), ("actuation", "actuation_s"), ("publish", "publish_s"),
                           ("snapshot_age", "snapshot_age_s"), ("reading_to_actuated", "reading_to_actuated_s")):
            vals = [v for r in recent if (v := getattr(r, attr)) is not None and math.isfinite(v)]
            g = GaugeMetricFamily(f"ems_control_{name}_seconds",
                                  f"control loop: {name.replace('_', ' ')} over the last {len(recent)} ticks",
                                  labels=["quantile"])
            if vals:
                for q in (0.5, 0.99, 1.0):
                    g.add_metric([f"{q:g}"], _q(vals, q))
            yield g
        yield GaugeMetricFamily("ems_control_last_tick_age_seconds", "seconds since the last tick",
                                value=(now - alloc.at) if alloc is not None else float("nan"))
        mode = GaugeMetricFamily("ems_failsafe_mode", "1 for the current mode", labels=["mode"])
        cur = alloc.mode if alloc is not None else "starting"
        for m in (*_MODES, "starting"):
            mode.add_metric([m], 1.0 if m == cur else 0.0)
        yield mode
        yield from self._circuits(site, alloc)
        yield from self._chargers(site, snap, alloc)
        meter = GaugeMetricFamily("ems_meter_healthy", "1 when the meter's reading is valid and fresh",
                                  labels=["meter"])
        for mid in site.polled_meters:
            meter.add_metric([mid], 1.0 if views.meter_health(site, mid, snap, now) == "ok" else 0.0)
        yield meter

    def _circuits(self, site: Site, alloc: Allocation | None) -> Iterator[Metric]:
        fams = {k: GaugeMetricFamily(f"ems_circuit_{k}_amperes", f"circuit {k.replace('_', ' ')} per phase (A)",
                                     labels=["circuit", "phase"])
                for k in ("measured", "allocated", "headroom", "limit")}
        if alloc is not None:
            for cid, st in alloc.circuits.items():
                for p in range(site.service.phases):
                    ph = PHASES[p]
                    if st.measured_a is not None:
                        fams["measured"].add_metric([cid, ph], st.measured_a[p])
                    fams["allocated"].add_metric([cid, ph], st.allocated_a[p])
                    fams["headroom"].add_metric([cid, ph], st.headroom_a[p])
                    fams["limit"].add_metric([cid, ph], st.limit_a)
        yield from fams.values()

    def _chargers(self, site: Site, snap: Snapshot | None, alloc: Allocation | None) -> Iterator[Metric]:
        lim = GaugeMetricFamily("ems_charger_limit", "the charger's limit in its unit", labels=["charger", "unit"])
        line = GaugeMetricFamily("ems_charger_limit_line_amperes", "line current the limit allows (A)",
                                 labels=["charger"])
        draw = GaugeMetricFamily("ems_charger_draw_amperes", "measured line current, highest phase (A)",
                                 labels=["charger"])
        online = GaugeMetricFamily("ems_charger_online", "1 when connected over OCPP", labels=["charger"])
        ctl = GaugeMetricFamily("ems_charger_controlled", "1 when its limit profiles are accepted", labels=["charger"])
        for cid, cfg in site.chargers.items():
            cl = alloc.limits.get(cid) if alloc is not None else None
            if cl is not None:
                lim.add_metric([cid, cfg.unit], cl.limit)
                line.add_metric([cid], cl.line_a)
            cs = snap.chargers.get(cid) if snap is not None else None
            if cs is not None:
                online.add_metric([cid], 1.0 if cs.online else 0.0)
                ctl.add_metric([cid], 1.0 if cs.actuation is not None and cs.actuation.controlled else 0.0)
                if cs.draw_a:
                    draw.add_metric([cid], max(cs.draw_a))
        yield from (lim, line, draw, online, ctl)
