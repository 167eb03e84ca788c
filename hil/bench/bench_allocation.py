"""Benchmark: allocate() time for 20, 200 and 1000 chargers in a 4-level tree, ticks in sequence.

Each tick is allocated with the state the last one returned, as the control loop does. By default the
snapshots are made as the daemon makes them (gateway/ocpp_proxy/state.py): a charger's ChargerSnapshot is
the same object from tick to tick until something about it changes; here a charger reports a new draw on
average every 10-60 s, and one whose limit changed gets a new object (its actuation feedback changed), so a
few per cent to most of the snapshots are new each tick (the "new" column: the median share). The allocator
reads again only those. ``--rebuild`` makes every snapshot anew each tick (the worst case: all are read).

Target on the reference machine (2 cores, quiet; issue 20): at 1000 chargers median <= 2 ms and p99 <= 5 ms
of wall time; 20 and 200 chargers no slower than before. The CPU column is the median of the thread's CPU
time: on a machine shared with other work the wall figures include time spent waiting for a core, the CPU
figure much less so (it still grows with contention for caches). The gc column is the share of ticks in which
a garbage collection ran. The collector is set as the daemon sets it once READY (gateway/gcpolicy.py: what
exists is frozen, the young generation collected after 10000 net new objects); ``--python-gc`` keeps
CPython's defaults (a collection in most ticks at 1000 chargers, a full one now and then inside allocate());
``--no-gc`` (a diagnosis only, not a setting) shows what the collections cost.
Run: python hil/bench/bench_allocation.py [--runs N] [--rebuild] [--python-gc | --no-gc]  (about 20 s)
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway import gcpolicy
from gateway.allocation import AllocatorState, allocate
from gateway.model import Allocation
from hil.bench.sites import busy_snapshot, next_snapshot, tree_site


class Result(NamedTuple):
    median_ms: float
    p99_ms: float
    max_ms: float
    cpu_ms: float
    cpu_p99_ms: float
    new_share: float  # median share of charger snapshots that are new objects
    gc_share: float  # share of ticks with a garbage collection in them
    reasons: dict[str, int]


def bench(n: int, runs: int, service_factor: float, rebuild: bool, gc_mode: str = "daemon") -> Result:
    site = tree_site(n, service_factor)
    threshold = gc.get_threshold()
    if gc_mode == "daemon":
        gcpolicy.settle()
    elif gc_mode == "off":
        gc.disable()
    rng = random.Random(n)
    prev: Allocation | None = None
    last: Allocation | None = None
    state: AllocatorState | None = None
    times: list[float] = []
    cpu: list[float] = []
    shares: list[float] = []
    collections = [0]

    def count(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collections[0] += 1

    with_gc = 0
    s = None
    gc.callbacks.append(count)
    try:
        for k in range(runs):
            now = 1000.0 + k
            if rebuild or s is None or prev is None:
                # a fresh, busy snapshot each tick, its EVs drawing within the limits they were given
                s, new = busy_snapshot(site, now, rng, limits=prev), n
            else:
                s, new = next_snapshot(site, now, rng, s, prev, last)
            shares.append(new / n)
            before = collections[0]
            t0, c0 = time.perf_counter(), time.thread_time()
            last = prev
            prev, state = allocate(s, site, state, now)
            times.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.thread_time() - c0) * 1000)
            with_gc += collections[0] > before
    finally:
        gc.callbacks.remove(count)
        gc.enable()
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert prev is not None
    reasons: dict[str, int] = {}
    for lim in prev.limits.values():
        key = lim.reason.split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    times.sort()
    cpu.sort()
    p99 = int(0.99 * (len(times) - 1))
    return Result(statistics.median(times), times[p99], times[-1], statistics.median(cpu), cpu[p99],
                  statistics.median(shares), with_gc / runs, reasons)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--rebuild", action="store_true", help="every charger snapshot made anew each tick")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--python-gc", action="store_true", help="CPython's collector defaults, not the daemon's")
    g.add_argument("--no-gc", action="store_true", help="no garbage collection during the ticks (diagnosis)")
    args = ap.parse_args()
    gc_mode = "python" if args.python_gc else "off" if args.no_gc else "daemon"
    how = "every snapshot rebuilt" if args.rebuild else "unchanged snapshots reused, as the daemon does"
    how += {"daemon": ", the daemon's gc settings", "off": ", gc disabled (diagnosis)",
            "python": ", CPython's gc defaults"}[gc_mode]
    print(f"allocate() on a 4-level tree (service/transformers/panels/chargers), {args.runs} ticks each, {how}")
    print(f"{'chargers':>8} {'median ms':>10} {'p99 ms':>8} {'max ms':>8} {'cpu ms':>7} {'cpu p99':>8} {'new':>5} "
          f"{'gc':>5}  reasons in the last tick")
    for label, factor in (("roomy service (45 % of connected)", 0.45), ("tight service (25 % of connected)", 0.25)):
        print(f"-- {label}")
        for n in (20, 200, 1000):
            r = bench(n, args.runs, factor, args.rebuild, gc_mode)
            print(f"{n:>8} {r.median_ms:>10.3f} {r.p99_ms:>8.3f} {r.max_ms:>8.3f} {r.cpu_ms:>7.3f} "
                  f"{r.cpu_p99_ms:>8.3f} {r.new_share:>5.0%} {r.gc_share:>5.0%}  {r.reasons}")


if __name__ == "__main__":
    main()
