"""``python -m hil``: the hardware-in-the-loop rig.

    python -m hil run hil/scenarios/ref-20-dc.toml --out hil/out/ref-20 [--baseline static] [--check]
                      [--meter-interval 10]
    python -m hil ideal hil/scenarios/ref-20-dc.toml        # only the ideal allocator's bound
    python -m hil demand hil/scenarios/demand/garage-demand.toml --out hil/out/demand   # three ways (hil/demand.py)
    python -m hil dr hil/scenarios/dr-busy-hour.toml --out hil/out/dr   # with and without the DR events (hil/dr.py)
    python -m hil planner-compare hil/scenarios/planner-depot.toml   # with and without the planner, acnportal
                                                                     # EDF/LLF, the LP ideal (hil/planner_rig.py)

``run`` plays the scenario against the real ``ems-gateway run`` process and writes scorecard.json,
site_current.png, chargers.png, report.html and recording.npz into --out; ``--baseline static``
also runs the static-derating baseline (no gateway, fixed limits) on the same scenario into
OUT/baseline-static and puts its figures beside the gateway's. ``--meter-interval S`` makes every
charger send MeterValues every S scenario seconds (0: none at all), whatever the scenario says.
``--check`` exits 1 on any self-inflicted overload (one not within the allowed window after a base-load
step of that circuit), on an external overload that lasted beyond the window, a lost message, an
incomplete report, or (a demand-response scenario) an event whose level the service did not reach within its
bound or went back above (hil/scorecard_dr.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.errors import GatewayError


def check(card: dict[str, Any], out: Path) -> list[str]:
    from hil.scorecard import REQUIRED_KEYS

    problems = [f"missing scorecard key {k}" for k in REQUIRED_KEYS if k not in card]
    if card.get("mode") == "gateway":
        if card.get("self_inflicted_a_s") or card.get("self_inflicted_episodes"):
            problems.append(f"self-inflicted overload: {card['self_inflicted_a_s']} A*s in "
                            f"{card['self_inflicted_episodes']} episode(s), "
                            f"peak {card['self_inflicted_peak_over_a']} A over")
        if card.get("external_episodes_beyond_window"):
            problems.append(f"{card['external_episodes_beyond_window']} external overload episode(s) beyond the window")
    if card.get("messages_lost"):
        problems.append(f"{card['messages_lost']} message(s) lost")
    from hil.scorecard_dr import dr_problems

    problems += dr_problems(card)  # a demand-response scenario's events (issue 16)
    for name in ("scorecard.json", "site_current.png", "chargers.png", "report.html"):
        if not (out / name).is_file() or (out / name).stat().st_size == 0:
            problems.append(f"{name} not written")
    return problems


def run(args: argparse.Namespace) -> int:
    from hil.ideal import ideal_energy
    from hil.report import write_report
    from hil.rig import run_scenario
    from hil.scenario import load_scenario
    from hil.scorecard import format_card, scorecard

    sc = load_scenario(args.scenario)
    if args.meter_interval is not None:
        sc = sc.with_meter_interval(args.meter_interval)
    out = Path(args.out or f"hil/out/{sc.name}")
    ideal = ideal_energy(sc) if sc.ideal and not args.no_ideal else None
    base_card = None
    base_dir = None
    if args.baseline == "static":
        base_dir = out / "baseline-static"
        brec = run_scenario(sc, base_dir, mode="static")
        base_card = scorecard(brec, ideal)
        write_report(brec, base_card, base_dir)
        print(format_card(base_card), flush=True)
    rec = run_scenario(sc, out, mode=args.mode)
    card = scorecard(rec, ideal)
    if base_card is not None:
        card["baseline_static"] = {k: base_card.get(k) for k in (
            "energy_kwh", "energy_pct_of_ideal", "sessions_satisfied_share", "fairness_jain", "overload_episodes",
            "overload_a_s", "overload_longest_wall_s", "static_limits")}
    write_report(rec, card, out, base_card, base_dir)
    print(format_card(card))
    if base_card is not None:
        print(f"  static derating baseline: {base_card['energy_kwh']} kWh "
              f"({base_card.get('energy_pct_of_ideal')} % of the ideal bound)")
    print(f"report: {out / 'report.html'}")
    if args.check:
        problems = check(card, out)
        for p in problems:
            print(f"CHECK FAILED: {p}", file=sys.stderr)
        return 1 if problems else 0
    return 0


def ideal(args: argparse.Namespace) -> int:
    from hil.ideal import ideal_energy
    from hil.scenario import load_scenario

    print(json.dumps(ideal_energy(load_scenario(args.scenario), args.step_s), indent=1))
    return 0


def demand(args: argparse.Namespace) -> int:
    from hil.demand import format_three_ways, run_three_ways
    from hil.scenario import load_scenario

    sc = load_scenario(args.scenario)
    out = Path(args.out or f"hil/out/{sc.name}")
    print(format_three_ways(run_three_ways(sc, out)))
    print(f"figures: {out / 'demand.json'}")
    return 0


def dr(args: argparse.Namespace) -> int:
    from hil.dr import run_with_and_without
    from hil.scenario import load_scenario
    from hil.scorecard import format_card

    sc = load_scenario(args.scenario)
    out = Path(args.out or f"hil/out/{sc.name}")
    got = run_with_and_without(sc, out, parallel=args.parallel, ideal=not args.no_ideal)
    print(format_card(got["cards"]["with"]))
    print(f"figures: {out / 'dr.json'}")
    if args.check:
        problems = check(got["cards"]["with"], out / "with")
        for p in problems:
            print(f"CHECK FAILED: {p}", file=sys.stderr)
        return 1 if problems else 0
    return 0


def planner_compare(args: argparse.Namespace) -> int:
    import dataclasses

    from hil.planner_rig import compare_on_rig, table
    from hil.planner_scenarios import DEPOT_START_WALL, WORKPLACE_START_WALL
    from hil.scenario import load_scenario

    sc = load_scenario(args.scenario)
    if args.time_scale is not None:
        sc = dataclasses.replace(sc, time_scale=args.time_scale)
    start = args.start_wall if args.start_wall is not None else (
        WORKPLACE_START_WALL if "workplace" in sc.name else DEPOT_START_WALL)
    out = Path(args.out or f"hil/out/{sc.name}-compare")
    rows = compare_on_rig(sc, out, start_wall=start, acn=not args.no_acn, ideal=not args.no_ideal,
                          maxmin=not args.no_maxmin)
    print(table(f"{sc.name}: {sc.description} (rig at {sc.time_scale:g}x)", rows))
    (out / "planner-compare.json").write_text(json.dumps(rows, indent=1, default=str))
    print(f"figures: {out / 'planner-compare.json'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hil", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a scenario against the real gateway and write the report")
    r.add_argument("scenario")
    r.add_argument("--out", help="output directory (default hil/out/<scenario name>)")
    r.add_argument("--baseline", choices=("static",), help="also run the static-derating baseline")
    r.add_argument("--mode", choices=("gateway", "static"), default="gateway",
                   help="static: only the baseline, without the gateway")
    r.add_argument("--no-ideal", action="store_true", help="skip the ideal allocator's bound (LP)")
    r.add_argument("--meter-interval", type=float, default=None, metavar="S",
                   help="every charger sends MeterValues every S scenario seconds (0: never)")
    r.add_argument("--check", action="store_true",
                   help="exit 1 on self-inflicted overload, external overload beyond the window or lost messages")
    r.set_defaults(func=run)
    i = sub.add_parser("ideal", help="the ideal allocator's energy bound only")
    i.add_argument("scenario")
    i.add_argument("--step-s", type=float, default=None)
    i.set_defaults(func=ideal)
    d = sub.add_parser("demand", help="a demand scenario without demand control, with it, and the LP ideal")
    d.add_argument("scenario")
    d.add_argument("--out", help="output directory (default hil/out/<scenario name>)")
    d.set_defaults(func=demand)
    e = sub.add_parser("dr", help="a demand-response scenario with and without its events, and the ideal bounds")
    e.add_argument("scenario")
    e.add_argument("--out", help="output directory (default hil/out/<scenario name>)")
    e.add_argument("--parallel", action="store_true", help="run both at the same time (half the wall time)")
    e.add_argument("--no-ideal", action="store_true", help="skip the ideal bounds (LP)")
    e.add_argument("--check", action="store_true",
                   help="exit 1 when an event's response misses its bound, the service went back above a level "
                        "(load steps aside), or the run's own checks fail")
    e.set_defaults(func=dr)
    pc = sub.add_parser("planner-compare", help="the rig with and without the planner, acnportal EDF/LLF and the "
                        "LP ideal on the same sessions (issue 15)")
    pc.add_argument("scenario")
    pc.add_argument("--out", help="output directory (default hil/out/<scenario name>-compare)")
    pc.add_argument("--time-scale", type=float, default=None, help="override the scenario's time scale")
    pc.add_argument("--start-wall", type=float, default=None,
                    help="the epoch of scenario time 0 for the tariff (default: the planner scenarios' 17:00/07:00)")
    pc.add_argument("--no-acn", action="store_true", help="skip acnportal's algorithms")
    pc.add_argument("--no-ideal", action="store_true", help="skip the LP ideal")
    pc.add_argument("--no-maxmin", action="store_true", help="skip the rig run without the planner")
    pc.set_defaults(func=planner_compare)
    args = p.parse_args(argv)
    try:
        return int(args.func(args))
    except GatewayError as e:
        print(f"hil: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
