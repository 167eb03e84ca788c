"""The rig's simulators in processes of their own, so that they keep up with the site they simulate.

* one **meter process** serves every simulated meter (Modbus TCP, and RTU on socat pty pairs);
* a few **charger workers** run the simulated OCPP chargers and their EVs, many per process;
* the rig's own process keeps the CMS, the scenario player and the recorder.

The physics stay coherent through one table in shared memory (:class:`DrawTable`, a ``RawArray`` of
doubles, one row per charger): every worker writes, every ``publish_s`` (100 ms), each of its chargers'
line currents per site phase, the limit in force (line A) and whether it is online; the meter process
sums the rows beneath each meter's circuit (plus the base loads, evaluated on the scenario's clock) on
every request, and the recorder reads the same rows. A meter thus sees an EV's draw at most one publish
period (plus a tick of the charger) late, well within the 5-11 s an EV takes to follow a limit.

Commands go over a ``multiprocessing`` pipe, one request and one reply at a time, numbered so that the
reply to a request whose caller was cancelled is never taken for the next one's (:class:`Child`):
schedule the EVs (each worker plugs them in at their arrival times itself, so that no request can make
them late), make a charger non-compliant, silence a meter, collect the sessions' energies and the
transaction messages at the end. Children are started with ``spawn`` (no fork of a running event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import multiprocessing
import os
import signal
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from sitesim import SimError
from sitesim.charger import SimCharger
from sitesim.ev import EvModel, EvSpec
from sitesim.meter import LoadProfile
from sitesim.site import (
    MeterFault,
    MeterSet,
    charger_line_a,
    check_meter_faults,
    line_a_nominal,
    make_charger,
    meter_values,
    subtrees,
)

from gateway import electrical, logs
from gateway.config import Site, site_from_dict
from hil.pv import PvProfile, pv_amps
from hil.rig.messages import TxMessage, tx_message
from hil.scenario import BaseLoad

log = structlog.get_logger(__name__)

CTX = multiprocessing.get_context("spawn")
PUBLISH_S = 0.1  # how often the workers write their chargers' draws into the table
# Scheduling: a real meter is hardware of its own that answers within its wire time whatever else runs. With
# the kernel's autogroups, every session shares the CPUs as one group, whatever its processes' nice values:
# the meter process (and the socat relays it starts) therefore runs in a session of its own, at a higher
# priority where it may (as root), and the charger workers a slightly lower one within the rig's group (EVs
# take seconds to follow a limit; a few ms late do not matter). The gateway, too, runs in its own session.
METER_NICE = -5
WORKER_NICE = 2
LAG_PERIOD_S = 0.01  # the meter process's loop-lag probe


# ---- the shared table ------------------------------------------------------------------------------
class DrawTable:
    """Per charger: ``phases`` columns of line current (A per site phase), the limit in force (line A per
    phase), online (0/1). Plain doubles in shared memory; a reader may see a row half a period old."""

    def __init__(self, rows: int, phases: int, raw: Any = None) -> None:
        self.rows, self.phases = rows, phases
        self.cols = phases + 2
        self.raw = raw if raw is not None else CTX.RawArray("d", max(1, rows * self.cols))
        self.a: np.ndarray = np.frombuffer(self.raw, dtype=np.float64)[: rows * self.cols].reshape(rows, self.cols)

    @property
    def draws(self) -> np.ndarray:
        return self.a[:, : self.phases]

    @property
    def limits(self) -> np.ndarray:
        return self.a[:, self.phases]

    @property
    def online(self) -> np.ndarray:
        return self.a[:, self.phases + 1]


def base_profiles(loads: Sequence[BaseLoad], seed: int, phases: int) -> dict[str, list[LoadProfile]]:
    """The scenario's base loads as load profiles per circuit (scenario seconds -> A per phase)."""
    out: dict[str, list[LoadProfile]] = {}
    for i, bl in enumerate(loads):
        out.setdefault(bl.circuit, []).append(
            LoadProfile(list(bl.points), ramp=bl.ramp, noise_a=bl.noise_a, phases=phases, seed=seed + i))
    return out


def base_at(profiles: Sequence[LoadProfile], s: float, phases: int) -> np.ndarray:
    tot = np.zeros(phases)
    for prof in profiles:
        tot += np.asarray(prof(s)[:phases])
    return tot


