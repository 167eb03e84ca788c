"""Interop with implementations we did not write: modbus-tk and pyModbusTCP serve a meter that our
driver reads; mbpoll reads our simulator."""

from __future__ import annotations

import asyncio
import re
import shutil
import struct
from collections.abc import Sequence

import pytest
from sitesim.meter import MeterSimulator, RtuBus, SocatPair

from gateway.meters.service import MeterService
from hil.support import free_port as _free_port
from tests.meters.conftest import make_site, rtu_meter, tcp_meter, wait_for


def _f32(v: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return [hi, lo]


def _i32_low_first(v: int) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">i", v))
    return [lo, hi]


async def _read_once(site_entry: str) -> tuple[str, object]:
    svc = MeterService(make_site(site_entry))
    task = asyncio.create_task(svc.run())
    try:
        await wait_for(lambda: svc.readings()["m"] is not None or svc.status()["m"] != "never-read")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    return svc.status()["m"], svc.readings()["m"]


async def test_modbus_tk_rtu_slave_sdm630() -> None:
    import serial
    from modbus_tk import defines as cst
    from modbus_tk import modbus_rtu

    async with SocatPair() as (slave_end, client_end):
        ser = serial.Serial(port=slave_end, baudrate=19200)
        server = modbus_rtu.RtuServer(ser)
        server.start()
        try:
            slave = server.add_slave(5)
            slave.add_block("in", cst.READ_INPUT_REGISTERS, 0, 80)
            regs: list[int] = []
            for v in (231.0, 229.5, 230.2, 16.25, 17.5, 18.75):  # volts, amps
                regs += _f32(v)
            for w in (3700.0, 4000.0, 4300.0):
                regs += _f32(w)
            slave.set_values("in", 0, regs)
            slave.set_values("in", 0x34, _f32(12000.0))
            slave.set_values("in", 0x46, _f32(50.01) + _f32(1234.5))
            status, r = await _read_once(rtu_meter("m", client_end, 5, baud_rate=19200, timeout_s=1.0))
        finally:
            server.stop()
            ser.close()
    assert status == "ok"
    assert r.current_a == pytest.approx((16.25, 17.5, 18.75))  # type: ignore[attr-defined]
    assert r.voltage_v == pytest.approx((231.0, 229.5, 230.2), abs=1e-4)  # type: ignore[attr-defined]
    assert r.total_power_w == pytest.approx(12000.0)  # type: ignore[attr-defined]
    assert r.energy_import_wh == pytest.approx(1234.5 * 1000)  # type: ignore[attr-defined]


