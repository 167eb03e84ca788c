"""Benchmark: the headroom loop end to end, the real daemon as a process of its own, its peers in others.

For 20, 200 and 1000 chargers (a 4-level tree, every charger with a charging EV), the base load on the
service steps up repeatedly so that the service meter reads an overload. The gateway logs, for every
reallocation such a reading triggers, the time from that meter reading to the last SetChargingProfile frame
written (``reading_to_actuated_ms``): p50, p99 and max are printed (targets: p99 <= 50 ms at 200 chargers,
<= 200 ms at 1000). At 1000 chargers with a 1 s tick it also prints the daemon's CPU (share of one core over
a steady window) and RSS, and for every size: the tick's own duration (p99, max); allocate()'s own time
inside the daemon on the ticks of the steps ("alloc" p50, p99: real chargers, their snapshots kept until
they change); the ticks preempted by an overload; the same latency for the readings answered with frames
only ("framed": the first reading of an overload; the later ones find the limits lowered already and write
nothing); the times the gateway entered fail-safe during the steps (a meter gone stale: a starved machine);
and the service's current when a step starts (% of its limit, the lowest of them). Each step waits for the
service to read 85 % of its limit, up to 30 s, and starts at the first such reading.

The simulated chargers (real WebSocket OCPP clients), the meters (Modbus TCP) and the CMS run in worker
processes (hil/bench/workers.py: a few processes with many chargers each), so the figures are the gateway's,
not those of simulators starving in the benchmark's process. On a machine with two CPUs or more the gateway
runs on the first and the peers (and the benchmark) on the others, as the chargers of a real site run on
chargers: writing 1000 frames on loopback otherwise wakes the simulated chargers on the gateway's own CPU,
and they take it from the gateway in the middle of the pass (``--no-pin``: everything on every CPU).

Run: python hil/bench/bench_loop.py [--sizes 20,200,1000] [--steps 12] [--workers N] [--no-cms] [--no-pin]
(BENCH_PROFILE=file: a cProfile of the gateway; BENCH_DETAIL=1: every overload reallocation;
BENCH_DUMP=prefix: every log event of the gateway into prefix.<n>.jsonl)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway import logs
from hil.bench.sites import tree_site_dict
from hil.bench.workers import Peers
from hil.launch import GatewayProcess
from hil.support import free_port, proc_cpu_s, proc_rss_mb, wait_until
from hil.tomlw import dumps


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] if xs else float("nan")


def default_workers(n: int) -> int:
    return max(1, min(4, n // 250))


def bench_site(n: int) -> dict[str, Any]:
    raw = tree_site_dict(n)
    raw["control"] = {"tick_s": 1.0, "ramp_up_a_per_s": 50.0, "hysteresis_a": 0.2}
    for m in raw["meters"]:
        m.update(map="janitza_umg604", transport="tcp", poll_interval_s=0.2, timeout_s=0.5, stale_after_s=3.0)
    raw["ocpp"] = {"lease_s": 300, "renew_before_s": 60, "significance_a": 0.1}
    return raw


def bench_gateway(cfg: dict[str, Any], events: set[str], level: str = "debug",
                  code: str | None = None, cpus: set[int] | None = None) -> GatewayProcess:
    """``python -m gateway run`` on ``cfg`` in a session (autogroup) of its own, as a systemd unit has its own
    cgroup; only ``events``' JSON log lines are kept. ``code``: another checkout's gateway/ (a baseline);
    BENCH_PROFILE=file: a cProfile of the gateway, written when it stops."""
    tmp = Path(tempfile.mkdtemp(prefix="ems-bench-loop-"))
    path = tmp / "gateway.toml"
    cfg.setdefault("logging", {})["level"] = level
    path.write_text(dumps(cfg))
    prof = os.environ.get("BENCH_PROFILE")
    return GatewayProcess(path, tmp / "gateway.log", env={"PYTHONPATH": code} if code else None,
                          own_session=True, events=events, python_args=("-m", "cProfile", "-o", prof) if prof else (),
                          cpus=cpus)


async def start_ready(gw: GatewayProcess, timeout_s: float = 120.0) -> None:
    """Start ``gw`` and wait for its ``gateway_ready`` (RuntimeError if it exits or ``timeout_s`` passes)."""
    await gw.start()
    assert gw.proc is not None
    proc = gw.proc
    await wait_until(lambda: gw.ready_count() or proc.returncode is not None, timeout_s, 0.1)
    if not gw.ready_count():
        raise RuntimeError("the gateway did not become ready")


async def stop_gateway(gw: GatewayProcess) -> None:
    """Stop ``gw`` (SIGTERM, SIGKILL after 30 s) and remove its config and log."""
    await gw.stop()
    shutil.rmtree(gw.config.parent, ignore_errors=True)


async def _loaded(peers: Peers, limit: float, timeout_s: float = 30.0) -> None:
    """Wait until the service reads 85 % of its limit or more, at most ``timeout_s`` (polled every 50 ms): the EVs
    draw, so a step sized from this reading overloads the service by about 10 % and no more than 25 % (sized
    from a dip while the EVs ramp back after the last step, it would overload it twice over). The first such
    reading, not a settled one: with reports every 30 s the site swings (the non-EV estimate takes the EVs'
    unreported draw after they resume, and they pause again), and the decision to pause follows the rise within
    a tick; a step that waited for a settled reading would land after it, on limits lowered already, and the
    overload would need no frames."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if peers.service_a() >= 0.85 * limit:
            return
        await asyncio.sleep(0.05)


