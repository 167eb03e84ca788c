"""The budget over MQTT (real mosquitto): the demand window's figures on ``budget``, its events (projected to
exceed, closed above target) on ``event/...``, the tariff on ``tariff`` with the schedule ahead."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.budget.service import BudgetService
from gateway.config import Site, site_from_text
from gateway.model import MeterReading
from gateway.telemetry.mqtt import Telemetry
from tests.mosquitto import Mosquitto, MosquittoSub
from tests.telemetry.conftest import SITE_TOML, FakeClock, async_wait, mqtt_cfg, tick
from tests.telemetry.test_mqtt_link import running

ROOT = "ems/t-site/"
BUDGET = """
[budget]
timezone = "Europe/Berlin"
[budget.demand]
target_kw = 40
[budget.tariff]
[[budget.tariff.periods]]
name = "day"
start = "07:00"
end = "22:00"
price_per_kwh = 0.32
[[budget.tariff.periods]]
name = "night"
start = "22:00"
end = "07:00"
price_per_kwh = 0.18
cap_kw = 60
"""


async def test_demand_figures_events_and_tariff_published(mosquitto: Mosquitto, tmp_path: Path) -> None:
    site: Site = site_from_text(SITE_TOML + BUDGET)
    start = datetime(2026, 6, 1, 21, 45, tzinfo=ZoneInfo("Europe/Berlin")).timestamp()
    clock, wall = FakeClock(100.0), FakeClock(start)
    budget = BudgetService(site, clock=clock, wall_clock=wall, state_dir=tmp_path)
    sub = MosquittoSub(mosquitto, [ROOT + "#"]).start()
    tel = Telemetry(mqtt_cfg(mosquitto), site, clock=clock, wall_clock=wall, state_dir=tmp_path, budget=budget)
    try:
        async with running(tel):
            assert await async_wait(lambda: tel.connected)
            reg = 0.0
            for _ in range(15 * 60 + 5):  # one interval at 55 kW against 40 kW, into the next (the night)
                clock.t += 1
                wall.t += 1
                reg += 55_000 / 3600
                rd = MeterReading(current_a=(80.0,) * 3, at=clock.t, total_power_w=55_000.0, energy_import_wh=reg)
                snap, alloc = tick(clock.t, meter=rd)
                budget.tick(snap.meters, snap.chargers, clock.t)
                tel.publish_tick(snap, alloc)
            assert await sub.until(lambda _m: bool(sub.on(ROOT + "event/demand_interval_over")), 15)
            over = json.loads(sub.on(ROOT + "event/demand_interval_over")[0])
            assert over["interval_start"] == "2026-06-01T19:45:00Z" and over["target_kw"] == 40.0
            assert 54.0 < over["average_kw"] < 56.0 and over["complete"] is True
            projected = [json.loads(p) for p in sub.on(ROOT + "event/demand_projected_over")]
            assert len(projected) == 1 and projected[0]["projected_kw"] > 40
            assert await sub.until(lambda _m: "demand" in json.loads((sub.on(ROOT + "budget") or [b"{}"])[-1]), 15)
            b = json.loads(sub.on(ROOT + "budget")[-1])
            assert b["demand"]["month_peak_kw"] > 54 and b["demand"]["target_kw"] == 40.0
            assert b["demand"]["interval_start"] == "2026-06-01T20:00:00.000Z"
            assert b["tariff"]["period"] == "night" and b["tariff"]["price_per_kwh"] == 0.18
            assert set(b["caps"]) == {"demand-window", "tariff:night"}
            # the tariff topic followed the change of period at 22:00 local, with the schedule ahead
            assert await sub.until(lambda _m: json.loads((sub.on(ROOT + "tariff") or [b"{}"])[-1]).get("period")
                                   == "night", 15)
            t = json.loads(sub.on(ROOT + "tariff")[-1])
            assert t["until"] == "2026-06-02T05:00:00Z" and t["schedule"][1]["period"] == "day"
            assert t["schedule"][1]["price_per_kwh"] == 0.32
    finally:
        sub.stop()
        budget.close()
