"""The simulated peers of the loop benchmarks, in worker processes, so that a benchmark measures the gateway
and not the simulators starving each other or it: chargers (real WebSocket OCPP clients, `SimCharger`, many
per process), the meters (Modbus TCP simulators, one process) and a CMS (one process).

The physics crosses processes through shared memory: every charger worker writes its chargers' line currents
(per site phase) into one shared array; the meter process sums, for each meter, the chargers beneath its
circuit plus a base load the benchmark sets (on the service). The chargers also publish whether they are
online, and when their first limit profile (the leased one, not the fail-safe) arrived. The charger workers
run at a lower CPU priority (nice 10) than the gateway, the meters and the CMS: on a small machine the
simulated chargers would otherwise take the cores the gateway is measured on.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import multiprocessing as mp
import multiprocessing.synchronize
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from sitesim.site import pointed_config

from gateway import electrical, logs
from gateway.config import Site, site_from_dict
from hil.rig.procs import METER_NICE, own_session
from hil.support import wait_until_sync

P = 3  # the benchmark sites are three-phase


class Shared:
    """Shared memory between the benchmark and its workers (created in the parent, handed to each worker process)."""

    def __init__(self, n_chargers: int) -> None:
        ctx = mp.get_context("spawn")
        self.draws = ctx.Array("d", n_chargers * P, lock=False)  # site-phase amperes per charger
        self.base = ctx.Array("d", P, lock=False)  # the service's non-EV load
        self.online = ctx.Array("b", n_chargers, lock=False)
        self.controlled_at = ctx.Array("d", n_chargers, lock=False)  # time.time() of the first limit profile
        self.plug = ctx.Value("b", 0, lock=False)  # plug an EV into every charger once it is online
        self.ready = ctx.Value("i", 0)  # charger workers with their chargers built, waiting for `go`
        self.go = ctx.Event()  # the chargers connect (all at once)
        self.stop = ctx.Event()


def _limit_profile(call: Any, profile_id: int) -> bool:
    if call.action != "SetChargingProfile":
        return False
    p = call.payload
    prof = p.get("csChargingProfiles") or p.get("chargingProfile") or {}
    return (prof.get("chargingProfileId") or prof.get("id")) == profile_id


# ------------------------------------------------------------------------------------------------ chargers
CHARGER_NICE = 10  # the charger workers yield the CPU to the gateway, the meters and the CMS
NICE = {"chargers": CHARGER_NICE, "cms": 0, "meters": METER_NICE}  # a CMS starved of CPU would fail the upstreams


def _quiet(kind: str) -> None:
    """A worker's own logs: errors only, to nowhere (the figures are the gateway's); its CPU priority. The
    meters and the CMS leave the benchmark's session (and so its autogroup, which the charger workers share),
    as in the rig (hil/rig/procs.py): a real meter answers within its wire time whatever the chargers do."""
    logs.configure("error", "json", stream=open(os.devnull, "w"))  # noqa: SIM115 (the process's lifetime)
    if kind == "chargers":
        with contextlib.suppress(OSError):
            os.nice(NICE[kind])
    else:
        own_session(NICE[kind])


def charger_worker(raw: dict[str, Any], first: int, last: int, url: str, shared: Shared, ev: dict[str, Any]) -> None:
    """Chargers ``first..last-1`` (site order) of the site; connect when ``shared.go`` is set."""
    _quiet("chargers")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_chargers(raw, first, last, url, shared, ev))


async def _chargers(raw: dict[str, Any], first: int, last: int, url: str, shared: Shared, ev: dict[str, Any]) -> None:
    from sitesim.charger import SimCharger
    from sitesim.ev import EvSpec
    from sitesim.site import charger_line_a

    site = site_from_dict(raw)
    cfgs = list(site.chargers.values())[first:last]
    limit_id = site.ocpp.limit_profile_id
    sims = []
    for cfg in cfgs:
        kw: dict[str, Any] = dict(
            version=cfg.ocpp_version, kind=cfg.kind, phases=cfg.phases, connectors=cfg.connectors, url=url,
            clock=time.time, voltage_v=electrical.load_voltage_v(site.service, cfg.line_phases),
            password=cfg.ocpp.password, meter_interval_s=float(ev.get("meter_interval_s", 30.0)),
            max_a=cfg.max_limit, min_a=cfg.min_limit, reconnect_s=(1.0, 10.0),
        )
        sims.append(SimCharger(cfg.id, **kw))
    with shared.ready.get_lock():
        shared.ready.value += 1
    while not shared.go.is_set():
        await asyncio.sleep(0.02)
    tasks = [asyncio.get_running_loop().create_task(s.run()) for s in sims]
    plugged = [False] * len(sims)
    scanned = [0] * len(sims)
    try:
        while not shared.stop.is_set():
            for k, (cfg, s) in enumerate(zip(cfgs, sims, strict=True)):
                i = first + k
                shared.online[i] = 1 if s.online else 0
                if s.online and shared.plug.value and not plugged[k]:
                    plugged[k] = True
                    s.plug_in(EvSpec(capacity_kwh=200.0, soc_start=0.1, max_ac_a=32.0, ac_phases=cfg.phases,
                                     response_delay_s=float(ev.get("response_delay_s", 1.0)), id_tag=f"B{i}"))
                for p, a in enumerate(charger_line_a(site, cfg, s)):
                    shared.draws[i * P + p] = a
                if not shared.controlled_at[i]:
                    calls = s.calls_received
                    for c in calls[scanned[k]:]:
                        if _limit_profile(c, limit_id):
                            shared.controlled_at[i] = c.at
                            break
                    scanned[k] = len(calls)
                if len(s.calls_received) > 200:  # keep the sims' memory flat over a long run
                    del s.calls_received[:100]
                    scanned[k] = max(0, scanned[k] - 100)
                    del s.messages_sent[:-100]
            await asyncio.sleep(0.05)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# ------------------------------------------------------------------------------------------------ meters
def meter_worker(raw: dict[str, Any], shared: Shared, ports: Any) -> None:
    _quiet("meters")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_meters(raw, shared, ports))


def _meter_source(site: Site, meter_id: str, shared: Shared) -> Callable[[float], tuple[float, ...]]:
    m = site.meters[meter_id]
    idx = {cid: i for i, cid in enumerate(site.chargers)}
    under = [idx[c] for c in site.chargers_under[m.circuit]]
    with_base = m.circuit == site.root
    sign = -1.0 if m.invert else 1.0

    def source(_t: float) -> tuple[float, ...]:
        d = shared.draws
        cur = [shared.base[p] if with_base else 0.0 for p in range(P)]
        for i in under:
            j = i * P
            cur[0] += d[j]
            cur[1] += d[j + 1]
            cur[2] += d[j + 2]
        vals = [cur[p] * sign / m.ct_ratio for p in m.phase_map]
        while len(vals) < 3:
            vals.append(0.0)
        return tuple(vals)

    return source


async def _meters(raw: dict[str, Any], shared: Shared, ports: Any) -> None:
    from sitesim.meter import MeterSimulator

    site = site_from_dict(raw)
    sims = []
    got: dict[str, int] = {}
    for mid, m in site.meters.items():
        sim = MeterSimulator(m.map, device_id=m.device_id, phases=3, source=_meter_source(site, mid, shared),
                             voltage_v=electrical.line_to_neutral_v(site.service), seed=hash(mid) & 0xFFFF)
        got[mid] = await sim.start_tcp("127.0.0.1", 0)
        sims.append(sim)
    ports.put(got)
    try:
        while not shared.stop.is_set():
            await asyncio.sleep(0.1)
    finally:
        for s in sims:
            with contextlib.suppress(Exception):
                await s.stop()


# ------------------------------------------------------------------------------------------------ CMS
def cms_worker(shared: Shared, ports: Any) -> None:
    _quiet("cms")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_cms(shared, ports))


async def _cms(shared: Shared, ports: Any) -> None:
    from sitesim.cms import SimCms

    cms = SimCms(clock=time.time)
    ports.put({"cms": await cms.start()})
    try:
        while not shared.stop.is_set():
            await asyncio.sleep(0.2)
            logs: list[list[Any]] = [*cms.received.values(), *cms.sent.values()]
            for lst in logs:  # memory flat over a long run
                if len(lst) > 200:
                    del lst[:100]
    finally:
        with contextlib.suppress(Exception):
            await cms.stop()


# ------------------------------------------------------------------------------------------------ the set
class Peers:
    """The workers around one gateway: ``start()`` the meters and the CMS, ``gateway_config()``, then
    ``connect()`` the chargers (``workers`` processes share them)."""

    def __init__(self, raw: dict[str, Any], *, workers: int, cms: bool = True, ev: dict[str, Any] | None = None):
        self.raw = copy.deepcopy(raw)
        self.site = site_from_dict(self.raw)
        self.n = len(self.site.chargers)
        self.shared = Shared(self.n)
        self.workers = max(1, min(workers, self.n))
        self.use_cms = cms
        self.ev = ev or {}
        self.procs: list[mp.process.BaseProcess] = []
        self.ports: dict[str, int] = {}
        self.state_dir = tempfile.mkdtemp(prefix="ems-bench-state-")
        self._ctx = mp.get_context("spawn")

    def start(self) -> None:
        q = self._ctx.Queue()
        self._spawn(meter_worker, self.raw, self.shared, q)
        if self.use_cms:
            self._spawn(cms_worker, self.shared, q)
        for _ in range(1 + self.use_cms):
            self.ports.update(q.get(timeout=60))

    def _spawn(self, fn: Callable[..., None], *args: Any) -> None:
        p = self._ctx.Process(target=fn, args=args, daemon=True)
        p.start()
        self.procs.append(p)

    def gateway_config(self, ocpp_port: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The site pointed at the workers (the rig's ``pointed_config``); without the CMS, no upstream."""
        d = pointed_config(self.raw, meter_ports=self.ports, meter_devices={}, cms_port=self.ports.get("cms", 0),
                           state_dir=self.state_dir, ocpp_port=ocpp_port, extra=extra)
        if not self.use_cms:
            for k in ("cms_url", "cms_security_profile"):
                d["ocpp"].pop(k, None)
        return d

    def connect(self, ocpp_port: int, *, go: bool = True) -> None:
        """Start the charger workers and wait until each has built its chargers; then (``go``) every charger
        connects at once."""
        url = f"ws://127.0.0.1:{ocpp_port}"
        per = -(-self.n // self.workers)
        spawned = 0
        for w in range(self.workers):
            lo, hi = w * per, min(self.n, (w + 1) * per)
            if lo < hi:
                self._spawn(charger_worker, self.raw, lo, hi, url, self.shared, self.ev)
                spawned += 1
        wait_until_sync(lambda: self.shared.ready.value >= spawned, 120, 0.05)
        if go:
            self.go()

    def go(self) -> None:
        self.shared.go.set()

    def online(self) -> int:
        return sum(self.shared.online)

    def controlled(self) -> list[float]:
        return [t for t in self.shared.controlled_at if t]

    def service_a(self) -> float:
        d = self.shared.draws
        return float(max(sum(d[i * P + p] for i in range(self.n)) + self.shared.base[p] for p in range(P)))

    def set_base(self, amps: float) -> None:
        for p in range(P):
            self.shared.base[p] = amps

    def plug_in(self) -> None:
        self.shared.plug.value = 1

    def stop(self) -> None:
        self.shared.stop.set()
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)
        shutil.rmtree(self.state_dir, ignore_errors=True)
