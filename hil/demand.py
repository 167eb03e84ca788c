"""A demand scenario three ways in one go: without demand control, with it, and the LP ideal under the same target.

``python -m hil demand SCENARIO --out DIR`` runs the scenario twice at the same time (two rigs, two gateways, one
event loop; both start on the same billing-interval boundary when the scenario sets ``align_start_s``): once with
its ``[gateway.budget]`` as written and once with that table's ``demand`` dropped; then solves the ideal allocator
with the scenario's ``[demand]`` target (:func:`hil.ideal.ideal_demand`). Each run gets its scorecard (with the
demand intervals, the intervals above target, the peak and the cost: :mod:`hil.scorecard_budget`) and report in
DIR/without and DIR/with; DIR/demand.json puts the three side by side.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from gateway import logs
from hil.scenario import Scenario


def without_demand(sc: Scenario) -> Scenario:
    budget = {k: v for k, v in sc.gateway.budget.items() if k != "demand"}
    return dataclasses.replace(sc, gateway=dataclasses.replace(sc.gateway, budget=budget))


def _summary(card: dict[str, Any]) -> dict[str, Any]:
    d, c = card.get("demand") or {}, card.get("cost") or {}
    return {
        "intervals_kw": [r["average_kw"] for r in d.get("intervals", [])],
        "intervals_partial": [r["partial"] for r in d.get("intervals", [])],
        "intervals_above_target": d.get("intervals_above_target"), "peak_kw": d.get("peak_kw"),
        "max_power_kw": d.get("max_power_kw"), "cost": c.get("total_cost"), "energy_cost": c.get("energy_cost"),
        "demand_charge": c.get("demand_charge"), "import_kwh": c.get("import_kwh"),
        "ev_energy_kwh": card.get("energy_kwh"), "self_inflicted_a_s": card.get("self_inflicted_a_s"),
    }


def run_three_ways(sc: Scenario, out: Path) -> dict[str, Any]:
    from hil.ideal import ideal_demand, ideal_energy
    from hil.report import write_report
    from hil.rig.runner import Rig
    from hil.scorecard import scorecard

    if sc.demand is None:
        raise ValueError(f"scenario {sc.name!r} has no [demand] table")
    out.mkdir(parents=True, exist_ok=True)
    plain = ideal_energy(sc)
    runs = {"without": without_demand(sc), "with": sc}

    async def both() -> list[Any]:
        return list(await asyncio.gather(*(Rig(s, out / name, "gateway").run() for name, s in runs.items())))

    with (out / "rig.log").open("a", buffering=1, encoding="utf-8") as stream, logs.configured(
        "warning", "json", stream
    ):
        recs = dict(zip(runs, asyncio.run(both()), strict=True))
    ideal = ideal_demand(sc, t0_epoch=recs["with"].t0_wall)
    result: dict[str, Any] = {"scenario": sc.name, "target_kw": sc.demand.target_kw,
                              "interval_s": sc.demand.interval_s, "time_scale": sc.time_scale}
    for name, rec in recs.items():
        card = scorecard(rec, plain)
        write_report(rec, card, out / name)
        result[name] = _summary(card)
    cost = ideal.get("cost") or {}
    result["ideal"] = {
        "intervals_kw": ideal.get("demand_intervals_kw"), "intervals_above_target": ideal.get(
            "demand_intervals_above_target"), "peak_kw": ideal.get("demand_peak_kw"),
        "excess_kwh": ideal.get("demand_excess_kwh"), "cost": cost.get("total_cost"),
        "energy_cost": cost.get("energy_cost"), "demand_charge": cost.get("demand_charge"),
        "import_kwh": ideal.get("import_kwh"), "ev_energy_kwh": ideal.get("energy_kwh"),
        "status": ideal.get("status"),
    }
    result["ideal_without_target_ev_energy_kwh"] = plain.get("energy_kwh")
    (out / "demand.json").write_text(json.dumps(result, indent=1))
    return result


def format_three_ways(r: dict[str, Any]) -> str:
    lines = [f"{r['scenario']}: target {r['target_kw']:g} kW, {r['interval_s']:g} s billing intervals"]
    for name in ("without", "with", "ideal"):
        x = r[name]
        ivs = ", ".join(f"{v:.2f}" for v in (x["intervals_kw"] or []))
        lines.append(f"  {name:8s} intervals [{ivs}] kW; above target {x['intervals_above_target']}; peak "
                     f"{x['peak_kw']} kW; cost {x['cost']} (energy {x['energy_cost']}, demand {x['demand_charge']});"
                     f" EV energy {x['ev_energy_kwh']} kWh")
    return "\n".join(lines)
