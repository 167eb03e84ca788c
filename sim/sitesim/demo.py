"""``ems-gateway demo``: the reference site, simulated on loopback, with the real gateway in the middle.

Simulated meters (Modbus TCP, and RTU over a socat pty pair where the config says rtu), 20
simulated DC chargers (OCPP 1.6J and 2.0.1 mixed) whose EVs arrive, ramp up, taper and leave, a
building load that steps, and a simulated cloud CMS. The gateway runs against them exactly as it
would on site, and a one-screen view refreshed every second shows the site current per phase
against the limit and, per charger, its state, limit, draw and the allocator's reason.

The gateway's control socket is printed: ``ems-gateway commission --socket PATH`` runs against the demo.
With ``--web [PORT]`` the local web page and API are served on loopback (http://127.0.0.1:PORT/, default
port 8080) with a technician user whose password is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import secrets
import shutil
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

from gateway import logs
from gateway.config import PHASES, site_from_dict
from gateway.confkit import parse_toml, read_toml

REFERENCE = "reference-site.toml"


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run the simulated 20-stall reference site with the real gateway and a live view",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds (default: Ctrl-C)")
    p.add_argument("--config", help="another site config to simulate (default: the embedded reference site)")
    p.add_argument("--no-ui", action="store_true", help="print a summary line every 5 s instead of the live view")
    p.add_argument("--seed", type=int, default=1, help="random seed for EV arrivals")
    p.add_argument("--log-file", help="write the gateway's JSON log here (default: ems-gateway-demo.log in /tmp)")
    p.add_argument("--tcp-meters", action="store_true",
                   help="simulate the config's RTU meters over Modbus TCP too (without socat's pty pair)")
    p.add_argument("--web", nargs="?", type=int, const=8080, default=None, metavar="PORT",
                   help="serve the web page on 127.0.0.1:PORT (default 8080; 0: any free port)")
    p.set_defaults(func=run)


def reference_config() -> dict[str, Any]:
    text = resources.files("gateway").joinpath("data", REFERENCE).read_text(encoding="utf-8")
    return parse_toml(text, file=f"<embedded {REFERENCE}>")


def run(args: argparse.Namespace) -> int:
    raw = read_toml(args.config) if args.config else reference_config()
    site = site_from_dict(raw)  # refuse a bad config before starting anything
    rtu = sorted(mid for mid, m in site.polled_meters.items() if m.transport == "rtu")
    if rtu and not args.tcp_meters and shutil.which("socat") is None:
        many = len(rtu) > 1
        print(f"ems-gateway demo: the RTU meter{'s' if many else ''} {', '.join(rtu)} need{'' if many else 's'} "
              "socat (a pty pair stands in for the RS-485 line) and it is not installed: apt-get install socat, "
              "or run with --tcp-meters to simulate them over Modbus TCP", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(Demo(raw, seed=args.seed, ui=not args.no_ui and sys.stdout.isatty(),
                         log_file=args.log_file, web_port=args.web, rtu=not args.tcp_meters).run(args.duration))
    return 0


class Demo:
    def __init__(self, raw: dict[str, Any], *, seed: int = 1, ui: bool = True, log_file: str | None = None,
                 web_port: int | None = None, rtu: bool = True) -> None:
        from sitesim.site import SiteSim

        self.rng = random.Random(seed)
        site = site_from_dict(raw)
        self.t0 = time.time()
        P = site.service.phases
        # the building's load sits on a panel of its own when the site has one, else on the service
        bldg = next((c for c in site.circuits.values() if "bldg" in c.id or "building" in c.id), None)
        self.building = bldg.id if bldg is not None else site.root
        base = 0.15 * site.service.limit_a
        step = 0.2 * site.service.limit_a
        t0, rng = self.t0, random.Random(seed + 1)

        def building(t: float) -> tuple[float, ...]:
            # steps up by 20 % of the service limit 30 s in, for 30 s of every 90 s
            k = (t - t0) % 90.0
            level = base + (step if 30.0 <= k < 60.0 else 0.0)
            return tuple(level * (1.0 + 0.02 * rng.uniform(-1, 1)) for _ in range(P))

        self.sim = SiteSim(raw, base_loads={self.building: building}, meter_interval_s=2.0, rtu=rtu)
        self.ui = ui
        self.log_file = log_file
        self.web_port = web_port
        self.notes: list[str] = []  # the control socket, the web page: shown under the live view too
        self.app: Any = None

    async def run(self, duration: float | None) -> None:
        # the gateway's and the simulators' logs go to a file: the screen is the live view
        log_path = Path(self.log_file or Path(tempfile.gettempdir()) / "ems-gateway-demo.log")
        with log_path.open("w", buffering=1, encoding="utf-8") as stream, logs.configured(  # noqa: ASYNC230
            "info", "json", stream
        ):
            await self.sim.start()
            try:
                await self._run(duration, log_path)
            finally:
                await self.sim.stop()

    async def _run(self, duration: float | None, log_path: Path) -> None:
        from gateway import ctl
        from gateway.app import App
        from gateway.systemd import Notifier

        sim = self.sim
        password = secrets.token_urlsafe(9)
        extra = None
        if self.web_port is not None:
            users = Path(sim.state_dir) / "web-users"
            extra = {"web": {"enabled": True, "listen_host": "127.0.0.1", "port": self.web_port,
                             "users_file": str(users)}}
            _write_demo_user(users, password)
        site = site_from_dict(sim.gateway_config(extra=extra))
        self.app = app = App(site, notifier=Notifier(address=""))
        app_task = asyncio.create_task(app.run(), name="gateway")
        await app.ocpp.wait_started()
        sim.start_chargers(app.ocpp.port)
        arrivals = asyncio.create_task(self._arrivals(), name="arrivals")
        print(f"ems-gateway demo: {site.name}; gateway on ws://127.0.0.1:{app.ocpp.port}, "
              f"CMS on ws://127.0.0.1:{sim.cms_port}; log {log_path}", flush=True)
        self.notes.append(self._meters_note())
        sock = ctl.socket_path(site.state_dir)
        self.notes.append(f"control socket: {sock} (try: ems-gateway commission --socket {sock} --verify)")
        if app.web is not None:
            self.notes.append(await self._web_note(app, password if self.web_port is not None else None))
        for note in self.notes:
            print(note, flush=True)
        deadline = None if duration is None else time.monotonic() + duration
        next_line = 0.0
        while not app_task.done():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if self.ui:
                sys.stdout.write("\x1b[H\x1b[2J" + self.render() + "\n")
                sys.stdout.flush()
            elif time.monotonic() >= next_line:
                print(self.summary_line(), flush=True)
                next_line = time.monotonic() + 5.0
            await asyncio.wait({app_task}, timeout=1.0)  # not wait_for: a cancel must never be swallowed
        arrivals.cancel()
        app.request_stop()
        with contextlib.suppress(Exception):
            await app_task
        print(self.summary_line(), flush=True)
        print(f"demo stopped: every charger was set to its fail-safe limit; log {log_path}", flush=True)

    def _meters_note(self) -> str:
        """How each meter is simulated: a meter the config reads over RTU is on a socat pty pair unless --tcp-meters."""
        sim = self.sim
        tcp = sorted(sim.meter_ports)
        rtu = sorted(mid for mid in sim.meters if mid not in sim.meter_ports)
        ttys = ", ".join(sorted(sim.meter_devices.values()))
        return (f"meters: Modbus TCP {', '.join(tcp) or '-'}; RTU {', '.join(rtu) or '-'}"
                + (f" (socat pty {ttys})" if ttys else ""))

    @staticmethod
    async def _web_note(app: Any, password: str | None) -> str:
        who = f" (log in as tech / {password}: a technician)" if password is not None else ""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await app.web.started.wait()
                scheme = "https" if app.web.cfg.tls else "http"
                return f"web page: {scheme}://{app.web.cfg.listen_host}:{app.web.port}/{who}"
        return f"web page: not listening on 127.0.0.1:{app.web.cfg.port} (in use?); see the log"

    async def _arrivals(self) -> None:
        from sitesim.ev import EvSpec

        sim, rng = self.sim, self.rng
        ids = list(sim.site.chargers)
        departures: dict[str, float] = {}
        first = True
        while True:
            now = time.time()
            for cid, at in list(departures.items()):
                if now >= at:
                    sim.chargers[cid].unplug()
                    del departures[cid]
            free = [c for c in ids if c not in departures and sim.chargers[c].online]
            n = (len(ids) * 3) // 5 if first else (1 if rng.random() < 0.6 else 0)
            if free and n:
                first = False
            for cid in rng.sample(free, min(n, len(free))):
                cfg = sim.site.chargers[cid]
                ev = EvSpec(
                    capacity_kwh=rng.uniform(60, 120),
                    soc_start=rng.uniform(0.1, 0.5),
                    soc_target=rng.uniform(0.8, 1.0),
                    max_dc_w=rng.choice([150_000.0, 250_000.0, 350_000.0, 500_000.0]),
                    max_ac_a=cfg.max_limit if cfg.kind == "ac" else 32.0,
                    response_delay_s=rng.uniform(2.0, 6.0),
                    id_tag=f"DEMO{rng.randrange(10_000):04d}",
                )
                sim.chargers[cid].plug_in(ev)
                departures[cid] = now + rng.uniform(60, 180)
            await asyncio.sleep(4.0)

    # -- the view -------------------------------------------------------------------------
    def summary_line(self) -> str:
        app = self.app
        alloc = app.control.allocation if app is not None else None
        if alloc is None:
            return "starting..."
        site = app.site
        root = alloc.circuits[site.root]
        real = self.sim.circuit_current(site.root)
        active = sum(1 for lim in alloc.limits.values() if lim.limit > 0)
        return (f"[{time.time() - self.t0:6.1f} s] {alloc.mode}: site {max(real):7.1f} A of "
                f"{root.limit_a:.0f} A (margin {site.circuits[site.root].margin_a:.0f} A), "
                f"{active} chargers with a limit")

    def render(self) -> str:
        app = self.app
        alloc = app.control.allocation if app is not None else None
        if alloc is None:
            return "ems-gateway demo: starting..."
        site = app.site
        root = alloc.circuits[site.root]
        real = self.sim.circuit_current(site.root)
        width = 40
        out = [f"ems-gateway demo: {site.name}   t = {time.time() - self.t0:5.0f} s   mode: {alloc.mode}   "
               "(Ctrl-C stops)", *(f"  {n}" for n in self.notes), ""]
        lim_a = root.limit_a
        for p, a in enumerate(real):
            fill = min(width, round(width * a / lim_a)) if lim_a > 0 else 0
            mark = round(width * (lim_a - site.circuits[site.root].margin_a) / lim_a)
            bar = "".join("#" if i < fill else ("|" if i == mark else ".") for i in range(width))
            out.append(f"  service {PHASES[p]} [{bar}] {a:7.1f} / {lim_a:.0f} A")
        bl = self.sim.base_load(self.building)
        out.append(f"  building load ({self.building}): {max(bl):.0f} A per phase;  "
                   f"tick: alloc {self._tick_ms('allocation_s'):.2f} ms, actuate {self._tick_ms('actuation_s'):.2f} ms")
        for cid, c in alloc.circuits.items():
            if cid == site.root:
                continue
            meas = f"{max(c.measured_a):7.1f} A measured" if c.measured_a else " " * 17
            out.append(
                f"  {cid:<12} limit {c.limit_a:6.0f} A  allocated {max(c.allocated_a):7.1f} A  {meas}  {c.state}"
            )
        out.append("")
        out.append(f"  {'charger':<8} {'ocpp':<6} {'state':<15} {'limit':>10} {'draw':>10}  reason")
        snap = app.control.snapshot
        for cid, lim in alloc.limits.items():
            cfg = site.chargers[cid]
            sim = self.sim.chargers.get(cid)
            state = snap.chargers[cid].state.value if snap is not None and cid in snap.chargers else "?"
            if sim is not None and not sim.online:
                state = "offline"
            if cfg.kind == "dc":
                limit = f"{lim.limit / 1000:7.1f} kW"
                draw = f"{(sim.draw_w() if sim else 0) / 1000:7.1f} kW"
            else:
                limit = f"{lim.limit:7.1f} A "
                d = sim.draw_a() if sim else ()
                draw = f"{(max(d) if d else 0.0):7.1f} A "
            out.append(f"  {cid:<8} {cfg.ocpp_version:<6} {state:<15} {limit:>10} {draw:>10}  {lim.reason}")
        return "\n".join(out)

    def _tick_ms(self, field: str) -> float:
        recs = list(self.app.control.records)[-10:] if self.app is not None else []
        vals = [getattr(r, field) * 1000 for r in recs if not math.isnan(getattr(r, field))]
        return sum(vals) / len(vals) if vals else 0.0


def _write_demo_user(path: Path, password: str) -> None:
    """The demo's web users file: one technician, ``tech``, with a password made up for this run."""
    from gateway.web.users import User, hash_password, save_users

    save_users(path, {"tech": User("tech", "technician", hash_password(password))})
