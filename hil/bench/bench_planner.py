"""Benchmark and evidence for departure-aware charging (issue 15): one run per scenario on the same sessions and
limits, printed as a table.

* ems-gateway without the planner (max-min fairness) and with it, through hil.planner_sim (allocate() + plan()
  on the sitesim.ev EV model, ticks of ``--tick`` s; HiGHS limited to 5 s per plan so that the figures do not
  depend on the machine's load; the plans that took longer than the daemon's 0.8 s are counted);
* acnportal's earliest deadline first and least laxity first through acnportal's own simulator (hil.planner_acn;
  its adaptive scheduler needs cvxpy, not installed: skipped, said in the output);
* the LP ideal with deadlines (hil.planner_ideal).

Scenarios: the depot (80 vans 17:30-19:00 -> 04:30-06:00, 630 A 400 V three-phase service, off-peak nights),
the workplace (40 cars, departures unknown to the gateway), and acnportal's Caltech ACN site model (54
line-to-line EVSEs, acnportal's own phasor constraints for its algorithms, the gateway on the same site as a
circuit tree). Figures are noisy on a shared machine (planner time above all).

    python -m hil.bench.bench_planner [--scenario depot|workplace|caltech|all] [--n 80] [--tick 30]

The planner re-plans every 900 s (its slot) and on every arrival and departure: re-planning every 300 s cost the
Caltech day 2-5 completions (an LP has many equally good splits of the room now; each new plan may pick another,
and every shift waits for the EVs to follow decreases before the increases are granted). Caltech's sessions are
short: its runs tick every 10 s (at 30 s the same churn costs ~2 completions).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from gateway.planner import PlannerConfig
from hil import planner_table
from hil.planner_acn import adaptive_available, run_acn
from hil.planner_ideal import ideal_deadlines
from hil.planner_scenarios import DEPOT_START_WALL, WORKPLACE_START_WALL, caltech, depot, workplace
from hil.planner_sim import RunResult, simulate
from hil.scenario import Scenario

COLS = ("run", "complete", "sessions", "complete_pct", "energy_kwh", "cost", "peak_kw", "plan_median_ms",
        "plan_max_ms", "violations")


def compare(scenario: Scenario, *, start_wall: float, needs: str = "known", expect: tuple[float, float] | None = None,
            tick_s: float = 30.0, acn: bool = True, acn_network: Any = None,
            ideal: bool = True, time_limit_s: float = 5.0) -> list[dict[str, Any]]:
    """Every run on one scenario: a row of figures each (the LP ideal's row has no peak or planner time)."""
    rows: list[dict[str, Any]] = []
    runs: list[RunResult] = [
        simulate(scenario, use_planner=False, needs=needs, tick_s=tick_s, start_wall=start_wall),  # type: ignore[arg-type]
        simulate(scenario, use_planner=True, needs=needs, tick_s=tick_s, start_wall=start_wall,  # type: ignore[arg-type]
                 expect=expect, planner_cfg=PlannerConfig(time_limit_s=time_limit_s)),
    ]
    if acn:
        runs += [run_acn(scenario, algo, start_wall=start_wall, network=acn_network() if acn_network else None)
                 for algo in ("acnportal EDF", "acnportal LLF")]
    for r in runs:
        row = r.row()
        row["plans_failed"] = r.plans_failed
        row["plans"] = len(r.plan_s)
        row["plans_over_0.8s"] = sum(t > 0.8 for t in r.plan_s)  # would have fallen back at the daemon's default
        row["at_risk_events"] = r.at_risk_events
        rows.append({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()})
    if ideal:
        t0 = time.perf_counter()
        lp = ideal_deadlines(scenario, 900, start_wall)
        rows.append(planner_table.ideal_row(lp, plan_median_ms=round(1000 * (time.perf_counter() - t0), 1),
                                            violations=None))
    return rows


def table(title: str, rows: list[dict[str, Any]]) -> str:
    return planner_table.table(
        title, rows, COLS,
        lambda r: (f"{r['run']}: {r['plans']} plans, {r['plans_failed']} failed, {r['plans_over_0.8s']} took over "
                   f"0.8 s (the daemon's default HiGHS limit: those would have fallen back to max-min), "
                   f"{r['at_risk_events']} at-risk events"),
        lambda run: run == "ems-gateway + planner", "planner")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", choices=("depot", "workplace", "caltech", "all"), default="all")
    ap.add_argument("--n", type=int, default=80, help="vans in the depot")
    ap.add_argument("--tick", type=float, default=30.0, help="the simulated control tick (s); caltech: 10")
    ap.add_argument("--needs", choices=("known", "iso15118"), default="known",
                    help="known: the planner is told each EV's battery curve; iso15118: only what an AC EV tells "
                         "(energy, departure, maximum), as on the rig")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not adaptive_available():
        print("acnportal's adaptive scheduler (AdaptiveSchedulingAlgo) needs cvxpy, which is not installed: skipped")
    results: dict[str, list[dict[str, Any]]] = {}
    if args.scenario in ("depot", "all"):
        s = depot(args.n)
        results["depot"] = compare(s, start_wall=DEPOT_START_WALL, expect=(12 * 3600.0, 60.0), tick_s=args.tick,
                                   needs=args.needs)
        print(table(f"depot: {s.description}", results["depot"]))
    if args.scenario in ("workplace", "all"):
        s = workplace()
        # departures unknown to the gateway (the planner has nothing to plan: today's behaviour); acnportal's
        # algorithms would be given the true departures, so they are not run here
        results["workplace"] = compare(s, start_wall=WORKPLACE_START_WALL, needs="unknown", tick_s=args.tick, acn=False)
        print(table(f"workplace: {s.description}", results["workplace"]))
    if args.scenario in ("caltech", "all"):
        from acnportal.acnsim.network.sites import caltech_acn

        s = caltech()
        rows = compare(s, start_wall=WORKPLACE_START_WALL, tick_s=min(args.tick, 10.0), needs=args.needs,
                       acn_network=lambda: caltech_acn(basic_evse=True))
        # acnportal's algorithms once more on the gateway's model of the same site (per-line sums, not phasors)
        for algo in ("acnportal EDF", "acnportal LLF"):
            r = run_acn(s, algo, start_wall=WORKPLACE_START_WALL)
            r.name = f"{algo} (gateway model)"
            rows.insert(-1, {k: (v.item() if hasattr(v, "item") else v) for k, v in r.row().items()})
        results["caltech"] = rows
        print(table(f"caltech: {s.description} (acnportal EDF/LLF on its own phasor constraints, then on the "
                    "gateway's per-line model)", rows))
    if args.json:
        print(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
