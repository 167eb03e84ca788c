"""The one control task: every tick it snapshots, allocates, actuates and publishes, for all chargers.

A meter reading that shows a circuit above its limit (or a meter turning invalid) wakes the loop
at once instead of waiting for the tick. A failing device only becomes "unknown" in the snapshot;
nothing a device does stops the loop. The watchdog is pinged from here, so a hung loop is
restarted by systemd.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Protocol

import structlog

from gateway.allocation import AllocatorState, allocate
from gateway.budget import Budget
from gateway.compliance import ComplianceMonitor
from gateway.config import Site
from gateway.model import (
    Allocation,
    BudgetCap,
    ChargerCap,
    ChargerSnapshot,
    ChargerTarget,
    MeterReading,
    Snapshot,
)
from gateway.systemd import Notifier

log = structlog.get_logger(__name__)


class MeterSource(Protocol):
    def readings(self) -> Mapping[str, MeterReading | None]: ...


class ChargerPort(Protocol):
    def snapshot(self) -> Mapping[str, ChargerSnapshot]: ...

    async def apply(self, allocation: Allocation) -> None: ...

    async def stop_transaction(self, charger_id: str) -> None: ...


class TelemetrySink(Protocol):
    def publish_tick(self, snapshot: Snapshot, allocation: Allocation) -> None: ...

    def event(self, name: str, **fields: object) -> None: ...


class PlannerPort(Protocol):
    """The departure-aware planner (gateway.planner.service.PlannerService): this tick's targets, never waiting."""

    def targets(
        self, snapshot: Snapshot, allocation: Allocation | None, now: float
    ) -> Mapping[str, ChargerTarget]: ...


class BudgetPort(Protocol):
    """The site budget (gateway.budget.service.BudgetService): the caps on the service and on chargers."""

    def tick(
        self, readings: Mapping[str, MeterReading | None], chargers: Mapping[str, ChargerSnapshot], now: float
    ) -> Budget: ...


@dataclass(frozen=True)
class TickRecord:
    at: float
    snapshot_age_s: float  # age of the oldest trusted meter reading
    allocation_s: float
    actuation_s: float
    publish_s: float
    trigger: str  # "tick" | "overload:<meter>" | "meter-invalid:<meter>"
    # from the meter reading that woke the loop to the last limit frame written (None on a plain tick)
    reading_to_actuated_s: float | None = None


