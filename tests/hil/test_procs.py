"""The rig's process split: a meter process (spawned, as in a run) reads the chargers' draws a worker would
publish into the shared table, plus the scenario's base load, through the meter's phase map; it serves the
PV inverter of a scenario's [pv] and gives a meter the wiring fault of the scenario's [meter_faults]."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sitesim.site import MeterFault

from gateway import electrical
from gateway.config import site_from_dict
from gateway.errors import ConfigError
from hil.pv import pv_amps
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


SOLAR = Path(__file__).resolve().parents[2] / "hil" / "scenarios" / "sites" / "garage-solar.toml"


def _solar_scenario(**extra: Any) -> Any:
    return scenario_from_dict({
        "scenario": {"name": "procs-pv", "site_config": str(SOLAR), "duration_s": 600, "time_scale": 60},
        "pv": {"meter": "pv-roof", "points": [[0, 5.0]], "ramp": False},
        "base_loads": [{"circuit": "service", "points": [[0, [7, 3]]]}],
        **extra,
    })


def test_the_meter_process_serves_the_pv_inverter_and_a_miswired_service_meter(tmp_path: Path) -> None:
    sc = _solar_scenario(meter_faults={"meter-panel": "swap:L1-L2,invert"})
    site = site_from_dict(sc.site)
    rows = {chid: i for i, chid in enumerate(site.chargers)}
    table = DrawTable(len(rows), site.service.phases)
    table.draws[rows["garage-1"]] = (16.0, 4.0)
    spec = MeterSpec(raw=sc.site, rows=rows, base_loads=sc.base_loads, seed=1, time_scale=60, rtu=False, nice=0,
                     pv=sc.pv, meter_faults=sc.meter_faults)

    async def run() -> tuple[dict[str, tuple[float, ...]], dict[str, Any]]:
        child = Child("meter-process", meter_process_main, spec, table, tmp_path / "meters.log")
        child.start()
        try:
            info = await child.call("start")
            return await child.call("read"), info
        finally:
            await child.stop()

    read, info = asyncio.run(run())
    assert set(info["ports"]) == {"meter-panel", "pv-roof"}  # the PV inverter is polled too
    pv_a = pv_amps(5.0, electrical.line_to_neutral_v(site.service), 2)
    assert read["pv-roof"] == pytest.approx((pv_a, pv_a, 0.0))
    # the site: 7 + 16 A and 3 + 4 A less the PV on each leg; the meter's inputs swapped and its CTs turned round
    l1, l2 = 7 + 16 - pv_a, 3 + 4 - pv_a
    assert read["meter-panel"] == pytest.approx((-l2, -l1, 0.0))


@pytest.mark.parametrize(("faults", "message"), [
    ({"pv-roof": "invert"}, "PV inverter"),
    ({"nowhere": "invert"}, "unknown meter"),
    ({"meter-panel": "swap:L1-L4"}, "swap two of L1, L2, L3"),
    ({"meter-panel": "ct:0"}, "must be > 0"),
    ({"meter-panel": "upside-down"}, "unknown meter fault"),
])
def test_meter_faults_in_a_scenario_are_checked(faults: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        _solar_scenario(meter_faults=faults)
    assert e.value.path.startswith("meter_faults.") and message in str(e.value)


def test_a_meter_fault_parses_into_what_the_meter_sees() -> None:
    sc = _solar_scenario(meter_faults={"meter-panel": "swap:L1-L2, ct:2"})
    assert sc.meter_faults == {"meter-panel": MeterFault(phases=(1, 0, 2), inverted=False, ct_factor=2.0)}
    assert _solar_scenario().meter_faults == {}
