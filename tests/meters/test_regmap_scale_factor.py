"""Scale-factor registers (SunSpec sunssf) in the generic register map: decode, encode, planning."""

from __future__ import annotations

import math

import pytest

from gateway.meters.regmap import Point, load_map, plan_blocks


def test_scale_factor_applies_per_type_and_sign() -> None:
    w = Point("total_power_w", 14, "int16", "holding", "high_first", scale_factor=15)
    assert w.decode([0xFFCE], 2) == pytest.approx(-5000.0)  # -50 x 10^2
    a = Point("current_l1_a", 3, "uint16", "holding", "high_first", scale_factor=6)
    assert a.decode([65000], -3) == pytest.approx(65.0)
    assert math.isnan(a.decode([0xFFFF], -2))  # uint16 "not implemented" beats a valid scale factor
    assert math.isnan(a.decode([100], None))  # the scale factor was not read
    assert math.isnan(a.decode([100], -0x8000))  # sunssf not implemented


@pytest.mark.parametrize(("sf", "value"), [(-2, 12.34), (0, 7.0), (1, 8500.0), (3, 12000.0)])
def test_encode_and_decode_round_trip_with_a_scale_factor(sf: int, value: float) -> None:
    p = Point("total_power_w", 14, "int16", "holding", "high_first", scale_factor=15)
    assert p.decode(p.encode(value, sf), sf) == pytest.approx(value)


def test_points_sharing_one_scale_factor_read_it_once() -> None:
    m = load_map("sunspec_inverter_int")
    sfs = m.scale_factor_points()
    assert set(sfs) == {6, 13, 15, 17}  # A_SF, V_SF, W_SF, Hz_SF
    assert all(p.type == "int16" for p in sfs.values())
    blocks = plan_blocks([*m.points.values(), *sfs.values()], base=40070, max_gap=m.max_gap)
    assert [(b.address, b.count) for b in blocks] == [(40073, 15)]  # AphA (3) .. Hz_SF (17) in one read


def test_inverter_map_offsets_follow_the_sunspec_models() -> None:
    i, f = load_map("sunspec_inverter_int"), load_map("sunspec_inverter_float")
    assert i.sunspec_models == (101, 102, 103) and f.sunspec_models == (111, 112, 113)
    assert {k: (p.address, p.scale_factor) for k, p in i.points.items()}["total_power_w"] == (14, 15)
    assert {k: p.address for k, p in f.points.items()} == {
        "current_l1_a": 4, "current_l2_a": 6, "current_l3_a": 8, "voltage_l1_v": 16, "voltage_l2_v": 18,
        "voltage_l3_v": 20, "total_power_w": 22, "frequency_hz": 24}