class ControlLoop:
    def __init__(
        self,
        site: Site,
        meters: MeterSource,
        chargers: ChargerPort,
        *,
        telemetry: TelemetrySink | None = None,
        budget: BudgetPort | None = None,
        planner: PlannerPort | None = None,
        notifier: Notifier | None = None,
        clock: Callable[[], float] = time.monotonic,
        history: int = 3600,
    ) -> None:
        self.site = site
        self.meters = meters
        self.chargers = chargers
        self.telemetry = telemetry
        self.budget = budget
        self.planner = planner
        self.notifier = notifier or Notifier(address="")
        self.clock = clock
        self.allocation: Allocation | None = None
        self.state: AllocatorState | None = None  # the allocator's memory between ticks
        self.snapshot: Snapshot | None = None
        self.records: deque[TickRecord] = deque(maxlen=history)
        self.compliance = ComplianceMonitor(site)
        self._wake = asyncio.Event()
        self._trigger = "tick"
        self._trigger_at: float | None = None
        self._mode = "normal"
        self._background: set[asyncio.Task[None]] = set()
        self.ticked = asyncio.Event()  # set after every tick (tests and the demo wait on it)

    # -- inputs --------------------------------------------------------------------------
    def on_meter_reading(self, meter_id: str, reading: MeterReading) -> None:
        """Called by the meter layer for every reading: wake the loop at once on an overload."""
        m = self.site.meters.get(meter_id)
        if m is None:
            return
        if not reading.valid:
            self.wake(f"meter-invalid:{meter_id}")
            return
        c = self.site.circuits[m.circuit]
        cap = c.limit_a - c.margin_a
        if any(a > cap for a in reading.current_a):
            self.wake(f"overload:{meter_id}", reading.at)

    def wake(self, why: str, at: float | None = None) -> None:
        if not self._wake.is_set():
            self._trigger = why
            self._trigger_at = at
            self._wake.set()

    def update_site(self, site: Site) -> None:
        self.site = site
        self.compliance.update_site(site)
        if self.state is not None:
            # keep what still exists, the circuits' non-EV estimates (and their hold) and every charger's
            # reserve included: a reload during the EVs' response must not make room that is not there
            self.state = self.state.keeping(site.chargers, site.circuits)
        self.wake("config-reloaded")

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        next_at = self.clock()
        while True:
            timeout = max(0.0, next_at - self.clock())
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel racing the wake
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
                trigger = self._trigger
            except TimeoutError:
                trigger = "tick"
            self._wake.clear()
            trigger_at, self._trigger, self._trigger_at = self._trigger_at, "tick", None
            await self.tick(trigger, trigger_at if trigger != "tick" else None)
            tick_s = self.site.control.tick_s
            now = self.clock()
            next_at = max(next_at + tick_s, now) if trigger == "tick" else now + tick_s
            if next_at - now > tick_s:
                next_at = now + tick_s

    async def tick(self, trigger: str = "tick", trigger_at: float | None = None) -> Allocation:
        site = self.site
        t0 = self.clock()
        raw = self.chargers.snapshot()
        flagged, cleared = self.compliance.update(raw, self.allocation, t0)
        for cid in flagged:
            limit = self.allocation.limit_of(cid) if self.allocation else None
            log.warning("charger_noncompliant", charger=cid, limit=limit)  # telemetry derives its event
            if site.control.stop_noncompliant:
                task = asyncio.get_running_loop().create_task(self._stop(cid))
                self._background.add(task)  # keep a reference until it is done
                task.add_done_callback(self._background.discard)
        for cid in cleared:
            log.info("charger_compliant_again", charger=cid)
        chargers: Mapping[str, ChargerSnapshot] = raw
        if self.compliance.flagged:
            chargers = {
                k: (replace(v, noncompliant=True) if k in self.compliance.flagged else v) for k, v in raw.items()
            }
        readings = dict(self.meters.readings())
        caps, charger_caps = self._budget(readings, chargers, t0)
        snapshot = Snapshot(taken_at=t0, meters=readings, chargers=chargers, caps=caps, charger_caps=charger_caps)
        snapshot = self._plan(snapshot, t0)
        t1 = self.clock()
        allocation, state = allocate(snapshot, site, self.state, t0)
        t2 = self.clock()
        try:
            # frames are written, not answered, within this; a stuck socket must not stall the loop
            async with asyncio.timeout(max(site.control.tick_s, 1.0)):
                await self.chargers.apply(allocation)
        except TimeoutError:
            log.error("actuation_timeout", timeout_s=max(site.control.tick_s, 1.0))
        t3 = self.clock()
        if self.telemetry is not None:
            try:
                self.telemetry.publish_tick(snapshot, allocation)
            except Exception:  # telemetry never stops the loop
                log.exception("telemetry_publish_failed")
        t4 = self.clock()
        latency = t3 - trigger_at if trigger_at is not None else None
        self._log_changes(self.allocation, allocation, trigger, latency, (t1 - t0, t2 - t1, t3 - t2))
        self.allocation, self.snapshot, self.state = allocation, snapshot, state
        ages = [t0 - r.at for r in snapshot.meters.values() if r is not None and r.valid]
        self.records.append(
            TickRecord(
                at=t0,
                snapshot_age_s=max(ages) if ages else float("nan"),
                allocation_s=t2 - t1,
                actuation_s=t3 - t2,
                publish_s=t4 - t3,
                trigger=trigger,
                reading_to_actuated_s=latency,
            )
        )
        self.notifier.watchdog()
        self.notifier.status(self.summary())
        self.ticked.set()
        self.ticked = asyncio.Event()
        return allocation

    def _plan(self, snapshot: Snapshot, now: float) -> Snapshot:
        """The latest plan's targets (gateway.planner); a planner that fails gives none (max-min fairness)."""
        if self.planner is None:
            return snapshot
        try:
            targets = self.planner.targets(snapshot, self.allocation, now)
        except Exception:
            log.exception("planner_failed")
            return snapshot
        return replace(snapshot, targets=targets) if targets else snapshot

    def _budget(
        self, readings: Mapping[str, MeterReading | None], chargers: Mapping[str, ChargerSnapshot], now: float
    ) -> tuple[tuple[BudgetCap, ...], Mapping[str, ChargerCap]]:
        """This tick's budget caps. A budget that fails keeps the last caps (it never raises a limit)."""
        if self.budget is None:
            return (), {}
        try:
            b = self.budget.tick(readings, chargers, now)
        except Exception:
            log.exception("budget_failed")
            last = self.snapshot
            return (last.caps, last.charger_caps) if last is not None else ((), {})
        return b.caps, b.charger_caps

    async def _stop(self, cid: str) -> None:
        try:
            await self.chargers.stop_transaction(cid)
            self._event("transaction_stopped", charger=cid, reason="noncompliant")
        except Exception as exc:
            log.warning("stop_transaction_failed", charger=cid, error=repr(exc))

    def _event(self, name: str, **fields: object) -> None:
        if self.telemetry is not None:
            try:
                self.telemetry.event(name, **fields)
            except Exception:
                log.exception("telemetry_event_failed", event_name=name)

    def _log_changes(
        self,
        before: Allocation | None,
        after: Allocation,
        trigger: str,
        latency: float | None = None,
        phases: tuple[float, float, float] = (0.0, 0.0, 0.0),
    ) -> None:
        if after.mode != self._mode:
            # the log only: telemetry publishes fail-safe events from the allocation it is given
            if after.mode == "normal":
                log.warning("failsafe_left", mode=after.mode)
            else:
                log.warning("failsafe_entered", mode=after.mode, meters=list(after.failsafe_meters))
            self._mode = after.mode
        prev = before.limits if before is not None else {}
        changed = 0
        for cid, lim in after.limits.items():
            p = prev.get(cid)
            if p is None or p.limit != lim.limit or p.reason != lim.reason:
                changed += 1
                log.info(
                    "limit_changed",
                    charger=cid,
                    limit=lim.limit,
                    unit=self.site.chargers[cid].unit if cid in self.site.chargers else "",
                    reason=lim.reason,
                    previous=p.limit if p is not None else None,
                    trigger=trigger,
                )
        if trigger != "tick":
            log.info(
                "reallocated",
                trigger=trigger,
                changed=changed,
                reading_to_actuated_ms=None if latency is None else round(latency * 1000, 3),
                snapshot_ms=round(phases[0] * 1000, 3),
                allocation_ms=round(phases[1] * 1000, 3),
                actuation_ms=round(phases[2] * 1000, 3),
            )

    def summary(self) -> str:
        a = self.allocation
        if a is None:
            return "starting"
        root = a.circuits.get(self.site.root)
        active = sum(1 for lim in a.limits.values() if lim.limit > 0)
        if root is not None and root.measured_a is not None:
            cur = max(root.measured_a)
            load = f"site {cur:.0f}/{root.limit_a:.0f} A"
        else:
            load = "site current unknown"
        return f"{a.mode}: {load}, {active}/{len(a.limits)} chargers with a limit"
