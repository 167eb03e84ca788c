"""Benchmark of the OCPP controller (a gateway subprocess on 127.0.0.1, raw WebSocket peers).

1. relay latency: 100 chargers, CALL round trips through the gateway vs. straight to the CMS
   (p50/p99 of each, and the added latency); target p99 added <= 5 ms.
2. boot storm: N chargers (default 1000) connect at once and send BootNotification;
   time until all are accepted, frames the CMS received.
3. steady state: the N chargers connected, each sending MeterValues every 30 s (spread);
   RSS and CPU of the gateway process over a window.

    python hil/bench/bench_ocpp.py [--chargers 1000] [--window-s 60] [--rounds 20]
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
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

NOW = "2024-01-01T00:00:00Z"


def site_toml(state_dir: str, cms_port: int, n: int) -> str:
    head = f"""
[site]
id = "bench"
state_dir = "{state_dir}"
[service]
voltage_ll_v = 400
phases = 3
limit_a = 1000000
worst_case_non_ev_a = 0
[[circuits]]
id = "p1"
parent = "service"
limit_a = 1000000
[ocpp]
listen_host = "127.0.0.1"
listen_port = 0
cms_url = "ws://127.0.0.1:{cms_port}/ocpp"
reconnect_min_s = 0.5
reconnect_max_s = 5
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
        return await asyncio.wait_for(fut, 60)


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
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
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


def proc_stats(pid: int) -> tuple[float, int]:
    """(CPU seconds user+system, RSS bytes) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    cpu = (int(parts[11]) + int(parts[12])) / tick
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return cpu, rss


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


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chargers", type=int, default=1000)
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
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
        deadline = time.monotonic() + 60
        while len(cms.boots) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
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
    asyncio.run(main())
