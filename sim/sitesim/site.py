"""A whole simulated site around a site config, on loopback.

`SiteSim` takes the raw config of a site (the TOML as a dict) and stands up what a real site
would have around the gateway: a simulated meter for every configured meter (Modbus TCP, or RTU
on a socat pty pair where the config says rtu), a simulated charger for every configured
charger (OCPP 1.6J or 2.0.1 as configured, AC or DC), a simulated cloud CMS, and a base
(non-EV) load placed on circuits. Every meter reads the current that really flows through its
circuit: the base loads in its subtree plus the line currents of the chargers beneath it.

`gateway_config()` returns the same config rewritten to point the gateway at the simulators
(loopback meters, an ephemeral OCPP port, the simulated CMS, a temporary state directory).

Meters with ``role = "pv"`` are PV inverters: each reads its ``pv_sources`` entry (the current it
feeds in on its own phases; the PV is on the site as a negative base load besides). ``meter_faults``
give circuit meters a wiring fault (:class:`MeterFault`: swapped phases, inverted CTs, a wrong CT
ratio), applied where a meter's values are made (:func:`meter_values`).

The pieces are also module-level functions (:func:`charger_line_a`, :func:`meter_values`,
:class:`MeterSet`, :func:`make_charger`, :func:`pointed_config`) so that the HIL rig can run the
meters and the chargers in processes of their own (:mod:`hil.rig.procs`) with the same physics.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway import electrical
from gateway.config import ChargerConfig, Site, site_from_dict
from gateway.meters.config import MeterConfig
from sitesim.charger import SimCharger
from sitesim.cms import SimCms
from sitesim.meter import MeterSimulator, RtuBus, SocatPair

BaseLoad = Callable[[float], tuple[float, ...]]  # clock time -> per-phase amperes


@dataclass(frozen=True)
class MeterFault:
    """A wiring fault of a simulated meter, for commissioning tests: what the installer got wrong.

    ``phases[i]``: the site phase meter input i really measures (None: as configured); ``inverted``: the CTs
    are turned round against the configuration; ``ct_factor``: the CTs' ratio is this times the configured one
    (the meter then reads 1/ct_factor of the current)."""

    phases: tuple[int, ...] | None = None
    inverted: bool = False
    ct_factor: float = 1.0

    @classmethod
    def parse(cls, spec: str) -> MeterFault:
        """ "swap:L1-L2", "invert", "ct:2", combined with commas (the scenario option)."""
        phases: list[int] | None = None
        inverted, ct = False, 1.0
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            if part == "invert":
                inverted = True
            elif part.startswith("ct:"):
                ct = float(part[3:])
                if not (math.isfinite(ct) and ct > 0):
                    raise ValueError(f"meter fault {part!r}: the CT ratio factor must be > 0")
            elif part.startswith("swap:"):
                pair = [x.strip().upper() for x in part[5:].split("-")]
                if len(pair) != 2 or not all(x in ("L1", "L2", "L3") for x in pair):
                    raise ValueError(f"meter fault {part!r}: swap two of L1, L2, L3 (swap:L1-L2)")
                a, b = (int(x[1]) - 1 for x in pair)
                phases = list(phases or (0, 1, 2))
                phases[a], phases[b] = phases[b], phases[a]
            else:
                raise ValueError(f"unknown meter fault {part!r} (swap:L1-L2, invert, ct:RATIO)")
        return cls(tuple(phases) if phases is not None else None, inverted, ct)


_NO_FAULT = MeterFault()


def check_meter_faults(site: Site, faults: Mapping[str, MeterFault]) -> None:
    """ValueError unless every fault names a circuit meter of the site (a PV inverter has no CTs to get wrong)."""
    for mid in faults:
        if mid not in site.meters:
            what = "a PV inverter (role = \"pv\")" if mid in site.pv_meters else "not a meter of the site"
            raise ValueError(f"meter fault on {mid!r}: {what}; faults apply to circuit meters")


# -- physics ------------------------------------------------------------------------------------
def charger_line_a(site: Site, cfg: ChargerConfig, sim: SimCharger | None) -> tuple[float, ...]:
    """What a charger really draws from the site, per site phase (A)."""
    P = site.service.phases
    out = [0.0] * P
    if sim is None:
        return tuple(out)
    if cfg.kind == "dc":
        w = sum(sim.draw_w(c) for c in range(1, cfg.connectors + 1))
        a = electrical.dc_line_current_a(site.service, cfg, w)
        for p in cfg.line_phases:
            out[p] = a
        return tuple(out)
    for c in range(1, cfg.connectors + 1):
        d = sim.draw_a(c)
        if len(cfg.line_phases) == 2:  # line-to-line: one current in two lines
            m = max(d) if d else 0.0
            for p in cfg.line_phases:
                out[p] += m
        else:
            for i, p in enumerate(cfg.phase_map):
                if i < len(d):
                    out[p] += d[i]
    return tuple(out)


def meter_values(m: MeterConfig, site_cur: Sequence[float], fault: MeterFault | None = None) -> tuple[float, ...]:
    """What meter ``m`` shows for its circuit's current per site phase: its own phase i measures site phase
    phase_map[i]; CT direction and ratio undone; three values. A wiring ``fault``, if any, is what the meter
    really sees instead (its inputs on other phases, its CTs turned round, another CT ratio)."""
    f = fault or _NO_FAULT
    sign = (-1.0 if m.invert else 1.0) * (-1.0 if f.inverted else 1.0)
    pm = f.phases[: len(m.phase_map)] if f.phases is not None else m.phase_map
    vals = [site_cur[p] * sign / (m.ct_ratio * f.ct_factor) if p < len(site_cur) else 0.0 for p in pm]
    while len(vals) < 3:
        vals.append(0.0)
    return tuple(vals)


def subtrees(site: Site) -> dict[str, set[str]]:
    """Every circuit's subtree (itself included)."""
    return {cid: {k for k in site.circuits if cid in site.path_to_root[k]} for cid in site.circuits}


