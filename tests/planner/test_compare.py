"""A short comparison run on the same sessions and limits (no timing asserts): ems-gateway with and without the
planner through hil.planner_sim, acnportal's EDF and LLF through hil.planner_acn, the LP ideal with deadlines."""

from __future__ import annotations

import pytest

from hil.planner_ideal import ideal_deadlines
from hil.planner_scenarios import DEPOT_START_WALL, depot
from hil.planner_sim import simulate

pytest.importorskip("acnportal")


def test_short_depot_comparison() -> None:
    # 8 vans on a service that carries them all only if the early leavers go first (and 2 h less night)
    s = depot(8, seed=3, service_a=110.0, panel_a=80.0)
    base = simulate(s, use_planner=False, tick_s=60.0, start_wall=DEPOT_START_WALL)
    planned = simulate(s, use_planner=True, tick_s=60.0, start_wall=DEPOT_START_WALL, expect=(12 * 3600.0, 60.0))
    from hil.planner_acn import run_acn

    edf = run_acn(s, "acnportal EDF", period_s=300.0, start_wall=DEPOT_START_WALL)
    lp = ideal_deadlines(s, 900, DEPOT_START_WALL)
    for r in (base, planned, edf):
        assert len(r.sessions) == 8
        assert r.violations == 0
        assert 0 < r.energy_kwh <= sum(a.requested_wh for a in s.arrivals) / 1000.0 + 1e-6
    assert planned.plan_s and planned.plans_failed < len(planned.plan_s)
    # the LP ideal is an upper bound on what any of them completes (its relaxation drops ramps and floors)
    assert lp["complete"] >= max(base.completed, planned.completed, edf.completed) - 1
    # the planner is not worse than max-min fairness on deadlines
    assert planned.completed >= base.completed
