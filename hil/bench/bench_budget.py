"""Benchmark: BudgetService.tick() (remote cap, demand window, tariff) for 20, 200 and 1000 chargers.

The budget runs once per control tick before the allocator; its cost is the measurement (the EVs' draw summed
through gateway.electrical) and the pure demand/tariff arithmetic. Persistence is handed to a writer thread.
Run: python hil/bench/bench_budget.py [--runs N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.budget.service import BudgetService
from gateway.config import site_from_dict
from hil.bench.sites import busy_snapshot, tree_site_dict

BUDGET = {
    "timezone": "Europe/Berlin",
    "demand": {"target_kw": 1000.0},
    "tariff": {"periods": [
        {"name": "day", "start": "07:00", "end": "22:00", "price_per_kwh": 0.3, "cap_kw": 1500.0},
        {"name": "night", "start": "22:00", "end": "07:00", "price_per_kwh": 0.2},
    ]},
}


def bench(n: int, runs: int) -> tuple[float, float, float]:
    d = tree_site_dict(n)
    svc_a = d["service"]["limit_a"]
    kw = svc_a * 3 * 230.94 / 1000 * 0.5  # a target at half the service, a tariff cap at 70 %
    d["budget"] = {**BUDGET, "demand": {"target_kw": kw}, "tariff": {"periods": [
        {**p, "cap_kw": kw * 1.4} if "cap_kw" in p else p for p in BUDGET["tariff"]["periods"]]}}  # type: ignore[index]
    site = site_from_dict(d)
    rng = random.Random(n)
    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        clock = [1000.0]
        svc = BudgetService(site, clock=lambda: clock[0], state_dir=tmp)
        snaps = [busy_snapshot(site, 1000.0 + k, rng) for k in range(min(runs, 20))]
        for k in range(runs):
            clock[0] = 1000.0 + k
            s = snaps[k % len(snaps)]
            meters = {m: (replace(r, at=clock[0]) if r is not None else None) for m, r in s.meters.items()}
            t0 = time.perf_counter()
            b = svc.tick(meters, s.chargers, clock[0])
            assert b.demand is not None and b.demand.forecast_non_ev_kw >= 0
            times.append((time.perf_counter() - t0) * 1000)
        svc.close()
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))], times[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    print(f"BudgetService.tick() with a demand target and a tariff, {args.runs} ticks each")
    print(f"{'chargers':>8} {'median ms':>10} {'p99 ms':>8} {'max ms':>8}")
    for n in (20, 200, 1000):
        med, p99, mx = bench(n, args.runs)
        print(f"{n:>8} {med:>10.3f} {p99:>8.3f} {mx:>8.3f}")


if __name__ == "__main__":
    main()
