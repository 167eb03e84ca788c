"""A PV inverter configured like a meter (role = "pv"): read by the meter service, never a circuit's measurement."""

from __future__ import annotations

import asyncio

import pytest
from sitesim.meter import MeterSimulator

from gateway.errors import ConfigError
from gateway.meters.service import MeterService
from tests.meters.conftest import make_site, tcp_meter, wait_for


def test_a_pv_meter_is_not_its_circuits_measurement() -> None:
    site = make_site(tcp_meter("main", 5020), tcp_meter("pv", 5021, map_name="sunspec_inverter_int", role="pv"))
    assert set(site.meters) == {"main"} and set(site.pv_meters) == {"pv"}
    assert site.circuits["service"].meter == "main"
    assert set(site.polled_meters) == {"main", "pv"}
    # a PV inverter alone on a circuit leaves the circuit unmetered
    site = make_site(tcp_meter("pv", 5021, circuit="sub", map_name="sunspec_inverter_float", role="pv"))
    assert site.circuits["sub"].meter is None and site.meters == {}


def test_unknown_role_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"meters\[0\]\.role"):
        make_site(tcp_meter("pv", 5021, role="inverter"))


async def test_the_meter_service_reads_the_inverter() -> None:
    pv = MeterSimulator("sunspec_inverter_int", power_factor=1.0)
    pv.set_currents(10.0, 11.0, 12.0)
    main = MeterSimulator("eastron_sdm630")
    main.set_currents(-20.0)  # exporting
    pv_port, main_port = await pv.start_tcp(), await main.start_tcp()
    site = make_site(tcp_meter("main", main_port), tcp_meter("pv", pv_port, map_name="sunspec_inverter_int",
                                                             role="pv"))
    svc = MeterService(site)
    task = asyncio.create_task(svc.run())
    try:
        await wait_for(lambda: all(r is not None for r in svc.readings().values()))
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await pv.stop()
        await main.stop()
    r = svc.readings()["pv"]
    assert r is not None and r.valid, r
    assert r.total_power_w == pytest.approx(33 * 230.0, rel=0.02)
    assert r.current_a == pytest.approx((10.0, 11.0, 12.0), abs=0.01)
