"""The planner (gateway.planner.solve): feasible shares, deadlines first, never above a limit, the fallback."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.config import Site, site_from_dict
from gateway.planner import BudgetView, Forecast, PlannerConfig, PlannerState, PlanSession, PriceSlot, Taper, plan
from gateway.planner import solve as solve_mod
from tests.factories import ac, site_dict

H = 3600.0


def _site(limit_a: float = 64.0, n: int = 4, panel_a: float | None = None) -> Site:
    circuits = [{"id": "panel", "kind": "panel", "parent": "service", "limit_a": panel_a}] if panel_a else []
    chargers = [ac(f"C{i}", "panel" if panel_a else "service", phases=3, min_current_a=6.0) for i in range(n)]
    return site_from_dict(site_dict(limit_a=limit_a, chargers=chargers, circuits=circuits))


def _flat(site: Site, a: float = 0.0) -> Forecast:
    return Forecast.flat({c: (a,) * site.service.phases for c in site.circuits})


def _room_ok(site: Site, targets: dict[str, float], non_ev: float) -> None:
    for cid, c in site.circuits.items():
        for p in range(site.service.phases):
            used = sum(a for ch, a in targets.items() if ch in site.chargers_under[cid]
                       and p in site.chargers[ch].line_phases)
            assert used <= c.limit_a - c.margin_a - non_ev + 1e-6, (cid, p, used)


def test_every_session_completes_when_it_can_and_the_shares_fit_every_circuit() -> None:
    site = _site(limit_a=64.0, panel_a=50.0)
    # 4 x 20 kWh over 8 h on 44 A of room (30 kW): 80 kWh fits
    sessions = [PlanSession(f"C{i}", 20e3, 8 * H) for i in range(4)]
    p, _ = plan(sessions, site, BudgetView(), _flat(site, 6.0), None, 0.0)
    assert p.status == "optimal"
    assert not any(pr.at_risk for pr in p.projections.values())
    for pr in p.projections.values():
        assert pr.projected_wh >= pr.need_wh - 1.0
    _room_ok(site, {c: t.target_a for c, t in p.targets.items()}, 6.0)


def test_the_earlier_departure_gets_the_room_now() -> None:
    site = _site(limit_a=32.0, n=2)
    # C0 leaves in 1 h and needs all of 32 A for it (22 kWh); C1 stays 10 h
    sessions = [PlanSession("C0", 20e3, 1 * H), PlanSession("C1", 20e3, 10 * H)]
    p, _ = plan(sessions, site, BudgetView(), _flat(site), None, 0.0)
    assert p.targets["C0"].target_a > 25.0
    assert p.targets["C0"].target_a + p.targets["C1"].target_a <= 32.0 + 1e-6
    assert p.targets["C0"].reason == "plan:deadline"
    assert not p.projections["C1"].at_risk


def test_when_not_all_can_complete_as_many_as_possible_do() -> None:
    site = _site(limit_a=32.0, n=3)
    # 2 h at 32 A three-phase = 44 kWh: two small sessions (15 kWh) complete, the big one (40 kWh) cannot with them
    sessions = [PlanSession("C0", 15e3, 2 * H), PlanSession("C1", 15e3, 2 * H), PlanSession("C2", 40e3, 2 * H)]
    p, st = plan(sessions, site, BudgetView(), _flat(site), None, 0.0)
    risky = {c for c, pr in p.projections.items() if pr.at_risk}
    assert risky == {"C2"}
    assert [e[0] for e in st.events] == ["session_at_risk"] and st.events[0][1]["charger"] == "C2"
    # the event goes out once: the next plan, still at risk, says nothing new
    _, st2 = plan(sessions, site, BudgetView(), _flat(site), st, 60.0)
    assert st2.events == () and st2.at_risk == frozenset({"C2"})


def test_never_above_the_charger_the_ev_or_the_taper() -> None:
    site = _site(limit_a=200.0, n=2)
    sessions = [PlanSession("C0", 50e3, 2 * H, ev_max_a=16.0),
                PlanSession("C1", 10e3, 2 * H, taper=Taper(20e3, 0.95, 0.8, 0.1))]
    p, _ = plan(sessions, site, BudgetView(), _flat(site), None, 0.0)
    assert p.targets["C0"].target_a <= 16.0 + 1e-6
    # at 95 % the curve allows 0.1 + 0.9 * (1 - 0.75) = 32.5 % of 32 A
    assert p.targets["C1"].target_a <= 32.0 * 0.325 + 1e-6
    assert p.projections["C0"].at_risk  # 50 kWh at 11 kW in 2 h: not possible


def test_the_budget_caps_now_and_the_forecast_lower_the_room() -> None:
    site = _site(limit_a=100.0, n=4)
    sessions = [PlanSession(f"C{i}", 60e3, 3 * H) for i in range(4)]
    p, _ = plan(sessions, site, BudgetView(caps_now_a=(40.0, 40.0, 40.0)), _flat(site, 10.0), None, 0.0)
    assert sum(t.target_a for t in p.targets.values()) <= 40.0 - 10.0 + 1e-6


def test_cheap_period_defers_what_can_wait() -> None:
    site = _site(limit_a=100.0, n=1)
    view = BudgetView(slots=(PriceSlot(0.0, 2 * H, 0.40), PriceSlot(2 * H, 24 * H, 0.10)))
    p, _ = plan([PlanSession("C0", 20e3, 10 * H)], site, view, _flat(site), None, 0.0)
    t = p.targets["C0"]
    assert t.reason == "plan:cheap-period" and t.hold and t.target_a < 1.0
    assert not p.projections["C0"].at_risk
    # the same session with no time to wait charges now
    p2, _ = plan([PlanSession("C0", 20e3, 1 * H)], site, view, _flat(site), None, 0.0)
    assert p2.targets["C0"].reason == "plan:deadline" and p2.targets["C0"].target_a > 25.0


def test_unknown_needs_and_expected_sessions_get_no_target_but_hold_room() -> None:
    site = _site(limit_a=40.0, n=3)
    sessions = [PlanSession("C0", 30e3, 4 * H), PlanSession("C1", None, None),
                PlanSession("C2", 60e3, 4 * H, expected=True)]
    p, _ = plan(sessions, site, BudgetView(), _flat(site), None, 0.0)
    assert set(p.targets) == {"C0"} and set(p.projections) == {"C0"}
    assert p.targets["C0"].target_a <= 40.0 - 6.0 + 1e-6  # C1's minimum is held for it
    only_unknown, _ = plan([PlanSession("C1", None, None)], site, BudgetView(), _flat(site), None, 0.0)
    assert only_unknown.status == "no-sessions" and not only_unknown.targets


def test_a_solver_fault_or_time_limit_gives_no_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    site = _site()
    sessions = [PlanSession("C0", 10e3, 2 * H)]

    class Res:
        def __init__(self, status: int, x: Any) -> None:
            self.status, self.x, self.message = status, x, "stub"

    import scipy.optimize

    def boom(*_a: Any, **_k: Any) -> Any:
        raise ValueError("solver fault")

    monkeypatch.setattr(scipy.optimize, "linprog", boom)
    p, st = plan(sessions, site, BudgetView(), _flat(site), PlannerState(), 0.0)
    assert not p.ok and p.status.startswith("failed") and not p.targets
    monkeypatch.setattr(scipy.optimize, "linprog", lambda *a, **k: Res(1, np.zeros(8)))
    p, _ = plan(sessions, site, BudgetView(), _flat(site), st, 0.0)
    assert p.status == "time-limit" and not p.targets
    monkeypatch.setattr(scipy.optimize, "linprog", lambda *a, **k: Res(2, None))
    p, _ = plan(sessions, site, BudgetView(), _flat(site), st, 0.0)
    assert not p.ok and not p.targets


def test_a_real_time_limit_is_passed_to_highs(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    import scipy.optimize

    real = scipy.optimize.linprog

    def spy(*a: Any, **k: Any) -> Any:
        seen.update(k.get("options") or {})
        return real(*a, **k)

    monkeypatch.setattr(scipy.optimize, "linprog", spy)
    site = _site()
    plan([PlanSession("C0", 10e3, 2 * H)], site, BudgetView(), _flat(site), None, 0.0,
         PlannerConfig(time_limit_s=0.25))
    assert seen["time_limit"] == 0.25
    assert solve_mod.DEADLINE == "plan:deadline"


def test_among_equally_good_plans_the_least_laxity_goes_first() -> None:
    # room for one session at a time (32 A); both complete either way. C1 needs more of its stay (less laxity):
    # it gets the room now, C0 (plenty of laxity) waits
    site = _site(limit_a=32.0, n=2)
    sessions = [PlanSession("C0", 10e3, 8 * H), PlanSession("C1", 30e3, 8 * H)]
    p, _ = plan(sessions, site, BudgetView(), _flat(site), None, 0.0)
    assert not any(pr.at_risk for pr in p.projections.values())
    assert p.targets["C1"].target_a > p.targets["C0"].target_a + 10.0


def test_the_share_now_keeps_to_the_last_plan_between_equally_good_splits() -> None:
    # two identical sessions and room for one now: whichever the last plan chose keeps the room (no switching)
    site = _site(limit_a=32.0, n=2)
    flat = PlannerConfig(assumed_taper_wh=0.0)  # at the full rate: the room is the only bound
    sessions = [PlanSession("C0", 10e3, 8 * H), PlanSession("C1", 10e3, 8 * H)]
    for chosen in ("C0", "C1"):
        other = "C1" if chosen == "C0" else "C0"
        prev = PlannerState(targets={chosen: 32.0, other: 0.0})
        p, st = plan(sessions, site, BudgetView(), _flat(site), prev, 0.0, flat)
        assert p.targets[chosen].target_a > 30.0 and p.targets[other].target_a < 2.0
        assert st.targets[chosen] == pytest.approx(p.targets[chosen].target_a)
    # a need that grows urgent still moves it: C1 now leaves in 1 h and needs all of 32 A
    urgent = [PlanSession("C0", 10e3, 8 * H), PlanSession("C1", 20e3, 1 * H)]
    p, _ = plan(urgent, site, BudgetView(), _flat(site), PlannerState(targets={"C0": 32.0, "C1": 0.0}), 0.0,
                flat)
    assert p.targets["C1"].target_a > 25.0


def test_an_ev_that_tells_no_battery_curve_is_planned_with_a_taper() -> None:
    # 20 kWh in 1 h on 32 A three-phase (22 kW): at the full rate to the last Wh it would just make it; an EV
    # slows down as it fills, so the plan says it is at risk (assumed: the last 5 kWh at a falling rate)
    site = _site(limit_a=200.0, n=1)
    sessions = [PlanSession("C0", 20e3, 1 * H)]
    flat, _ = plan(sessions, site, BudgetView(), _flat(site), None, 0.0, PlannerConfig(assumed_taper_wh=0.0))
    assert not flat.projections["C0"].at_risk
    p, _ = plan(sessions, site, BudgetView(), _flat(site), None, 0.0)
    assert p.projections["C0"].at_risk and p.projections["C0"].projected_wh < 0.99 * 20e3
    # a curve the EV told wins over the assumption: a small battery already past its taper start
    told = [PlanSession("C0", 2e3, 1 * H, taper=Taper(20e3, 0.9, 0.8, 0.1))]
    p, _ = plan(told, site, BudgetView(), _flat(site), None, 0.0)
    assert p.targets["C0"].target_a <= 32.0 * (1.0 - 4.5 * 0.1) + 1e-6  # 0.1 + 0.9 * (1 - 0.5) = 55 %


def test_the_assumed_taper_keeps_one_battery_while_the_need_shrinks() -> None:
    cfg = PlannerConfig()
    full = solve_mod.assumed_taper(PlanSession("C0", 60e3, H), cfg)
    later = solve_mod.assumed_taper(PlanSession("C0", 20e3, H, delivered_wh=40e3), cfg)
    assert full is not None and later is not None
    assert full.capacity_wh == later.capacity_wh == pytest.approx(75e3)  # 15 kWh from 80 %: a 75 kWh battery
    assert full.soc == pytest.approx(0.2) and later.soc == pytest.approx(1.0 - 20 / 75)
    # a top-up of 4 kWh: its last kWh (a quarter) at the falling rate, not 15 kWh of a full battery's tail
    small = solve_mod.assumed_taper(PlanSession("C0", 4e3, H), cfg)
    assert small is not None and small.capacity_wh == pytest.approx(5e3) and small.soc == pytest.approx(0.2)
    big = solve_mod.assumed_taper(PlanSession("C0", 90e3, H), cfg)  # beyond 75 kWh: from an empty battery
    assert big is not None and big.capacity_wh == pytest.approx(90e3) and big.soc == pytest.approx(0.0)
    assert solve_mod.assumed_taper(PlanSession("C0", 20e3, H), PlannerConfig(assumed_taper_wh=0.0)) is None
    assert solve_mod.assumed_taper(PlanSession("C0", None, H), cfg) is None


def test_a_fast_session_with_plenty_of_laxity_does_not_wait_until_its_tail_cannot_fit() -> None:
    # room for 32 A; C0 (32 A capable) needs 30 kWh by 6 h, C1 10 kWh by 6 h. At the full rate C0 needs 1.4 h:
    # least laxity first at full rate would let it wait 4 h; its tail at a falling rate needs much more
    site = _site(limit_a=32.0, n=2)
    sessions = [PlanSession("C0", 30e3, 6 * H), PlanSession("C1", 10e3, 6 * H)]
    p, _ = plan(sessions, site, BudgetView(), _flat(site), None, 0.0)
    assert not any(pr.at_risk for pr in p.projections.values())
    assert p.targets["C0"].target_a > 6.0
