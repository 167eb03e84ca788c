"""Benchmark: the headroom loop end to end, with the real daemon as a separate process.

For 20, 200 and 1000 chargers (a 4-level tree, every charger with a charging EV), the base load
on the service steps up repeatedly so that the service meter reads an overload. The gateway logs,
for every reallocation such a reading triggers, the time from that meter reading to the last
SetChargingProfile frame written (``reading_to_actuated_ms``): p50 and p99 are printed (target:
p99 <= 50 ms at 200 chargers). At 1000 chargers with a 1 s tick it also prints the daemon's CPU
(share of one core over a steady window) and RSS.

Run: python hil/bench/bench_loop.py [--sizes 20,200,1000] [--steps 12]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway import logs
from hil.bench.sites import tree_site_dict
from hil.sim.ev import EvSpec
from hil.site_sim import SiteSim
from hil.tomlw import dumps


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] if xs else float("nan")


async def run_size(n: int, steps: int, measure_cpu: bool) -> dict[str, Any]:
    raw = tree_site_dict(n)
    raw["control"] = {"tick_s": 1.0, "ramp_up_a_per_s": 50.0, "hysteresis_a": 0.2}
    for m in raw["meters"]:
        m.update(map="janitza_umg604", transport="tcp", poll_interval_s=0.2, timeout_s=0.5, stale_after_s=3.0)
    raw["ocpp"] = {"lease_s": 300, "renew_before_s": 60, "significance_a": 0.1}
    limit = raw["service"]["limit_a"]
    level = [0.0]
    sim = SiteSim(raw, base_loads={"service": lambda t: (level[0],) * 3}, meter_interval_s=30.0)
    await sim.start()
    tmp = Path(tempfile.mkdtemp(prefix="ems-bench-loop-"))
    port = _free_port()
    cfg = tmp / "gateway.toml"
    cfg.write_text(dumps(sim.gateway_config(ocpp_port=port, extra={"logging": {"level": "info"}})))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway", "run", "--config", str(cfg), "--log-format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    logs: list[dict[str, Any]] = []

    async def reader() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            with contextlib.suppress(ValueError):
                e = json.loads(line)
                if e.get("event") in ("reallocated", "gateway_ready"):
                    logs.append(e)

    rt = asyncio.create_task(reader())
    try:
        while not any(e["event"] == "gateway_ready" for e in logs):
            await asyncio.sleep(0.1)
        sim.start_chargers(port, tick_s=1.0)
        t0 = time.monotonic()
        while sum(1 for c in sim.chargers.values() if c.online) < n and time.monotonic() - t0 < 120:
            await asyncio.sleep(0.2)
        for i, ch in enumerate(sim.chargers.values()):
            ch.plug_in(EvSpec(capacity_kwh=200.0, soc_start=0.1, max_ac_a=32.0, ac_phases=3,
                              response_delay_s=1.0, id_tag=f"B{i}"))
        # sessions start and limits settle: the service close to its limit, so a step overloads it
        t_settle = time.monotonic()
        while max(sim.circuit_current("service")) < 0.85 * limit and time.monotonic() - t_settle < 60:
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)
        result: dict[str, Any] = {"chargers": n, "online": sum(1 for c in sim.chargers.values() if c.online)}
        if measure_cpu:
            c0, w0 = _proc_cpu_s(proc.pid), time.monotonic()
            await asyncio.sleep(20.0)
            result["cpu_pct"] = 100 * (_proc_cpu_s(proc.pid) - c0) / (time.monotonic() - w0)
            result["rss_mb"] = _proc_rss_mb(proc.pid)
        mark = len(logs)
        for _ in range(steps):
            level[0] = 0.25 * limit  # a step that puts the service above its limit
            await asyncio.sleep(2.0)
            level[0] = 0.0
            await asyncio.sleep(3.0)
        lat = [e["reading_to_actuated_ms"] for e in logs[mark:]
               if e["event"] == "reallocated" and str(e.get("trigger", "")).startswith("overload:")
               and e.get("reading_to_actuated_ms") is not None]
        result.update(samples=len(lat), p50_ms=pct(lat, 50), p99_ms=pct(lat, 99), max_ms=max(lat, default=float("nan")))
        if os.environ.get("BENCH_DETAIL"):
            for e in logs[mark:]:
                if e["event"] == "reallocated" and str(e.get("trigger", "")).startswith("overload:"):
                    print({k: e.get(k) for k in ("reading_to_actuated_ms", "snapshot_ms", "allocation_ms",
                                                 "actuation_ms", "changed")}, file=sys.stderr)
        return result
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 30)
        rt.cancel()
        await sim.stop()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="20,200,1000")
    ap.add_argument("--steps", type=int, default=12)
    args = ap.parse_args()
    logs.configure("warning", "console", stream=sys.stderr)  # the simulators' own logs stay quiet
    print("overload reading -> last SetChargingProfile frame written (the daemon's own measurement)")
    cols = ("chargers", 8), ("online", 6), ("samples", 7), ("p50 ms", 8), ("p99 ms", 8), ("max ms", 8), ("CPU %", 6), (
        "RSS MB", 7)
    print(" ".join(f"{c:>{w}}" for c, w in cols))
    for n in (int(x) for x in args.sizes.split(",")):
        r = await run_size(n, args.steps, measure_cpu=n >= 1000)
        print(f"{r['chargers']:>8} {r['online']:>6} {r['samples']:>7} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
              f"{r['max_ms']:>8.2f} {r.get('cpu_pct', float('nan')):>6.1f} {r.get('rss_mb', float('nan')):>7.1f}",
              flush=True)


if __name__ == "__main__":
    asyncio.run(main())
