"""The electrical model against hand-computed values: every expected number is a literal, with its arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway import electrical as el
from tests.factories import ac, dc, make_site

L1, L2, L3 = 0, 1, 2
THREE = (L1, L2, L3)


@dataclass(frozen=True)
class Svc:
    wiring: str
    voltage_ll_v: float
    voltage_tolerance_pct: float = 0.0


@dataclass(frozen=True)
class Charger:
    kind: str
    line_phases: tuple[int, ...]
    efficiency: float = 1.0
    power_factor: float = 1.0


TP400 = Svc("three-phase", 400.0)
SPLIT = Svc("split-phase", 240.0)
SINGLE = Svc("single-phase", 230.0)


def test_lines_and_line_to_neutral_voltages() -> None:
    assert el.line_names("three-phase") == ("L1", "L2", "L3")
    assert el.line_names("split-phase") == ("L1", "L2")
    assert el.line_names("single-phase") == ("L1",)
    assert el.line_to_neutral_v(TP400) == pytest.approx(230.940, abs=1e-3)  # 400 / 1.7320508
    assert el.line_to_neutral_v(SPLIT) == 120.0  # 240 / 2: each leg to the neutral
    assert el.line_to_neutral_v(SINGLE) == 230.0
    with pytest.raises(ValueError, match="unknown wiring"):
        el.n_lines("two-phase")


def test_load_wiring_and_the_voltage_a_load_sees() -> None:
    assert el.load_wiring(TP400, THREE) == "three-phase"
    assert el.load_wiring(TP400, (L2, L3)) == "line-to-line"
    assert el.load_wiring(SPLIT, (L1, L2)) == "line-to-line"
    assert el.load_wiring(SPLIT, (L2,)) == "line-to-neutral"
    assert el.load_voltage_v(TP400, THREE) == pytest.approx(230.940, abs=1e-3)  # each wye element: 400 / sqrt 3
    assert el.load_voltage_v(TP400, (L3, L1)) == 400.0
    assert el.load_voltage_v(TP400, (L1,)) == pytest.approx(230.940, abs=1e-3)
    assert el.load_voltage_v(SPLIT, (L1, L2)) == 240.0  # Level 2 across both legs
    assert el.load_voltage_v(SPLIT, (L1,)) == 120.0  # a 120 V outlet on one leg
    assert el.load_voltage_v(SINGLE, (L1,)) == 230.0
    with pytest.raises(ValueError, match="cannot feed"):
        el.load_wiring(SPLIT, (L3,))  # a split-phase service has no L3
    with pytest.raises(ValueError, match="cannot feed"):
        el.load_wiring(SINGLE, (L1, L2))


def test_dc_line_to_neutral_charger_on_a_three_phase_service() -> None:
    # 11 kW on L1-N of 400 V: 11000 / (400 / sqrt 3) = 11000 / 230.940 = 47.631 A (not 11000 / 400 = 27.5 A)
    assert el.line_current_a(TP400, (L1,), 11_000.0) == pytest.approx(47.631, abs=1e-3)
    # with efficiency 0.95, pf 0.99 at -5 %: 11000 / (230.940 x 0.95 x 0.95 x 0.99) = 11000 / 206.339 = 53.310 A
    tol5 = Svc("three-phase", 400.0, 5.0)
    got = el.line_current_a(tol5, (L1,), 11_000.0, efficiency=0.95, power_factor=0.99, conservative=True)
    assert got == pytest.approx(53.310, abs=1e-3)


def test_three_phase_load() -> None:
    # 11 kW three-phase at 400 V: 11000 / (sqrt 3 x 400) = 11000 / 692.820 = 15.877 A in each line
    assert el.line_current_a(TP400, THREE, 11_000.0) == pytest.approx(15.877, abs=1e-3)
    # 50 kW DC at 480 V, efficiency 0.95, pf 0.99, nominal: 50000 / (831.384 x 0.9405) = 50000 / 781.917 = 63.945 A
    tp480 = Svc("three-phase", 480.0, 5.0)
    assert el.line_current_a(tp480, THREE, 50_000.0, efficiency=0.95, power_factor=0.99) == pytest.approx(
        63.945, abs=1e-3
    )
    # ... at the conservative 95 % of 480 V = 456 V: 50000 / (sqrt 3 x 456 x 0.9405) = 50000 / 742.821 = 67.311 A
    assert el.line_current_a(
        tp480, THREE, 50_000.0, efficiency=0.95, power_factor=0.99, conservative=True
    ) == pytest.approx(67.311, abs=1e-3)


def test_line_to_line_load_on_a_three_phase_service() -> None:
    # 8 kW across L2-L3 of 400 V: 8000 / 400 = 20 A in L2 and in L3
    assert el.line_current_a(TP400, (L2, L3), 8_000.0) == 20.0
    assert el.per_line_a(TP400, (L2, L3), 20.0) == (0.0, 20.0, 20.0)


def test_split_phase_loads() -> None:
    # Level 2 across L1-L2 at 240 V: 7200 W / 240 V = 30 A, the same current in both legs
    a = el.line_current_a(SPLIT, (L1, L2), 7_200.0)
    assert a == 30.0
    assert el.per_line_a(SPLIT, (L1, L2), a) == (30.0, 30.0)
    # a 120 V load on L1-N: 1440 W / 120 V = 12 A, in L1 only
    b = el.line_current_a(SPLIT, (L1,), 1_440.0)
    assert b == 12.0
    assert el.per_line_a(SPLIT, (L1,), b) == (12.0, 0.0)
    assert el.per_line_a(SPLIT, (L2,), b) == (0.0, 12.0)
    # 1080 W at pf 0.9 on L2-N: 1080 / (120 x 0.9) = 10 A
    assert el.line_current_a(SPLIT, (L2,), 1_080.0, power_factor=0.9) == pytest.approx(10.0)
    # conservative, 5 % low: 1140 W / (120 x 0.95 = 114 V) = 10 A
    low = Svc("split-phase", 240.0, 5.0)
    assert el.line_current_a(low, (L1,), 1_140.0, conservative=True) == pytest.approx(10.0)


def test_single_phase_service() -> None:
    # 3680 W at 230 V: 16 A; at 10 % below nominal (207 V): 3680 / 207 = 17.778 A
    assert el.line_current_a(SINGLE, (L1,), 3_680.0) == 16.0
    low = Svc("single-phase", 230.0, 10.0)
    assert el.line_current_a(low, (L1,), 3_680.0, conservative=True) == pytest.approx(17.778, abs=1e-3)


def test_power_is_the_inverse_of_current() -> None:
    assert el.power_w(SPLIT, (L1, L2), 30.0) == 7_200.0  # 30 A x 240 V
    assert el.power_w(SPLIT, (L2,), 12.0) == 1_440.0  # 12 A x 120 V
    # 15.877 A x sqrt 3 x 400 V = 11000 W
    assert el.power_w(TP400, THREE, 15.877132) == pytest.approx(11_000.0, abs=1e-3)
    svc = Svc("three-phase", 480.0, 5.0)
    for lines in (THREE, (L1,), (L1, L3)):
        w = el.power_w(svc, lines, 67.3, efficiency=0.95, power_factor=0.99, conservative=True)
        back = el.line_current_a(svc, lines, w, efficiency=0.95, power_factor=0.99, conservative=True)
        assert back == pytest.approx(67.3)


def test_ac_conversions_at_unity_power_factor_and_nominal_voltage() -> None:
    tol = Svc("three-phase", 400.0, 10.0)  # the tolerance does not apply to a reported draw
    # 6900 W three-phase: 6900 / 692.820 = 9.959 A; 2300 W on L1-N: 2300 / 230.940 = 9.959 A
    assert el.ac_line_current_a(tol, THREE, 6_900.0) == pytest.approx(9.959, abs=1e-3)
    assert el.ac_line_current_a(tol, (L1,), 2_300.0) == pytest.approx(9.959, abs=1e-3)
    assert el.ac_line_current_a(SPLIT, (L1, L2), 2_400.0) == 10.0  # 2400 / 240
    assert el.ac_power_w(SPLIT, (L2,), 10.0) == 1_200.0  # 10 A x 120 V


def test_the_whole_service() -> None:
    # every line at 100 A: sqrt 3 x 400 x 100 = 69282 W; split-phase 2 x 120 x 100 = 240 x 100 = 24000 W;
    # single-phase 230 x 100 = 23000 W
    assert el.service_power_w(TP400, 100.0) == pytest.approx(69_282.032, abs=1e-3)
    assert el.service_power_w(SPLIT, 100.0) == 24_000.0
    assert el.service_power_w(SINGLE, 100.0) == 23_000.0
    assert el.service_line_current_a(SPLIT, 24_000.0) == 100.0


def test_charger_limits_to_line_current() -> None:
    tol = Svc("three-phase", 400.0, 5.0)
    # AC limits are line current already, whatever the voltage
    assert el.limit_to_line_a(tol, Charger("ac", (L1,)), 16.0) == 16.0
    assert el.line_a_to_limit(tol, Charger("ac", THREE), 16.0) == 16.0
    # DC, three-phase, eff 0.95, pf 0.99, at 95 % of 400 V = 380 V:
    # 22 kW / (sqrt 3 x 380 x 0.9405 = 619.018) = 35.540 A
    dcc = Charger("dc", THREE, 0.95, 0.99)
    assert el.limit_to_line_a(tol, dcc, 22_000.0) == pytest.approx(35.540, abs=1e-3)
    assert el.line_a_to_limit(tol, dcc, 35.540) == pytest.approx(22_000.0, abs=0.5)
    # the simulators' physics: nominal voltage, 22000 / (692.820 x 0.9405 = 651.598) = 33.763 A
    assert el.dc_line_current_a(tol, dcc, 22_000.0) == pytest.approx(33.763, abs=1e-3)


def test_site_delegates_to_the_electrical_model() -> None:
    # the factory's service: 400 V three-phase, 0 % tolerance; dc(): efficiency 1, pf 1
    site = make_site(chargers=[
        dc("D1", phases=1, phase_rotation="L2", min_power_w=5_000.0, max_power_w=11_000.0),
        dc("D3", min_power_w=5_000.0, max_power_w=11_000.0),
        ac("A", phases=1, phase_rotation="L3"),
    ])
    # 11 kW line-to-neutral: 47.631 A (this was 11000 / 400 = 27.5 A before the electrical module)
    assert site.to_line_a(site.chargers["D1"], 11_000.0) == pytest.approx(47.631, abs=1e-3)
    assert site.to_line_a(site.chargers["D3"], 11_000.0) == pytest.approx(15.877, abs=1e-3)
    assert site.from_line_a(site.chargers["D1"], 47.631397) == pytest.approx(11_000.0, abs=1e-3)
    assert site.to_line_a(site.chargers["A"], 20.0) == 20.0
