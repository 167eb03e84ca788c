"""A whole simulated site around a site config, on loopback.

`SiteSim` takes the raw config of a site (the TOML as a dict) and stands up what a real site
would have around the gateway: a simulated meter for every configured meter (Modbus TCP, or RTU
on a socat pty pair where the config says rtu), a simulated charger for every configured
charger (OCPP 1.6J or 2.0.1 as configured, AC or DC), a simulated cloud CMS, and a base
(non-EV) load placed on circuits. Every meter reads the current that really flows through its
circuit: the base loads in its subtree plus the line currents of the chargers beneath it.

`gateway_config()` returns the same config rewritten to point the gateway at the simulators
(loopback meters, an ephemeral OCPP port, the simulated CMS, a temporary state directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway import electrical
from gateway.config import ChargerConfig, Site, site_from_dict
from hil.meter_sim import MeterSimulator, RtuBus, SocatPair
from hil.sim.charger import SimCharger
from hil.sim.cms import SimCms

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
            elif part.startswith("swap:"):
                a, b = (int(x.strip().upper().lstrip("L")) - 1 for x in part[5:].split("-"))
                phases = [0, 1, 2]
                phases[a], phases[b] = phases[b], phases[a]
            else:
                raise ValueError(f"unknown meter fault {part!r} (swap:L1-L2, invert, ct:RATIO)")
        return cls(tuple(phases) if phases is not None else None, inverted, ct)


_NO_FAULT = MeterFault()


class SiteSim:
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
        self.use_rtu = rtu and shutil.which("socat") is not None
        self.base_loads: dict[str, BaseLoad] = dict(base_loads or {})
        # role = "pv" meters: clock time -> the amperes the inverter feeds in on each of its measured phases
        self.pv_sources: dict[str, BaseLoad] = dict(pv_sources or {})
        self.meter_interval_s = meter_interval_s
        self.ev_response_s = ev_response_s
        self.meter_faults: dict[str, MeterFault] = dict(meter_faults or {})
        self.cms = SimCms(clock=clock)
        self.cms_port = 0
        self.meters: dict[str, MeterSimulator] = {}
        self.meter_ports: dict[str, int] = {}
        self.meter_devices: dict[str, str] = {}
        self._buses: list[RtuBus] = []
        self._socats: list[SocatPair] = []
        self.chargers: dict[str, SimCharger] = {}
        self._charger_tasks: list[asyncio.Task[None]] = []
        self.state_dir = tempfile.mkdtemp(prefix="ems-sim-state-")
        # the subtree of every circuit, for the currents the meters read
        self._under: dict[str, set[str]] = {
            cid: {k for k in self.site.circuits if cid in self.site.path_to_root[k]} for cid in self.site.circuits
        }

    # -- physics ------------------------------------------------------------------------------
    def charger_line_a(self, cfg: ChargerConfig) -> tuple[float, ...]:
        """What a charger really draws from the site, per site phase (A)."""
        P = self.site.service.phases
        out = [0.0] * P
        sim = self.chargers.get(cfg.id)
        if sim is None:
            return tuple(out)
        if cfg.kind == "dc":
            w = sum(sim.draw_w(c) for c in range(1, cfg.connectors + 1))
            a = electrical.dc_line_current_a(self.site.service, cfg, w)
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
        m = self.site.meters[meter_id]

        def source(_t: float) -> tuple[float, ...]:
            site_cur = self.circuit_current(m.circuit)
            # the meter's own phase i measures site phase phase_map[i]; CT direction and ratio undone
            # (a wiring fault, if any, is what the meter really sees instead)
            fault = self.meter_faults.get(meter_id, _NO_FAULT)
            sign = (-1.0 if m.invert else 1.0) * (-1.0 if fault.inverted else 1.0)
            pm = fault.phases[: len(m.phase_map)] if fault.phases is not None else m.phase_map
            vals = [site_cur[p] * sign / (m.ct_ratio * fault.ct_factor) if p < len(site_cur) else 0.0 for p in pm]
            while len(vals) < 3:
                vals.append(0.0)
            return tuple(vals)

        return source

    # -- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.cms_port = await self.cms.start()
        by_device: dict[str, RtuBus] = {}
        for mid, m in self.site.polled_meters.items():
            pv = self.pv_sources.get(mid) if m.role == "pv" else None
            source = self._meter_source(mid) if m.role != "pv" else (
                (lambda _t, f=pv: f(self.clock())) if pv is not None else (lambda _t: (0.0, 0.0, 0.0)))
            sim = MeterSimulator(m.map, device_id=m.device_id, phases=3, source=source,
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
                    self.meter_devices[m.device] = b
                bus.add(sim)
            else:
                self.meter_ports[mid] = await sim.start_tcp("127.0.0.1", 0)
        for bus in self._buses:
            await bus.start()

    def gateway_config(self, *, ocpp_port: int = 0, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The site config, pointed at the simulators."""
        d = copy.deepcopy(self.raw)
        d.setdefault("site", {})["state_dir"] = self.state_dir
        for m in d.get("meters", []):
            mid = m["id"]
            if mid in self.meter_ports:
                for k in ("device", "baud_rate", "parity", "stop_bits", "bus_gap_s"):
                    m.pop(k, None)
                m.update(transport="tcp", host="127.0.0.1", port=self.meter_ports[mid])
            else:
                m["device"] = self.meter_devices[m["device"]]
        ocpp = d.setdefault("ocpp", {})
        for k in list(ocpp):
            if k.startswith(("tls_", "server_", "client_", "cms_ca", "cms_client")):
                ocpp.pop(k)
        ocpp.update(listen_host="127.0.0.1", listen_port=ocpp_port, cms_url=f"ws://127.0.0.1:{self.cms_port}",
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

    def start_chargers(self, ocpp_port: int, **overrides: Any) -> None:
        for cfg in self.site.chargers.values():
            kw: dict[str, Any] = dict(
                version=cfg.ocpp_version,
                kind=cfg.kind,
                phases=cfg.phases,
                connectors=cfg.connectors,
                url=f"ws://127.0.0.1:{ocpp_port}",
                clock=self.clock,
                voltage_v=electrical.load_voltage_v(self.site.service, cfg.line_phases),
                password=cfg.ocpp.password,
                meter_interval_s=self.meter_interval_s,
            )
            if cfg.kind == "ac":
                kw.update(max_a=cfg.max_limit, min_a=cfg.min_limit)
            else:
                kw.update(max_w=cfg.max_limit)
            kw.update(overrides)
            sim = SimCharger(cfg.id, **kw)
            self.chargers[cfg.id] = sim
            self._charger_tasks.append(asyncio.get_running_loop().create_task(sim.run(), name=f"sim-{cfg.id}"))

    async def stop(self) -> None:
        for t in self._charger_tasks:
            t.cancel()
        for t in self._charger_tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._charger_tasks.clear()
        for bus in self._buses:
            with contextlib.suppress(Exception):
                await bus.stop()
        for sim in self.meters.values():
            with contextlib.suppress(Exception):
                await sim.stop()
        for pair in self._socats:
            await pair.stop()
        with contextlib.suppress(Exception):
            await self.cms.stop()
        shutil.rmtree(self.state_dir, ignore_errors=True)
