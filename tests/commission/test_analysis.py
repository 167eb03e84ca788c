"""The commissioning analyses and the report, from recorded values (no daemon)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from gateway.commission import loadtest, verify, wiring
from gateway.commission.report import load_calculation, render_html, verdict
from gateway.config import site_from_dict
from gateway.ctl import site_info
from tests.commission.rig import site


@pytest.fixture
def info() -> dict[str, Any]:
    return site_info(site_from_dict(site()))


def _step(cid: str, expected: int, moved_phase: int, step: float = 30.0, meter_step: float = 30.0) -> wiring.PhaseStep:
    high = [40.0, 40.0, 40.0]
    low = list(high)
    low[moved_phase] -= meter_step
    return wiring.PhaseStep(cid, "m-p1", expected, high, low, step)


def test_swapped_meter_phases_are_named_with_the_fix(info: dict[str, Any]) -> None:
    found = wiring.analyse_phase_steps(info, [_step("CP1", 0, 1), _step("CP2", 1, 0)])
    phase = [f for f in found if f.check == "phase"]
    assert [f.ok for f in phase] == [False, False]
    assert "CP1 is configured on L1 but the meter's L2 moved" in phase[0].detail
    assert all("meter m-p1" in f.fix and "['L2', 'L1', 'L3']" in f.fix for f in phase)


def test_one_charger_on_another_phase_is_that_charger(info: dict[str, Any]) -> None:
    found = wiring.analyse_phase_steps(info, [_step("CP1", 0, 0), _step("CP2", 1, 2)])
    bad = [f for f in found if f.check == "phase" and not f.ok]
    assert len(bad) == 1 and bad[0].charger == "CP2"
    assert 'phase_rotation = "L3"' in bad[0].fix


def test_ct_ratio_off_by_two(info: dict[str, Any]) -> None:
    found = wiring.analyse_phase_steps(info, [_step("CP1", 0, 0, step=30.0, meter_step=15.0)])
    ct = next(f for f in found if f.check == "ct_ratio")
    assert not ct.ok and "ct_ratio = 2" in ct.fix


def _status(power_sign: float, valid: bool = True, reason: str = "") -> dict[str, Any]:
    reading = {"current_a": [30.0, 30.0, 0.0], "power_w": [power_sign * 6900.0, power_sign * 6900.0, 0.0],
               "valid": valid, "reason": reason, "at": 0.0, "total_power_w": power_sign * 13800.0}
    return {
        "meters": {"m-main": dict(reading, power_w=[6900.0] * 3, current_a=[40.0] * 3, valid=True, reason=""),
                   "m-p1": reading},
        "chargers": {"CP1": {"draw_a": [30.0, 0.0, 0.0]}, "CP2": {"draw_a": [0.0, 30.0, 0.0]}},
    }


def test_inverted_ct_is_found(info: dict[str, Any]) -> None:
    ok = wiring.sign_checks(info, _status(+1.0))
    assert all(f.ok for f in ok)
    bad = [f for f in wiring.sign_checks(info, _status(-1.0)) if not f.ok]
    assert [f.meter for f in bad] == ["m-p1"] and "invert = true" in bad[0].fix
    refused = wiring.sign_checks(info, _status(-1.0, valid=False, reason="export_on_non_exporting_circuit:-13800W"))
    assert [f.meter for f in refused if not f.ok] == ["m-p1"]


def _samples(follows: bool) -> list[dict[str, Any]]:
    """CP1 at 32 A; the load goes on at t=10: its limit drops to 10 A at 10.1, accepted at 10.2; the EV follows
    at 13 (or never); the load goes off at 30, the limit is back at 35."""
    out = []
    for k in range(0, 45):
        t = float(k)
        lim = 32.0 if t < 10.1 or t >= 35 else 10.0
        draw = 32.0 if t < 13 or not follows else (10.0 if t < 37 else 32.0)
        out.append({"t": t, "mode": "normal", "meter_a": [40.0, 40.0, 40.0], "meter_at": t, "chargers": {
            "CP1": {"limit": lim, "limit_line_a": lim, "accepted_limit": lim, "accepted_at": t if t >= 10.1 else 0.0,
                    "draw": draw, "draw_at": t - 0.5, "online": True},
            "CP2": {"limit": 32.0, "limit_line_a": 32.0, "accepted_limit": 32.0, "accepted_at": 0.0, "draw": 0.0,
                    "draw_at": t, "online": True},
        }})
    return out


def test_response_times_and_a_charger_that_ignores_its_limit(info: dict[str, Any]) -> None:
    for follows in (True, False):
        test = {"circuit": "p1", "samples": _samples(follows), "t_on": 10.0, "t_off": 30.0}
        res = {r["charger"]: r for r in loadtest.analyse(info, test)}
        cp1 = res["CP1"]
        assert cp1["limit_lowered"] == 10.0 and cp1["decided_s"] == pytest.approx(1.0)
        assert cp1["accepted_s"] == pytest.approx(1.0)
        assert res["CP2"]["status"] == "not lowered" and res["CP2"]["passed"]
        if follows:
            assert cp1["status"] == "pass" and cp1["under_s"] == pytest.approx(2.5)  # measured at 12.5
            assert cp1["recovered_s"] == pytest.approx(5.0)
        else:
            assert not cp1["passed"] and cp1["status"] == "FAIL: it does not follow its limit"


def _result(info: dict[str, Any], firmware: str = "sim-1") -> dict[str, Any]:
    chargers = [{"id": c["id"], "vendor": "V", "model": "M", "serial": c["id"], "firmware": firmware,
                 "ocpp_version": c["ocpp_version"], "security_profile": 1, "online": True,
                 "purpose": "ChargePointMaxProfile", "profiles_accepted": "fail-safe @ 0, limit @ 1",
                 "max_stack_level": "8", "failsafe_installed": True, "follows_limit": "yes", "kind": c["kind"],
                 "unit": c["unit"]} for c in info["chargers"]]
    return {"site": info, "version": "1.2.3", "config_hash": "abc123", "date": "2026-12-01 10:00 UTC",
            "steps": [{"step": "inventory", "ok": True, "s": 0.0}], "mode": "normal",
            "inventory": {"chargers": chargers, "meters": []}}


def test_verify_names_changed_firmware_lost_profile_and_new_charger(info: dict[str, Any]) -> None:
    before = _result(info)
    assert verify.compare(before, copy.deepcopy(before)) == []
    after = _result(info, firmware="sim-2")
    after["inventory"]["chargers"][1]["failsafe_installed"] = False
    after["inventory"]["chargers"].append(dict(after["inventory"]["chargers"][0], id="NEW"))
    kinds = {(c["kind"], c["charger"]) for c in verify.compare(before, after)}
    assert ("firmware_changed", "CP1") in kinds and ("profile_lost", "CP2") in kinds and ("new_charger", "NEW") in kinds


def test_load_calculation_takes_the_ems_setpoint_as_the_load(info: dict[str, Any]) -> None:
    calc = {c["circuit"]: c for c in load_calculation(info)}
    svc = calc["service"]
    assert svc["setpoint_a"] == 98.0 and svc["ev_allowed_a"] == 78.0  # 100 A - 2 A margin - 20 A non-EV
    assert svc["calc_load_a"] == pytest.approx(20.0 + min(78.0, svc["connected_a"]))
    assert calc["p1"]["connected_a"] == 32.0 and calc["p1"]["failsafe_ok"]


def test_report_has_every_section_and_names_what_to_fix(info: dict[str, Any]) -> None:
    r = _result(info)
    ok, todo = verdict(r)
    assert ok and not todo
    page = render_html(r)
    for needle in ("Circuit tree", "Setpoints and fail-safe", "Load calculation (NEC 625.42(A), 750.30)",
                   "Inventory", "Marking and signatures", "Authority having jurisdiction", "abc123", "1.2.3",
                   "PASS"):
        assert needle in page
    r["inventory"]["chargers"][0]["follows_limit"] = "NO"
    ok, todo = verdict(r)
    assert not ok and any("CP1 does not follow its limit" in t for t in todo)
    assert "ACTION NEEDED" in render_html(r)
