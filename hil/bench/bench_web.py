"""Benchmark: the web page and API at 1000 chargers (issue 18 targets: page load < 1 s, live updates < 100 ms of
CPU per second, nothing measurable for the control loop).

A child process runs the real WebService (aiohttp, SQLite history) in its own event loop, fed with frozen
snapshots and allocations computed beforehand by the real allocator for a 4-level tree site (a new one every
tick, as the control loop hands them over). The parent measures:

* the page load: GET / + app.js + style.css + /api/session + /api/live (aiohttp client), and, when Debian's
  chromium is installed, the time until the browser shows every charger's row;
* the child's CPU per second (utime + stime from /proc, history thread included) with no client, with one SSE
  client, and with the page open in chromium: the web side's cost is the difference to no client;
* the child's event-loop lag (a 10 ms sleeper's overshoot): what a control tick sharing that loop would wait.

Run: python hil/bench/bench_web.py [--chargers 1000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gateway.allocation import allocate
from gateway.control import TickRecord
from gateway.web.config import WebConfig
from hil.bench.sites import busy_snapshot, tree_site
from hil.support import proc_cpu_s


class Holder:
    """What the web side reads of the control loop: the latest frozen snapshot and allocation, the records."""

    def __init__(self) -> None:
        self.snapshot: Any = None
        self.allocation: Any = None
        self.records: list[TickRecord] = []


def _child(n: int, tick_s: float, conn: Connection) -> None:
    from gateway.web.server import WebService

    site = tree_site(n)
    rng = random.Random(1)
    pairs = []
    prev, state = None, None
    for k in range(20):
        snap = busy_snapshot(site, 1000.0 + k, rng, limits=prev)
        prev, state = allocate(snap, site, state, 1000.0 + k)
        pairs.append((snap, prev))
    holder = Holder()
    tmp = tempfile.mkdtemp(prefix="bench-web-")
    cfg = WebConfig(port=0, users_file=str(Path(tmp) / "no-users"), charger_history_interval_s=60.0)
    t0 = time.monotonic()

    def clock() -> float:  # the frozen values' clock: ticks continue from where the allocations were made
        return 1000.0 + (time.monotonic() - t0)

    svc = WebService(cfg, site, holder, state_dir=tmp, clock=clock)
    lags: list[float] = []

    async def ticker() -> None:
        k = 0
        while True:
            snap, alloc = pairs[k % len(pairs)]
            holder.snapshot, holder.allocation = snap, alloc
            holder.records.append(TickRecord(at=clock(), snapshot_age_s=0.1, allocation_s=0.01, actuation_s=0.001,
                                             publish_s=0.001, trigger="tick"))
            del holder.records[:-3600]
            k += 1
            await asyncio.sleep(tick_s)

    async def lag() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t - 0.01)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(svc.run()), loop.create_task(ticker()), loop.create_task(lag())]
        while svc.port is None:
            await asyncio.sleep(0.01)
        conn.send(svc.port)
        done = asyncio.Event()

        def on_cmd() -> None:
            cmd = conn.recv()
            if cmd == "lag":
                vals = sorted(lags) or [0.0]
                conn.send((statistics.median(vals), vals[int(0.99 * (len(vals) - 1))], vals[-1], svc.sse_clients))
                lags.clear()
            elif cmd == "stop":
                done.set()

        loop.add_reader(conn.fileno(), on_cmd)
        await done.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        svc.close()

    asyncio.run(main())


async def page_load(url: str, runs: int = 5) -> tuple[float, int]:
    import aiohttp

    times = []
    size = 0
    async with aiohttp.ClientSession() as http:
        for _ in range(runs):
            t = time.perf_counter()
            for p in ("/", "/static/app.js", "/static/style.css", "/api/session", "/api/live"):
                async with http.get(url + p) as r:
                    body = await r.read()
                    assert r.status == 200, (p, r.status)
                    if p == "/api/live":
                        size = len(body)
            times.append(time.perf_counter() - t)
    return statistics.median(times), size


async def sse_client(url: str, stop: asyncio.Event) -> int:
    import aiohttp

    n = 0
    async with aiohttp.ClientSession() as http, http.get(url + "/api/stream") as r:
        while not stop.is_set():
            line = await r.content.readline()
            if line.startswith(b"data: "):
                n += 1
    return n


def chromium_driver() -> Any:
    from hil.browser import chromium_paths, new_driver

    return new_driver(1280, 1000) if chromium_paths() is not None else None


async def measure(pid: int, conn: Connection, seconds: float, label: str, run: Any = None) -> None:
    conn.send("lag")
    conn.recv()
    c0, t0 = proc_cpu_s(pid), time.monotonic()
    if run is not None:
        await run()
    else:
        await asyncio.sleep(seconds)
    c1, t1 = proc_cpu_s(pid), time.monotonic()
    conn.send("lag")
    med, p99, mx, clients = conn.recv()
    print(f"  {label:<34} CPU {1000 * (c1 - c0) / (t1 - t0):7.1f} ms/s   loop lag median {med * 1000:5.2f} ms, "
          f"p99 {p99 * 1000:6.2f} ms, max {mx * 1000:6.2f} ms   (SSE clients {clients})")


async def run_bench(n: int, seconds: float, tick_s: float) -> None:
    parent, child = mp.Pipe()
    proc = mp.get_context("fork").Process(target=_child, args=(n, tick_s, child), daemon=True)
    proc.start()
    port = await asyncio.to_thread(parent.recv)
    url = f"http://127.0.0.1:{port}"
    assert proc.pid is not None
    await asyncio.sleep(2.0)
    print(f"-- {n} chargers, a new allocation every {tick_s:g} s, {seconds:g} s per measurement")
    load, size = await page_load(url)
    print(f"  page load (HTML, JS, CSS, session, /api/live {size / 1024:.0f} KiB): median {load * 1000:.1f} ms")
    await measure(proc.pid, parent, seconds, "no client (ticks, sampler, history)")

    async def one_sse() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(sse_client(url, stop))
        await asyncio.sleep(seconds)
        stop.set()
        print(f"    (SSE messages received: {await task})")

    await measure(proc.pid, parent, seconds, "one SSE client (live updates)", one_sse)
    driver = await asyncio.to_thread(chromium_driver)
    if driver is None:
        print("  chromium: not installed, browser figures skipped")
    else:
        try:
            t = time.perf_counter()
            await asyncio.to_thread(driver.get, url + "/")

            def rows() -> int:
                return int(driver.execute_script("return document.querySelectorAll('#chargers tbody tr').length"))

            while await asyncio.to_thread(rows) < n and time.perf_counter() - t < 30:
                await asyncio.sleep(0.02)
            print(f"  chromium: page loaded, {await asyncio.to_thread(rows)} charger rows shown after "
                  f"{(time.perf_counter() - t) * 1000:.0f} ms")
            await measure(proc.pid, parent, seconds, "the page open in chromium")
        finally:
            await asyncio.to_thread(driver.quit)
    parent.send("stop")
    await asyncio.to_thread(proc.join, 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chargers", type=int, nargs="+", default=[1000])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--tick-s", type=float, default=1.0)
    args = ap.parse_args()
    for n in args.chargers:
        asyncio.run(run_bench(n, args.seconds, args.tick_s))


if __name__ == "__main__":
    main()
