"""SunSpec inverter maps (models 101-103 integer + scale factor, 111-113 float) read from a Modbus TCP server
we did not write (modbus-tk), with a register image laid out here by hand from the SunSpec model JSON."""

from __future__ import annotations

import math
import struct

import pytest

from gateway.meters.config import MeterConfig
from gateway.meters.driver import Bounds, MeterDriver
from gateway.meters.regmap import load_map
from gateway.meters.service import ensure_connected, make_client
from gateway.model import MeterReading
from hil.support import free_port, port_open, wait_until


def _f32(v: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", v))
    return [hi, lo]


def _s16(v: int) -> int:
    return v & 0xFFFF


def _image(model: int, body: list[int]) -> list[int]:
    """"SunS", the common model (1, L 66), the inverter model, the end marker."""
    common = [1, 66] + [0] * 66
    return [0x5375, 0x6E53, *common, model, len(body), *body, 0xFFFF, 0]


def _int_body(model: int) -> list[int]:
    """Model 101-103 (L 50), offsets from the first point after L (json/model_10x.json)."""
    b = [0xFFFF] * 50
    b[0:5] = [3702, 1234, 1235, 1233, _s16(-2)] if model == 103 else [1234, 1234, 0xFFFF, 0xFFFF, _s16(-2)]
    b[5:12] = [0xFFFF] * 3 + [2301, 2302, 2303, _s16(-1)]  # PPV not implemented, PhV 230.1.., V_SF -1
    b[12:16] = [_s16(850), 1, 5001, _s16(-2)]  # W 850 x 10^1 = 8500 W, Hz 50.01
    b[16:22] = [0x8000, 0x8000, 0x8000, 0x8000, 0x8000, 0x8000]  # VA, VAr, PF and their SFs not implemented
    b[36] = 4  # St = MPPT
    return b


def _float_body() -> list[int]:
    """Model 113 (L 60), float32 high word first."""
    vals = [37.02, 12.34, 12.35, 12.33, math.nan, math.nan, math.nan, 230.1, 230.2, 230.3, 8500.0, 50.01]
    b: list[int] = []
    for v in vals:
        b += _f32(v)
    b += [0x7FC0, 0] * 11  # VA, VAr, PF, WH, DCA, DCV, DCW, TmpCab .. TmpOt not implemented
    b += [4, 0] + [0] * 12  # St (MPPT), StVnd, Evt1, Evt2, EvtVnd1-4
    assert len(b) == 60
    return b


async def _read(map_name: str, base: int, image: list[int], phase_map: list[str]) -> tuple[MeterDriver, MeterReading]:
    from modbus_tk import defines as cst
    from modbus_tk import modbus_tcp

    port = free_port()
    server = modbus_tcp.TcpServer(port=port, address="127.0.0.1")
    server.start()  # listens from its own thread: wait until it accepts
    await wait_until(lambda: port_open(port), 2.0, 0.01)
    try:
        slave = server.add_slave(1)
        slave.add_block("hr", cst.HOLDING_REGISTERS, base, len(image))
        slave.set_values("hr", base, image)
        pm = tuple(("L1", "L2", "L3").index(p) for p in phase_map)
        cfg = MeterConfig(id="pv", circuit="service", map=map_name, host="127.0.0.1", port=port, timeout_s=2.0,
                          phase_map=pm)
        client = make_client(cfg)
        try:
            await ensure_connected(client)
            d = MeterDriver(cfg, load_map(map_name), client, Bounds(1000.0, True))
            r = await d.poll()
        finally:
            client.close()  # type: ignore[attr-defined]
    finally:
        server.stop()
    return d, r


async def test_model_103_integer_and_scale_factors() -> None:
    d, r = await _read("sunspec_inverter_int", 40000, _image(103, _int_body(103)), ["L1", "L2", "L3"])
    assert d.sunspec_model == 103
    assert r.valid, r.reason
    assert r.current_a == pytest.approx((12.34, 12.35, 12.33))
    assert r.voltage_v == pytest.approx((230.1, 230.2, 230.3))
    assert r.total_power_w == pytest.approx(8500.0)
    assert r.frequency_hz == pytest.approx(50.01)


async def test_model_101_single_phase_reads_its_one_line() -> None:
    """A single-phase inverter on L2: AphB/AphC are not implemented (0xFFFF) and not read."""
    d, r = await _read("sunspec_inverter_int", 0, _image(101, _int_body(101)), ["L2"])
    assert d.sunspec_model == 101
    assert r.valid, r.reason
    assert r.current_a == pytest.approx((0.0, 12.34, 0.0))
    assert r.total_power_w == pytest.approx(8500.0)


async def test_model_113_float() -> None:
    d, r = await _read("sunspec_inverter_float", 50000, _image(113, _float_body()), ["L1", "L2", "L3"])
    assert d.sunspec_model == 113
    assert r.valid, r.reason
    assert r.current_a == pytest.approx((12.34, 12.35, 12.33), abs=1e-4)
    assert r.voltage_v == pytest.approx((230.1, 230.2, 230.3), abs=1e-3)
    assert r.total_power_w == pytest.approx(8500.0)
    assert r.frequency_hz == pytest.approx(50.01, abs=1e-4)


async def test_power_scale_factor_not_implemented_makes_the_reading_invalid() -> None:
    body = _int_body(103)
    body[13] = 0x8000  # W_SF not implemented
    _, r = await _read("sunspec_inverter_int", 40000, _image(103, body), ["L1", "L2", "L3"])
    assert not r.valid and "not_implemented:total_power_w" in r.reason