# -- meters -------------------------------------------------------------------------------------
class MeterSet:
    """A simulated meter for every polled meter of a site (the circuit meters and the role = "pv" inverters):
    Modbus TCP on loopback, or RTU on a socat pty pair per RS-485 device (several device ids on one bus) where
    the config says rtu and socat is there. ``source_of(meter_id)`` gives each meter's per-phase currents (its
    own phases, as it reads them; for a PV inverter the current it feeds in)."""

    def __init__(self, site: Site, source_of: Callable[[str], Callable[[float], tuple[float, ...]]],
                 *, rtu: bool = True) -> None:
        self.site = site
        self.source_of = source_of
        self.use_rtu = rtu and shutil.which("socat") is not None
        self.meters: dict[str, MeterSimulator] = {}
        self.ports: dict[str, int] = {}  # meter id -> TCP port
        self.devices: dict[str, str] = {}  # configured device -> the client end of its pty pair
        self._buses: list[RtuBus] = []
        self._socats: list[SocatPair] = []

    async def start(self) -> None:
        by_device: dict[str, RtuBus] = {}
        for mid, m in self.site.polled_meters.items():
            sim = MeterSimulator(m.map, device_id=m.device_id, phases=3, source=self.source_of(mid),
                                 voltage_v=electrical.line_to_neutral_v(self.site.service), seed=hash(mid) & 0xFFFF,
                                 power_factor=1.0 if m.role == "pv" else 0.98)
            self.meters[mid] = sim
            if m.transport == "rtu" and self.use_rtu:
                bus = by_device.get(m.device)
                if bus is None:
                    pair = SocatPair()
                    a, b = await pair.start()
                    self._socats.append(pair)
                    bus = RtuBus(a, baud_rate=m.baud_rate, parity=m.parity, stop_bits=m.stop_bits)
                    by_device[m.device] = bus
                    self._buses.append(bus)
                    self.devices[m.device] = b
                bus.add(sim)
            else:
                self.ports[mid] = await sim.start_tcp("127.0.0.1", 0)
        for bus in self._buses:
            await bus.start()

    @property
    def buses(self) -> tuple[RtuBus, ...]:
        return tuple(self._buses)

    async def stop(self) -> None:
        for bus in self._buses:
            with contextlib.suppress(Exception):
                await bus.stop()
        for sim in self.meters.values():
            with contextlib.suppress(Exception):
                await sim.stop()
        for pair in self._socats:
            await pair.stop()
        self._buses.clear()
        self._socats.clear()


