"""The HIL runner: a scenario against the real ``ems-gateway run`` process, everything recorded.

``run_scenario(scenario, out_dir, mode="gateway")`` stands the simulated site up (meters over Modbus
TCP and RTU on socat pty pairs, OCPP 1.6J/2.0.1 chargers, a simulated CMS, a mosquitto broker),
starts ``python -m gateway run --config FILE --log-format json`` as a separate process, plays the
scenario (base loads, EV arrivals and departures, faults) on the compressed time base described in
:mod:`hil.scenario`, samples the true current of every circuit and every charger's limit and draw,
and returns a :class:`Recording`.

``mode="static"`` is the baseline of a site without an EMS: no gateway; the chargers talk to the
CMS directly and the CMS installs a fixed ChargePointMaxProfile / ChargingStationMaxProfile on each
one (see :func:`static_limits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from gateway import electrical, logs
from gateway.config import ChargerConfig, Site, site_from_dict
from hil.broker import Mosquitto, free_port
from hil.meter_sim import LoadProfile
from hil.scenario import Arrival, Scenario
from hil.sim import SimError
from hil.sim.ev import ChargingCurve, EvModel, EvSpec
from hil.site_sim import SiteSim
from hil.tomlw import dumps

log = structlog.get_logger(__name__)

TX_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "TransactionEvent", "MeterValues"})
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class SessionRecord:
    arrival: Arrival
    model: EvModel | None = None
    plugged_wall: float | None = None  # wall s since t0

    def delivered_wh(self, scale: float) -> float:
        return 0.0 if self.model is None else self.model.energy_wh * scale


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


# ---- helpers ----------------------------------------------------------------------------------------
def line_a_nominal(site: Site, cfg: ChargerConfig, native: float) -> float:
    """A native limit (A per phase or W) as line A per loaded phase at the nominal voltage (the sims' physics)."""
    if cfg.kind == "ac":
        return native
    return electrical.dc_line_current_a(site.service, cfg, native)


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


async def wait_until(pred: Callable[[], bool], timeout_s: float, interval_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        await asyncio.sleep(interval_s)
    return pred()


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
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            self.cpu_s_now = (int(fields[11]) + int(fields[12])) / CLK_TCK
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        self.rss_mb.append(int(line.split()[1]) / 1024.0)
        except (OSError, IndexError, ValueError):
            pass

    @property
    def cpu_s(self) -> float:
        return self.cpu_s_done + self.cpu_s_now


# ---- the gateway process --------------------------------------------------------------------------
class GatewayProcess:
    def __init__(self, config: Path, log_path: Path, t0: Callable[[], float]) -> None:
        self.config = config
        self.log_path = log_path
        self.t0 = t0
        self.proc: asyncio.subprocess.Process | None = None
        self.logs: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None
        self.starts = 0

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")}
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "run", "--config", str(self.config), "--log-format", "json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        )
        self.starts += 1
        self._reader = asyncio.create_task(self._read(self.proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        with self.log_path.open("ab") as f:
            while True:
                line = await proc.stdout.readline()
                if not line:
                    return
                f.write(line)
                with contextlib.suppress(ValueError):
                    d = json.loads(line)
                    if isinstance(d, dict):
                        d["_t"] = time.time() - self.t0()
                        self.logs.append(d)

    def ready_count(self) -> int:
        return sum(1 for e in self.logs if e.get("event") == "gateway_ready")

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int | None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(sig)
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            rc = await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        return rc


# ---- the run ---------------------------------------------------------------------------------------
class Rig:
    def __init__(self, scenario: Scenario, out_dir: Path, mode: str = "gateway") -> None:
        if mode not in ("gateway", "static"):
            raise SimError(f"mode must be 'gateway' or 'static', got {mode!r}")
        self.sc = scenario
        self.out = out_dir
        self.mode = mode
        self.k = scenario.time_scale
        self.t0 = math.inf  # wall epoch of scenario time 0 (set when every charger is online)
        self.events: list[tuple[float, str, str]] = []
        self.sessions: list[SessionRecord] = []
        self.stats = ProcStats()
        site = site_from_dict(scenario.site)
        P = site.service.phases
        self.base: dict[str, list[LoadProfile]] = {}
        for i, bl in enumerate(scenario.base_loads):
            self.base.setdefault(bl.circuit, []).append(
                LoadProfile(list(bl.points), ramp=bl.ramp, noise_a=bl.noise_a, phases=P, seed=scenario.seed + i))
        loads = {cid: self._base_fn(cid, P) for cid in self.base}
        pv = {scenario.pv.meter: self._pv_fn()} if scenario.pv is not None else {}
        self.sim = SiteSim(scenario.site, base_loads=loads, meter_interval_s=scenario.charger_meter_interval_wall_s,
                           pv_sources=pv)
        self.site = self.sim.site
        self.gw: GatewayProcess | None = None
        self.broker: Mosquitto | None = None
        self.static: dict[str, float] = {}

    def _base_fn(self, cid: str, P: int) -> Callable[[float], tuple[float, ...]]:
        profiles = self.base[cid]

        def f(t: float) -> tuple[float, ...]:
            s = max(0.0, (t - self.t0) * self.k) if math.isfinite(self.t0) else 0.0
            tot = [0.0] * P
            for prof in profiles:
                for p, a in enumerate(prof(s)):
                    tot[p] += a
            return tuple(tot)

        return f

    def _pv_fn(self) -> Callable[[float], tuple[float, ...]]:
        """The PV inverter's current on each of its measured phases (A), at the clock time."""
        from gateway import electrical
        from hil.pv import pv_amps

        pv = self.sc.pv
        assert pv is not None
        site = site_from_dict(self.sc.site)
        m = site.pv_meters[pv.meter]
        v_ln = electrical.line_to_neutral_v(site.service)

        def f(t: float) -> tuple[float, ...]:
            s = max(0.0, (t - self.t0) * self.k) if math.isfinite(self.t0) else 0.0
            a = pv_amps(pv.kw(s), v_ln, len(m.phase_map))
            return tuple(a if i < len(m.phase_map) else 0.0 for i in range(3))

        return f

    def now_s(self) -> float:
        """Wall seconds since scenario time 0."""
        return time.time() - self.t0

    def event(self, kind: str, detail: str = "") -> None:
        self.events.append((self.now_s() if math.isfinite(self.t0) else 0.0, kind, detail))

    # -- set-up ------------------------------------------------------------------------------------
    def gateway_config(self, ocpp_port: int) -> dict[str, Any]:
        sc = self.sc
        extra: dict[str, Any] = {"control": dict(sc.gateway.control), "ocpp": dict(sc.gateway.ocpp),
                                 "logging": {"level": "info", "format": "json"}}
        if sc.gateway.budget:
            extra["budget"] = dict(sc.gateway.budget)
        d = self.sim.gateway_config(ocpp_port=ocpp_port, extra=extra)
        for m in d.get("meters", []):
            m.update(sc.gateway.meters)
        if self.broker is not None:
            d["mqtt"] = {"host": "127.0.0.1", "port": self.broker.port, "keepalive_s": 5, "reconnect_max_s": 2}
        site_from_dict(d)  # refuse a bad override before starting anything
        return d

    def _start_chargers(self, port: int) -> None:
        # schema validation of every frame costs the rig's one process more than 200 chargers reporting
        # every few wall tenths of a second leave it (as the sim's own CLI, only up to 50 chargers)
        self.sim.start_chargers(port, tick_s=self.sc.charger_tick_wall_s, reconnect_s=(0.2, 2.0),
                                response_timeout_s=30.0, validate_schemas=len(self.site.chargers) <= 50)
        for cid, ch in self.sim.chargers.items():
            b = self.sc.behaviour_of(cid)
            cfg = self.site.chargers[cid]
            kw: dict[str, Any] = {}
            if b.ramp_up_per_s is not None:
                kw["ramp_up_per_s"] = b.ramp_up_per_s * self.k
            if b.ramp_down_per_s is not None:
                kw["ramp_down_per_s"] = b.ramp_down_per_s * self.k
            if b.min_current_a is not None and cfg.kind == "ac":
                kw["min_a"] = b.min_current_a
            if kw:
                ch.outlet = dataclasses.replace(ch.outlet, **kw)
            if b.noncompliant:
                ch.noncompliant = True
            ch.meter_interval_s = self.sc.meter_interval_wall_of(cid)

    def _ev(self, a: Arrival) -> EvSpec:
        k = self.k
        b = self.sc.behaviour_of(a.charger)
        delay = a.response_delay_s if b.response_delay_s is None else b.response_delay_s
        return EvSpec(
            capacity_kwh=a.capacity_kwh / k, soc_start=a.soc_start, soc_target=a.soc_target,
            max_ac_a=a.max_current_a, ac_phases=a.ac_phases, max_dc_w=a.max_power_w,
            curve=ChargingCurve(a.taper_start_soc, a.end_fraction), response_delay_s=delay / k,
            arrival_at=self.t0 + a.at_s / k, departure_at=self.t0 + min(a.departure_s, self.sc.duration_s) / k,
            id_tag=a.id_tag or "HIL", name=f"{a.charger}@{a.at_s:g}",
        )

    # -- scenario actions ---------------------------------------------------------------------------
    async def _play(self) -> None:
        sc, k = self.sc, self.k
        actions: list[tuple[float, int, Callable[[], Any]]] = []
        for i, a in enumerate(sc.arrivals):
            rec = SessionRecord(a)
            self.sessions.append(rec)
            actions.append((a.at_s / k, i, lambda rec=rec: self._arrive(rec)))  # type: ignore[misc]
        for t_s, cid, inc in sc.load_steps():
            actions.append((t_s / k, -1, lambda cid=cid, inc=inc: self.event("load_step", f"{cid} +{inc:.0f} A")))  # type: ignore[misc]
        for f in sc.faults:
            actions.append((f.at_s / k, -2,
                            lambda f=f: self._fault(f.kind, f.target, True, f.duration_s == 0)))  # type: ignore[misc]
            if f.duration_s > 0:
                actions.append(((f.at_s + f.duration_s) / k, -3,
                                lambda f=f: self._fault(f.kind, f.target, False)))  # type: ignore[misc]
        actions.sort(key=lambda x: (x[0], x[1]))
        for at, _, fn in actions:
            delay = at - self.now_s()
            if delay > 0:
                await asyncio.sleep(delay)
            r = fn()
            if asyncio.iscoroutine(r):
                await r

    def _arrive(self, rec: SessionRecord) -> None:
        a = rec.arrival
        ch = self.sim.chargers[a.charger]
        if ch.model(a.connector) is not None:
            log.warning("hil_connector_busy", charger=a.charger)
            return
        rec.model = ch.plug_in(self._ev(a), a.connector)
        rec.plugged_wall = self.now_s()

    async def _fault(self, kind: str, target: str, begin: bool, restart_now: bool = False) -> None:
        self.event(f"{kind}_{'begin' if begin else 'end'}", target)
        if kind == "meter_silent":
            m = self.sim.meters[target]
            m.silence() if begin else m.clear_faults()
        elif kind == "noncompliant":
            self.sim.chargers[target].noncompliant = begin
        elif kind == "cms_down":
            await (self.sim.cms.stop() if begin else self.sim.cms.start())
        elif kind == "broker_down" and self.broker is not None:
            await asyncio.to_thread(self.broker.stop if begin else self.broker.start)
        elif kind == "gateway_restart" and self.gw is not None:
            if begin:
                await self.gw.stop(signal.SIGKILL)
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
    async def _sample(self, rows: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]], stop: asyncio.Event) -> None:
        site, sim = self.site, self.sim
        cids = list(site.circuits)
        idx = {c: i for i, c in enumerate(cids)}
        chids = list(site.chargers)
        P = site.service.phases
        paths = [[idx[c] for c in site.path_to_root[site.chargers[ch].circuit]] for ch in chids]
        next_proc = 0.0
        while not stop.is_set():
            t = self.now_s()
            cur = np.zeros((len(cids), P))
            for cid in self.base:
                bl = sim.base_load(cid)
                for c in site.path_to_root[cid]:
                    cur[idx[c]] += bl
            lim = np.zeros(len(chids))
            draw = np.zeros(len(chids))
            for j, chid in enumerate(chids):
                cfg = site.chargers[chid]
                la = sim.charger_line_a(cfg)
                if any(la):
                    cur[paths[j]] += la
                    draw[j] = max(la)
                ch = sim.chargers.get(chid)
                if ch is not None:
                    lim[j] = line_a_nominal(site, cfg, ch.effective_limit(1).limit)
            rows.append((t, cur, lim, draw))
            if time.monotonic() >= next_proc:
                self.stats.sample()
                next_proc = time.monotonic() + 0.5
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.sc.sample_wall_s)

    # -- messages ----------------------------------------------------------------------------------------
    @staticmethod
    def _semantic_key(action: str, payload: dict[str, Any]) -> str:
        """What identifies a transaction message when a store-and-forward hop re-sends it under a new
        message id (and, for 2.0.1, may set ``offline``): the transaction and its sequence number, or
        the action, transaction, connector and timestamps."""
        if action == "TransactionEvent":
            info = payload.get("transactionInfo") or {}
            return f"TE|{info.get('transactionId')}|{payload.get('seqNo')}|{payload.get('eventType')}"
        # a 1.6 transaction started while the CMS was down carries the gateway's local id at the charger
        # and the CMS's id upstream (rewritten on replay, by design): the id is not part of the key
        stamps = [m.get("timestamp") for m in payload.get("meterValue", []) if isinstance(m, dict)]
        return "|".join(str(x) for x in (action, payload.get("connectorId"), payload.get("evseId"),
                                          payload.get("timestamp"), payload.get("meterStop"), *stamps))

    def _message_accounting(self) -> dict[str, Any]:
        sent_ok = lost = unacked = received_total = 0
        lost_list: list[dict[str, Any]] = []
        for chid, ch in self.sim.chargers.items():
            got = [r for r in self.sim.cms.received.get(chid, []) if r.action in TX_ACTIONS]
            ids = {r.unique_id for r in got}
            keys = {self._semantic_key(r.action, r.payload) for r in got}
            received_total += len(got)
            for m in ch.messages_sent:
                if m.action not in TX_ACTIONS or m.outcome != "ok":
                    continue
                sent_ok += 1
                if m.unique_id not in ids and self._semantic_key(m.action, m.payload) not in keys:
                    lost += 1
                    if len(lost_list) < 20:
                        lost_list.append({"charger": chid, "action": m.action, "unique_id": m.unique_id,
                                          "payload": m.payload})
            unacked += sum(1 for o in ch._queue if getattr(o, "durable", False))
        return {"tx_messages_sent": sent_ok, "tx_messages_received_by_cms": received_total, "lost": lost,
                "unacknowledged_at_end": unacked, "lost_examples": lost_list}

    def _all_delivered(self) -> bool:
        m = self._message_accounting()
        return int(m["lost"]) == 0 and int(m["unacknowledged_at_end"]) == 0

    # -- main --------------------------------------------------------------------------------------------
    async def run(self) -> Recording:
        self.out.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        sim = self.sim
        await sim.start()
        rows: list[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = []
        stop = asyncio.Event()
        sampler: asyncio.Task[None] | None = None
        n = len(self.site.chargers)
        try:
            if self.mode == "gateway":
                if self.sc.gateway.mqtt:
                    self.broker = Mosquitto(self.out / "mosquitto")
                    await asyncio.to_thread(self.broker.start)
                port = free_port()
                cfg_path = self.out / "gateway.toml"
                cfg_path.write_text(dumps(self.gateway_config(port)))
                log_path = self.out / "gateway.log"
                log_path.unlink(missing_ok=True)
                self.gw = GatewayProcess(cfg_path, log_path, lambda: self.t0 if math.isfinite(self.t0) else time.time())
                await self.gw.start()
                assert self.gw.proc is not None
                self.stats.attach(self.gw.proc.pid)
                if not await wait_until(lambda: self.gw is not None and self.gw.ready_count() > 0, 60.0 + n * 0.05):
                    raise SimError(f"the gateway did not get ready; see {log_path}")
                self._start_chargers(port)
            else:
                self._start_chargers(sim.cms_port)
            if not await wait_until(lambda: all(c.online for c in sim.chargers.values()), 30.0 + n * 0.1, 0.2):
                off = [c for c, s in sim.chargers.items() if not s.online]
                raise SimError(f"{len(off)} chargers did not come online: {off[:5]}")
            if self.mode == "static":
                self.static = static_limits(self.site)
                for chid, ch in sim.chargers.items():
                    cfg = self.site.chargers[chid]
                    await sim.cms.call(chid, _fixed_profile(ch.version, cfg.unit, self.static[chid]), timeout_s=30)
            if self.sc.align_start_s > 0:  # start on a billing interval boundary of the wall clock
                await asyncio.sleep(-time.time() % self.sc.align_start_s)
            self.t0 = time.time()
            self.stats.sample()
            cpu0 = self.stats.cpu_s
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
            self.event("end")
            # bring the service back if a fault was left open, then let the queued messages drain
            for f in self.sc.faults:
                if f.duration_s == 0 and f.kind in ("cms_down", "broker_down"):
                    await self._fault(f.kind, f.target, False)
            for ch in sim.chargers.values():
                for c in range(1, ch.connectors + 1):
                    ch.unplug(c)
            await wait_until(self._all_delivered, 30.0, 0.2)
            messages = self._message_accounting()
        finally:
            stop.set()
            if sampler is not None and not sampler.done():
                sampler.cancel()
            if self.gw is not None:
                await self.gw.stop()
            if self.broker is not None:
                await asyncio.to_thread(self.broker.stop)
            await sim.stop()
        rss = self.stats.rss_mb
        process = {
            "cpu_s": round(cpu_run, 2), "wall_s": round(wall_run, 2),
            "cpu_pct": round(100.0 * cpu_run / wall_run, 1) if wall_run > 0 else 0.0,
            "rss_peak_mb": round(max(rss), 1) if rss else None,
            "rss_mean_mb": round(sum(rss) / len(rss), 1) if rss else None,
            "starts": self.gw.starts if self.gw is not None else 0,
        } if self.mode == "gateway" else {}
        times = np.array([r[0] for r in rows])
        return Recording(
            scenario=self.sc, mode=self.mode, site=self.site, times=times, circuit_ids=list(self.site.circuits),
            circuit_a=np.array([r[1] for r in rows]), charger_ids=list(self.site.chargers),
            charger_limit_a=np.array([r[2] for r in rows]), charger_draw_a=np.array([r[3] for r in rows]),
            events=self.events, gateway_logs=self.gw.logs if self.gw is not None else [], sessions=self.sessions,
            messages=messages, process=process, static_limits=self.static,
            wall_elapsed_s=time.monotonic() - started, t0_wall=self.t0,
        )


def run_scenario(scenario: Scenario, out_dir: Path, mode: str = "gateway") -> Recording:
    """Run one scenario (blocking). The rig's own log goes to ``out_dir/rig.log`` (warnings and up)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "rig.log").open("a", buffering=1, encoding="utf-8") as stream, logs.configured(
        "warning", "json", stream
    ):
        return asyncio.run(Rig(scenario, out_dir, mode).run())