def split_cpus() -> tuple[set[int], set[int]] | None:
    """(the gateway's CPU, the others), unless ``--no-pin``; None on a single core."""
    cpus = sorted(os.sched_getaffinity(0))
    return ({cpus[0]}, set(cpus[1:])) if len(cpus) > 1 else None


async def run_size(n: int, steps: int, measure_cpu: bool, workers: int, cms: bool,
                   code: str | None = None, pin: bool = False) -> dict[str, Any]:
    raw = bench_site(n)
    limit = raw["service"]["limit_a"]
    peers = Peers(raw, workers=workers, cms=cms)
    split = split_cpus() if pin else None
    mine = os.sched_getaffinity(0)
    if split is not None:  # the peers (spawned from here) inherit the other CPUs
        os.sched_setaffinity(0, split[1])
    peers.start()
    port = free_port()
    gw = bench_gateway(peers.gateway_config(port), {"reallocated", "gateway_ready", "tick", "failsafe_entered",
                                                    "meter_stale", "meter_read_failed", "meter_invalid", "gc_settled",
                                                    "gc_refreshed"}
                       | ({"limit_changed", "charger_noncompliant"} if os.environ.get("BENCH_DUMP") else set()),
                       code=code, cpus=None if split is None else split[0])
    try:
        await start_ready(gw)
        await asyncio.to_thread(peers.connect, port)
        await wait_until(lambda: peers.online() >= n, 180, 0.2)
        peers.plug_in()
        # sessions start and limits settle: the service close to its limit, so a step overloads it
        await wait_until(lambda: peers.service_a() >= 0.85 * limit, 90, 0.5)
        await asyncio.sleep(2.0)
        result: dict[str, Any] = {"chargers": n, "online": peers.online(), "workers": peers.workers}
        if measure_cpu:
            c0, w0 = proc_cpu_s(gw.pid), time.monotonic()
            await asyncio.sleep(20.0)
            result["cpu_pct"] = 100 * (proc_cpu_s(gw.pid) - c0) / (time.monotonic() - w0)
            result["rss_mb"] = proc_rss_mb(gw.pid)
        mark = len(gw.logs)
        at_step: list[float] = []
        for _ in range(steps):
            # a step that puts the service 10 % above its limit, from a reading with the EVs drawing (_loaded)
            await _loaded(peers, limit)
            at_step.append(100 * peers.service_a() / limit)
            peers.set_base(max(0.0, limit - peers.service_a()) + 0.1 * limit)
            await asyncio.sleep(2.0)
            peers.set_base(0.0)
            await asyncio.sleep(3.0)
        result["step_at_pct"] = min(at_step, default=float("nan"))
        window = gw.logs[mark:]
        lat = [e["reading_to_actuated_ms"] for e in window
               if e["event"] == "reallocated" and str(e.get("trigger", "")).startswith("overload:")
               and e.get("reading_to_actuated_ms") is not None]
        # the readings answered with frames (the first of an overload; later ones find the limits lowered already)
        framed = [e["reading_to_actuated_ms"] for e in window
                  if e["event"] == "reallocated" and str(e.get("trigger", "")).startswith("overload:")
                  and e.get("reading_to_actuated_ms") is not None and e.get("changed")]
        ticks = [e["tick_ms"] for e in window if e["event"] == "tick"]
        # allocate() inside the daemon, on every tick of the steps (real chargers: snapshots kept until they change)
        alloc = [e["allocation_ms"] for e in window if e["event"] == "tick" and e.get("allocation_ms") is not None]
        result.update(samples=len(lat), p50_ms=pct(lat, 50), p99_ms=pct(lat, 99), max_ms=max(lat, default=float("nan")),
                      framed=len(framed), framed_p50_ms=pct(framed, 50), framed_p99_ms=pct(framed, 99),
                      tick_p99_ms=pct(ticks, 99), tick_max_ms=max(ticks, default=float("nan")),
                      alloc_p50_ms=pct(alloc, 50), alloc_p99_ms=pct(alloc, 99),
                      preempted=sum(1 for e in window if e["event"] == "tick" and e.get("preempted")),
                      failsafe=sum(1 for e in window if e["event"] == "failsafe_entered"))
        for e in gw.logs:
            if e["event"] in ("gc_settled", "gc_refreshed"):
                print(f"  {n} chargers: {e['event']} (pause {e.get('pause_ms')} ms, {e.get('frozen')} objects frozen)",
                      file=sys.stderr)
        # why a fail-safe was entered: the meter that went stale, how old its reading was and its last error
        for e in window:
            if e["event"] == "failsafe_entered":
                print(f"  {n} chargers: fail-safe entered at {e.get('timestamp')} ({e.get('mode')}, meters "
                      f"{e.get('meters')})", file=sys.stderr)
            elif e["event"] == "meter_stale":
                print(f"  {n} chargers: meter {e.get('meter')} stale (reading {e.get('age_s')} s old; "
                      f"last error: {e.get('error') or 'none'})", file=sys.stderr)
            elif e["event"] == "meter_invalid":
                print(f"  {n} chargers: meter {e.get('meter')} invalid at {e.get('timestamp')}: {e.get('reason')}",
                      file=sys.stderr)
            elif e["event"] == "meter_read_failed":
                print(f"  {n} chargers: meter {e.get('meter')} stopped answering at {e.get('timestamp')}: "
                      f"{e.get('error')}", file=sys.stderr)
        if os.environ.get("BENCH_DUMP"):  # every log event of the gateway, one JSON object per line
            dump = "".join(json.dumps(e, default=str) + "\n" for e in gw.logs)
            await asyncio.to_thread(Path(f"{os.environ['BENCH_DUMP']}.{n}.jsonl").write_text, dump)
        if os.environ.get("BENCH_DETAIL"):
            for e in window:
                if e["event"] == "reallocated" and str(e.get("trigger", "")).startswith("overload:"):
                    print({k: e.get(k) for k in ("reading_to_actuated_ms", "snapshot_ms", "allocation_ms",
                                                 "actuation_ms", "changed", "preempted")}, file=sys.stderr)
        return result
    finally:
        await stop_gateway(gw)
        peers.stop()
        os.sched_setaffinity(0, mine)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20,200,1000")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--workers", type=int, default=0, help="charger worker processes (default: 1 per 250, 1..4)")
    ap.add_argument("--no-cms", action="store_true", help="no CMS: the gateway answers the chargers itself")
    ap.add_argument("--gateway-code", default=None, help="run the gateway from this checkout (a baseline)")
    ap.add_argument("--no-pin", action="store_true",
                    help="let the gateway share every CPU with the simulated peers (default: a CPU of its own)")
    args = ap.parse_args()
    logs.configure("warning", "console", stream=sys.stderr)
    print(f"overload reading -> last SetChargingProfile frame written (the daemon's own measurement); "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    cols = (("chargers", 8, "chargers", "d"), ("online", 6, "online", "d"), ("workers", 7, "workers", "d"),
            ("samples", 7, "samples", "d"), ("p50 ms", 8, "p50_ms", ".2f"), ("p99 ms", 8, "p99_ms", ".2f"),
            ("max ms", 8, "max_ms", ".2f"), ("framed", 6, "framed", "d"), ("f p50", 7, "framed_p50_ms", ".2f"),
            ("f p99", 7, "framed_p99_ms", ".2f"), ("tick p99", 8, "tick_p99_ms", ".1f"),
            ("tick max", 8, "tick_max_ms", ".1f"), ("alloc p50", 9, "alloc_p50_ms", ".2f"),
            ("alloc p99", 9, "alloc_p99_ms", ".2f"), ("preempt", 7, "preempted", "d"), ("failsafe", 8, "failsafe", "d"),
            ("step at%", 8, "step_at_pct", ".0f"), ("CPU %", 6, "cpu_pct", ".1f"), ("RSS MB", 7, "rss_mb", ".1f"))
    print(" ".join(f"{c:>{w}}" for c, w, _, _ in cols))
    for n in (int(x) for x in args.sizes.split(",")):
        r = await run_size(n, args.steps, n >= 1000, args.workers or default_workers(n), not args.no_cms,
                           args.gateway_code, not args.no_pin)
        print(" ".join(format(r.get(k, float("nan")), f">{w}{f if k in r else '.1f'}") for _, w, k, f in cols),
              flush=True)


if __name__ == "__main__":
    asyncio.run(main())