# -- configs and chargers -----------------------------------------------------------------------
def pointed_config(raw: Mapping[str, Any], *, meter_ports: Mapping[str, int], meter_devices: Mapping[str, str],
                   cms_port: int, state_dir: str, ocpp_port: int = 0,
                   extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The site config ``raw``, pointed at the simulators (loopback meters, the simulated CMS, no TLS)."""
    d = copy.deepcopy(dict(raw))
    d.setdefault("site", {})["state_dir"] = state_dir
    for m in d.get("meters", []):
        mid = m["id"]
        if mid in meter_ports:
            for k in ("device", "baud_rate", "parity", "stop_bits", "bus_gap_s"):
                m.pop(k, None)
            m.update(transport="tcp", host="127.0.0.1", port=meter_ports[mid])
        else:
            m["device"] = meter_devices[m["device"]]
    ocpp = d.setdefault("ocpp", {})
    for k in list(ocpp):
        if k.startswith(("tls_", "server_", "client_", "cms_ca", "cms_client")):
            ocpp.pop(k)
    ocpp.update(listen_host="127.0.0.1", listen_port=ocpp_port, cms_url=f"ws://127.0.0.1:{cms_port}",
                cms_security_profile=1)
    for ch in d.get("chargers", []):
        o = ch.get("ocpp")
        if o:
            for k in ("cms_url", "cms_security_profile"):
                o.pop(k, None)
            if o.get("security_profile", 1) > 1:
                o["security_profile"] = 1
    d.pop("mqtt", None)
    for k, v in (extra or {}).items():
        if isinstance(v, dict):
            d.setdefault(k, {}).update(v)
        else:
            d[k] = v
    return d


def make_charger(site: Site, cfg: ChargerConfig, ocpp_port: int, *, clock: Callable[[], float] = time.time,
                 meter_interval_s: float = 5.0, **overrides: Any) -> SimCharger:
    """The simulated charger of ``cfg``, connecting to the gateway on ``ocpp_port``."""
    kw: dict[str, Any] = dict(
        version=cfg.ocpp_version,
        kind=cfg.kind,
        phases=cfg.phases,
        connectors=cfg.connectors,
        url=f"ws://127.0.0.1:{ocpp_port}",
        clock=clock,
        voltage_v=electrical.load_voltage_v(site.service, cfg.line_phases),
        password=cfg.ocpp.password,
        meter_interval_s=meter_interval_s,
    )
    if cfg.kind == "ac":
        kw.update(max_a=cfg.max_limit, min_a=cfg.min_limit)
    else:
        kw.update(max_w=cfg.max_limit)
    kw.update(overrides)
    return SimCharger(cfg.id, **kw)


class SiteSim:
    """Meters, chargers and the CMS of one site in this process (the demo, the daemon tests)."""

    def __init__(
        self,
        raw: Mapping[str, Any],
        *,
        base_loads: Mapping[str, BaseLoad] | None = None,
        clock: Callable[[], float] = time.time,
        rtu: bool = True,
        meter_interval_s: float = 5.0,
        ev_response_s: float | None = None,
        pv_sources: Mapping[str, BaseLoad] | None = None,
        meter_faults: Mapping[str, MeterFault] | None = None,
    ) -> None:
        self.raw = copy.deepcopy(dict(raw))
        self.site: Site = site_from_dict(self.raw)
        self.clock = clock
        self.base_loads: dict[str, BaseLoad] = dict(base_loads or {})
        # role = "pv" meters: clock time -> the amperes the inverter feeds in on each of its measured phases
        self.pv_sources: dict[str, BaseLoad] = dict(pv_sources or {})
        self.meter_interval_s = meter_interval_s
        self.ev_response_s = ev_response_s
        self.meter_faults: dict[str, MeterFault] = dict(meter_faults or {})
        check_meter_faults(self.site, self.meter_faults)
        self.cms = SimCms(clock=clock)
        self.cms_port = 0
        self._meters = MeterSet(self.site, self._meter_source, rtu=rtu)
        self.use_rtu = self._meters.use_rtu
        self.meters = self._meters.meters
        self.meter_ports = self._meters.ports
        self.meter_devices = self._meters.devices
        self.chargers: dict[str, SimCharger] = {}
        self._charger_tasks: list[asyncio.Task[None]] = []
        self.state_dir = tempfile.mkdtemp(prefix="ems-sim-state-")
        self._under = subtrees(self.site)

    # -- physics ------------------------------------------------------------------------------
    def charger_line_a(self, cfg: ChargerConfig) -> tuple[float, ...]:
        """What a charger really draws from the site, per site phase (A)."""
        return charger_line_a(self.site, cfg, self.chargers.get(cfg.id))

    def base_load(self, circuit: str, t: float | None = None) -> tuple[float, ...]:
        P = self.site.service.phases
        f = self.base_loads.get(circuit)
        if f is None:
            return (0.0,) * P
        return tuple(f(self.clock() if t is None else t))[:P]

    def circuit_current(self, circuit: str) -> tuple[float, ...]:
        P = self.site.service.phases
        t = self.clock()
        total = [0.0] * P
        for c in self._under[circuit]:
            for p, a in enumerate(self.base_load(c, t)):
                total[p] += a
        for chid in self.site.chargers_under[circuit]:
            for p, a in enumerate(self.charger_line_a(self.site.chargers[chid])):
                total[p] += a
        return tuple(total)

    def _meter_source(self, meter_id: str) -> Callable[[float], tuple[float, ...]]:
        m = self.site.polled_meters[meter_id]
        if m.role == "pv":  # an inverter: what its source feeds in (none without one)
            pv = self.pv_sources.get(meter_id)
            if pv is None:
                return lambda _t: (0.0, 0.0, 0.0)
            return lambda _t: tuple(pv(self.clock()))
        fault = self.meter_faults.get(meter_id)

        def source(_t: float) -> tuple[float, ...]:
            return meter_values(m, self.circuit_current(m.circuit), fault)

        return source

    # -- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.cms_port = await self.cms.start()
        await self._meters.start()

    def gateway_config(self, *, ocpp_port: int = 0, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The site config, pointed at the simulators."""
        return pointed_config(self.raw, meter_ports=self.meter_ports, meter_devices=self.meter_devices,
                              cms_port=self.cms_port, state_dir=self.state_dir, ocpp_port=ocpp_port, extra=extra)

    def start_chargers(self, ocpp_port: int, **overrides: Any) -> None:
        for cfg in self.site.chargers.values():
            sim = make_charger(self.site, cfg, ocpp_port, clock=self.clock, meter_interval_s=self.meter_interval_s,
                               **overrides)
            self.chargers[cfg.id] = sim
            self._charger_tasks.append(asyncio.get_running_loop().create_task(sim.run(), name=f"sim-{cfg.id}"))

    async def stop(self) -> None:
        for t in self._charger_tasks:
            t.cancel()
        for t in self._charger_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._charger_tasks.clear()
        await self._meters.stop()
        with contextlib.suppress(Exception):
            await self.cms.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)


def line_a_nominal(site: Site, cfg: ChargerConfig, native: float) -> float:
    """A native limit (A per phase or W) as line A per loaded phase at the nominal voltage (the sims' physics)."""
    if cfg.kind == "ac":
        return native
    return electrical.dc_line_current_a(site.service, cfg, native)