# ---- the parent's handle on a child ----------------------------------------------------------------
class Child:
    """A child process (``spawn``) serving requests over a pipe: ``await child.call(cmd, *args)``."""

    def __init__(self, name: str, main: Callable[..., None], spec: Any, table: DrawTable, log_path: Path) -> None:
        self.name = name
        self._conn, theirs = CTX.Pipe(duplex=True)
        self.proc = CTX.Process(target=main, args=(spec, theirs, table.raw, table.rows, table.phases, str(log_path)),
                                name=name, daemon=True)
        self._theirs = theirs
        self._lock = asyncio.Lock()
        self._seq = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def start(self) -> None:
        self.proc.start()
        self._theirs.close()

    async def _recv(self, seq: int, timeout_s: float) -> tuple[bool, Any]:
        """The reply to request ``seq`` (a reply to an earlier one, whose caller was cancelled, is dropped)."""
        loop = asyncio.get_running_loop()
        fd = self._conn.fileno()
        async with asyncio.timeout(timeout_s):
            while True:
                while not self._conn.poll():
                    if not self.proc.is_alive():
                        raise SimError(f"{self.name} died (exit code {self.proc.exitcode})")
                    ready: asyncio.Future[None] = loop.create_future()
                    loop.add_reader(fd, lambda f=ready: f.done() or f.set_result(None))  # type: ignore[misc]
                    try:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(1.0):
                                await ready
                    finally:
                        loop.remove_reader(fd)
                got, ok, value = self._conn.recv()
                if got == seq:
                    return bool(ok), value

    async def call(self, cmd: str, *args: Any, timeout_s: float = 60.0) -> Any:
        async with self._lock:
            self._seq += 1
            try:
                self._conn.send((self._seq, cmd, args))
                ok, value = await self._recv(self._seq, timeout_s)
            except (EOFError, OSError, BrokenPipeError) as e:
                raise SimError(f"{self.name}: {cmd} failed: {e!r}") from e
            except TimeoutError as e:
                raise SimError(f"{self.name}: no answer to {cmd} within {timeout_s:g} s") from e
        if not ok:
            raise SimError(f"{self.name}: {cmd} failed in the child: {value}")
        return value

    async def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(SimError):
                await self.call("stop", timeout_s=timeout_s)
        await asyncio.to_thread(self.proc.join, 5.0)
        if self.proc.is_alive():
            self.proc.terminate()
            await asyncio.to_thread(self.proc.join, 5.0)
        self._conn.close()


# ---- the child's side ------------------------------------------------------------------------------
class Served:
    """What a child runs: ``handle(cmd, *args)`` answers a request (``stop`` ends the child)."""

    async def handle(self, cmd: str, *args: Any) -> Any:
        raise NotImplementedError

    async def close(self) -> None:
        return None


