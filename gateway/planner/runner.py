"""The planner off the control loop's critical path: a worker thread runs ``plan`` every ``replan_s`` and on every
arrival or departure; the loop takes the latest plan's targets each tick.

The loop never waits: ``tick`` hands over the inputs when a plan is due and none is in flight, and collects a
finished one. A plan older than ``max_plan_age_s``, a failed one (solver fault, time limit) or one still running
past its age gives no targets: the allocator's max-min fairness, as without a planner. The planning function runs
in one worker thread (HiGHS spends most of the time in C; for a site where that still competes with the loop,
pass a process pool as ``executor``).
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import structlog

from gateway.config import Site
from gateway.model import ChargerTarget
from gateway.planner.config import PlannerSettings
from gateway.planner.model import BudgetView, Forecast, Plan, PlannerConfig, PlannerState, PlanSession
from gateway.planner.solve import plan

log = structlog.get_logger(__name__)

PlanFn = Callable[
    [Sequence[PlanSession], Site, BudgetView, Forecast, PlannerState | None, float, PlannerConfig | None],
    tuple[Plan, PlannerState],
]


@dataclass
class PlannerStats:
    plans: int = 0
    failed: int = 0
    dropped_late: int = 0  # plans that came back older than max_plan_age_s
    durations_s: list[float] = field(default_factory=list)  # the last 100 plans' wall time


def _timed(fn: PlanFn, args: tuple[object, ...]) -> tuple[Plan, PlannerState, float]:
    t0 = time.perf_counter()
    p, st = fn(*args)  # type: ignore[arg-type]
    return p, st, time.perf_counter() - t0


class PlannerWorker:
    def __init__(self, site: Site, settings: PlannerSettings, *, plan_fn: PlanFn = plan,
                 executor: cf.Executor | None = None) -> None:
        self.site = site
        self.settings = settings
        self._fn = plan_fn
        self._own = executor is None
        self._ex = executor or cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="planner")
        self._future: cf.Future[tuple[Plan, PlannerState, float]] | None = None
        self._started_at = 0.0
        self._last_submit = -float("inf")
        self._sessions_key: frozenset[str] = frozenset()
        self.state: PlannerState | None = None
        self.plan: Plan | None = None
        self.stats = PlannerStats()
        self.events: list[tuple[str, Mapping[str, object]]] = []  # session_at_risk, collected for telemetry

    def tick(self, sessions: Sequence[PlanSession], view: BudgetView, forecast: Forecast,
             now: float) -> Mapping[str, ChargerTarget]:
        """Collect a finished plan, start a new one when due; the targets of the latest plan still fresh."""
        self._collect(now)
        key = frozenset(s.charger_id for s in sessions if not s.expected)
        due = key != self._sessions_key or now - self._last_submit >= self.settings.replan_s
        if due and self._future is None:
            self._sessions_key = key
            self._last_submit = self._started_at = now
            args = (tuple(sessions), self.site, view, forecast, self.state, now, self.settings.solver)
            self._future = self._ex.submit(_timed, self._fn, args)
        return self.targets(now)

    def targets(self, now: float) -> Mapping[str, ChargerTarget]:
        p = self.plan
        if p is None or not p.ok or now - p.at > self.settings.max_plan_age_s:
            return {}
        return {cid: ChargerTarget(t.target_a, t.reason, t.hold) for cid, t in p.targets.items()}

    def _collect(self, now: float) -> None:
        f = self._future
        if f is None:
            return
        if not f.done():
            if now - self._started_at > self.settings.max_plan_age_s and self.plan is not None:
                self.plan = None  # still running and the last plan is too old: fall back until it returns
            return
        self._future = None
        try:
            p, st, dt = f.result()
        except Exception as exc:  # a planner bug must not take the loop down: max-min fairness
            log.exception("planner_failed", error=str(exc))
            self.stats.failed += 1
            self.plan = None
            return
        self.stats.plans += 1
        self.stats.durations_s = [*self.stats.durations_s[-99:], dt]
        log.info("plan_done", status=p.status, duration_ms=round(dt * 1000.0, 1), sessions=len(p.projections),
                 at_risk=sum(1 for pr in p.projections.values() if pr.at_risk))
        if not p.ok:
            self.stats.failed += 1
            self.plan = None
            return
        if now - p.at > self.settings.max_plan_age_s:
            self.stats.dropped_late += 1
            self.plan = None
            return
        self.plan, self.state = p, st
        self.events.extend(st.events)

    def close(self) -> None:
        if self._own:
            self._ex.shutdown(wait=False, cancel_futures=True)
