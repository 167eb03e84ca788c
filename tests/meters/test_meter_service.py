"""MeterService against simulated meters: one bus task per RTU bus, faults, staleness, recovery."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
import structlog
from sitesim.meter import MeterSimulator, RtuBus, SocatPair

from gateway.meters.service import MeterService
from gateway.model import MeterReading
from tests.meters.conftest import make_site, rtu_meter, running, tcp_meter, wait_for


async def test_two_meters_on_one_rtu_bus_are_polled_one_at_a_time_with_the_gap() -> None:
    async with SocatPair() as (bus_end, client_end):
        bus = RtuBus(bus_end, baud_rate=19200)
        a = MeterSimulator("eastron_sdm630", device_id=1)
        b = MeterSimulator("carlo_gavazzi_em24", device_id=2)
        a.set_currents(10, 11, 12)
        b.set_currents(20, 21, 22)
        bus.add(a)
        bus.add(b)
        await bus.start()
        site = make_site(
            rtu_meter("ma", client_end, 1, baud_rate=19200, bus_gap_s=0.1, poll_interval_s=0.3, timeout_s=1.0),
            rtu_meter("mb", client_end, 2, circuit="sub", map_name="carlo_gavazzi_em24", baud_rate=19200,
                      poll_interval_s=0.3, timeout_s=1.0, bus_gap_s=0.0),
        )
        seen: list[tuple[str, MeterReading]] = []
        svc = MeterService(site, on_reading=lambda mid, r: seen.append((mid, r)))
        assert svc.buses() == {f"rtu:{client_end}": ("ma", "mb")}
        try:
            async with running(svc):
                await wait_for(lambda: sum(m == "mb" for m, _ in seen) >= 3 and sum(m == "ma" for m, _ in seen) >= 3)
        finally:
            await bus.stop()
        r = svc.readings()
        assert r["ma"] is not None and r["ma"].current_a == pytest.approx((10, 11, 12))
        assert r["mb"] is not None and r["mb"].current_a == pytest.approx((20, 21, 22))
        assert svc.status() == {"ma": "ok", "mb": "ok"}
        # one bus: readings never overlap, and consecutive polls keep the bus gap (>= 100 ms)
        ats = sorted(x.at for _, x in seen)
        assert all(t2 - t1 >= 0.1 for t1, t2 in itertools.pairwise(ats))


async def test_tcp_meters_are_polled_concurrently_and_a_dead_one_does_not_stop_the_others() -> None:
    sims = [MeterSimulator("janitza_umg604") for _ in range(3)]
    for i, s in enumerate(sims):
        s.set_currents(5 + i)
    ports = [await s.start_tcp() for s in sims]
    head = "".join(f'[[circuits]]\nid = "c{i}"\nparent = "service"\nlimit_a = 100\n' for i in range(4))
    from tests.meters.conftest import SITE_HEAD

    dead_port = ports[0] + 1 if ports[0] + 1 not in ports else ports[0] + 2
    meters = [tcp_meter(f"m{i}", p, circuit=f"c{i}", map_name="janitza_umg604", poll_interval_s=0.2,
                        timeout_s=0.3) for i, p in enumerate(ports)]
    meters.append(tcp_meter("dead", dead_port, circuit="c3", poll_interval_s=0.2, timeout_s=0.3))
    site = make_site(*meters, head=SITE_HEAD + head)
    svc = MeterService(site)
    try:
        async with running(svc):
            await wait_for(lambda: all(svc.status()[f"m{i}"] == "ok" for i in range(3)))
            assert svc.status()["dead"] == "never-read"
    finally:
        for s in sims:
            await s.stop()
    assert [svc.readings()[f"m{i}"].current_a[0] for i in range(3)] == pytest.approx([5, 6, 7])  # type: ignore[union-attr]


FAULTS: dict[str, Callable[[MeterSimulator], None]] = {
    "silence": MeterSimulator.silence,
    "garbage": MeterSimulator.garbage,
    "crc_errors": MeterSimulator.crc_errors,
    "exception_responses": MeterSimulator.exception_responses,
}


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
@pytest.mark.parametrize("fault", [*FAULTS, "freeze", "not_implemented", "overcurrent"])
async def test_fault_leads_to_invalid_or_stale_and_recovers(fault: str, transport: str) -> None:
    sim = MeterSimulator("eastron_sdm630", device_id=4)
    sim.set_currents(30, 31, 32)
    pair: SocatPair | None = None
    bus: RtuBus | None = None
    opts: dict[str, Any] = dict(poll_interval_s=0.2, timeout_s=0.3, stale_after_s=1.2, frozen_polls=4, retries=1)
    if transport == "tcp":
        entry = tcp_meter("m", await sim.start_tcp(), device_id=4, circuit="sub", **opts)
    else:
        pair = SocatPair()
        bus_end, client_end = await pair.start()
        bus = RtuBus(bus_end, baud_rate=38400)
        bus.add(sim)
        await bus.start()
        entry = rtu_meter("m", client_end, 4, circuit="sub", baud_rate=38400, **opts)
    site = make_site(entry)
    svc = MeterService(site)
    with structlog.testing.capture_logs() as logs:
        try:
            async with running(svc):
                await wait_for(lambda: svc.status()["m"] == "ok")
                t0 = time.monotonic()
                if fault in FAULTS:
                    FAULTS[fault](sim)
                    expect = "stale"
                elif fault == "freeze":
                    sim.freeze()
                    expect = "invalid:frozen"
                elif fault == "not_implemented":
                    sim.set_currents(30, float("nan"), 32)
                    expect = "invalid:not_implemented:current_l2_a"
                else:
                    sim.set_currents(30, 250, 32)  # the circuit's limit is 100 A: 250 A is implausible
                    expect = "invalid:implausible:current_l2"
                await wait_for(lambda: svc.status()["m"].startswith(expect))
                if expect == "stale":
                    await wait_for(lambda: any(e["event"] == "meter_stale" for e in logs))
                # stale comes after stale_after_s without a good reading (plus a poll and its timeouts)
                assert time.monotonic() - t0 < 1.2 + 3.0
                sim.clear_faults()
                sim.set_currents(30, 31, 32)
                await wait_for(lambda: svc.status()["m"] == "ok")
        finally:
            if bus is not None:
                await bus.stop()
            if pair is not None:
                await pair.stop()
            await sim.stop()
    events = [e["event"] for e in logs if e.get("meter") == "m"]
    # each state change logged once, not on every poll
    if expect == "stale":
        assert events.count("meter_stale") == 1
        assert events.count("meter_read_failed") == 1
    else:
        assert events.count("meter_invalid") == 1
    assert events.count("meter_ok") == 2


async def test_on_reading_errors_do_not_stop_the_poller() -> None:
    sim = MeterSimulator("eastron_sdm630")
    port = await sim.start_tcp()
    calls: list[str] = []

    def boom(mid: str, r: MeterReading) -> None:
        calls.append(mid)
        raise RuntimeError("callback bug")

    svc = MeterService(make_site(tcp_meter("m", port, poll_interval_s=0.1)), on_reading=boom)
    try:
        async with running(svc):
            await wait_for(lambda: len(calls) >= 3)
    finally:
        await sim.stop()
    assert svc.status()["m"] == "ok"


async def test_status_goes_stale_with_the_injected_clock() -> None:
    now = [1000.0]
    sim = MeterSimulator("eastron_sdm630")
    port = await sim.start_tcp()
    svc = MeterService(make_site(tcp_meter("m", port, poll_interval_s=0.1)), clock=lambda: now[0])
    try:
        async with running(svc):
            await wait_for(lambda: svc.readings()["m"] is not None)
            r = svc.readings()["m"]
            assert r is not None and r.at == 1000.0
            now[0] = 1003.5
            assert svc.status()["m"] == "stale"
    finally:
        await sim.stop()
