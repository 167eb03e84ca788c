"""Benchmark of the OCPP controller (a gateway subprocess on 127.0.0.1, raw WebSocket peers).

1. relay latency: 100 chargers, CALL round trips through the gateway vs. straight to the CMS
   (p50/p99 of each, and the added latency); target p99 added <= 5 ms.
2. boot storm: N chargers (default 1000) connect at once and send BootNotification;
   time until all are accepted, frames the CMS received.
3. steady state: the N chargers connected, each sending MeterValues every 30 s (spread);
   RSS and CPU of the gateway process over a window.
4. outage (``--outage``): 200 chargers send MeterValues every 10 s while the CMS is down, so every
   one is written to the durable queue. In the gateway process a 100 ms probe tick measures the
   loop's lateness and the tick time (lateness + reading every charger's snapshot): CMS up (no
   writes), outage with the store written on the loop (a commit per message, the old way), outage
   with the writer thread (group commit). Then the CMS returns: replay throughput in messages/s.

    python hil/bench/bench_ocpp.py [--chargers 1000] [--window-s 60] [--rounds 20]
    python hil/bench/bench_ocpp.py --outage [--chargers 200] [--window-s 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hil.support import proc_cpu_s, proc_rss_mb, wait_until

NOW = "2024-01-01T00:00:00Z"
BENCH_FILE = str(Path(__file__).resolve())


def site_toml(state_dir: str, cms_port: int, n: int) -> str:
    head = f"""
