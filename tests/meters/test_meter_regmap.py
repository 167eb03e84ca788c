"""Register maps: decoding, encoding and the shipped map files."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import RegisterMapError
from gateway.meters.regmap import TYPES, Point, load_map, parse_map, plan_blocks, shipped_maps


def test_at_least_the_required_maps_ship() -> None:
    names = set(shipped_maps())
    assert {"sunspec_int", "sunspec_float", "eastron_sdm630", "carlo_gavazzi_em24", "carlo_gavazzi_em340",
            "schneider_iem3000", "janitza_umg604"} <= names


@pytest.mark.parametrize("name", shipped_maps())
def test_every_shipped_map_parses_and_cites_its_source(name: str) -> None:
    m = load_map(name)
    assert m.phases == 3
    assert m.source
    text = Path(m.path).read_text()
    assert text.startswith("#"), "the header comment cites the register documentation"
    for p in m.points.values():
        assert p.count == TYPES[p.type][0]
    # every point is covered by exactly one planned block
    blocks = plan_blocks(list(m.points.values()), max_block=m.max_block, max_gap=m.max_gap)
    for p in m.points.values():
        assert sum(b.address <= p.address and p.address + p.count <= b.address + b.count
                   and b.function == p.function for b in blocks) == 1


def test_known_register_addresses() -> None:
    sdm = load_map("eastron_sdm630")
    assert sdm.points["current_l1_a"].address == 6 and sdm.points["current_l1_a"].function == "input"
    assert sdm.points["energy_import_wh"].address == 0x48
    em24 = load_map("carlo_gavazzi_em24")
    assert em24.points["current_l1_a"].word_order == "low_first" and em24.points["current_l1_a"].type == "int32"
    assert load_map("janitza_umg604").points["current_l1_a"].address == 19012
    assert load_map("schneider_iem3000").points["current_l1_a"].address == 2999
    ss = load_map("sunspec_int")
    assert ss.points["current_l1_a"].address == 3 and ss.points["current_l1_a"].scale_factor == 6


def _pt(typ: str, order: str, scale: float = 1.0) -> Point:
    return Point("x", 0, typ, "holding", order, scale)


@given(st.integers(-32767, 32767), st.sampled_from(["high_first", "low_first"]))
def test_int16_roundtrip(v: int, order: str) -> None:
    p = _pt("int16", order)
    assert p.decode(p.encode(float(v))) == v


@given(st.integers(-(2**31) + 1, 2**31 - 1), st.sampled_from(["high_first", "low_first"]))
def test_int32_roundtrip_both_word_orders(v: int, order: str) -> None:
    p = _pt("int32", order, 0.001)
    assert math.isclose(p.decode(p.encode(v * 0.001)), v * 0.001, rel_tol=1e-9, abs_tol=1e-9)


@given(st.floats(-1e6, 1e6, width=32))
def test_float32_roundtrip(v: float) -> None:
    p = _pt("float32", "high_first")
    assert p.decode(p.encode(v)) == v


def test_word_order_is_what_the_wire_carries() -> None:
    hi = _pt("int32", "high_first")
    lo = _pt("int32", "low_first")
    assert hi.decode([0x0001, 0x0002]) == 0x00010002
    assert lo.decode([0x0002, 0x0001]) == 0x00010002


@pytest.mark.parametrize(("typ", "regs"), [
    ("int16", [0x8000]), ("uint16", [0xFFFF]), ("int32", [0x8000, 0]), ("uint32", [0xFFFF, 0xFFFF]),
    ("float32", [0x7FC0, 0]),
])
def test_not_implemented_markers_decode_as_nan(typ: str, regs: list[int]) -> None:
    assert math.isnan(_pt(typ, "high_first").decode(regs))


def test_sunspec_scale_factor() -> None:
    p = Point("current_l1_a", 3, "int16", "holding", "high_first", 1.0, scale_factor=6)
    assert p.decode([1234], -2) == pytest.approx(12.34)
    assert math.isnan(p.decode([1234], -0x8000))  # sunssf not implemented


def test_integer_overflow_is_refused_by_the_encoder() -> None:
    with pytest.raises(RegisterMapError):
        _pt("int16", "high_first").encode(40000)


def test_map_errors_name_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[meter]\nname = "x"\nsource = "y"\n[points]\ncurrent_l1_a = { address = 1, typo = 2 }\n')
    with pytest.raises(RegisterMapError, match=r"points\.current_l1_a\.typo"):
        parse_map(bad)
    bad.write_text('[meter]\nname = "x"\nsource = "y"\n[points]\ncurrent_l9_a = { address = 1 }\n')
    with pytest.raises(RegisterMapError, match="unknown quantity"):
        parse_map(bad)
    bad.write_text('[meter]\nname = "x"\nsource = "y"\n[points]\nvoltage_l1_v = { address = 1 }\n')
    with pytest.raises(RegisterMapError, match="current_l1_a"):
        parse_map(bad)


def test_unknown_map_name() -> None:
    with pytest.raises(RegisterMapError, match="unknown register map"):
        load_map("no_such_meter")
