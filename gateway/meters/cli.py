"""``ems-gateway read-meter --config FILE METER_ID``: one live reading, for commissioning."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import time
from typing import Any

from gateway.config import PHASES, load_site
from gateway.errors import MeterError
from gateway.meters.driver import MeterDriver
from gateway.meters.regmap import load_map
from gateway.meters.service import bounds_for, ensure_connected, make_client
from gateway.model import MeterReading

EXIT_INVALID = 1
EXIT_NO_ANSWER = 3


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "read-meter",
        help="read one meter once and print the reading with its validity",
        description="Read one configured meter once (with the configured retries) and print the reading "
        "mapped to site phases, with its validity. Exit 0: valid; 1: read but invalid; 3: no answer; "
        "2: configuration error.",
    )
    p.add_argument("--config", required=True, help="the site configuration (TOML)")
    p.add_argument("meter_id", metavar="METER_ID")
    p.add_argument("--count", type=int, default=1, help="read this many times, poll_interval_s apart")
    p.set_defaults(func=run)


def render(meter_id: str, r: MeterReading, *, phases: int = 3, extra: str = "") -> str:
    names = PHASES[:phases]
    lines = [f"meter {meter_id}: {'VALID' if r.valid else 'INVALID: ' + r.reason}{extra}"]
    lines.append("  current   " + "  ".join(f"{n} {a:9.2f} A" for n, a in zip(names, r.current_a, strict=False)))
    if r.voltage_v is not None:
        lines.append("  voltage   " + "  ".join(f"{n} {v:9.2f} V" for n, v in zip(names, r.voltage_v, strict=False)))
    if r.power_w is not None:
        lines.append("  power     " + "  ".join(f"{n} {w:9.0f} W" for n, w in zip(names, r.power_w, strict=False)))
    if r.total_power_w is not None:
        lines.append(f"  total power   {r.total_power_w:.0f} W")
    if r.frequency_hz is not None:
        lines.append(f"  frequency     {r.frequency_hz:.3f} Hz")
    if r.energy_import_wh is not None and not math.isnan(r.energy_import_wh):
        lines.append(f"  energy import {r.energy_import_wh / 1000:.3f} kWh")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    site = load_site(args.config)
    if args.meter_id not in site.polled_meters:
        known = ", ".join(site.polled_meters) or "none"
        print(f"ems-gateway: no meter {args.meter_id!r} in {args.config} (meters: {known})")
        return 2
    return asyncio.run(_read(site, args.meter_id, max(1, args.count)))


async def _read(site: Any, meter_id: str, count: int) -> int:
    cfg = site.polled_meters[meter_id]
    regmap = load_map(cfg.map)
    where = f"tcp {cfg.host}:{cfg.port}" if cfg.transport == "tcp" else (
        f"rtu {cfg.device} {cfg.baud_rate} 8{cfg.parity}{cfg.stop_bits}"
    )
    print(f"meter {meter_id}: {regmap.title} ({regmap.name}), {where}, device id {cfg.device_id}, "
          f"circuit {cfg.circuit}, CT ratio {cfg.ct_ratio:g}{', inverted' if cfg.invert else ''}, "
          f"phases {'/'.join(PHASES[p] for p in cfg.phase_map)}")
    client = make_client(cfg)
    code = 0
    try:
        driver = MeterDriver(cfg, regmap, client, bounds_for(site, cfg), site_phases=site.service.phases)
        for i in range(count):
            if i:
                await asyncio.sleep(cfg.poll_interval_s)
            t0 = time.monotonic()
            try:
                await ensure_connected(client)
                reading = await driver.poll()
            except MeterError as exc:
                print(f"meter {meter_id}: NO ANSWER: {exc}")
                code = EXIT_NO_ANSWER
                continue
            extra = f" (read in {1000 * (time.monotonic() - t0):.0f} ms"
            extra += f", SunSpec model {driver.sunspec_model})" if driver.sunspec_model else ")"
            print(render(meter_id, reading, phases=site.service.phases, extra=extra))
            code = 0 if reading.valid else EXIT_INVALID
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            close()
    return code


__all__ = ["add_parser", "render", "run"]
