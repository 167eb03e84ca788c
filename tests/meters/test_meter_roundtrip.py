"""Every shipped map round-trips through the simulator, over TCP and over RTU on a pty."""

from __future__ import annotations

import pytest
from sitesim.meter import LoadProfile, MeterSimulator, RtuBus, SocatPair

from gateway.meters.config import MeterConfig
from gateway.meters.driver import Bounds, MeterDriver
from gateway.meters.regmap import load_map, shipped_maps
from gateway.meters.service import ensure_connected, make_client


def _check(r: object, amps: tuple[float, ...], inverter: bool = False) -> None:
    from gateway.model import MeterReading

    assert isinstance(r, MeterReading)
    assert r.valid, r.reason
    assert r.current_a == pytest.approx(amps, abs=0.01)
    assert r.voltage_v == pytest.approx((230.0,) * 3, abs=3)
    if r.power_w is not None:  # inverter maps give the total only
        assert r.power_w == pytest.approx(tuple(a * 230 * 0.98 for a in amps), rel=0.02)
    assert r.total_power_w == pytest.approx(sum(a * 230 * 0.98 for a in amps), rel=0.02)
    assert r.frequency_hz == pytest.approx(50.0, abs=0.1)
    if not inverter:  # an inverter has no imported-energy register
        assert r.energy_import_wh == pytest.approx(1_000_000.0, rel=0.01)


@pytest.mark.parametrize("name", shipped_maps())
async def test_map_roundtrips_over_tcp(name: str) -> None:
    sim = MeterSimulator(name, device_id=7)
    sim.set_currents(12.34, 250.0, 3.5)
    port = await sim.start_tcp()
    cfg = MeterConfig(id="m", circuit="c", map=name, host="127.0.0.1", port=port, device_id=7, timeout_s=2.0)
    client = make_client(cfg)
    try:
        await ensure_connected(client)
        d = MeterDriver(cfg, load_map(name), client, Bounds(1000.0, False))
        _check(await d.poll(), (12.34, 250.0, 3.5), "inverter" in name)
    finally:
        client.close()  # type: ignore[attr-defined]
        await sim.stop()


@pytest.mark.parametrize(("name", "base"), [("sunspec_int", 0), ("sunspec_int", 50000), ("sunspec_float", 0),
                                            ("sunspec_float", 50000), ("sunspec_inverter_int", 40000),
                                            ("sunspec_inverter_float", 0)])
async def test_sunspec_base_is_discovered(name: str, base: int) -> None:
    sim = MeterSimulator(name, sunspec_base=base, source=LoadProfile.parse("const:5/6/7"))
    port = await sim.start_tcp()
    cfg = MeterConfig(id="m", circuit="c", map=name, host="127.0.0.1", port=port, timeout_s=2.0)
    client = make_client(cfg)
    try:
        await ensure_connected(client)
        d = MeterDriver(cfg, load_map(name), client, Bounds(1000.0, False))
        _check(await d.poll(), (5.0, 6.0, 7.0), "inverter" in name)
        assert d.sunspec_model in (203, 213, 103, 113)
    finally:
        client.close()  # type: ignore[attr-defined]
        await sim.stop()


async def test_every_map_roundtrips_over_rtu_on_one_pty_bus() -> None:
    names = shipped_maps()
    async with SocatPair() as (bus_end, client_end):
        bus = RtuBus(bus_end, baud_rate=115200)
        sims = []
        for i, name in enumerate(names):
            s = MeterSimulator(name, device_id=10 + i)
            s.set_currents(1.0 + i, 2.0 + i, 3.0 + i)
            bus.add(s)
            sims.append(s)
        await bus.start()
        cfg0 = MeterConfig(id="x", circuit="c", transport="rtu", device=client_end, baud_rate=115200, timeout_s=2.0)
        client = make_client(cfg0)
        try:
            await ensure_connected(client)
            for i, name in enumerate(names):
                cfg = MeterConfig(id=name, circuit="c", map=name, transport="rtu", device=client_end,
                                  baud_rate=115200, device_id=10 + i, timeout_s=2.0)
                d = MeterDriver(cfg, load_map(name), client, Bounds(1000.0, False))
                _check(await d.poll(), (1.0 + i, 2.0 + i, 3.0 + i), "inverter" in name)
        finally:
            client.close()  # type: ignore[attr-defined]
            await bus.stop()


def test_load_profile_steps_ramps_and_noise() -> None:
    step = LoadProfile.parse("step:0=100,10=300/310/320")
    assert step(5) == (100, 100, 100) and step(10) == (300, 310, 320)
    ramp = LoadProfile.parse("ramp:0=0,10=100")
    assert ramp(5) == pytest.approx((50, 50, 50)) and ramp(20) == (100, 100, 100)
    noisy = LoadProfile.parse("const:100;noise:2", seed=1)
    xs = [noisy(t)[0] for t in range(200)]
    assert 95 < sum(xs) / len(xs) < 105 and len(set(xs)) > 100