def _serve(make: Callable[[Any, DrawTable], Served], spec: Any, conn: Connection, raw: Any, rows: int, phases: int,
           log_path: str) -> None:
    """The body of a child process: log to ``log_path`` (warnings and up), answer requests until ``stop``, the
    parent's end of the pipe closing, or SIGTERM (a Ctrl-C is the parent's to handle: it stops its children)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with Path(log_path).open("a", buffering=1, encoding="utf-8") as stream, logs.configured("warning", "json", stream):
        asyncio.run(_loop(make(spec, DrawTable(rows, phases, raw)), conn))


async def _loop(served: Served, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[tuple[int, str, tuple[Any, ...]] | None] = asyncio.Queue()

    def readable() -> None:
        try:
            while conn.poll():
                inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(None)  # the parent went away

    loop.add_reader(conn.fileno(), readable)
    loop.add_signal_handler(signal.SIGTERM, lambda: inbox.put_nowait(None))  # close (socat relays too), then end
    try:
        while True:
            msg = await inbox.get()
            if msg is None:
                return
            seq, cmd, args = msg
            try:
                reply: tuple[int, bool, Any] = (seq, True, None if cmd == "stop" else await served.handle(cmd, *args))
            except Exception as e:
                log.exception("rig_child_request_failed", cmd=cmd)
                reply = (seq, False, f"{e!r}\n{traceback.format_exc(limit=5)}")
            if cmd == "stop":
                await served.close()
            with contextlib.suppress(OSError):
                conn.send(reply)
            if cmd == "stop":
                return
    finally:
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())
        await served.close()


# ---- charger workers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChargerTweak:
    """Per charger: changes to its outlet (ramp rates, minimum current), non-compliance, MeterValues interval."""

    outlet: Mapping[str, float] = field(default_factory=dict)
    noncompliant: bool = False
    meter_interval_s: float | None = None


@dataclass(frozen=True)
class WorkerSpec:
    raw: Mapping[str, Any]  # the site config
    rows: Mapping[str, int]  # charger id -> its row in the table (this worker's chargers)
    ocpp_port: int
    sim: Mapping[str, Any]  # SimCharger keyword arguments (tick_s, reconnect_s, ...)
    tweaks: Mapping[str, ChargerTweak]
    publish_s: float = PUBLISH_S
    nice: int = WORKER_NICE


class ChargerWorker(Served):
    """Many simulated chargers in one process, their draws published into the table."""

    def __init__(self, spec: WorkerSpec, table: DrawTable) -> None:
        self.spec = spec
        self.table = table
        self.site: Site = site_from_dict(spec.raw)
        self.chargers: dict[str, SimCharger] = {}
        self.sessions: dict[int, tuple[EvModel, float]] = {}  # session index -> (its EV, when it was plugged in)
        self._due: list[tuple[float, int, str, int, EvSpec]] = []  # (arrival_at, index, charger, connector, EV)
        self.arrival_late_max_s = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    def _start(self) -> None:
        if self.spec.nice:
            with contextlib.suppress(OSError):
                os.nice(self.spec.nice)
        loop = asyncio.get_running_loop()
        for chid in self.spec.rows:
            cfg = self.site.chargers[chid]
            tw = self.spec.tweaks.get(chid, ChargerTweak())
            ch = make_charger(self.site, cfg, self.spec.ocpp_port, **self.spec.sim)
            if tw.outlet:
                changes: dict[str, Any] = dict(tw.outlet)
                ch.outlet = dataclasses.replace(ch.outlet, **changes)
            if tw.noncompliant:
                ch.noncompliant = True
            if tw.meter_interval_s is not None:
                ch.meter_interval_s = tw.meter_interval_s
            self.chargers[chid] = ch
            self._tasks.append(loop.create_task(ch.run(), name=f"sim-{chid}"))
        self._tasks.append(loop.create_task(self._publish(), name="publish"))
        self._tasks.append(loop.create_task(self._arrivals(), name="arrivals"))

    def plug(self, index: int, chid: str, connector: int, ev: EvSpec) -> bool:
        """Plug session ``index``'s EV in now (False: the connector is taken)."""
        ch = self.chargers[chid]
        if ch.model(connector) is not None:
            log.warning("hil_connector_busy", charger=chid, connector=connector)
            return False
        self.sessions[index] = (ch.plug_in(ev, connector), time.time())
        return True

    async def _arrivals(self) -> None:
        """Plug the scheduled EVs in at their arrival times, here: no request on the way to be late."""
        while True:
            now = time.time()
            while self._due and self._due[0][0] <= now:
                at, index, chid, connector, ev = self._due.pop(0)
                self.arrival_late_max_s = max(self.arrival_late_max_s, now - at)
                if self.plug(index, chid, connector, ev):
                    self.publish()
            await asyncio.sleep(min(0.05, max(0.0, self._due[0][0] - now)) if self._due else 0.05)

    def publish(self) -> None:
        a, P = self.table.a, self.table.phases
        for chid, row in self.spec.rows.items():
            ch = self.chargers[chid]
            cfg = self.site.chargers[chid]
            a[row, :P] = charger_line_a(self.site, cfg, ch)
            a[row, P] = line_a_nominal(self.site, cfg, ch.effective_limit(1).limit)
            a[row, P + 1] = 1.0 if ch.online else 0.0

    async def _publish(self) -> None:
        while True:
            try:
                self.publish()
            except Exception:
                log.exception("rig_publish_failed")
            await asyncio.sleep(self.spec.publish_s)

    async def handle(self, cmd: str, *args: Any) -> Any:
        if cmd == "start":
            self._start()
            return os.getpid()
        if cmd == "schedule":  # [(session index, charger, connector, EvSpec)]: plug in at ev.arrival_at
            self._due = sorted([*self._due, *((float(ev.arrival_at or 0.0), int(i), c, int(n), ev)
                                               for i, c, n, ev in args[0])], key=lambda x: (x[0], x[1]))
            return None
        if cmd == "noncompliant":
            chid, value = args
            self.chargers[chid].noncompliant = bool(value)
            return None
        if cmd == "unplug_all":
            for ch in self.chargers.values():
                for c in range(1, ch.connectors + 1):
                    ch.unplug(c)
            self.publish()
            return None
        if cmd == "sessions":  # session index -> (energy delivered, wall-clock Wh; when plugged in, epoch s)
            return {i: (m.energy_wh, at) for i, (m, at) in self.sessions.items()}
        if cmd == "stats":
            return {"arrival_late_max_s": round(self.arrival_late_max_s, 3), "arrivals_pending": len(self._due)}
        if cmd == "messages":  # (the transaction messages sent, durable messages still queued)
            sent: list[TxMessage] = []
            unacked = 0
            for chid, ch in self.chargers.items():
                for m in ch.messages_sent:
                    tm = tx_message(chid, m.unique_id, m.action, m.payload, m.outcome)
                    if tm is not None:
                        sent.append(tm)
                unacked += sum(1 for o in ch._queue if getattr(o, "durable", False))
            return sent, unacked
        raise SimError(f"unknown command {cmd!r}")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


