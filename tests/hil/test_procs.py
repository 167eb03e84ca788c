"""The rig's process split: a meter process (spawned, as in a run) reads the chargers' draws a worker would
publish into the shared table, plus the scenario's base load, through the meter's phase map."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.config import site_from_dict
from hil.rig.procs import Child, DrawTable, MeterSpec, meter_process_main, worker_count
from hil.scenario import scenario_from_dict

GARAGE = Path(__file__).resolve().parents[2] / "etc" / "examples" / "garage-4xL2.toml"


def test_a_meter_in_its_own_process_reads_the_draws_in_the_shared_table(tmp_path: Path) -> None:
    sc = scenario_from_dict({
        "scenario": {"name": "procs", "site_config": str(GARAGE), "duration_s": 600, "time_scale": 60},
        "base_loads": [{"circuit": "service", "points": [[0, [7, 3]]]}],
        "arrivals": [{"at_s": 0, "charger": "garage-1", "departure_s": 600}],
    })
    site = site_from_dict(sc.site)
    rows = {chid: i for i, chid in enumerate(site.chargers)}
    table = DrawTable(len(rows), site.service.phases)
    table.draws[rows["garage-1"]] = (16.0, 16.0)  # Level 2 across both legs
    table.draws[rows["garage-3"]] = (9.5, 9.5)
    spec = MeterSpec(raw=sc.site, rows=rows, base_loads=sc.base_loads, seed=1, time_scale=60, rtu=False, nice=0)

    async def run() -> tuple[dict[str, tuple[float, ...]], dict[str, tuple[float, ...]], dict[str, Any]]:
        child = Child("meter-process", meter_process_main, spec, table, tmp_path / "meters.log")
        child.start()
        try:
            info = await child.call("start")
            first = await child.call("read")
            table.draws[rows["garage-3"]] = (0.0, 0.0)  # the EV on garage-3 paused
            second = await child.call("read")
            return first, second, info
        finally:
            await child.stop()

    first, second, info = asyncio.run(run())
    assert set(info["ports"]) == {"meter-panel"}
    # the meter's elements 1 and 2 measure the legs L1 and L2; its third reads nothing
    assert first["meter-panel"] == pytest.approx((7 + 16 + 9.5, 3 + 16 + 9.5, 0.0))
    assert second["meter-panel"] == pytest.approx((7 + 16, 3 + 16, 0.0))
    assert not table.online.any()  # the meter process writes nothing into the table


def test_a_few_workers_with_many_chargers_each() -> None:
    assert worker_count(4) == 1
    assert worker_count(200) == 4 and worker_count(1000) == 4
    assert np.all([1 <= worker_count(n) <= 4 for n in (1, 20, 61, 5000)])
