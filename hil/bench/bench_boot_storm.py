"""Benchmark: a boot storm. 1000 chargers connect at once (BootNotification relayed to the CMS,
StatusNotification, the gateway's GetConfiguration, fail-safe and limit profiles) while the control loop
runs at a 1 s tick. Prints the tick's duration p50/p99/max over the storm (target: p99 < 1 s), the longest
gap between two ticks, and the time from the connect until every charger is online and until every charger
is controlled (its limit profile received and accepted; target: < 30 s), and the gateway's CPU over the storm.

The chargers, the meters and the CMS run in worker processes (hil/bench/workers.py), the gateway in its own.

Run: python hil/bench/bench_boot_storm.py [--chargers 1000] [--workers N] [--no-cms]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import itertools

from gateway import logs
from hil.bench.bench_loop import bench_gateway, bench_site, default_workers, pct, start_ready, stop_gateway
from hil.bench.workers import Peers
from hil.support import free_port, proc_cpu_s


def _ts(e: dict[str, object]) -> float:
    return datetime.fromisoformat(str(e["timestamp"]).replace("Z", "+00:00")).timestamp()


async def storm(n: int, workers: int, cms: bool, limit_s: float, code: str | None) -> dict[str, float]:
    raw = bench_site(n)
    peers = Peers(raw, workers=workers, cms=cms)
    peers.start()
    port = free_port()
    gw = bench_gateway(peers.gateway_config(port), {"gateway_ready", "tick"}, code=code)
    try:
        await start_ready(gw)
        await asyncio.sleep(3.0)  # the loop ticking with every charger offline
        await asyncio.to_thread(peers.connect, port, go=False)  # built, waiting: then all at once
        mark = len(gw.logs)
        c0 = proc_cpu_s(gw.pid)
        t_go = time.time()
        peers.go()
        online_at = None
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit_s:
            if online_at is None and peers.online() >= n:
                online_at = time.time()
            if len(peers.controlled()) >= n:
                break
            await asyncio.sleep(0.2)
        t_end = time.time()
        await asyncio.sleep(5.0)  # and a few ticks after it
        cpu = 100 * (proc_cpu_s(gw.pid) - c0) / (time.time() - t_go)
        ticks = [e for e in gw.logs[mark:] if e["event"] == "tick"]
        durations = [float(e["tick_ms"]) for e in ticks]
        stamps = [_ts(e) for e in ticks]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        done = peers.controlled()
        return {
            "chargers": n,
            "workers": peers.workers,
            "ticks": len(durations),
            "tick_p50_ms": pct(durations, 50),
            "tick_p99_ms": pct(durations, 99),
            "tick_max_ms": max(durations, default=float("nan")),
            "gap_max_s": max(gaps, default=float("nan")),
            "online": peers.online(),
            "online_s": float("nan") if online_at is None else online_at - t_go,
            "controlled": len(done),
            "controlled_s": (max(done) - t_go) if len(done) >= n else float("nan"),
            "waited_s": t_end - t_go,
            "cpu_pct": cpu,
        }
    finally:
        await stop_gateway(gw)
        peers.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=0, help="charger worker processes (default: 1 per 250, 1..4)")
    ap.add_argument("--no-cms", action="store_true")
    ap.add_argument("--limit-s", type=float, default=120.0, help="give up waiting for every charger after this")
    ap.add_argument("--gateway-code", default=None, help="run the gateway from this checkout (a baseline)")
    args = ap.parse_args()
    logs.configure("warning", "console", stream=sys.stderr)
    r = await storm(args.chargers, args.workers or default_workers(args.chargers), not args.no_cms, args.limit_s,
                    args.gateway_code)
    print(f"boot storm: {r['chargers']:.0f} chargers connecting at once ({r['workers']:.0f} worker processes), "
          f"1 s tick; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    print(f"  ticks during the storm: {r['ticks']:.0f}; duration p50 {r['tick_p50_ms']:.1f} ms, "
          f"p99 {r['tick_p99_ms']:.1f} ms, max {r['tick_max_ms']:.1f} ms (target p99 < 1000 ms); "
          f"longest gap between ticks {r['gap_max_s']:.2f} s")
    print(f"  online: {r['online']:.0f} after {r['online_s']:.1f} s; controlled (limit accepted): "
          f"{r['controlled']:.0f} after {r['controlled_s']:.1f} s (target < 30 s; waited {r['waited_s']:.0f} s)")
    print(f"  gateway CPU over the storm: {r['cpu_pct']:.0f} % of one core")


if __name__ == "__main__":
    asyncio.run(main())
