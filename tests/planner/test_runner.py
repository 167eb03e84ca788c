"""The planner worker: plans in its thread, the loop never waits, late or failed plans fall back."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

from gateway.config import Site, site_from_dict
from gateway.planner import BudgetView, Forecast, Plan, PlannerConfig, PlannerState, PlanSession, plan
from gateway.planner.config import PlannerSettings
from gateway.planner.runner import PlannerWorker
from tests.factories import ac, site_dict


def _site() -> Site:
    return site_from_dict(site_dict(limit_a=32.0, chargers=[ac("A", phases=3), ac("B", phases=3)]))


SESSIONS = [PlanSession("A", 20e3, 3600.0), PlanSession("B", 5e3, 36000.0)]
FC = Forecast.flat({"service": (0.0, 0.0, 0.0)})


def _wait(w: PlannerWorker) -> None:
    f = w._future
    if f is not None:
        f.result(timeout=30)


def test_plans_off_the_loop_and_hands_the_latest_targets() -> None:
    w = PlannerWorker(_site(), PlannerSettings(enabled=True, replan_s=60.0, max_plan_age_s=120.0))
    try:
        assert w.tick(SESSIONS, BudgetView(), FC, 0.0) == {}  # the first plan is under way: max-min meanwhile
        _wait(w)
        t = w.tick(SESSIONS, BudgetView(), FC, 1.0)
        assert t["A"].reason == "plan:deadline" and t["A"].target_a > 20.0
        assert w.stats.plans == 1
        # past its age the plan gives nothing (a new one is under way)
        assert w.targets(1000.0) == {}
    finally:
        w.close()


def test_a_failing_planner_falls_back() -> None:
    def broken(*_a: object) -> tuple[Plan, PlannerState]:
        raise RuntimeError("bug")

    w = PlannerWorker(_site(), PlannerSettings(enabled=True), plan_fn=broken)
    try:
        w.tick(SESSIONS, BudgetView(), FC, 0.0)
        _wait_done(w)
        assert w.tick(SESSIONS, BudgetView(), FC, 1.0) == {} and w.stats.failed == 1
    finally:
        w.close()


def _wait_done(w: PlannerWorker) -> None:
    f = w._future
    if f is not None:
        with contextlib.suppress(RuntimeError):
            f.result(timeout=30)


def test_a_late_plan_is_dropped_and_the_loop_does_not_wait() -> None:
    gate = threading.Event()

    def slow(sessions: Sequence[PlanSession], site: Site, view: BudgetView, fc: Forecast, st: PlannerState | None,
             now: float, cfg: PlannerConfig | None) -> tuple[Plan, PlannerState]:
        gate.wait(30)
        return plan(sessions, site, view, fc, st, now, cfg)

    w = PlannerWorker(_site(), PlannerSettings(enabled=True, replan_s=10.0, max_plan_age_s=20.0), plan_fn=slow)
    try:
        w.tick(SESSIONS, BudgetView(), FC, 0.0)
        assert w.tick(SESSIONS, BudgetView(), FC, 15.0) == {}  # returns at once while the plan runs
        gate.set()
        _wait(w)
        assert w.tick(SESSIONS, BudgetView(), FC, 30.0) == {}  # planned at 0, back at 30: too old
        assert w.stats.dropped_late == 1
    finally:
        w.close()
