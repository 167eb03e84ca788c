"""Demand, cost and solar figures of the scorecard (hil/scorecard_budget.py) and the ideal LP under a demand
target, on recordings made up by hand where the answer can be worked out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.config import site_from_dict
from hil.ideal import ideal_demand, ideal_energy
from hil.pv import METER_PF, DemandSpec, Tariff
from hil.rig.runner import Recording
from hil.scenario import scenario_from_dict
from hil.scorecard_budget import demand_intervals, energy_cost, solar_figures

GARAGE = Path(__file__).resolve().parents[2] / "etc" / "examples" / "garage-4xL2.toml"
SOLAR_SITE = Path(__file__).resolve().parents[2] / "hil" / "scenarios" / "sites" / "garage-solar.toml"
LEG_W = 120.0 * METER_PF  # W per A on one leg of the 120/240 V garage, as the meters measure it


def recording(legs_a: np.ndarray, times: np.ndarray, t0: float, **scenario: Any) -> Recording:
    """``legs_a``: the service current per sample, the same on both legs."""
    sc = scenario_from_dict({
        "scenario": {"name": "made-up", "site_config": str(scenario.pop("site", GARAGE)), "duration_s": 1800,
                     "time_scale": 1},
        "arrivals": [{"at_s": 0, "charger": "garage-1", "departure_s": 1800}],
        **scenario,
    })
    site = site_from_dict(sc.site)
    n = len(times)
    return Recording(scenario=sc, mode="gateway", site=site, times=times, circuit_ids=list(site.circuits),
                     circuit_a=np.repeat(legs_a.reshape(n, 1, 1), 2, axis=2), charger_ids=list(site.chargers),
                     charger_limit_a=np.zeros((n, len(site.chargers))),
                     charger_draw_a=np.zeros((n, len(site.chargers))), events=[], gateway_logs=[], sessions=[],
                     messages={"lost": 0}, process={}, t0_wall=t0)


def test_intervals_are_aligned_to_the_clock_and_partial_ones_are_marked() -> None:
    t = np.arange(0.0, 1800.0, 1.0)
    t0 = 1_000_000 * 900 + 450.0  # half way into an interval: 450 s, a full one, 450 s
    legs = np.where(t < 450, 50.0, np.where(t < 1350, 30.0, 10.0))
    d = demand_intervals(recording(legs, t, t0), DemandSpec(target_kw=6.0, interval_s=900))
    rows = d["intervals"]
    assert [r["partial"] for r in rows] == [True, False, True]
    assert [r["covered_s"] for r in rows] == [450.0, 900.0, 450.0]
    full_kw = 2 * 30 * LEG_W / 1000
    assert rows[1]["average_kw"] == pytest.approx(full_kw, abs=1e-3)
    assert rows[0]["average_kw"] == pytest.approx(2 * 50 * LEG_W / 1000 / 2, abs=1e-3)  # half the interval's energy
    assert d["intervals_above_target"] == 1 and d["intervals_complete"] == 1  # only the complete one counts
    assert d["peak_kw"] == pytest.approx(full_kw, abs=1e-3) and not d["peak_from_partial_intervals"]


def test_export_is_no_demand_and_cost_uses_the_price_of_the_hour() -> None:
    t = np.arange(0.0, 1800.0, 1.0)
    t0 = 7 * 3600.0 - 900.0  # 06:45 UTC: the first interval at the night price, the second at the day price
    legs = np.where(t < 900, 40.0, np.where(t < 1350, 20.0, -20.0))  # exporting for the last 450 s
    rec = recording(legs, t, t0)
    d = demand_intervals(rec, DemandSpec(target_kw=100.0, interval_s=900))
    kw1, kw2 = 2 * 40 * LEG_W / 1000, 2 * 20 * LEG_W / 1000 / 2
    assert [r["average_kw"] for r in d["intervals"]] == pytest.approx([kw1, kw2], abs=1e-3)
    c = energy_cost(rec, Tariff(((0.0, 7.0, 0.10), (7.0, 24.0, 0.40)), export_price_per_kwh=0.05,
                                demand_charge_per_kw=10.0), d["peak_kw"])
    e1, e2, ex = kw1 * 0.25, 2 * 20 * LEG_W / 1000 * 0.125, 2 * 20 * LEG_W / 1000 * 0.125
    assert c["import_kwh"] == pytest.approx(e1 + e2, rel=1e-3) and c["export_kwh"] == pytest.approx(ex, rel=1e-3)
    assert c["energy_cost"] == pytest.approx(e1 * 0.10 + e2 * 0.40, rel=1e-3)
    assert c["total_cost"] == pytest.approx(e1 * 0.10 + e2 * 0.40 - ex * 0.05 + 10.0 * kw1, rel=1e-3)


def test_solar_share_and_export_from_a_made_up_recording() -> None:
    """PV 4.704 kW (20 A per leg), building 2.352 kW (10 A per leg); the EVs draw 15 A per leg for the first
    half (from 10 A of surplus: 2/3 of it), nothing for the second (the surplus exported)."""
    t = np.arange(0.0, 1800.0, 1.0)
    pv_kw = 2 * 20 * LEG_W / 1000
    rec_legs = np.where(t < 900, 10.0 + 15.0 - 20.0, 10.0 - 20.0)
    rec = recording(rec_legs, t, 0.0, site=SOLAR_SITE, pv={"meter": "pv-roof", "points": [[0, pv_kw]]},
                    base_loads=[{"circuit": "service", "points": [[0, 10]]}])
    s = solar_figures(rec)
    assert s is not None
    ev_kwh = 2 * 15 * LEG_W / 1000 * 0.25
    assert s["ev_kwh"] == pytest.approx(ev_kwh, rel=1e-3)
    assert s["ev_surplus_share"] == pytest.approx(10 / 15, rel=1e-3)
    assert s["export_kwh"] == pytest.approx(2 * 10 * LEG_W / 1000 * 0.25, rel=1e-3)
    assert s["import_kwh"] == pytest.approx(2 * 5 * LEG_W / 1000 * 0.25, rel=1e-3)
    assert s["pv_kwh"] == pytest.approx(pv_kw * 0.5, rel=1e-3)


def test_the_ideal_under_a_demand_target_keeps_every_interval_at_it() -> None:
    sc = scenario_from_dict({
        "scenario": {"name": "lp", "site_config": str(GARAGE), "duration_s": 1800, "time_scale": 1,
                     "ideal_step_s": 30},
        "base_loads": [{"circuit": "service", "points": [[0, 20], [900, 35]]}],
        "arrivals": [{"at_s": 0, "charger": f"garage-{i}", "departure_s": 1800, "capacity_kwh": 60,
                      "ac_phases": 1, "max_current_a": 40} for i in (1, 2, 3)],
        "demand": {"target_kw": 10.0, "interval_s": 900},
        "tariff": {"periods": [[0, 24, 0.3]], "demand_charge_per_kw": 15.0},
    })
    free, bound = ideal_energy(sc), ideal_demand(sc, t0_epoch=0.0)
    assert bound["demand_intervals_above_target"] == 0 and bound["demand_excess_kwh"] == [0.0, 0.0]
    assert bound["demand_intervals_kw"] == pytest.approx([10.0, 10.0], abs=0.01)  # the target binds in both
    assert bound["energy_kwh"] < free["energy_kwh"]
    base_kw = (2 * 20 * LEG_W + 2 * 35 * LEG_W) / 2 / 1000
    assert bound["energy_kwh"] == pytest.approx((10.0 - base_kw) * 0.5 * (240 * 1.0) / (240 * METER_PF), rel=0.01)
    assert bound["cost"]["demand_charge"] == pytest.approx(150.0, abs=0.2)
    # a target the building alone exceeds: reported as excess, not infeasible
    sc2 = scenario_from_dict({"scenario": {"name": "lp2", "site_config": str(GARAGE), "duration_s": 900,
                                           "time_scale": 1, "ideal_step_s": 30},
                              "base_loads": [{"circuit": "service", "points": [[0, 30]]}],
                              "arrivals": [{"at_s": 0, "charger": "garage-1", "departure_s": 900}],
                              "demand": {"target_kw": 5.0, "interval_s": 900}})
    over = ideal_demand(sc2)
    assert over["status"] == "optimal" and over["demand_intervals_above_target"] == 1
    assert over["demand_excess_kwh"][0] == pytest.approx((2 * 30 * LEG_W / 1000 - 5.0) * 0.25, rel=0.01)


def test_the_long_demand_scenario_and_its_gateway_configs_are_valid(tmp_path: Path) -> None:
    from hil.demand import without_demand
    from hil.scenario import Scenario, load_scenario

    def config(s: Scenario) -> dict[str, Any]:  # what the rig merges into the gateway's config
        return {**s.site, "site": {**s.site["site"], "state_dir": str(tmp_path)}, "budget": dict(s.gateway.budget)}

    sc = load_scenario(Path(__file__).resolve().parents[2] / "hil" / "scenarios" / "demand" / "garage-demand.toml")
    assert sc.demand is not None and sc.tariff is not None and sc.align_start_s == sc.demand.interval_s
    with_cfg, without_cfg = site_from_dict(config(sc)), site_from_dict(config(without_demand(sc)))
    assert with_cfg.budget.demand is not None and with_cfg.budget.demand.target_kw == sc.demand.target_kw
    assert without_cfg.budget.demand is None
    ideal = ideal_demand(sc, t0_epoch=0.0)
    assert ideal["demand_intervals_above_target"] == 0 and len(ideal["demand_intervals_kw"]) == 2