[site]
id = "bench"
state_dir = "{state_dir}"
[service]
voltage_ll_v = 400
phases = 3
limit_a = 100000
worst_case_non_ev_a = 0
[[circuits]]
id = "p1"
parent = "service"
limit_a = 100000
[ocpp]
listen_host = "127.0.0.1"
listen_port = 0
cms_url = "ws://127.0.0.1:{cms_port}/ocpp"
"""
    ch = "".join(
        f'[[chargers]]\nid = "B{i:04d}"\nocpp_version = "1.6J"\ncircuit = "p1"\nphases = 1\nmax_current_a = 32\n'
        f"failsafe_current_a = 0\n"
        for i in range(n)
    )
    return head + ch


class Cms:
    def __init__(self) -> None:
        self.received = 0
        self.boots: set[str] = set()
        self.port = 0

    async def handler(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        cid = ws.request.path.rsplit("/", 1)[-1]
        with contextlib.suppress(ConnectionClosed):
            await self._serve(cid, ws)

    async def _serve(self, cid: str, ws: ServerConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            if msg[0] != 2:
                continue
            self.received += 1
            action = msg[2]
            if action == "BootNotification":
                self.boots.add(cid)
                ans: dict[str, Any] = {"status": "Accepted", "currentTime": NOW, "interval": 300}
            elif action == "Heartbeat":
                ans = {"currentTime": NOW}
            else:
                ans = {}
            await ws.send(json.dumps([3, msg[1], ans]))


class Charger:
    """A raw charger: answers the gateway's CALLs, one CALL of its own at a time."""

    def __init__(self, cid: str, ws: ClientConnection) -> None:
        self.cid = cid
        self.ws = ws
        self.pending: dict[str, asyncio.Future[Any]] = {}
        self.n = 0
        self.task = asyncio.get_running_loop().create_task(self.read())

    async def read(self) -> None:
        try:
            async for raw in self.ws:
                msg = json.loads(raw)
                if msg[0] == 2:
                    await self.ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
                else:
                    fut = self.pending.pop(msg[1], None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        except Exception:
            pass

    async def call(self, action: str, payload: dict[str, Any]) -> Any:
        self.n += 1
        mid = f"{self.cid}-{self.n}"
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[mid] = fut
        await self.ws.send(json.dumps([2, mid, action, payload]))
        async with asyncio.timeout(60):
            return await fut


async def readline(stream: asyncio.StreamReader, timeout_s: float = 60.0) -> str:
    """The next line of a child's output ('' at its end); TimeoutError after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        return (await stream.readline()).decode()


async def spawn_gateway(cfg: Path) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.ocpp_proxy",
        str(cfg),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    while True:
        line = await readline(proc.stdout)
        if not line:
            raise RuntimeError("the gateway exited")
        if line.startswith("ocpp_proxy_listening"):
            port = int(line.split("port=")[1].split()[0])
            break

    async def drain() -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    asyncio.get_running_loop().create_task(drain())
    return proc, port


def proc_stats(pid: int) -> tuple[float, float]:
    """(CPU seconds user+system, RSS bytes) of a process."""
    return proc_cpu_s(pid), proc_rss_mb(pid) * 2**20


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def connect_chargers(port: int, ids: list[str], concurrency: int) -> list[Charger]:
    sem = asyncio.Semaphore(concurrency)

    async def one(cid: str) -> Charger:
        async with sem:
            ws = await connect(
                f"ws://127.0.0.1:{port}/ocpp/{cid}",
                subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                open_timeout=60,
                compression=None,
                ping_interval=None,
            )
        return Charger(cid, ws)

    return list(await asyncio.gather(*(one(c) for c in ids)))


async def latency(chargers: list[Charger], rounds: int) -> list[float]:
    out: list[float] = []

    async def one(c: Charger) -> None:
        for _ in range(rounds):
            t = time.perf_counter()
            await c.call("Heartbeat", {})
            out.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(random.uniform(0.2, 1.0))  # ~170 CALLs/s in all

    await asyncio.gather(*(one(c) for c in chargers))
    return out


# ---------------------------------------------------------------- 4. outage: the store and the loop
def _mv16(i: int) -> dict[str, Any]:
    sv = [{"value": "16.0", "measurand": "Current.Import", "phase": f"L{p}", "unit": "A"} for p in (1, 2, 3)]
    sv.append({"value": str(1000 + i), "measurand": "Energy.Active.Import.Register", "unit": "Wh"})
    return {"connectorId": 1, "meterValue": [{"timestamp": NOW, "sampledValue": sv}]}


async def gateway_child(cfg: str, mode: str, window_s: float) -> None:
    """The gateway in this process plus a 100 ms probe tick; prints ``probe {json}`` after the window."""
    from gateway.config import load_site
    from gateway.ocpp_proxy.controller import OcppController
    from gateway.ocpp_proxy.store import Store

    class InlineStore(Store):
        """Every write committed at once on the calling thread (the event loop): the store before the
        writer thread."""

        def submit(self, fn: Any) -> Any:
            import concurrent.futures

            fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
            db = self._wdb
            try:
                db.execute("BEGIN IMMEDIATE")
                out = fn(db)
                db.execute("COMMIT")
                self.commits += 1
                fut.set_result(out)
            except Exception as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                fut.set_exception(exc)
            return fut

    site = load_site(cfg)
    ctrl = OcppController(site)
    if mode == "inline":
        ctrl.store.close()
        ctrl.store = InlineStore(os.path.join(site.state_dir, "ocpp.sqlite"))
    blocked: list[float] = []  # how long each store write holds the event loop
    submit = ctrl.store.submit

    def timed_submit(fn: Any) -> Any:
        t = time.perf_counter()
        try:
            return submit(fn)
        finally:
            blocked.append((time.perf_counter() - t) * 1000)

    ctrl.store.submit = timed_submit  # type: ignore[method-assign]
    task = asyncio.create_task(ctrl.run())
    await ctrl.wait_started()
    print(f"ocpp_proxy_listening port={ctrl.port}", flush=True)
    lags: list[float] = []
    ticks: list[float] = []
    loop = asyncio.get_running_loop()
    start = loop.time()
    due = start
    while True:
        due += 0.1
        await asyncio.sleep(max(0.0, due - loop.time()))
        t = time.perf_counter()
        lag = max(0.0, loop.time() - due)
        ctrl.snapshot()
        if window_s / 6 < loop.time() - start < window_s:  # skip the connection burst
            lags.append(lag * 1000)
            ticks.append((lag + time.perf_counter() - t) * 1000)
        if loop.time() - start >= window_s and lags:
            stats = {
                "lag_p50_ms": pct(lags, 50),
                "lag_p99_ms": pct(lags, 99),
                "lag_max_ms": max(lags),
                "tick_p99_ms": pct(ticks, 99),
                "commits": ctrl.store.commits,
                "write_block_p99_ms": pct(blocked, 99) if blocked else 0.0,
                "queued": ctrl.store.count_pending(),
            }
            print("probe " + json.dumps(stats), flush=True)
            lags.clear()
            break
    await task


async def teardown(chargers: list[Charger], proc: asyncio.subprocess.Process, reader: asyncio.Task[Any],
                   server: Server, tmp: tempfile.TemporaryDirectory[str]) -> None:
    """The end of an outage run: the chargers disconnect, the gateway child ends, the CMS closes."""
    for c in chargers:
        await c.ws.close()
    proc.terminate()
    await proc.wait()
    reader.cancel()
    server.close()
    tmp.cleanup()


async def outage_run(n: int, window_s: float, mode: str, cms_up: bool) -> dict[str, Any]:
    cms = Cms()
    server = await serve(cms.handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"], compression=None)  # type: ignore[list-item]
    cms.port = int(next(iter(server.sockets)).getsockname()[1])
    if not cms_up:
        server.close()
        await server.wait_closed()
    tmp = tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_STATE_DIR"))
    cfg = Path(tmp.name) / "site.toml"
    cfg.write_text(site_toml(tmp.name + "/state", cms.port, n))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        BENCH_FILE,
        "--gateway-child",
        str(cfg),
        mode,
        str(window_s),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    probe: dict[str, Any] = {}
    got_probe = asyncio.Event()

    async def read() -> int:
        assert proc.stdout is not None
        port = 0
        while line := (await proc.stdout.readline()).decode():
            if line.startswith("ocpp_proxy_listening"):
                port = int(line.split("port=")[1].split()[0])
                port_fut.set_result(port)
            elif line.startswith("probe "):
                probe.update(json.loads(line[6:]))
                got_probe.set()
        return port

    port_fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    reader = asyncio.create_task(read())
    async with asyncio.timeout(60):
        port = await port_fut
    ids = [f"B{i:04d}" for i in range(n)]
    chargers = await connect_chargers(port, ids, 50)
    stop = False
    sent = 0

    async def meter(c: Charger, offset: float) -> None:
        nonlocal sent
        await asyncio.sleep(offset)
        i = 0
        while not stop:
            i += 1
            await c.call("MeterValues", _mv16(i))
            sent += 1
            await asyncio.sleep(10.0)

    tasks = [asyncio.create_task(meter(c, 10.0 * k / n)) for k, c in enumerate(chargers)]
    async with asyncio.timeout(window_s + 60):
        await got_probe.wait()
    stop = True
    for t in tasks:
        t.cancel()
    out = dict(probe, sent=sent)
    if not cms_up:
        # the CMS returns on the same port: replay throughput
        queued = int(probe["queued"])
        before = cms.received
        server = await serve(cms.handler, "127.0.0.1", cms.port, subprotocols=["ocpp1.6"], compression=None)  # type: ignore[list-item]
        t0 = time.perf_counter()
        t_first, t_end = await replayed(cms, before, queued)
        t_first = t_first or t_end
        out["replay_start_s"] = t_first - t0  # CMS listening -> first replayed message (reconnect backoff)
        out["replay_s"] = max(t_end - t_first, 1e-6)
        out["replayed"] = cms.received - before
    await teardown(chargers, proc, reader, server, tmp)
    return out


async def replayed(cms: Cms, before: int, total: int, limit_s: float = 300.0) -> tuple[float | None, float]:
    """Poll every 2 ms until the CMS has received ``total`` messages more than ``before`` (or ``limit_s``):
    the perf_counter() of the first of them (None: none came) and of the end."""
    t_first = None
    deadline = time.monotonic() + limit_s
    while cms.received - before < total and time.monotonic() < deadline:
        if t_first is None and cms.received > before:
            t_first = time.perf_counter()
        await asyncio.sleep(0.002)
    return t_first, time.perf_counter()


async def burst_run(n: int, per: int, mode: str) -> dict[str, float]:
    """CMS down: n chargers each send ``per`` MeterValues back to back (each acknowledged once on disk);
    then the CMS returns (reconnect within 1 s) and the queue is replayed."""
    cms = Cms()
    server = await serve(cms.handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"], compression=None)  # type: ignore[list-item]
    cms.port = int(next(iter(server.sockets)).getsockname()[1])
    server.close()
    await server.wait_closed()
    tmp = tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_STATE_DIR"))
    cfg = Path(tmp.name) / "site.toml"
    cfg.write_text(site_toml(tmp.name + "/state", cms.port, n).replace("[ocpp]\n", "[ocpp]\nreconnect_max_s = 1\n"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        BENCH_FILE,
        "--gateway-child",
        str(cfg),
        mode,
        "100000",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    while not (line := await readline(proc.stdout)).startswith("ocpp_proxy_"):
        pass
    port = int(line.split("port=")[1].split()[0])

    async def drain() -> None:
        assert proc.stdout is not None
        while await proc.stdout.readline():
            pass

    drainer = asyncio.create_task(drain())
    chargers = await connect_chargers(port, [f"B{i:04d}" for i in range(n)], 50)
    await asyncio.sleep(1.0)

    lost = 0

    async def burst(c: Charger) -> None:
        nonlocal lost
        for i in range(per):
            try:
                await c.call("MeterValues", _mv16(i))
            except ConnectionClosed:
                lost += per - i
                return

    t0 = time.perf_counter()
    await asyncio.gather(*(burst(c) for c in chargers))
    if lost:
        print(f"    (burst: a connection closed, {lost} messages not sent)")
    per_total = n * per - lost
    t_queue = time.perf_counter() - t0
    server = await serve(cms.handler, "127.0.0.1", cms.port, subprotocols=["ocpp1.6"], compression=None)  # type: ignore[list-item]
    before = cms.received
    t_first, t_end = await replayed(cms, before, per_total)
    await teardown(chargers, proc, drainer, server, tmp)
    return {
        "queue_per_s": per_total / t_queue,
        "replay_per_s": (cms.received - before) / max(1e-6, t_end - (t_first or t_end)),
    }


async def outage_bench(n: int, window_s: float) -> None:
    print(f"outage: {n} chargers, MeterValues every 10 s, {window_s:.0f} s window, probe tick every 100 ms")
    runs = [("CMS up (nothing queued)", "thread", True), ("outage, store on the loop", "inline", False)]
    runs.append(("outage, store writer thread", "thread", False))
    results = []
    for label, mode, up in runs:
        r = await outage_run(n, window_s, mode, up)
        results.append(r)
        print(
            f"  {label:30s} loop lag p50 {r['lag_p50_ms']:6.2f} p99 {r['lag_p99_ms']:6.2f} max {r['lag_max_ms']:6.2f}"
            f" ms; tick p99 {r['tick_p99_ms']:6.2f} ms; {r['sent']} sent, {r['queued']} queued, {r['commits']} commits;"
            f" loop held per store write p99 {r['write_block_p99_ms']:.3f} ms"
        )
        if "replay_s" in r:
            print(
                f"    replay: first message {r['replay_start_s']:.2f} s after the CMS is back; {r['replayed']} messages"
                f" in {r['replay_s']:.2f} s = {r['replayed'] / r['replay_s']:.0f}/s ({n} chargers in parallel)"
            )
    for mode, label in (("inline", "store on the loop"), ("thread", "store writer thread")):
        for chargers, per in ((1, 2000), (50, 40)):
            b = await burst_run(chargers, per, mode)
            print(
                f"  burst {chargers:3d} x {per:4d} MeterValues, {label:20s}: queued (acknowledged on disk)"
                f" {b['queue_per_s']:6.0f}/s, replayed {b['replay_per_s']:6.0f}/s"
            )
    base = results[0]["tick_p99_ms"]
    print(
        f"  outage adds to the tick p99: on the loop {results[1]['tick_p99_ms'] - base:+.2f} ms, "
        f"writer thread {results[2]['tick_p99_ms'] - base:+.2f} ms (target < 1 ms)"
    )


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--outage", action="store_true")
    args = ap.parse_args()
    if args.outage:
        await outage_bench(200 if args.chargers == 1000 else args.chargers, args.window_s)
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    cms = Cms()
    server = await serve(cms.handler, "127.0.0.1", 0, subprotocols=["ocpp1.6"], compression=None)  # type: ignore[list-item]
    cms.port = int(next(iter(server.sockets)).getsockname()[1])
    tmp = tempfile.TemporaryDirectory()
    cfg = Path(tmp.name) / "site.toml"
    cfg.write_text(site_toml(tmp.name + "/state", cms.port, max(args.chargers, 100)))
    proc, port = await spawn_gateway(cfg)
    try:
        # 1. relay latency, 100 chargers
        ids = [f"B{i:04d}" for i in range(100)]
        direct_ws = await connect_chargers(cms.port, ids, 50)
        direct = await latency(direct_ws, args.rounds)
        for c in direct_ws:
            await c.ws.close()
        via_ws = await connect_chargers(port, ids, 50)
        await asyncio.sleep(2.0)  # let start-up CALLs and upstreams settle
        via = await latency(via_ws, args.rounds)
        print(f"relay latency, 100 chargers x {args.rounds} Heartbeat round trips (each every 0.2-1 s)")
        print(f"  direct to CMS     p50 {pct(direct, 50):6.2f} ms  p99 {pct(direct, 99):6.2f} ms")
        print(f"  via gateway       p50 {pct(via, 50):6.2f} ms  p99 {pct(via, 99):6.2f} ms")
        print(
            f"  added             p50 {pct(via, 50) - pct(direct, 50):6.2f} ms  "
            f"p99 {pct(via, 99) - pct(direct, 99):6.2f} ms"
        )
        for c in via_ws:
            await c.ws.close()
        await asyncio.sleep(1.0)

        # 2. boot storm
        n = args.chargers
        ids = [f"B{i:04d}" for i in range(n)]
        cms.boots.clear()
        t0 = time.perf_counter()
        chargers = await connect_chargers(port, ids, n)
        t_conn = time.perf_counter() - t0

        async def boot(c: Charger) -> bool:
            ans = await c.call("BootNotification", {"chargePointVendor": "b", "chargePointModel": "m"})
            return bool(ans[0] == 3 and ans[2].get("status") == "Accepted")

        ok = await asyncio.gather(*(boot(c) for c in chargers))
        t_all = time.perf_counter() - t0
        # replies may be local while an upstream is still connecting: wait for the CMS to have them all
        await wait_until(lambda: len(cms.boots) >= n, 60, 0.1)
        t_cms = time.perf_counter() - t0
        print(f"boot storm, {n} chargers at once")
        print(f"  connected {t_conn:.2f} s, all BootNotifications accepted {t_all:.2f} s ({sum(ok)}/{n})")
        print(f"  CMS has every charger's BootNotification after {t_cms:.2f} s ({len(cms.boots)}/{n})")

        # 3. steady state: MeterValues every 30 s per charger, spread evenly
        await asyncio.sleep(3.0)
        cpu0, _ = proc_stats(proc.pid)
        w0 = time.monotonic()
        sent = 0

        async def meter(c: Charger, offset: float) -> None:
            nonlocal sent
            await asyncio.sleep(offset)
            while time.monotonic() - w0 < args.window_s:
                await c.call(
                    "MeterValues",
                    {
                        "connectorId": 1,
                        "meterValue": [
                            {
                                "timestamp": NOW,
                                "sampledValue": [
                                    {"value": "16.0", "measurand": "Current.Import", "phase": "L1", "unit": "A"}
                                ],
                            }
                        ],
                    },
                )
                sent += 1
                await asyncio.sleep(30.0)

        await asyncio.gather(*(meter(c, 30.0 * i / n) for i, c in enumerate(chargers)))
        elapsed = time.monotonic() - w0
        cpu1, rss = proc_stats(proc.pid)
        print(f"steady state, {n} chargers connected, MeterValues every 30 s, {elapsed:.0f} s window")
        print(
            f"  gateway RSS {rss / 1e6:.1f} MB, CPU {100 * (cpu1 - cpu0) / elapsed:.1f} % of one core, "
            f"{sent} MeterValues relayed ({sent / elapsed:.1f}/s)"
        )
        for c in chargers:
            await c.ws.close()
    finally:
        proc.terminate()
        await proc.wait()
        server.close()
        tmp.cleanup()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--gateway-child":
        asyncio.run(gateway_child(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    else:
        asyncio.run(main())
