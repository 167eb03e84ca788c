"""Modbus fault modes beyond silence and garbage (issue 13): replies with the wrong function code or register
count, a current frozen while the other registers move, and a meter going stale waking the control loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from sitesim.meter import MeterSimulator

from gateway.errors import MeterError
from gateway.meters.config import MeterConfig
from gateway.meters.driver import Bounds, MeterDriver, read_block
from gateway.meters.regmap import Block, load_map
from gateway.meters.service import MeterService, make_client
from hil.support import running_task
from tests.meters.conftest import make_site, tcp_meter, wait_for


class FaultySim(MeterSimulator):
    """The simulator, answering with a mangled function code or register count when told to."""

    reply_fault: str | None = None

    def handle_pdu(self, pdu: bytes) -> bytes | None:
        resp = super().handle_pdu(pdu)
        if resp is None or resp[0] & 0x80 or self.reply_fault is None:
            return resp
        if self.reply_fault == "wrong_function":  # an input-register answer to a holding request, or back
            return bytes([3 if resp[0] == 4 else 4]) + resp[1:]
        if self.reply_fault == "extra_registers":
            extra = b"\x00\x01" * 10
            return bytes([resp[0], resp[1] + len(extra)]) + resp[2:] + extra
        if self.reply_fault == "short":
            return bytes([resp[0], resp[1] - 2]) + resp[2:-2]
        return resp


@contextlib.asynccontextmanager
async def sim_client(sim: FaultySim) -> AsyncIterator[tuple[object, MeterConfig]]:
    port = await sim.start_tcp()
    cfg = MeterConfig(id="m", circuit="sub", host="127.0.0.1", port=port, timeout_s=0.5)
    client = make_client(cfg)
    try:
        assert await client.connect()  # type: ignore[attr-defined]
        yield client, cfg
    finally:
        client.close()  # type: ignore[attr-defined]
        await sim.stop()


def _block(sim: MeterSimulator) -> Block:
    p = sim.map.points["current_l1_a"]
    return Block(function=p.function, address=p.address, count=6)


@pytest.mark.parametrize("fault", ["wrong_function", "extra_registers", "short"])
async def test_a_malformed_reply_is_not_a_reading(fault: str) -> None:
    sim = FaultySim("eastron_sdm630")
    sim.set_currents(10, 11, 12)
    async with sim_client(sim) as (client, _cfg):
        good = await read_block(client, _block(sim), 1, 0.5)  # type: ignore[arg-type]
        assert len(good) == 6
        sim.reply_fault = fault
        with pytest.raises(MeterError):
            await read_block(client, _block(sim), 1, 0.5)  # type: ignore[arg-type]


def _driver(frozen_polls: int = 4) -> MeterDriver:
    cfg = MeterConfig(id="m", circuit="c", frozen_polls=frozen_polls)
    return MeterDriver(cfg, load_map("eastron_sdm630"), None, Bounds(200.0, False))  # type: ignore[arg-type]


def _values(i1: float, t: int, p1: float | None = None) -> dict[str, float]:
    """L1's current as given and its power ``p1`` (default: that current at 230 V); the rest (voltage,
    frequency, energy, L2) moving with t; L3 idle at 0 A."""
    out = {"current_l1_a": i1, "current_l2_a": 5.0 + 0.01 * t, "current_l3_a": 0.0}
    out |= {f"voltage_l{k}_v": 230.0 + 0.1 * ((t + k) % 3) for k in (1, 2, 3)}
    out |= {f"power_l{k}_w": out[f"current_l{k}_a"] * out[f"voltage_l{k}_v"] for k in (1, 2, 3)}
    if p1 is not None:
        out["power_l1_w"] = p1
    out |= {"total_power_w": sum(out[f"power_l{k}_w"] for k in (1, 2, 3)), "frequency_hz": 50.0 + 0.01 * t,
            "energy_import_wh": 1000.0 + t}
    return out


def test_a_current_frozen_while_its_power_moves_is_flagged() -> None:
    """Issue 13 finding 7: L1's current register stuck at exactly 20.000 A while the load (its power) rises and
    voltage, frequency and energy move: frozen, although the reading as a whole changes every poll."""
    d = _driver(frozen_polls=4)
    rs = [d.evaluate(_values(20.0, t, p1=4600.0 + 800.0 * t), float(t)) for t in range(6)]
    assert [r.valid for r in rs] == [True, True, True, False, False, False], [r.reason for r in rs]
    assert "frozen:current_l1_a:4_polls" in rs[3].reason
    r = d.evaluate(_values(24.1, 6, p1=24.1 * 230.0), 6.0)  # the register moves again: thawed
    assert r.valid, r.reason


def test_a_steady_load_and_an_idle_phase_are_not_frozen() -> None:
    """A constant current with its power steady (voltage noise only), and L3 at 0 A for ever: valid."""
    d = _driver(frozen_polls=4)
    assert all(d.evaluate(_values(20.0, t), float(t)).valid for t in range(30))


def test_frozen_quantity_detection_off_with_frozen_polls_0() -> None:
    d = _driver(frozen_polls=0)
    assert all(d.evaluate(_values(20.0, t, p1=4600.0 + 800.0 * t), float(t)).valid for t in range(20))


async def test_a_meter_going_stale_wakes_the_control_loop_at_once() -> None:
    """on_stale fires when the meter goes stale (not at the next reading, which never comes)."""
    sim = MeterSimulator("eastron_sdm630")
    port = await sim.start_tcp()
    stale: list[tuple[str, float]] = []
    loop = asyncio.get_running_loop()
    site = make_site(tcp_meter("m", port, circuit="sub", poll_interval_s=0.1, stale_after_s=0.6, timeout_s=0.2))
    svc = MeterService(site, on_stale=lambda mid: stale.append((mid, loop.time())))
    try:
        async with running_task(svc.run()):
            await wait_for(lambda: svc.status()["m"] == "ok")
            sim.silence()
            silenced = loop.time()
            await wait_for(lambda: bool(stale), 5.0)
            assert stale[0][0] == "m" and svc.status()["m"] == "stale"
            assert stale[0][1] - silenced < 0.6 + 0.2 * 2 + 0.6  # stale_after_s, a poll's timeouts, the watcher
    finally:
        await sim.stop()
