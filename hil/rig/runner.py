"""The HIL runner: a scenario against the real ``ems-gateway run`` process, everything recorded.

``run_scenario(scenario, out_dir, mode="gateway")`` stands the simulated site up (meters over Modbus
TCP and RTU on socat pty pairs, OCPP 1.6J/2.0.1 chargers, a simulated CMS, a mosquitto broker),
starts ``python -m gateway run --config FILE --log-format json`` as a separate process, plays the
scenario (base loads, EV arrivals and departures, faults) on the compressed time base described in
:mod:`hil.scenario`, samples the true current of every circuit and every charger's limit and draw,
and returns a :class:`Recording`.

The simulators run in processes of their own so that they keep up with the site they simulate
(:mod:`hil.rig.procs`): one for the meters, a few charger workers with many chargers each; this process
keeps the CMS, the scenario player and the recorder, and all of them share one table of the chargers'
draws in shared memory.

``mode="static"`` is the baseline of a site without an EMS: no gateway; the chargers talk to the
CMS directly and the CMS installs a fixed ChargePointMaxProfile / ChargingStationMaxProfile on each
one (see :func:`static_limits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from sitesim import SimError
from sitesim.cms import SimCms
from sitesim.ev import ChargingCurve, EvSpec
from sitesim.site import pointed_config

from gateway import logs
from gateway.config import Site, site_from_dict
from hil.broker import Mosquitto
from hil.launch import GatewayProcess
from hil.rig.messages import TxMessage, accounting, tx_message
from hil.rig.procs import (
    ChargerTweak,
    Child,
    DrawTable,
    MeterSpec,
    WorkerSpec,
    base_at,
    base_profiles,
    charger_worker_main,
    meter_process_main,
    worker_count,
)
from hil.scenario import Arrival, Scenario
from hil.support import free_port, proc_cpu_s, proc_rss_mb, wait_until
from hil.tomlw import dumps

log = structlog.get_logger(__name__)


@dataclass
class SessionRecord:
    arrival: Arrival
    plugged: bool = False  # the EV was plugged in (its connector was free)
    energy_wh: float = 0.0  # delivered, on the wall clock (scenario Wh: x time scale)
    plugged_wall: float | None = None  # wall s since t0

    def delivered_wh(self, scale: float) -> float:
        return self.energy_wh * scale


@dataclass
class Recording:
    scenario: Scenario
    mode: str
    site: Site
    times: np.ndarray  # wall s since t0, per sample
    circuit_ids: list[str]
    circuit_a: np.ndarray  # [sample, circuit, phase] true current (A)
    charger_ids: list[str]
    charger_limit_a: np.ndarray  # [sample, charger] the limit in force at the charger, as line A per phase
    charger_draw_a: np.ndarray  # [sample, charger] the highest line current it draws (A)
    events: list[tuple[float, str, str]]  # (wall s since t0, kind, detail)
    gateway_logs: list[dict[str, Any]]  # each with "_t": wall s since t0
    sessions: list[SessionRecord]
    messages: dict[str, Any]
    process: dict[str, Any]
    static_limits: dict[str, float] = field(default_factory=dict)
    wall_elapsed_s: float = 0.0
    t0_wall: float = 0.0  # the epoch (time.time()) of scenario time 0: billing intervals align to it
    rig_process: dict[str, Any] = field(default_factory=dict)  # the simulators' own CPU, per process
    dr: dict[str, Any] = field(default_factory=dict)  # [openadr]: what the rig's VTN issued (hil.rig.vtn.RigVtn)


# ---- helpers ----------------------------------------------------------------------------------------
def static_limits(site: Site) -> dict[str, float]:
    """Static derating, as a site without an EMS must do: on every circuit and phase, what is left after
    the margin and the worst-case non-EV load is split evenly among the chargers loading that phase; a
    charger gets the smallest share along its path to the service (the service share is the service
    limit divided by the number of chargers on a phase), converted to its unit at the conservative
    voltage and clamped to its maximum."""
    out: dict[str, float] = {}
    P = site.service.phases
    count = {cid: [0] * P for cid in site.circuits}
    for cid in site.circuits:
        for chid in site.chargers_under[cid]:
            for p in site.chargers[chid].line_phases:
                count[cid][p] += 1
    for chid, cfg in site.chargers.items():
        share = math.inf
        for cid in site.path_to_root[cfg.circuit]:
            c = site.circuits[cid]
            room = max(0.0, c.limit_a - c.margin_a - c.worst_case_non_ev_a)
            for p in cfg.line_phases:
                share = min(share, room / max(1, count[cid][p]))
        out[chid] = min(cfg.max_limit, site.from_line_a(cfg, share))
    return out


def _fixed_profile(version: str, unit: str, limit: float) -> Any:
    from ocpp.v16 import call as call16
    from ocpp.v201 import call as call201

    sched = {"chargingRateUnit": unit, "chargingSchedulePeriod": [{"startPeriod": 0, "limit": round(limit, 1)}]}
    if version == "1.6":
        return call16.SetChargingProfile(connector_id=0, cs_charging_profiles={
            "chargingProfileId": 7001, "stackLevel": 0, "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": {**sched, "startSchedule": "2000-01-01T00:00:00Z"},
        })
    return call201.SetChargingProfile(evse_id=0, charging_profile={
        "id": 7001, "stackLevel": 0, "chargingProfilePurpose": "ChargingStationMaxProfile",
        "chargingProfileKind": "Absolute",
        "chargingSchedule": [{"id": 1, "startSchedule": "2000-01-01T00:00:00Z", **sched}],
    })


class ProcStats:
    """CPU and RSS of a process from /proc, summed over restarts."""

    def __init__(self) -> None:
        self.cpu_s_done = 0.0  # of processes that ended
        self.cpu_s_now = 0.0
        self.rss_mb: list[float] = []
        self.pid: int | None = None

    def attach(self, pid: int) -> None:
        self.cpu_s_done += self.cpu_s_now
        self.cpu_s_now = 0.0
        self.pid = pid

    def sample(self) -> None:
        if self.pid is None:
            return
        try:
            self.cpu_s_now = proc_cpu_s(self.pid)
            rss = proc_rss_mb(self.pid)
            if not math.isnan(rss):
                self.rss_mb.append(rss)
        except (OSError, IndexError, ValueError):
            pass

    @property
    def cpu_s(self) -> float:
        return self.cpu_s_done + self.cpu_s_now


# ---- the run ---------------------------------------------------------------------------------------
class Rig:
    """One run. The meters run in a process of their own, the chargers in ``workers`` worker processes (by
    default :func:`hil.rig.procs.worker_count`), the CMS, the player and the recorder here (see
    :mod:`hil.rig.procs`)."""

    def __init__(self, scenario: Scenario, out_dir: Path, mode: str = "gateway", workers: int | None = None) -> None:
        if mode not in ("gateway", "static"):
            raise SimError(f"mode must be 'gateway' or 'static', got {mode!r}")
        self.sc = scenario
        self.out = out_dir
        self.mode = mode
        self.k = scenario.time_scale
        self.t0 = math.inf  # wall epoch of scenario time 0 (set when every charger is online)
        self.events: list[tuple[float, str, str]] = []
        self.kills: list[float] = []  # when the gateway was killed (the CMS's clock: its messages are stamped so)
        self.sessions: list[SessionRecord] = []
        self.stats = ProcStats()
        self.site = site_from_dict(scenario.site)
        self.P = self.site.service.phases
        self.base = base_profiles(scenario.base_loads, scenario.seed, self.P)
        self.cms = SimCms()
        self.state_dir = tempfile.mkdtemp(prefix="ems-hil-state-")
        self.rows = {chid: i for i, chid in enumerate(self.site.chargers)}
        self.table = DrawTable(len(self.rows), self.P)
        n = len(self.rows)
        self.n_workers = max(1, min(workers or worker_count(n), n))
        self.owner: dict[str, int] = {chid: i * self.n_workers // n for chid, i in self.rows.items()}
        self.workers: list[Child] = []
        self.meter_proc: Child | None = None
        self.rig_stats: dict[str, ProcStats] = {}
        self.meter_ports: dict[str, int] = {}
        self.meter_devices: dict[str, str] = {}
        self.gw: GatewayProcess | None = None
        self.broker: Mosquitto | None = None
        self.static: dict[str, float] = {}
        self.vtn: Any = None  # hil.rig.vtn.RigVtn: the scenario's [openadr] (gateway mode only)

    def now_s(self) -> float:
        """Wall seconds since scenario time 0."""
        return time.time() - self.t0

    def event(self, kind: str, detail: str = "") -> None:
        self.events.append((self.now_s() if math.isfinite(self.t0) else 0.0, kind, detail))

    def _worker_of(self, chid: str) -> Child:
        return self.workers[self.owner[chid]]

    # -- set-up ------------------------------------------------------------------------------------
    def gateway_config(self, ocpp_port: int) -> dict[str, Any]:
        sc = self.sc
        extra: dict[str, Any] = {"control": dict(sc.gateway.control), "ocpp": dict(sc.gateway.ocpp),
                                 "logging": {"level": "info", "format": "json"}}
        if sc.gateway.budget:
            extra["budget"] = dict(sc.gateway.budget)
        if sc.gateway.planner:
            extra["planner"] = dict(sc.gateway.planner)
        d = pointed_config(sc.site, meter_ports=self.meter_ports, meter_devices=self.meter_devices,
                           cms_port=self.cms.port, state_dir=self.state_dir, ocpp_port=ocpp_port, extra=extra)
        for m in d.get("meters", []):
            m.update(sc.gateway.meters)
        if self.vtn is not None:  # the VEN, pointed at the rig's VTN
            d["budget"]["openadr"] = self.vtn.gateway_openadr(dict(d["budget"]["openadr"]))
        if self.broker is not None:
            d["mqtt"] = {"host": "127.0.0.1", "port": self.broker.port, "keepalive_s": 5, "reconnect_max_s": 2}
        site_from_dict(d)  # refuse a bad override before starting anything
        return d

    def _watch(self, name: str, pid: int | None) -> None:
        if pid is not None:
            st = ProcStats()
            st.attach(pid)
            self.rig_stats[name] = st

    async def _start_meters(self) -> None:
        spec = MeterSpec(raw=self.sc.site, rows=self.rows, base_loads=self.sc.base_loads, seed=self.sc.seed,
                         time_scale=self.k, pv=self.sc.pv, meter_faults=self.sc.meter_faults)
        self.meter_proc = Child("meter-process", meter_process_main, spec, self.table, self.out / "rig-meters.log")
        self.meter_proc.start()
        info = await self.meter_proc.call("start")
        self.meter_ports, self.meter_devices = dict(info["ports"]), dict(info["devices"])
        self._watch("meters", info["pid"])

    def _tweaks(self) -> dict[str, ChargerTweak]:
        out: dict[str, ChargerTweak] = {}
        for cid, cfg in self.site.chargers.items():
            b = self.sc.behaviour_of(cid)
            kw: dict[str, float] = {}
            if b.ramp_up_per_s is not None:
                kw["ramp_up_per_s"] = b.ramp_up_per_s * self.k
            if b.ramp_down_per_s is not None:
                kw["ramp_down_per_s"] = b.ramp_down_per_s * self.k
            if b.min_current_a is not None and cfg.kind == "ac":
                kw["min_a"] = b.min_current_a
            out[cid] = ChargerTweak(outlet=kw, noncompliant=b.noncompliant,
                                    meter_interval_s=self.sc.meter_interval_wall_of(cid))
        return out

    async def _start_chargers(self, port: int) -> None:
        # schema validation of every frame costs more than 200 chargers reporting every few wall tenths of a
        # second leave a worker (as the sim's own CLI, only up to 50 chargers)
        sim = {"tick_s": self.sc.charger_tick_wall_s, "reconnect_s": (0.2, 2.0), "response_timeout_s": 30.0,
               "validate_schemas": len(self.site.chargers) <= 50}
        tweaks = self._tweaks()
        for w in range(self.n_workers):
            rows = {chid: r for chid, r in self.rows.items() if self.owner[chid] == w}
            spec = WorkerSpec(raw=self.sc.site, rows=rows, ocpp_port=port, sim=sim,
                              tweaks={c: tweaks[c] for c in rows})
            child = Child(f"charger-worker-{w}", charger_worker_main, spec, self.table,
                          self.out / f"rig-chargers-{w}.log")
            child.start()
            self.workers.append(child)
        pids = await asyncio.gather(*(c.call("start") for c in self.workers))
        for w, pid in enumerate(pids):
            self._watch(f"chargers-{w}", pid)

    def _ev(self, a: Arrival) -> EvSpec:
        k = self.k
        b = self.sc.behaviour_of(a.charger)
        delay = a.response_delay_s if b.response_delay_s is None else b.response_delay_s
        return EvSpec(
            capacity_kwh=a.capacity_kwh / k, soc_start=a.soc_start, soc_target=a.soc_target,
            max_ac_a=a.max_current_a, ac_phases=a.ac_phases, max_dc_w=a.max_power_w,
            curve=ChargingCurve(a.taper_start_soc, a.end_fraction), response_delay_s=delay / k,
            arrival_at=self.t0 + a.at_s / k, departure_at=self.t0 + min(a.departure_s, self.sc.duration_s) / k,
            id_tag=a.id_tag or "HIL", name=f"{a.charger}@{a.at_s:g}", iso15118=a.iso15118,
        )

    # -- scenario actions ---------------------------------------------------------------------------
    async def _play(self) -> None:
        sc, k = self.sc, self.k
        actions: list[tuple[float, int, Callable[[], Any]]] = []
        for t_s, cid, inc in sc.load_steps():
            actions.append((t_s / k, -1, lambda cid=cid, inc=inc: self.event("load_step", f"{cid} +{inc:.0f} A")))  # type: ignore[misc]
        for f in sc.faults:
            actions.append((f.at_s / k, -2,
                            lambda f=f: self._fault(f.kind, f.target, True, f.duration_s == 0)))  # type: ignore[misc]
            if f.duration_s > 0:
                actions.append(((f.at_s + f.duration_s) / k, -3,
                                lambda f=f: self._fault(f.kind, f.target, False)))  # type: ignore[misc]
        if self.vtn is not None:
            actions += [(at, -4, fn) for at, fn in self.vtn.actions()]
        actions.sort(key=lambda x: (x[0], x[1]))
        for at, _, fn in actions:
            delay = at - self.now_s()
            if delay > 0:
                await asyncio.sleep(delay)
            r = fn()
            if asyncio.iscoroutine(r):
                await r

    async def _schedule_arrivals(self) -> None:
        """Hand every EV to its charger's worker, which plugs it in at its arrival time."""
        self.sessions = [SessionRecord(a) for a in self.sc.arrivals]
        per: list[list[tuple[int, str, int, EvSpec]]] = [[] for _ in self.workers]
        for i, a in enumerate(self.sc.arrivals):
            per[self.owner[a.charger]].append((i, a.charger, a.connector, self._ev(a)))
        await asyncio.gather(*(w.call("schedule", evs) for w, evs in zip(self.workers, per, strict=True)))

    async def _fault(self, kind: str, target: str, begin: bool, restart_now: bool = False) -> None:
        self.event(f"{kind}_{'begin' if begin else 'end'}", target)
        if kind == "meter_silent":
            assert self.meter_proc is not None
            await self.meter_proc.call("silence", target, begin)
        elif kind == "noncompliant":
            await self._worker_of(target).call("noncompliant", target, begin)
        elif kind == "cms_down":
            await (self.cms.stop() if begin else self.cms.start())
        elif kind == "broker_down" and self.broker is not None:
            await asyncio.to_thread(self.broker.stop if begin else self.broker.start)
        elif kind == "gateway_restart" and self.gw is not None:
            if begin:
                await self.gw.stop(signal.SIGKILL)
                self.kills.append(self.cms.clock())
                self.event("gateway_killed")
                if restart_now:
                    await self._restart_gateway()
            else:
                await self._restart_gateway()

    async def _restart_gateway(self) -> None:
        assert self.gw is not None
        if self.gw.proc is not None and self.gw.proc.returncode is None:
            return
        n = self.gw.ready_count()
        await self.gw.start()
        assert self.gw.proc is not None
        self.stats.attach(self.gw.proc.pid)
        await wait_until(lambda: self.gw is not None and self.gw.ready_count() > n, 60.0)
        self.event("gateway_restarted")

    # -- sampling ---------------------------------------------------------------------------------
    def _incidence(self) -> np.ndarray:
        """[circuit, charger] 1 where the charger is beneath the circuit."""
        site = self.site
        idx = {c: i for i, c in enumerate(site.circuits)}
        m = np.zeros((len(idx), len(self.rows)))
        for chid, r in self.rows.items():
            for c in site.path_to_root[site.chargers[chid].circuit]:
                m[idx[c], r] = 1.0
        return m

    async def _sample(self, rows: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]], stop: asyncio.Event) -> None:
        site, P = self.site, self.P
        idx = {c: i for i, c in enumerate(site.circuits)}
        inc = self._incidence()
        base_paths = {cid: [idx[c] for c in site.path_to_root[cid]] for cid in self.base}
        next_proc = 0.0
        while not stop.is_set():
            t = self.now_s()
            snap = self.table.a.copy()
            draws = snap[:, :P]
            cur = inc @ draws
            s = max(0.0, t * self.k)
            for cid, profiles in self.base.items():
                cur[base_paths[cid]] += base_at(profiles, s, P)
            rows.append((t, cur, snap[:, P].copy(), draws.max(axis=1) if P else np.zeros(len(snap))))
            if time.monotonic() >= next_proc:
                self.stats.sample()
                for st in self.rig_stats.values():
                    st.sample()
                next_proc = time.monotonic() + 0.5
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.sc.sample_wall_s):
                    await stop.wait()

    # -- messages ----------------------------------------------------------------------------------------
    async def _message_accounting(self) -> dict[str, Any]:
        sent: list[TxMessage] = []
        unacked = 0
        for w in self.workers:
            s, u = await w.call("messages")
            sent += s
            unacked += int(u)
        received = [m for chid, got in self.cms.received.items() for r in got
                    if (m := tx_message(chid, r.unique_id, r.action, r.payload, at=r.at)) is not None]
        return accounting(sent, received, unacked, kills=self.kills)

    async def _drain(self, timeout_s: float) -> dict[str, Any]:
        """The accounting once every message is delivered (or after ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            m = await self._message_accounting()
            done = int(m["lost"]) == 0 and int(m["unacknowledged_at_end"]) == 0 and int(m["pending_at_end"]) == 0
            if done or time.monotonic() >= deadline:
                return m
            await asyncio.sleep(0.5)

    # -- main --------------------------------------------------------------------------------------------
    async def run(self) -> Recording:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self._watch("rig", os.getpid())
        rows: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []
        stop = asyncio.Event()
        sampler: asyncio.Task[None] | None = None
        n = len(self.site.chargers)
        try:
            await self.cms.start()
            await self._start_meters()
            if self.mode == "gateway":
                if self.sc.gateway.mqtt:
                    self.broker = Mosquitto(self.out / "mosquitto")
                    await asyncio.to_thread(self.broker.start)
                if self.sc.dr is not None:
                    from hil.rig.vtn import RigVtn

                    self.vtn = RigVtn(self.sc.dr, self.k)
                    await self.vtn.start()
                port = free_port()
                cfg_path = self.out / "gateway.toml"
                cfg_path.write_text(dumps(self.gateway_config(port)))
                log_path = self.out / "gateway.log"
                log_path.unlink(missing_ok=True)
                self.gw = GatewayProcess(
                    cfg_path, log_path, t0=lambda: self.t0 if math.isfinite(self.t0) else time.time(), own_session=True
                )
                await self.gw.start()
                assert self.gw.proc is not None
                self.stats.attach(self.gw.proc.pid)
                if not await wait_until(lambda: self.gw is not None and self.gw.ready_count() > 0, 60.0 + n * 0.05):
                    raise SimError(f"the gateway did not get ready; see {log_path}")
                await self._start_chargers(port)
            else:
                await self._start_chargers(self.cms.port)
            online = self.table.online
            if not await wait_until(lambda: bool(online.all()), 30.0 + n * 0.1, 0.2):
                off = [c for c, r in self.rows.items() if not online[r]]
                raise SimError(f"{len(off)} chargers did not come online: {off[:5]}")
            if self.mode == "static":
                self.static = static_limits(self.site)
                for chid, cfg in self.site.chargers.items():
                    fixed = _fixed_profile(cfg.ocpp_version, cfg.unit, self.static[chid])
                    await self.cms.call(chid, fixed, timeout_s=30)
            # scenario time 0 a moment ahead, so that every worker has its EVs before the first arrives
            self.t0 = time.time() + 1.0 + n / 1000
            if self.sc.align_start_s > 0:  # start on a billing interval boundary of the wall clock
                self.t0 += -self.t0 % self.sc.align_start_s
            assert self.meter_proc is not None
            await self.meter_proc.call("t0", self.t0)
            if self.vtn is not None:
                self.vtn.t0 = self.t0
            await self._schedule_arrivals()
            await asyncio.sleep(max(0.0, self.t0 - time.time()))
            self.stats.sample()
            cpu0 = self.stats.cpu_s
            for st in self.rig_stats.values():
                st.sample()
            rig0 = {name: st.cpu_s for name, st in self.rig_stats.items()}
            sampler = asyncio.create_task(self._sample(rows, stop))
            self.event("start", self.sc.name)
            player = asyncio.create_task(self._play())
            await asyncio.sleep(max(0.0, self.sc.wall_duration_s - self.now_s()))
            if not player.done():
                player.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await player
            self.stats.sample()
            cpu_run = self.stats.cpu_s - cpu0
            wall_run = self.now_s()
            stop.set()
            await sampler
            for st in self.rig_stats.values():
                st.sample()
            rig_cpu = {name: st.cpu_s - rig0.get(name, 0.0) for name, st in self.rig_stats.items()}
            self.event("end")
            # bring the service back if a fault was left open, then let the queued messages drain
            for f in self.sc.faults:
                if f.duration_s == 0 and f.kind in ("cms_down", "broker_down"):
                    await self._fault(f.kind, f.target, False)
            plugged: dict[int, tuple[float, float]] = {}
            worker_stats = []
            for w in self.workers:
                plugged.update(await w.call("sessions"))
                worker_stats.append(await w.call("stats"))
            for i, rec in enumerate(self.sessions):
                if i in plugged:
                    rec.plugged, rec.energy_wh, rec.plugged_wall = True, plugged[i][0], plugged[i][1] - self.t0
            for w in self.workers:
                await w.call("unplug_all")
            messages = await self._drain(30.0)
            meter_stats = await self.meter_proc.call("stats")
        finally:
            stop.set()
            if sampler is not None and not sampler.done():
                sampler.cancel()
            if self.gw is not None:
                await self.gw.stop()
            if self.broker is not None:
                await asyncio.to_thread(self.broker.stop)
            if self.vtn is not None:
                await self.vtn.stop()
            await asyncio.gather(*(w.stop() for w in self.workers), return_exceptions=True)
            if self.meter_proc is not None:
                await self.meter_proc.stop()
            with contextlib.suppress(Exception):
                await self.cms.stop()
            shutil.rmtree(self.state_dir, ignore_errors=True)
        rss = self.stats.rss_mb
        process = {
            "cpu_s": round(cpu_run, 2), "wall_s": round(wall_run, 2),
            "cpu_pct": round(100.0 * cpu_run / wall_run, 1) if wall_run > 0 else 0.0,
            "rss_peak_mb": round(max(rss), 1) if rss else None,
            "rss_mean_mb": round(sum(rss) / len(rss), 1) if rss else None,
            "starts": self.gw.starts if self.gw is not None else 0,
        } if self.mode == "gateway" else {}
        rig = {"workers": self.n_workers, "chargers_per_worker": math.ceil(n / self.n_workers),
               "meters": meter_stats,
               "arrival_late_max_s": max((float(x["arrival_late_max_s"]) for x in worker_stats), default=0.0),
               "cpu_pct": {name: round(100.0 * c / wall_run, 1) if wall_run > 0 else 0.0
                           for name, c in rig_cpu.items()}}
        times = np.array([r[0] for r in rows])
        gw_logs = self.gw.logs if self.gw is not None else []
        for e in gw_logs:  # lines read before scenario time 0 was fixed
            e["_t"] = float(e["_ts"]) - self.t0
        return Recording(
            scenario=self.sc, mode=self.mode, site=self.site, times=times, circuit_ids=list(self.site.circuits),
            circuit_a=np.array([r[1] for r in rows]), charger_ids=list(self.site.chargers),
            charger_limit_a=np.array([r[2] for r in rows]), charger_draw_a=np.array([r[3] for r in rows]),
            events=self.events, gateway_logs=gw_logs, sessions=self.sessions,
            messages=messages, process=process, static_limits=self.static,
            wall_elapsed_s=time.monotonic() - started, t0_wall=self.t0, rig_process=rig,
            dr=self.vtn.summary() if self.vtn is not None else {},
        )


def run_scenario(scenario: Scenario, out_dir: Path, mode: str = "gateway", workers: int | None = None) -> Recording:
    """Run one scenario (blocking). The rig's own log goes to ``out_dir/rig.log`` (warnings and up), its
    children's to ``rig-meters.log`` and ``rig-chargers-N.log``; ``workers``: the number of charger workers
    (default :func:`hil.rig.procs.worker_count`). The children are spawned: a script that calls this needs
    the ``if __name__ == "__main__":`` guard."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "rig.log").open("a", buffering=1, encoding="utf-8") as stream, logs.configured(
        "warning", "json", stream
    ):
        return asyncio.run(Rig(scenario, out_dir, mode, workers).run())
