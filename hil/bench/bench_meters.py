"""Benchmark: meter poll cycles against the simulator.

1. 10 TCP meters read concurrently (one client each, as MeterService does): time for one cycle
   in which every meter is read once.
2. 4 RTU meters on one simulated 19200-baud bus, polled by MeterService's bus task as fast as
   the bus allows: the cycle time compared with the wire time (request + response + 3.5
   character silent interval per exchange, 10 bits per character at 8N1) plus the configured gaps.
   Target: cycle <= 1.3 x wire time + gaps.

Run: python hil/bench/bench_meters.py   (or ./dev bench)
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import itertools

from sitesim.meter import MeterSimulator, RtuBus, SocatPair

from gateway.config import site_from_text
from gateway.meters.config import MeterConfig
from gateway.meters.driver import Bounds, MeterDriver
from gateway.meters.regmap import load_map, plan_blocks
from gateway.meters.service import MeterService, ensure_connected, make_client
from gateway.model import MeterReading
from hil.support import running_task

TCP_MAPS = ["eastron_sdm630", "janitza_umg604", "carlo_gavazzi_em24", "carlo_gavazzi_em340", "schneider_iem3000",
            "sunspec_int", "sunspec_float", "carlo_gavazzi_em24_e1", "eastron_sdm630", "janitza_umg604"]
RTU_MAPS = ["eastron_sdm630", "carlo_gavazzi_em24", "schneider_iem3000", "janitza_umg604"]
BAUD = 19200
GAP_S = 0.02


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def bench_tcp(cycles: int = 200) -> None:
    sims = [MeterSimulator(m, device_id=1) for m in TCP_MAPS]
    for i, s in enumerate(sims):
        s.set_currents(10 + i, 20 + i, 30 + i)
    ports = [await s.start_tcp() for s in sims]
    drivers = []
    clients = []
    for i, (m, p) in enumerate(zip(TCP_MAPS, ports, strict=True)):
        cfg = MeterConfig(id=f"m{i}", circuit="c", map=m, host="127.0.0.1", port=p, timeout_s=2.0, frozen_polls=0)
        c = make_client(cfg)
        await ensure_connected(c)
        clients.append(c)
        drivers.append(MeterDriver(cfg, load_map(m), c, Bounds(10_000.0, False)))
    await asyncio.gather(*(d.poll() for d in drivers))  # SunSpec discovery, connections warm
    times = []
    for _ in range(cycles):
        t0 = time.perf_counter()
        rs = await asyncio.gather(*(d.poll() for d in drivers))
        times.append(time.perf_counter() - t0)
        assert all(r.valid for r in rs)
    for c in clients:
        c.close()  # type: ignore[attr-defined]
    for s in sims:
        await s.stop()
    med = 1000 * statistics.median(times)
    print(f"10 TCP meters, concurrent poll cycle over {cycles} cycles: median {med:.1f} ms, "
          f"p95 {1000 * pct(times, 0.95):.1f} ms, max {1000 * max(times):.1f} ms")


def wire_time_s(map_name: str) -> float:
    m = load_map(map_name)
    char = 10 / BAUD  # 1 start + 8 data + 1 stop, no parity
    total = 0.0
    for b in plan_blocks(list(m.points.values()), max_block=m.max_block, max_gap=m.max_gap):
        total += (8 + 5 + 2 * b.count + 3.5) * char
    return total


async def bench_rtu(seconds: float = 12.0) -> None:
    async with SocatPair() as (bus_end, client_end):
        bus = RtuBus(bus_end, baud_rate=BAUD)
        for i, m in enumerate(RTU_MAPS):
            s = MeterSimulator(m, device_id=i + 1)
            s.set_currents(5 + i, 6 + i, 7 + i)
            bus.add(s)
        await bus.start()
        head = '[site]\nid = "bench"\n[service]\nvoltage_ll_v = 400\nlimit_a = 1000\n'
        circuits = "".join(f'[[circuits]]\nid = "c{i}"\nparent = "service"\nlimit_a = 500\n' for i in range(4))
        meters = "".join(
            f'[[meters]]\nid = "m{i}"\ncircuit = "c{i}"\nmap = "{m}"\ntransport = "rtu"\ndevice = "{client_end}"\n'
            f"device_id = {i + 1}\nbaud_rate = {BAUD}\nbus_gap_s = {GAP_S}\npoll_interval_s = 0.05\n"
            f"stale_after_s = 3.0\ntimeout_s = 1.0\nfrozen_polls = 0\n"
            for i, m in enumerate(RTU_MAPS)
        )
        site = site_from_text(head + circuits + meters)
        stamps: list[tuple[float, str]] = []

        def on_reading(mid: str, r: MeterReading) -> None:
            stamps.append((time.perf_counter(), mid))

        svc = MeterService(site, on_reading=on_reading)
        async with running_task(svc.run()):
            await asyncio.sleep(seconds)
        await bus.stop()
    # cycles: from one reading of m0 to the next reading of m0, once the bus is busy
    t_m0 = [t for t, mid in stamps if mid == "m0"][2:]
    cycles = [b - a for a, b in itertools.pairwise(t_m0)]
    wire = sum(wire_time_s(m) for m in RTU_MAPS)
    gaps = GAP_S * len(RTU_MAPS)
    med = statistics.median(cycles)
    print(f"4 RTU meters on one {BAUD}-baud bus ({', '.join(RTU_MAPS)}), gap {1000 * GAP_S:.0f} ms, "
          f"{len(cycles)} cycles:")
    print(f"  wire time {1000 * wire:.1f} ms + gaps {1000 * gaps:.0f} ms = {1000 * (wire + gaps):.1f} ms")
    print(f"  measured cycle: median {1000 * med:.1f} ms, p95 {1000 * pct(cycles, 0.95):.1f} ms "
          f"-> {(med - gaps) / wire:.2f} x wire time + gaps (target <= 1.30)")


async def main() -> None:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    await bench_tcp()
    await bench_rtu()


if __name__ == "__main__":
    asyncio.run(main())
