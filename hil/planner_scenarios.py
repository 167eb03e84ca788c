"""Scenarios for departure-aware charging (issue 15), built in code and written as HIL scenario files.

* ``depot``: 80 delivery vans back at the depot 17:30-19:00, all needed again 04:30-06:00 (known departures,
  earlier departures and lower states of charge first), on a constrained 400 V three-phase service (two
  panels), with an evening peak and night off-peak prices (the site's [budget.tariff]).
* ``workplace``: 40 cars arriving 07:30-10:00 and leaving 16:00-19:00 whose departures and energy the
  gateway does not know (needs unknown: today's behaviour).

``python -m hil.planner_scenarios`` (re)writes hil/scenarios/planner-{depot,workplace}.toml and their sites under
hil/scenarios/sites/ (at time_scale 200 for the rig: about 4 minutes of wall time each).
Scenario time 0 is 17:00 (depot) or 07:00 (workplace) UTC on START_WALL's day.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from hil.scenario import Scenario, scenario_from_dict

DEPOT_START_WALL = 1768323600.0  # 2026-01-13 17:00 UTC (a Tuesday)
WORKPLACE_START_WALL = 1768287600.0  # 2026-01-13 07:00 UTC
ROT = ("L1L2L3", "L2L3L1", "L3L1L2")


def depot_site(n: int = 80, service_a: float = 630.0, panel_a: float = 400.0) -> dict[str, Any]:
    half = (n + 1) // 2
    return {
        "site": {"id": "planner-depot", "name": "Delivery van depot (issue 15)"},
        "service": {"voltage_ll_v": 400, "phases": 3, "limit_a": service_a, "margin_a": 10.0,
                    "worst_case_non_ev_a": 60.0},
        "control": {"tick_s": 10.0, "ramp_up_a_per_s": 2.0, "ev_response_s": 11.0},
        "priorities": {"fleet": {"weight": 1.0}},
        "circuits": [
            {"id": "panel-a", "kind": "panel", "parent": "service", "limit_a": panel_a},
            {"id": "panel-b", "kind": "panel", "parent": "service", "limit_a": panel_a},
        ],
        "meters": [{"id": "m-main", "circuit": "service", "host": "127.0.0.1"},
                   {"id": "m-a", "circuit": "panel-a", "host": "127.0.0.1"},
                   {"id": "m-b", "circuit": "panel-b", "host": "127.0.0.1"}],
        "chargers": [
            {"id": f"VAN{i:03d}", "kind": "ac", "ocpp_version": "2.0.1",
             "circuit": "panel-a" if i < half else "panel-b",
             "phases": 3, "phase_rotation": ROT[i % 3], "min_current_a": 6.0, "max_current_a": 32.0,
             "failsafe_current_a": 0.0, "priority": "fleet"}
            for i in range(n)
        ],
        "budget": {"timezone": "UTC", "tariff": {"periods": [
            {"name": "night", "start": "00:00", "end": "07:00", "price_per_kwh": 0.11},
            {"name": "day", "start": "07:00", "end": "17:00", "price_per_kwh": 0.22},
            {"name": "peak", "start": "17:00", "end": "21:00", "price_per_kwh": 0.34},
            {"name": "late", "start": "21:00", "end": "24:00", "price_per_kwh": 0.11},
        ]}},
    }


def depot_dict(n: int = 80, seed: int = 15, service_a: float = 630.0, panel_a: float = 400.0,
               site_config: str | None = None, one_phase_share: float = 0.0) -> dict[str, Any]:
    """Scenario time 0 = 17:00; arrivals 17:30-19:00, departures 04:30-06:00 (11.5-13 h later)."""
    rng = random.Random(seed)
    arrivals = []
    for i in range(n):
        at = rng.uniform(1800.0, 7200.0)
        dep = rng.uniform(11.5 * 3600, 13.0 * 3600)
        one_phase = rng.random() < one_phase_share  # delivery vans: three-phase on-board chargers
        cap = rng.choice((68.0, 75.0, 89.0))
        arrivals.append({
            "at_s": round(at, 1), "charger": f"VAN{i:03d}", "departure_s": round(dep, 1), "capacity_kwh": cap,
            "soc_start": round(rng.uniform(0.1, 0.45), 3), "soc_target": rng.choice((0.9, 1.0)),
            "max_current_a": 32.0 if one_phase else rng.choice((16.0, 16.0, 32.0)),
            "ac_phases": 1 if one_phase else 3, "taper_start_soc": rng.choice((0.8, 0.85)),
            "end_fraction": 0.2, "response_delay_s": round(rng.uniform(5, 11), 2), "id_tag": f"FLEET-{i:03d}",
        })
    scen: dict[str, Any] = {"name": "planner-depot", "duration_s": 13.5 * 3600, "time_scale": 200,
                            "seed": seed, "ideal_step_s": 900}
    scen["description"] = f"{n} vans 17:30-19:00 -> 04:30-06:00, {service_a:g} A service, off-peak nights"
    if site_config is not None:
        scen["site_config"] = site_config
    return {"scenario": scen, "base_loads": [{"circuit": "service", "points": [[0, 45], [4 * 3600, 25]]}],
            "arrivals": arrivals}


def workplace_site(n: int = 40, service_a: float = 250.0) -> dict[str, Any]:
    d = depot_site(n, service_a=service_a, panel_a=200.0)
    d["site"] = {"id": "planner-workplace", "name": "Workplace car park (issue 15)"}
    d["priorities"] = {"staff": {"weight": 1.0}}
    for i, ch in enumerate(d["chargers"]):
        ch["id"], ch["priority"] = f"WP{i:03d}", "staff"
    return d


def workplace_dict(n: int = 40, seed: int = 16, site_config: str | None = None) -> dict[str, Any]:
    rng = random.Random(seed)
    arrivals = []
    for i in range(n):
        at = rng.uniform(1800.0, 3 * 3600.0)
        arrivals.append({
            "at_s": round(at, 1), "charger": f"WP{i:03d}", "departure_s": round(rng.uniform(9 * 3600, 12 * 3600), 1),
            "capacity_kwh": rng.choice((40.0, 58.0, 77.0)), "soc_start": round(rng.uniform(0.2, 0.6), 3),
            "soc_target": 0.9, "max_current_a": rng.choice((16.0, 32.0)), "ac_phases": rng.choice((1, 3, 3)),
            "response_delay_s": round(rng.uniform(5, 11), 2), "id_tag": f"STAFF-{i:03d}",
        })
    scen: dict[str, Any] = {"name": "planner-workplace", "duration_s": 12.5 * 3600, "time_scale": 200, "seed": seed,
                            "ideal_step_s": 900,
                            "description": f"{n} cars, departures unknown to the gateway"}
    if site_config is not None:
        scen["site_config"] = site_config
    return {"scenario": scen, "base_loads": [{"circuit": "service", "points": [[0, 40], [2 * 3600, 70]]}],
            "arrivals": arrivals}


def _inline(d: dict[str, Any], site: dict[str, Any]) -> Scenario:
    """A scenario with its site given inline (scenario_from_dict reads site_config files only)."""
    import tempfile

    from hil.tomlw import dumps

    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "site.toml"
        f.write_text(dumps(site))
        d = {**d, "scenario": {**d["scenario"], "site_config": str(f)}}
        return scenario_from_dict(d, base_dir=Path(tmp), source=f"<{d['scenario']['name']}>")


def depot(n: int = 80, seed: int = 15, service_a: float = 630.0, panel_a: float = 400.0) -> Scenario:
    return _inline(depot_dict(n, seed, service_a, panel_a), depot_site(n, service_a, panel_a))


def workplace(n: int = 40, seed: int = 16) -> Scenario:
    return _inline(workplace_dict(n, seed), workplace_site(n))


def main() -> None:
    from hil.tomlw import dumps

    out = Path(__file__).resolve().parent / "scenarios"
    (out / "sites").mkdir(exist_ok=True)
    for name, scen, site in (("planner-depot", depot_dict(site_config="sites/planner-depot.toml"), depot_site()),
                             ("planner-workplace", workplace_dict(site_config="sites/planner-workplace.toml"),
                              workplace_site())):
        (out / "sites" / f"{name}.toml").write_text(f"# generated by python -m hil.planner_scenarios\n{dumps(site)}")
        (out / f"{name}.toml").write_text(f"# generated by python -m hil.planner_scenarios\n{dumps(scen)}")


if __name__ == "__main__":
    main()


def caltech(seed: int = 17, n: int | None = None) -> Scenario:
    """acnportal's Caltech ACN (54 EVSEs, 208 V line-to-line, 150 kVA transformer) as a gateway site, with a
    workday of sessions whose departures are known (the ACN's app asks drivers for them): arrivals 07:30-10:00,
    departures 15:30-19:00, 8-35 kWh each."""
    from hil.planner_acn import caltech_site

    site = caltech_site()
    ids = [c["id"] for c in site["chargers"]][: n or None]
    rng = random.Random(seed)
    arrivals = []
    for cid in ids:
        at = rng.uniform(1800.0, 3 * 3600.0)
        cap = rng.choice((40.0, 60.0, 75.0))
        need = rng.uniform(8.0, 35.0)
        soc0 = round(max(0.05, 0.9 - need / cap), 3)
        dep = round(rng.uniform(8.5 * 3600, 12 * 3600), 1)
        arrivals.append({"at_s": round(at, 1), "charger": cid, "departure_s": dep,
                         "capacity_kwh": cap, "soc_start": soc0, "soc_target": 0.9, "max_current_a": 32.0,
                         "ac_phases": 1, "response_delay_s": round(rng.uniform(5, 11), 2), "id_tag": f"ACN-{cid}"})
    d = {"scenario": {"name": "planner-caltech", "description": "Caltech ACN site model, a workday",
                      "duration_s": 12.5 * 3600, "time_scale": 200, "seed": seed, "ideal_step_s": 900},
         "arrivals": arrivals}
    return _inline(d, site)
