"""MQTT telemetry benchmark against a real mosquitto on loopback.

1. Publish throughput: N events (persisted, QoS 1, deleted after PUBACK) and N distinct value
   topics, timed from the first call until the broker acknowledged the last one.
2. The control loop's tick time with the broker up and with it down: a 1000-charger site
   ticking at 10 Hz (a few chargers change per tick, one event every 10 ticks); per tick the
   time spent in publish_tick + event, and the tick's lateness (the loop is shared with the
   link task that drains the outbox).

    python hil/bench/bench_mqtt.py [--chargers 1000] [--ticks 300] [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import structlog

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from gateway.config import Site, site_from_text  # noqa: E402
from gateway.model import (  # noqa: E402
    Allocation,
    ChargerLimit,
    ChargerSnapshot,
    ChargerState,
    CircuitStatus,
    MeterReading,
    Snapshot,
)
from gateway.telemetry.config import MqttConfig  # noqa: E402
from gateway.telemetry.mqtt import Telemetry  # noqa: E402
from hil.broker import Mosquitto  # noqa: E402
from hil.support import running_task, wait_until  # noqa: E402


def big_site(n: int) -> Site:
    parts = ['[site]\nid = "bench"\n[service]\nvoltage_ll_v = 400\nphases = 3\nlimit_a = 100000\n'
             "worst_case_non_ev_a = 0\n"]
    for p in range(n // 20 + 1):
        parts.append(f'[[circuits]]\nid = "panel-{p}"\nparent = "service"\nlimit_a = 1000\n')
    parts.append('[[meters]]\nid = "m-main"\ncircuit = "service"\nhost = "127.0.0.1"\n')
    for i in range(n):
        parts.append(f'[[chargers]]\nid = "C{i}"\nkind = "ac"\ncircuit = "panel-{i // 20}"\n'
                     "phases = 1\nmax_current_a = 32\nfailsafe_current_a = 0\n")
    return site_from_text("".join(parts))


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


async def throughput(broker: Mosquitto, site: Site, tmp: Path, n: int) -> None:
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, queue_max=max(n, 10), charger_min_interval_s=0)
    tel = Telemetry(cfg, site, state_dir=tmp / "tp")
    try:
        async with running_task(tel.run()):
            await wait_until(lambda: tel.connected, 60.0, 0.005)
            t0 = time.perf_counter()
            for i in range(n):
                tel.event("bench", n=i)
            t_call = time.perf_counter() - t0
            await wait_until(lambda: tel.stats().acked >= n, 60.0, 0.005)  # 5 ms: the throughput's resolution
            dt = time.perf_counter() - t0
            print(f"events : {n} persisted+acked in {dt:.2f} s = {n / dt:,.0f} msg/s "
                  f"(event() call {t_call / n * 1e6:.1f} us each)")
            a0 = tel.stats().acked
            t0 = time.perf_counter()
            for i in range(n):
                tel.outbox.put_value(f"bench/v/{i}", b'{"limit_a":16.0}')
            tel.link.wake()
            await wait_until(lambda: tel.stats().acked >= a0 + n, 60.0, 0.005)  # 5 ms: the throughput's resolution
            dt = time.perf_counter() - t0
            print(f"values : {n} retained QoS 1 acked in {dt:.2f} s = {n / dt:,.0f} msg/s")
    finally:
        tel.close()


def make_tick(site: Site, t: float, k: int, chs: dict[str, ChargerSnapshot],
              lims: dict[str, ChargerLimit]) -> tuple[Snapshot, Allocation]:
    for j in range(5):  # five chargers change per tick
        cid = f"C{(k * 5 + j) % len(chs)}"
        draw = 6.0 + (k % 20)
        chs[cid] = ChargerSnapshot(cid, True, ChargerState.CHARGING, draw_a=(draw, draw, draw), draw_at=t)
        lims[cid] = ChargerLimit(draw + 2, draw + 2, "fair-share")
    st = CircuitStatus(1000.0, (500.0 + k % 7,) * 3, (0.0,) * 3, (500.0,) * 3, (400.0,) * 3, "ok")
    circuits = {cid: st for cid in site.circuits}
    snap = Snapshot(t, {"m-main": MeterReading((500.0, 501.0, 502.0), at=t)}, dict(chs))
    return snap, Allocation(t, dict(lims), circuits, "normal")


async def ticks(broker: Mosquitto, site: Site, tmp: Path, n_ticks: int, label: str, period: float) -> list[float]:
    cfg = MqttConfig(host="127.0.0.1", port=broker.port, charger_min_interval_s=5, heartbeat_s=60)
    tel = Telemetry(cfg, site, state_dir=tmp / label)
    chs = {c: ChargerSnapshot(c, True, ChargerState.CHARGING, draw_a=(10.0,) * 3) for c in site.chargers}
    lims = {c: ChargerLimit(16.0, 16.0, "fair-share") for c in site.chargers}
    costs: list[float] = []
    late: list[float] = []
    try:
        async with running_task(tel.run()):
            if broker.running:
                await wait_until(lambda: tel.connected, 60.0, 0.005)
            nxt = time.monotonic()
            for k in range(n_ticks):
                nxt += period
                snap, alloc = make_tick(site, time.monotonic(), k, chs, lims)  # the loop's own work
                t0 = time.perf_counter()
                tel.publish_tick(snap, alloc)
                if k % 10 == 0:
                    tel.event("bench_tick", k=k)
                costs.append(time.perf_counter() - t0)
                await asyncio.sleep(max(0.0, nxt - time.monotonic()))
                late.append(time.monotonic() - nxt)
            st = tel.stats()
            first = costs.pop(0)  # the first tick publishes every charger: reported on its own
            late.pop(0)
            print(f"ticks  : broker {label:4}: first tick {first * 1e3:.1f} ms; then publish_tick+event "
                  f"p50 {statistics.median(costs) * 1e3:.3f} ms, "
                  f"p99 {pct(costs, 0.99) * 1e3:.3f} ms, max {max(costs) * 1e3:.3f} ms; tick lateness "
                  f"p50 {statistics.median(late) * 1e3:.2f} ms, p99 {pct(late, 0.99) * 1e3:.2f} ms; "
                  f"acked {st.acked}, queued values {st.queued_values}, events {st.queued_events}")
    finally:
        tel.close()
    return costs


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=300)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--period-s", type=float, default=0.1)
    a = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings and up
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Mosquitto(tmp / "broker")
        broker.start()
        try:
            site = big_site(a.chargers)
            print(f"site   : {len(site.chargers)} chargers, {len(site.circuits)} circuits; "
                  f"tick period {a.period_s} s")
            await throughput(broker, site, tmp, a.n)
            up = await ticks(broker, site, tmp, a.ticks, "up", a.period_s)
            broker.stop()
            down = await ticks(broker, site, tmp, a.ticks, "down", a.period_s)
            d50 = (statistics.median(down) - statistics.median(up)) * 1e3
            d99 = (pct(down, 0.99) - pct(up, 0.99)) * 1e3
            print(f"result : broker down adds {d50:+.3f} ms (p50) / {d99:+.3f} ms (p99) to a tick (budget 1 ms)")
        finally:
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
