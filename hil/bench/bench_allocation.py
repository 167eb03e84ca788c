"""Benchmark: allocate() time for 20, 200 and 1000 chargers in a 4-level tree.

Target on the reference machine (2 cores, quiet; issue 20): at 1000 chargers median <= 2 ms and p99 <= 5 ms
of wall time; 20 and 200 chargers no slower than before. The CPU column is the median of the thread's CPU
time: on a machine shared with other work the wall figures include time spent waiting for a core, the CPU
figure much less so (it still grows with contention for caches).
Run: python hil/bench/bench_allocation.py [--runs N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.allocation import AllocatorState, allocate
from gateway.model import Allocation
from hil.bench.sites import busy_snapshot, tree_site


def bench(n: int, runs: int, service_factor: float) -> tuple[float, float, float, float, dict[str, int]]:
    site = tree_site(n, service_factor)
    rng = random.Random(n)
    prev: Allocation | None = None
    state: AllocatorState | None = None
    times: list[float] = []
    cpu: list[float] = []
    reasons: dict[str, int] = {}
    for k in range(runs):
        now = 1000.0 + k
        # a fresh, busy snapshot each tick, its EVs drawing within the limits they were given
        s = busy_snapshot(site, now, rng, limits=prev)
        t0, c0 = time.perf_counter(), time.thread_time()
        prev, state = allocate(s, site, state, now)
        times.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
    assert prev is not None
    for lim in prev.limits.values():
        key = lim.reason.split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    times.sort()
    return statistics.median(times), times[int(0.99 * (len(times) - 1))], times[-1], statistics.median(cpu), reasons


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    print(f"allocate() on a 4-level tree (service/transformers/panels/chargers), {args.runs} ticks each")
    print(f"{'chargers':>8} {'median ms':>10} {'p99 ms':>8} {'max ms':>8} {'cpu ms':>8}  reasons in the last tick")
    for label, factor in (("roomy service (45 % of connected)", 0.45), ("tight service (25 % of connected)", 0.25)):
        print(f"-- {label}")
        for n in (20, 200, 1000):
            med, p99, mx, cpu, reasons = bench(n, args.runs, factor)
            print(f"{n:>8} {med:>10.3f} {p99:>8.3f} {mx:>8.3f} {cpu:>8.3f}  {reasons}")


if __name__ == "__main__":
    main()