async def test_modbus_tk_rtu_slave_ignores_other_ids_so_a_wrong_id_goes_unanswered() -> None:
    import serial
    from modbus_tk import defines as cst
    from modbus_tk import modbus_rtu

    async with SocatPair() as (slave_end, client_end):
        ser = serial.Serial(port=slave_end, baudrate=19200)
        server = modbus_rtu.RtuServer(ser)
        server.start()
        try:
            server.add_slave(5).add_block("in", cst.READ_INPUT_REGISTERS, 0, 80)
            entry = rtu_meter("m", client_end, 6, baud_rate=19200, timeout_s=0.3, poll_interval_s=0.2,
                              stale_after_s=1.0)
            svc = MeterService(make_site(entry))
            task = asyncio.create_task(svc.run())
            await asyncio.sleep(1.5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            server.stop()
            ser.close()
    assert svc.status()["m"] == "never-read"


async def test_pymodbustcp_server_janitza_umg604() -> None:
    from pyModbusTCP.server import ModbusServer

    port = _free_port()
    srv = ModbusServer(host="127.0.0.1", port=port, no_block=True)
    srv.start()
    try:
        regs: list[int] = []
        for v in (230.0, 231.0, 232.0, 400.0, 401.0, 402.0, 101.5, 102.5, 103.5, 0.0):
            regs += _f32(v)
        for w in (23000.0, 24000.0, 25000.0, 72000.0):
            regs += _f32(w)
        srv.data_bank.set_holding_registers(19000, regs)
        srv.data_bank.set_holding_registers(19050, _f32(49.98))
        srv.data_bank.set_holding_registers(19068, _f32(5.5e6))
        status, r = await _read_once(tcp_meter("m", port, map_name="janitza_umg604", timeout_s=1.0,
                                               phase_map=["L3", "L1", "L2"]))
    finally:
        srv.stop()
    assert status == "ok"
    assert r.current_a == pytest.approx((102.5, 103.5, 101.5))  # type: ignore[attr-defined]
    assert r.frequency_hz == pytest.approx(49.98, abs=1e-4)  # type: ignore[attr-defined]
    assert r.total_power_w == pytest.approx(72000.0)  # type: ignore[attr-defined]


async def test_pymodbustcp_server_em340_int32_low_word_first() -> None:
    from pyModbusTCP.server import ModbusServer

    port = _free_port()
    srv = ModbusServer(host="127.0.0.1", port=port, no_block=True)
    srv.start()
    try:
        regs = [0] * 0x40
        for i, v in enumerate((2301, 2302, 2303)):
            regs[2 * i: 2 * i + 2] = _i32_low_first(v)
        for i, a in enumerate((12345, 23456, 34567)):
            regs[0x0C + 2 * i: 0x0E + 2 * i] = _i32_low_first(a)
        regs[0x33] = 500
        regs[0x34:0x36] = _i32_low_first(98765)
        srv.data_bank.set_input_registers(0, regs)
        status, r = await _read_once(tcp_meter("m", port, map_name="carlo_gavazzi_em340", timeout_s=1.0))
    finally:
        srv.stop()
    assert status == "ok"
    assert r.current_a == pytest.approx((12.345, 23.456, 34.567))  # type: ignore[attr-defined]
    assert r.voltage_v == pytest.approx((230.1, 230.2, 230.3))  # type: ignore[attr-defined]
    assert r.energy_import_wh == pytest.approx(9_876_500.0)  # type: ignore[attr-defined]


def _mbpoll_values(out: str) -> list[float]:
    return [float(x) for x in re.findall(r"^\[\d+\]:\s+(-?[\d.]+)", out, re.M)]


async def _mbpoll(args: Sequence[str]) -> str:
    proc = await asyncio.create_subprocess_exec("mbpoll", *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    async with asyncio.timeout(20):
        out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode(errors="replace")
    return out.decode()


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll is not installed (./dev installs it)")
async def test_mbpoll_reads_the_simulator_over_tcp() -> None:
    sim = MeterSimulator("eastron_sdm630", device_id=3)
    sim.set_currents(7.25, 8.5, 9.75)
    port = await sim.start_tcp()
    try:
        # -0: 0-based addresses; -B: big-endian word order; -t 3:float: input registers as float
        out = await _mbpoll(["-m", "tcp", "-a", "3", "-p", str(port), "-t", "3:float", "-B", "-0", "-r", "6",
                             "-c", "3", "-1", "-o", "5", "127.0.0.1"])
    finally:
        await sim.stop()
    assert _mbpoll_values(out) == pytest.approx([7.25, 8.5, 9.75])


@pytest.mark.skipif(shutil.which("mbpoll") is None, reason="mbpoll is not installed (./dev installs it)")
async def test_mbpoll_reads_the_simulator_over_rtu() -> None:
    sim = MeterSimulator("schneider_iem3000", device_id=9)
    sim.set_currents(40.5, 41.5, 42.5)
    async with SocatPair() as (bus_end, client_end):
        bus = RtuBus(bus_end, baud_rate=19200)
        bus.add(sim)
        await bus.start()
        try:
            out = await _mbpoll(["-m", "rtu", "-a", "9", "-b", "19200", "-P", "none", "-t", "4:float", "-B", "-0",
                                 "-r", "2999", "-c", "3", "-1", "-o", "5", client_end])
        finally:
            await bus.stop()
    assert _mbpoll_values(out) == pytest.approx([40.5, 41.5, 42.5])