def charger_worker_main(spec: WorkerSpec, conn: Connection, raw: Any, rows: int, phases: int, log_path: str) -> None:
    _serve(ChargerWorker, spec, conn, raw, rows, phases, log_path)


def own_session(nice: int) -> None:
    """Leave the rig's session (and so its autogroup) and take ``nice`` for this process and its group, as far
    as this process may."""
    with contextlib.suppress(OSError):
        os.setsid()
    if nice:
        with contextlib.suppress(OSError):
            os.nice(nice)
        with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))


# ---- the meter process -----------------------------------------------------------------------------
@dataclass(frozen=True)
class MeterSpec:
    raw: Mapping[str, Any]  # the site config
    rows: Mapping[str, int]  # charger id -> row
    base_loads: tuple[BaseLoad, ...]
    seed: int
    time_scale: float
    rtu: bool = True
    nice: int = METER_NICE
    pv: PvProfile | None = None  # the scenario's [pv]: what its role = "pv" meter feeds in (scenario s -> kW)
    meter_faults: Mapping[str, MeterFault] = field(default_factory=dict)  # circuit meter id -> wiring fault


class MeterProcess(Served):
    """Every simulated meter of the site; each circuit meter reads its circuit's base loads (the PV among them,
    negative) and the draws in the table, through its wiring fault if it has one; a PV inverter reads what the
    scenario's [pv] feeds in (none without it)."""

    def __init__(self, spec: MeterSpec, table: DrawTable) -> None:
        self.spec = spec
        self.table = table
        self.site: Site = site_from_dict(spec.raw)
        self.t0 = math.inf
        P = self.site.service.phases
        profiles = base_profiles(spec.base_loads, spec.seed, P)
        under = subtrees(self.site)
        self._profiles = {cid: [p for c in under[cid] for p in profiles.get(c, [])] for cid in self.site.circuits}
        self._rows = {cid: np.array(sorted(spec.rows[ch] for ch in self.site.chargers_under[cid]), dtype=np.intp)
                      for cid in self.site.circuits}
        check_meter_faults(self.site, spec.meter_faults)
        self.meters = MeterSet(self.site, self._source, rtu=spec.rtu)
        self.lag_max_s = 0.0  # since scenario time 0
        self.lag_over_50ms = 0
        self.lags: list[tuple[float, float]] = []  # (wall s since scenario time 0, lag s) of the lags over 50 ms
        self._lag_task: asyncio.Task[None] | None = None

    async def _lag(self) -> None:
        """How late this process's loop wakes up (a starved meter process answers late)."""
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(LAG_PERIOD_S)
            lag = loop.time() - t - LAG_PERIOD_S
            since = time.time() - self.t0
            if since < 0:  # before scenario time 0 (start-up, chargers connecting): not counted
                continue
            self.lag_max_s = max(self.lag_max_s, lag)
            if lag > 0.05:
                self.lag_over_50ms += 1
                if len(self.lags) < 20:
                    self.lags.append((round(since, 2), round(lag, 3)))

    def scenario_s(self) -> float:
        return max(0.0, (time.time() - self.t0) * self.spec.time_scale) if math.isfinite(self.t0) else 0.0

    def circuit_current(self, cid: str) -> np.ndarray:
        P = self.site.service.phases
        cur = base_at(self._profiles[cid], self.scenario_s(), P)
        rows = self._rows[cid]
        if len(rows):
            cur += self.table.draws[rows].sum(axis=0)
        return cur

    def _source(self, meter_id: str) -> Callable[[float], tuple[float, ...]]:
        m = self.site.polled_meters[meter_id]
        if m.role == "pv":
            return self._pv_source(meter_id)
        fault = self.spec.meter_faults.get(meter_id)

        def source(_t: float) -> tuple[float, ...]:
            return meter_values(m, tuple(self.circuit_current(m.circuit)), fault)

        return source

    def _pv_source(self, meter_id: str) -> Callable[[float], tuple[float, ...]]:
        """A PV inverter's current on each of its measured phases (A): the [pv] kW spread evenly over them."""
        pv = self.spec.pv
        if pv is None or pv.meter != meter_id:
            return lambda _t: (0.0, 0.0, 0.0)
        n = len(self.site.polled_meters[meter_id].phase_map)
        v_ln = electrical.line_to_neutral_v(self.site.service)

        def source(_t: float) -> tuple[float, ...]:
            a = pv_amps(pv.kw(self.scenario_s()), v_ln, n)
            return tuple(a if i < n else 0.0 for i in range(3))

        return source

    async def handle(self, cmd: str, *args: Any) -> Any:
        if cmd == "start":
            own_session(self.spec.nice)
            await self.meters.start()
            self._lag_task = asyncio.get_running_loop().create_task(self._lag())
            return {"pid": os.getpid(), "ports": dict(self.meters.ports), "devices": dict(self.meters.devices),
                    "nice": os.nice(0)}
        if cmd == "stats":  # the meter simulators' own delays (a starved process), and the requests served
            buses = self.meters.buses
            return {"nice": os.nice(0), "loop_lag_max_ms": round(1000 * self.lag_max_s, 1),
                    "loop_lags_over_50ms": self.lag_over_50ms, "loop_lags": self.lags,
                    "rtu_frames": sum(b.frames for b in buses),
                    "rtu_late_max_ms": round(1000 * max((b.late_max_s for b in buses), default=0.0), 1),
                    "rtu_late_frames": sum(b.late_frames for b in buses),
                    "requests": sum(m.requests for m in self.meters.meters.values())}
        if cmd == "t0":
            self.t0 = float(args[0])
            return None
        if cmd == "read":  # meter id -> what it would answer now (its own phases' currents, A)
            return {mid: tuple(self._source(mid)(0.0)) for mid in self.meters.meters}
        if cmd == "silence":
            mid, on = args
            m = self.meters.meters[mid]
            m.silence() if on else m.clear_faults()
            return None
        raise SimError(f"unknown command {cmd!r}")

    async def close(self) -> None:
        if self._lag_task is not None:
            self._lag_task.cancel()
        await self.meters.stop()


def meter_process_main(spec: MeterSpec, conn: Connection, raw: Any, rows: int, phases: int, log_path: str) -> None:
    _serve(MeterProcess, spec, conn, raw, rows, phases, log_path)


def worker_count(chargers: int, cpus: int | None = None) -> int:
    """A few workers, each with many chargers: one per 60 chargers, at most 4 (and at least 1)."""
    cpus = cpus or os.cpu_count() or 2
    return max(1, min(4, math.ceil(chargers / 60), 2 * cpus))


__all__ = ["CTX", "ChargerTweak", "ChargerWorker", "Child", "DrawTable", "MeterProcess", "MeterSpec", "WorkerSpec",
           "base_at", "base_profiles", "charger_worker_main", "meter_process_main", "worker_count"]
