"""MeterService.update_site (a SIGHUP reload): what did not change keeps its poller and its reading; a
replaced poller has ended before its replacement sends its first request (one Modbus master per bus)."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable
from typing import Any

import pytest
from sitesim.meter import MeterSimulator, RtuBus, SocatPair

from gateway.meters import service as service_mod
from gateway.meters.config import MeterConfig
from gateway.meters.driver import ModbusReader
from gateway.meters.service import MeterService
from tests.meters.conftest import SITE_HEAD, make_site, rtu_meter, running, tcp_meter, wait_for

Event = tuple[str, str]  # (what, client): "connect" | "request" | "answer" | "close"


class _Recorded:
    """A real pymodbus client, with every request and close recorded in order."""

    def __init__(self, inner: Any, name: str, events: list[Event]) -> None:
        self.inner, self.name, self.events = inner, name, events

    @property
    def connected(self) -> bool:
        return bool(self.inner.connected)

    async def connect(self) -> bool:
        self.events.append(("connect", self.name))
        return bool(await self.inner.connect())

    async def _read(self, call: Awaitable[Any]) -> Any:
        self.events.append(("request", self.name))
        try:
            return await call
        finally:
            self.events.append(("answer", self.name))

    def read_holding_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]:
        return self._read(self.inner.read_holding_registers(address, count=count, device_id=device_id))

    def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]:
        return self._read(self.inner.read_input_registers(address, count=count, device_id=device_id))

    def close(self) -> None:
        self.events.append(("close", self.name))
        self.inner.close()


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    events: list[Event] = []
    real = service_mod.make_client
    counter = itertools.count()

    def make(cfg: MeterConfig, *, timeout_s: float | None = None) -> ModbusReader:
        return _Recorded(real(cfg, timeout_s=timeout_s), f"{cfg.bus_key}#{next(counter)}", events)

    monkeypatch.setattr(service_mod, "make_client", make)
    return events


def clients(events: list[Event]) -> list[str]:
    return list(dict.fromkeys(name for _, name in events))


async def test_readings_and_pollers_survive_a_reload_that_changes_another_meter(recorded: list[Event]) -> None:
    a, b = MeterSimulator("eastron_sdm630"), MeterSimulator("eastron_sdm630")
    a.set_currents(11, 12, 13)
    b.set_currents(21, 22, 23)
    pa, pb = await a.start_tcp(), await b.start_tcp()
    ma = tcp_meter("ma", pa, poll_interval_s=0.2)
    site = make_site(ma, tcp_meter("mb", pb, circuit="sub", poll_interval_s=0.2))
    changed = make_site(ma, tcp_meter("mb", pb, circuit="sub", poll_interval_s=0.3))
    svc = MeterService(site)
    try:
        async with running(svc):
            await wait_for(lambda: svc.status() == {"ma": "ok", "mb": "ok"})
            before = svc.readings()["ma"]
            await svc.update_site(changed)
            # ma: the same reading at once (no tick on an empty snapshot), the same poller
            assert svc.readings()["ma"] is before and svc.status()["ma"] == "ok"
            assert svc.readings()["mb"] is None  # changed: unknown until its new poller reads it
            await wait_for(lambda: svc.status() == {"ma": "ok", "mb": "ok"})
            await wait_for(lambda: svc.readings()["ma"] is not before)  # still polled
    finally:
        await a.stop()
        await b.stop()
    names = clients(recorded)
    assert [n for n in names if n.startswith("tcp:ma")] == ["tcp:ma#0"]  # never replaced
    mb = [n for n in names if n.startswith("tcp:mb")]
    assert len(mb) == 2
    old_closed = recorded.index(("close", mb[0]))
    assert all(ev[1] != mb[1] for ev in recorded[:old_closed])  # the new poller only after the old one ended
    r = svc.readings()
    assert r["ma"] is not None and r["ma"].current_a == pytest.approx((11, 12, 13))
    assert r["mb"] is not None and r["mb"].current_a == pytest.approx((21, 22, 23))


async def test_the_replaced_bus_poller_has_ended_before_the_new_one_polls(recorded: list[Event]) -> None:
    async with SocatPair() as (bus_end, client_end):
        bus = RtuBus(bus_end, baud_rate=19200)
        a, b = MeterSimulator("eastron_sdm630", device_id=1), MeterSimulator("eastron_sdm630", device_id=2)
        a.set_currents(10, 11, 12)
        b.set_currents(20, 21, 22)
        bus.add(a)
        bus.add(b)
        await bus.start()
        def meter(mid: str, device_id: int, circuit: str, poll_interval_s: float) -> str:
            return rtu_meter(mid, client_end, device_id, circuit=circuit, baud_rate=19200,
                             poll_interval_s=poll_interval_s, timeout_s=1.0, stale_after_s=30.0)

        site = make_site(meter("ma", 1, "service", 0.2), meter("mb", 2, "sub", 0.2))
        changed = make_site(meter("ma", 1, "service", 0.2), meter("mb", 2, "sub", 0.3))
        svc = MeterService(site)
        try:
            async with running(svc):
                await wait_for(lambda: svc.status() == {"ma": "ok", "mb": "ok"})
                kept = svc.readings()["ma"]
                # both meters fall silent: the old poller is waiting for an answer when the reload comes
                a.silence()
                b.silence()
                await wait_for(lambda: recorded[-1][0] == "request")
                await svc.update_site(changed)
                old, *_ = clients(recorded)
                assert ("close", old) in recorded  # ended before update_site returned
                assert svc.readings()["ma"] is kept  # unchanged meter on the replaced bus: reading kept
                a.clear_faults()
                b.clear_faults()
                await wait_for(lambda: svc.readings()["mb"] is not None and svc.readings()["ma"] is not kept)
        finally:
            await bus.stop()
    names = clients(recorded)
    assert len(names) == 2
    old, new = names
    closed = recorded.index(("close", old))
    first_new = next(i for i, ev in enumerate(recorded) if ev[1] == new)
    assert closed < first_new
    assert all(ev[1] != old for ev in recorded[closed + 1:])  # nothing from the old master after it closed
    # the old request was abandoned (its answer bookkeeping ran on cancel) before the close
    assert recorded[closed - 1] == ("answer", old)


async def test_a_reload_that_adds_the_first_meter_starts_it(recorded: list[Event]) -> None:
    sim = MeterSimulator("eastron_sdm630")
    port = await sim.start_tcp()
    svc = MeterService(make_site(head=SITE_HEAD))
    try:
        async with running(svc):
            assert svc.readings() == {}
            await svc.update_site(make_site(tcp_meter("m", port, poll_interval_s=0.2)))
            await wait_for(lambda: svc.status() == {"m": "ok"})
            await svc.update_site(make_site(head=SITE_HEAD))
            assert svc.readings() == {}
    finally:
        await sim.stop()
    assert ("close", "tcp:m#0") in recorded
