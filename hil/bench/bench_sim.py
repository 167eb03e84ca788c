"""Benchmark: N simulated chargers with EVs against the simulated CMS in one process and one event loop.

Prints time to boot all, steady-state CPU share and message rate. Usage:
    python hil/bench/bench_sim.py [--n 1000] [--seconds 20] [--version 1.6|2.0.1] [--validate]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import resource
import time

import structlog
from sitesim.charger import SimCharger
from sitesim.cms import SimCms
from sitesim.ev import EvSpec


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def bench(n: int, seconds: float, version: str, validate: bool, meter_s: float) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("ocpp").setLevel(logging.WARNING)
    cms = SimCms(heartbeat_interval_s=60)
    await cms.start()
    chargers = [
        SimCharger(f"CP{i:04d}", version, "ac", 3, 1, cms.url, meter_interval_s=meter_s,  # type: ignore[arg-type]
                   validate_schemas=validate, reconnect_s=(1.0, 10.0))
        for i in range(n)
    ]
    t0, c0 = time.perf_counter(), cpu_s()
    tasks = [asyncio.create_task(ch.run()) for ch in chargers]
    while sum(ch.online for ch in chargers) < n and time.perf_counter() - t0 < 120:
        await asyncio.sleep(0.05)
    t_boot, c_boot = time.perf_counter() - t0, cpu_s() - c0
    rng = random.Random(1)
    for ch in chargers:
        ch.plug_in(EvSpec.random(rng, now=time.time(), id_tag=f"T{ch.charger_id}"))
    await asyncio.sleep(meter_s)  # sessions start
    sent0 = sum(len(ch.messages_sent) for ch in chargers)
    t1, c1 = time.perf_counter(), cpu_s()
    await asyncio.sleep(seconds)
    t2, c2 = time.perf_counter(), cpu_s()
    sent = sum(len(ch.messages_sent) for ch in chargers) - sent0
    lost = sum(1 for ch in chargers for m in ch.messages_sent if m.outcome not in ("ok", "pending"))
    # time to step every EV once (the ticker's work per tick)
    now = time.time()
    t3 = time.perf_counter()
    for ch in chargers:
        ch.tick(now + 1.0)
    t_tick = time.perf_counter() - t3
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await cms.stop()
    print(f"chargers={n} version={version} schema_validation={validate} meter_interval_s={meter_s}")
    print(f"boot_all_s={t_boot:.2f} boot_cpu_s={c_boot:.2f}")
    print(f"steady: wall={t2 - t1:.1f}s cpu={c2 - c1:.2f}s share={100 * (c2 - c1) / (t2 - t1):.1f}% "
          f"(sim chargers + sim CMS together)")
    print(f"calls_sent={sent} rate={sent / (t2 - t1):.0f}/s not_ok={lost}")
    print(f"one_tick_all_chargers_ms={1000 * t_tick:.1f} per_charger_us={1e6 * t_tick / n:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--version", default="1.6", choices=("1.6", "2.0.1"))
    ap.add_argument("--validate", action="store_true", help="JSON-schema-validate every message")
    ap.add_argument("--meter-interval-s", type=float, default=10.0)
    a = ap.parse_args()
    asyncio.run(bench(a.n, a.seconds, a.version, a.validate, a.meter_interval_s))


if __name__ == "__main__":
    main()
