"""The one control task: every tick it snapshots, allocates, actuates and publishes, for all chargers.

A meter reading that shows a circuit above its limit (or a meter turning invalid) wakes the loop
at once instead of waiting for the tick. A failing device only becomes "unknown" in the snapshot;
nothing a device does stops the loop. The watchdog is pinged from here, so a hung loop is
restarted by systemd.

The loop itself does only what an overload cannot wait for: snapshot, allocate, write the limit frames
(decreases first). What can wait is handed off: log lines are rendered and written by the logging thread
(gateway/logs.py), and every tick's frozen (snapshot, allocation) goes to the tick subscribers, which must
return at once; :class:`LatestTick` runs a slow subscriber (telemetry) on its own thread, on the latest tick.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
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

    async def apply(self, allocation: Allocation, preempt: Callable[[], bool] | None = None) -> bool:
        """Write the due limit frames, decreases first; False: ``preempt()`` turned true before the increases,
        which were dropped (the loop re-ticks at once)."""
        ...

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


TickSubscriber = Callable[[Snapshot, Allocation], None]  # called on the loop after every tick: must return at once


class LatestTick:
    """A tick subscriber that runs ``fn(snapshot, allocation)`` on its own thread, for the latest tick: a tick
    handed over while one is being handled replaces any still waiting (stale ticks are dropped, counted in
    ``dropped``). Handing over never blocks the loop (a lock held only to swap a reference). ``fn`` must be
    safe to call from that thread; the values it gets are frozen."""

    def __init__(self, fn: TickSubscriber, name: str) -> None:
        self._fn = fn
        self.name = name
        self._cond = threading.Condition()
        self._pending: tuple[Snapshot, Allocation] | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._working = False
        self.handled = 0
        self.dropped = 0

    def __call__(self, snapshot: Snapshot, allocation: Allocation) -> None:
        with self._cond:
            if self._stopping:
                return
            if self._pending is not None:
                self.dropped += 1
            self._pending = (snapshot, allocation)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"tick-{self.name}", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                item, self._pending = self._pending, None
                self._working = item is not None
            if item is None:
                return
            try:
                self._fn(*item)
            except Exception:
                log.exception("tick_subscriber_failed", subscriber=self.name)
            with self._cond:
                self.handled += 1
                self._working = False
                self._cond.notify_all()

    def wait_idle(self, timeout_s: float = 5.0) -> bool:
        """Block until the tick handed over last has been handled (tests, a bench); False on timeout. Not on
        the loop."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._working, timeout_s)

    def stop(self) -> None:
        """The thread ends after the tick it is handling (and one still waiting); never joined on the loop."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()


class OffLoop:
    """Work that may wait, run in order on a thread of its own: the loop hands over a callable on frozen values
    and goes on (a limit-change line per charger is, at 1000 chargers and an overload, tens of ms of structlog
    processing the loop need not do before the next reading). ``stop`` runs what was handed over; a callable
    handed over after it starts the thread again (the loop restarted by its supervisor)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._q: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def __call__(self, fn: Callable[[], None]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()
        self._q.put(fn)

    def _run(self) -> None:
        while (fn := self._q.get()) is not None:
            _run_logged(fn, self.name)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Run what was handed over (the thread joined: called once the loop has stopped)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._q.put(None)
            thread.join(timeout_s)


def _run_logged(fn: Callable[[], None], name: str) -> None:
    try:
        fn()
    except Exception:
        log.exception("off_loop_failed", worker=name)


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
    preempted: bool = False  # a wake came before the increases were written: they were dropped, the loop re-ticked


MAX_TEST_S = 900.0  # no commissioning input lasts longer than this


@dataclass(frozen=True)
class SimulatedLoad:
    """Commissioning: a virtual load added to one meter's reading before allocating (never to the raw readings)."""

    meter: str
    load_a: float  # added to every phase (A)
    until: float  # monotonic: it ends by itself here


@dataclass(frozen=True)
class LimitOverride:
    """Commissioning: a temporary cap on one charger's limit (it can only lower it)."""

    charger: str
    limit: float  # in the charger's unit
    until: float


def with_test_load(
    meters: Mapping[str, MeterReading | None], load: SimulatedLoad | None, now: float
) -> Mapping[str, MeterReading | None]:
    """The readings with the test load added to its meter (a missing or invalid reading is left alone)."""
    if load is None or now >= load.until:
        return meters
    r = meters.get(load.meter)
    if r is None or not r.valid:
        return meters
    return {**meters, load.meter: replace(r, current_a=tuple(a + load.load_a for a in r.current_a))}


def with_overrides(
    allocation: Allocation, overrides: Mapping[str, LimitOverride], site: Site, now: float
) -> Allocation:
    """The allocation with every live override applied: min(limit, override); a limit is never raised."""
    limits = dict(allocation.limits)
    changed = False
    for cid, o in overrides.items():
        cl = limits.get(cid)
        ch = site.chargers.get(cid)
        if cl is None or ch is None or now >= o.until or o.limit >= cl.limit:
            continue
        line = site.to_line_a(ch, o.limit)
        limits[cid] = cl._replace(limit=o.limit, line_a=min(cl.line_a, line), reason="commissioning-override")
        changed = True
    return replace(allocation, limits=limits) if changed else allocation


def log_limit_changes(
    site: Site,
    before: Allocation | None,
    after: Allocation,
    trigger: str,
    latency: float | None,
    phases: tuple[float, float, float],
    preempted: bool,
) -> None:
    """A ``limit_changed`` line per charger whose limit or reason changed, then (on a wake) ``reallocated``."""
    prev = before.limits if before is not None else {}
    changed = 0
    for cid, lim in after.limits.items():
        p = prev.get(cid)
        if p is lim or (p is not None and p.limit == lim.limit and p.reason == lim.reason):
            continue
        changed += 1
        log.info(
            "limit_changed",
            charger=cid,
            limit=lim.limit,
            unit=site.chargers[cid].unit if cid in site.chargers else "",
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
            preempted=preempted,
        )


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
        self._preempted = False  # the last tick's increases were dropped for a wake
        self._background: set[asyncio.Task[None]] = set()
        self.ticked = asyncio.Event()  # set after every tick (tests and the demo wait on it)
        self.test_load: SimulatedLoad | None = None  # commissioning inputs (gateway.commission)
        self.test_overrides: dict[str, LimitOverride] = {}
        self.subscribers: list[TickSubscriber] = []
        self.off_loop = OffLoop("limit-log")  # the per-charger limit lines (log_limit_changes)
        self.telemetry_tick: LatestTick | None = None
        if telemetry is not None:  # topics are built off the loop, on the latest tick
            self.telemetry_tick = LatestTick(telemetry.publish_tick, "telemetry")
            self.subscribers.append(self.telemetry_tick)

    def subscribe(self, fn: TickSubscriber) -> None:
        """Call ``fn(snapshot, allocation)`` on the loop after every tick; it must return at once (hand slow
        work to a :class:`LatestTick`)."""
        self.subscribers.append(fn)

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

    def set_test_load(self, meter: str, load_a: float, duration_s: float) -> SimulatedLoad:
        """Start a simulated load on a meter (ValueError: refused). Audited; ends by itself after duration_s."""
        m = self.site.meters.get(meter)
        if m is None:
            raise ValueError(f"unknown meter {meter!r}")
        limit = self.site.circuits[m.circuit].limit_a
        if not (0.0 < load_a <= limit and 0.0 < duration_s <= MAX_TEST_S):
            raise ValueError(f"test load must be in (0, {limit:g}] A for (0, {MAX_TEST_S:g}] s")
        if self.allocation is None or self.allocation.mode != "normal":
            raise ValueError(f"refused: the site is in {self.allocation.mode if self.allocation else 'start-up'}")
        self.test_load = SimulatedLoad(meter, load_a, self.clock() + duration_s)
        log.warning("test_load_started", meter=meter, load_a=load_a, duration_s=duration_s)
        self.wake(f"test-load:{meter}")
        return self.test_load

    def set_test_override(self, charger: str, limit: float | None, duration_s: float = 0.0) -> None:
        """Cap a charger's limit for duration_s (None: clear). Audited; ends by itself."""
        if charger not in self.site.chargers:
            raise ValueError(f"unknown charger {charger!r}")
        if limit is None:
            if self.test_overrides.pop(charger, None) is not None:
                log.warning("test_override_ended", charger=charger, reason="cleared")
        else:
            if not (limit >= 0.0 and 0.0 < duration_s <= MAX_TEST_S):
                raise ValueError(f"override needs a limit >= 0 and a duration in (0, {MAX_TEST_S:g}] s")
            self.test_overrides[charger] = LimitOverride(charger, limit, self.clock() + duration_s)
            log.warning("test_override_started", charger=charger, limit=limit, duration_s=duration_s)
        self.wake(f"test-override:{charger}")

    def clear_tests(self, reason: str = "cleared") -> None:
        if self.test_load is not None:
            log.warning("test_load_ended", meter=self.test_load.meter, reason=reason)
            self.test_load = None
        for cid in list(self.test_overrides):
            log.warning("test_override_ended", charger=cid, reason=reason)
        self.test_overrides.clear()
        self.wake("test-cleared")

    def _expire_tests(self, now: float) -> None:
        t = self.test_load
        if t is not None and (now >= t.until or (self.allocation is not None and self.allocation.mode != "normal")):
            log.warning("test_load_ended", meter=t.meter, reason="timeout" if now >= t.until else "failsafe")
            self.test_load = None
        for cid, o in list(self.test_overrides.items()):
            if now >= o.until:
                log.warning("test_override_ended", charger=cid, reason="timeout")
                del self.test_overrides[cid]

    def _preempting(self) -> bool:
        """A wake that drops the increases not yet written: a meter reading (overload, invalid, stale)."""
        return self._wake.is_set() and self._trigger.startswith(("overload:", "meter-"))

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
        try:
            await self._run()
        finally:
            if self.telemetry_tick is not None:
                self.telemetry_tick.stop()
            self.off_loop.stop()  # the limit lines handed over are written (a thread: joined, not awaited)

    async def _run(self) -> None:
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
        self._expire_tests(t0)
        readings = with_test_load(dict(self.meters.readings()), self.test_load, t0)
        caps, charger_caps = self._budget(readings, chargers, t0)
        snapshot = Snapshot(taken_at=t0, meters=readings, chargers=chargers, caps=caps, charger_caps=charger_caps)
        snapshot = self._plan(snapshot, t0)
        t1 = self.clock()
        allocation, state = allocate(snapshot, site, self.state, t0)
        if self.test_overrides:
            allocation = with_overrides(allocation, self.test_overrides, site, t0)
        t2 = self.clock()
        c2 = time.thread_time()
        applied = True
        try:
            # frames are queued on their sockets, not answered, within this; a stuck socket must not stall the loop
            async with asyncio.timeout(max(site.control.tick_s, 1.0)):
                # an overload (any wake) that lands before the increases are written drops them: re-tick at once
                # (at most one preemption in a row: readings at the limit, every poll, must not starve increases)
                preempt = None if self._preempted else self._preempting
                applied = await self.chargers.apply(allocation, preempt=preempt) is not False
        except TimeoutError:
            log.error("actuation_timeout", timeout_s=max(site.control.tick_s, 1.0))
        t3 = self.clock()
        c3 = time.thread_time()
        self._preempted = not applied
        for fn in self.subscribers:
            try:
                fn(snapshot, allocation)
            except Exception:  # a subscriber (telemetry, the web view) never stops the loop
                log.exception("tick_subscriber_failed")
        t4 = self.clock()
        latency = t3 - trigger_at if trigger_at is not None else None
        self._log_changes(self.allocation, allocation, trigger, latency, (t1 - t0, t2 - t1, t3 - t2), not applied)
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
                preempted=not applied,
            )
        )
        t5 = self.clock()
        # every tick's figures, at debug level (a no-op otherwise; the loop benchmarks read them)
        log.debug("tick", trigger=trigger, tick_ms=round((t5 - t0) * 1000, 3), snapshot_ms=round((t1 - t0) * 1000, 3),
                  allocation_ms=round((t2 - t1) * 1000, 3), actuation_ms=round((t3 - t2) * 1000, 3),
                  publish_ms=round((t4 - t3) * 1000, 3), preempted=not applied,
                  actuation_cpu_ms=round((c3 - c2) * 1000, 3))  # the loop thread's CPU: wall - this = waits
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
        preempted: bool = False,
    ) -> None:
        if after.mode != self._mode:
            # the log only: telemetry publishes fail-safe events from the allocation it is given
            if after.mode == "normal":
                log.warning("failsafe_left", mode=after.mode)
            else:
                log.warning("failsafe_entered", mode=after.mode, meters=list(after.failsafe_meters))
            self._mode = after.mode
        # the lines per changed charger (and the reallocation's summary, which counts them) off the loop, in order
        self.off_loop(partial(log_limit_changes, self.site, before, after, trigger, latency, phases, preempted))

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
