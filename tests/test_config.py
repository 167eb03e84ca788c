"""Site configuration: what is refused, with which key path, and the check-config command."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import load_site, site_from_dict, site_from_text
from gateway.errors import ConfigError
from tests.factories import ac, dc, site_dict

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "gateway" / "data" / "reference-site.toml"  # etc/gateway.toml links to it
EXAMPLES = [REFERENCE, *sorted((ROOT / "etc" / "examples").glob("*.toml"))]


def _base() -> dict[str, Any]:
    return site_dict(
        limit_a=100,
        circuits=[{"id": "p1", "parent": "service", "limit_a": 63}],
        chargers=[ac("A", "p1", phases=3, failsafe_current_a=10), ac("B", "p1", phases=3)],
    )


def _refused(d: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        site_from_dict(d)
    return ei.value


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_are_valid(path: Path) -> None:
    site = load_site(path)
    assert site.chargers
    budget = site.failsafe_budget()
    for cid, per in budget.items():
        assert max(per) <= site.circuits[cid].limit_a


def test_reference_site_is_the_20_stall_dc_site() -> None:
    site = load_site(REFERENCE)
    assert site.service.limit_a == 4000 and site.service.voltage_ll_v == 480 and site.service.phases == 3
    assert len(site.chargers) == 20 and all(c.kind == "dc" for c in site.chargers.values())
    assert {c.ocpp_version for c in site.chargers.values()} == {"1.6", "2.0.1"}
    assert max(c.max_limit for c in site.chargers.values()) == 500_000


def test_depot_spreads_single_phase_chargers_over_the_phases() -> None:
    site = load_site(ROOT / "etc" / "examples" / "depot-200.toml")
    assert len(site.chargers) == 200
    per_phase = [sum(1 for c in site.chargers.values() if p in c.line_phases) for p in range(3)]
    assert max(per_phase) - min(per_phase) <= 2
    assert {c.priority for c in site.chargers.values()} == {"fleet", "guest"}


def test_garage_is_a_120_240_v_split_phase_100a_panel() -> None:
    site = load_site(ROOT / "etc" / "examples" / "garage-4xL2.toml")
    assert site.service.wiring == "split-phase" and site.service.phases == 2
    assert site.service.voltage_ll_v == 240 and site.service.limit_a == 100 and len(site.chargers) == 4
    assert all(c.line_phases == (0, 1) for c in site.chargers.values())  # Level 2: L1-L2, 240 V
    assert [m.phase_map for m in site.meters.values()] == [(0, 1)]  # the meter reads both legs
    # per leg: 4 x 10 A fail-safe + 50 A worst-case building load = 90 A
    assert site.failsafe_budget()["service"] == (90.0, 90.0)


def mutate(path: list[Any], value: Any) -> dict[str, Any]:
    d = copy.deepcopy(_base())
    cur: Any = d
    for k in path[:-1]:
        cur = cur[k]
    if value is _DELETE:
        del cur[path[-1]]
    else:
        cur[path[-1]] = value
    return d


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "key", "words"),
    [
        (["service", "limt_a"], 5, "service.limt_a", "unknown key"),
        (["chargers", 0, "max_current_kw"], 5, "chargers[0].max_current_kw", "wrong unit"),
        (["service", "limit_a"], "100", "service.limit_a", "expected a number"),
        (["service", "limit_a"], True, "service.limit_a", "expected a number"),
        (["service", "limit_a"], -1, "service.limit_a", "must be >"),
        (["service", "limit_a"], _DELETE, "service.limit_a", "required key is missing"),
        (["service", "phases"], 2, "service.phases", "must be 1 or 3"),
        (["service", "wiring"], "two-phase", "service.wiring", "must be one of"),
        (["chargers", 0, "phases"], _DELETE, "chargers[0].phases", "required for an AC charger on a three-phase"),
        (["chargers", 1, "id"], "A", "chargers[1].id", "duplicate charger id"),
        (["circuits", 0, "id"], "service", "circuits[0].id", "duplicate circuit id"),
        (["chargers", 0, "min_current_a"], 40, "chargers[0].min_current_a", "exceeds the maximum"),
        (["chargers", 0, "failsafe_current_a"], 3, "chargers[0].failsafe_current_a", "between 0 and the minimum"),
        (["chargers", 0, "circuit"], "nowhere", "chargers[0].circuit", "unknown circuit"),
        (["circuits", 0, "parent"], "nowhere", "circuits[0].parent", "no path to the service"),
        (["chargers", 0, "priority"], "vip", "chargers[0].priority", "unknown priority class"),
        (["chargers", 0, "ocpp_version"], "1.5", "chargers[0].ocpp_version", "must be one of"),
        (["chargers", 0, "phase_rotation"], "L1L3L2", "chargers[0].phase_rotation", "must be one of"),
        (["control", "tick_s"], 20, "control.tick_s", "must be <= 10"),
        (["meters", 0, "circuit"], "nowhere", "meters[0].circuit", "unknown circuit"),
    ],
)
def test_refused_with_key_path_and_reason(path: list[Any], value: Any, key: str, words: str) -> None:
    d = mutate(path, value) if path[0] != "control" else {**_base(), "control": {path[1]: value}}
    err = _refused(d)
    assert err.path == key
    assert words in err.reason


def test_dc_charger_limited_in_amperes_is_a_unit_error() -> None:
    d = site_dict(chargers=[dc("D", max_current_a=100)])
    err = _refused(d)
    assert err.path == "chargers[0].max_current_a" and "in W" in err.reason


def test_ac_charger_limited_in_watts_is_a_unit_error() -> None:
    d = site_dict(chargers=[ac("A", max_power_w=7000)])
    err = _refused(d)
    assert err.path == "chargers[0].max_power_w" and "in A" in err.reason


def test_cycle_in_the_circuit_tree() -> None:
    d = site_dict(
        circuits=[
            {"id": "a", "parent": "b", "limit_a": 50},
            {"id": "b", "parent": "a", "limit_a": 50},
        ]
    )
    err = _refused(d)
    assert "cycle" in err.reason and err.path.endswith(".parent")


def test_minimum_above_a_circuit_limit() -> None:
    d = site_dict(circuits=[{"id": "tiny", "parent": "service", "limit_a": 10}],
                  chargers=[ac("A", "tiny", min_current_a=16, max_current_a=32)])
    err = _refused(d)
    assert err.path == "chargers[0].min_current_a" and "'tiny'" in err.reason


def test_failsafe_budget_exceeded_names_circuit_and_phase() -> None:
    # 3 x 20 A fail-safe + 50 A worst-case non-EV = 110 A > 100 A on L1
    d = site_dict(
        limit_a=100,
        worst_case_non_ev_a=50,
        chargers=[ac(f"C{i}", failsafe_current_a=20, phase_rotation="L1") for i in range(3)],
    )
    err = _refused(d)
    assert err.path == "service"
    assert "fail-safe budget exceeded" in err.reason and "phase L1" in err.reason


def test_failsafe_budget_counts_the_circuits_own_worst_case_load() -> None:
    d = site_dict(
        limit_a=400,
        circuits=[{"id": "p", "parent": "service", "limit_a": 40, "worst_case_non_ev_a": 25}],
        chargers=[ac("A", "p", failsafe_current_a=10), ac("B", "p", failsafe_current_a=10)],
    )
    err = _refused(d)
    assert err.path == "circuits[0]" and "'p'" in err.reason


def test_worst_case_non_ev_load_defaults_to_the_childrens_sum() -> None:
    d = site_dict(
        limit_a=400,
        worst_case_non_ev_a=None,
        circuits=[
            {"id": "p1", "parent": "service", "limit_a": 100, "worst_case_non_ev_a": 30},
            {"id": "p2", "parent": "service", "limit_a": 100, "worst_case_non_ev_a": 20},
        ],
    )
    site = site_from_dict(d)
    assert site.circuits["service"].worst_case_non_ev_a == 50


def test_toml_syntax_error_reports_the_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text('[site]\nid = "x"\n\n[service]\nlimit_a = = 5\n')
    with pytest.raises(ConfigError) as ei:
        load_site(f)
    assert ei.value.line == 5
    assert str(f) in str(ei.value)


def test_missing_site_table() -> None:
    with pytest.raises(ConfigError) as ei:
        site_from_text("[service]\nvoltage_ll_v = 400\nlimit_a = 10\n")
    assert ei.value.path == "site"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60)


def test_check_config_prints_tree_chargers_and_budget() -> None:
    r = _cli("check-config", str(REFERENCE))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "service [service] limit 4000 A/phase" in out
    assert "cab-3 [cabinet] limit 800 A/phase" in out
    assert "* DC-10 DC OCPP 2.0.1" in out
    assert "fail-safe budget: L1 538.5, L2 538.5, L3 538.5 A of 800 A" in out
    assert out.rstrip().endswith("configuration OK")


def test_check_config_exit_2_with_key_path(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    text = (ROOT / "etc" / "examples" / "garage-4xL2.toml").read_text().replace(
        "failsafe_current_a = 10      #", "failsafe_current_a = 30      #"
    )
    f.write_text(text)
    r = _cli("check-config", str(f))
    assert r.returncode == 2
    assert "service: fail-safe budget exceeded" in r.stderr
    assert r.stdout == ""


def test_check_config_unreadable_file_is_exit_2(tmp_path: Path) -> None:
    r = _cli("check-config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "cannot read config" in r.stderr


def test_version_and_help() -> None:
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("ems-gateway ")
    r = _cli("--help")
    assert r.returncode == 0 and "check-config" in r.stdout


# ---- wiring: three-phase, single-phase, 120/240 V split-phase ------------------------------------
def _split(chargers: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    d = site_dict(voltage_ll_v=240.0, limit_a=100, chargers=chargers, **kw)
    del d["service"]["phases"]
    d["service"]["wiring"] = "split-phase"
    for m in d["meters"]:
        m.setdefault("phase_map", ["L1", "L2"])
    return d


def test_wiring_defaults_from_phases() -> None:
    assert site_from_dict(site_dict(phases=3)).service.wiring == "three-phase"
    one = site_from_dict(site_dict(phases=1, voltage_ll_v=230, chargers=[ac("A")]))
    assert one.service.wiring == "single-phase" and one.service.phases == 1
    d = site_dict()
    del d["service"]["phases"]
    assert site_from_dict(d).service.wiring == "three-phase"


def test_wiring_and_phases_must_agree() -> None:
    d = site_dict(phases=1)
    d["service"]["wiring"] = "three-phase"
    err = _refused(d)
    assert err.path == "service.phases" and "contradicts" in err.reason
    d = _split([])
    d["service"]["phases"] = 1
    assert _refused(d).path == "service.phases"


def test_split_phase_service_with_line_to_line_and_line_to_neutral_chargers() -> None:
    site = site_from_dict(_split([
        ac("L2-A", phase_rotation="L1-L2", max_current_a=40),
        ac("OUT-1", phase_rotation="L1", max_current_a=12, failsafe_current_a=12),
        ac("OUT-2", phase_rotation="L2", max_current_a=12),
        dc("DC", phase_rotation="L1-L2", max_power_w=7_200, min_power_w=1_200, failsafe_power_w=2_400),
    ]))
    assert site.service.phases == 2
    ch = site.chargers
    assert ch["L2-A"].line_phases == (0, 1) and ch["OUT-1"].line_phases == (0,) and ch["OUT-2"].line_phases == (1,)
    # DC across both legs, efficiency 1, pf 1, 0 % tolerance: 7200 W / 240 V = 30 A in each leg
    assert site.to_line_a(ch["DC"], 7_200) == pytest.approx(30.0)
    # fail-safe per leg: L1 = OUT-1 12 A + DC 2400 W / 240 V = 10 A -> 22 A; L2 = 10 A
    assert site.failsafe_budget()["service"] == pytest.approx((22.0, 10.0))


@pytest.mark.parametrize(
    ("charger", "key", "words"),
    [
        (ac("A"), "chargers[0].phase_rotation", "required on a split-phase service"),
        (ac("A", phase_rotation="L3"), "chargers[0].phase_rotation", "must be one of L1, L2, L1-L2"),
        (ac("A", phase_rotation="L2-L3"), "chargers[0].phase_rotation", "must be one of"),
        (ac("A", phases=3), "chargers[0].phases", "cannot sit on a split-phase service"),
    ],
)
def test_split_phase_charger_refusals(charger: dict[str, Any], key: str, words: str) -> None:
    err = _refused(_split([charger]))
    assert err.path == key and words in err.reason


def test_split_phase_meter_cannot_map_l3() -> None:
    d = _split([ac("A", phase_rotation="L1-L2")], meters=[{"id": "m", "circuit": "service",
                                                            "phase_map": ["L1", "L2", "L3"]}])
    err = _refused(d)
    assert err.path == "meters[0].phase_map" and "L3" in err.reason and '["L1", "L2"]' in err.reason


def test_check_config_prints_the_split_phase_wiring() -> None:
    r = _cli("check-config", str(ROOT / "etc" / "examples" / "garage-4xL2.toml"))
    assert r.returncode == 0, r.stderr
    assert "split-phase 120/240 V (legs L1/L2)" in r.stdout
    assert "* garage-1 AC OCPP 1.6 L1-L2 line-to-line 240 V" in r.stdout
    assert "meter meter-panel on L1/L2" in r.stdout
    assert "fail-safe budget: L1 90.0, L2 90.0 A of 100 A" in r.stdout


def test_check_config_prints_line_to_neutral_and_three_phase_chargers(tmp_path: Path) -> None:
    f = tmp_path / "site.toml"
    f.write_text(
        '[site]\nid = "x"\n[service]\nvoltage_ll_v = 400\nphases = 3\nlimit_a = 100\n'
        '[[chargers]]\nid = "A"\ncircuit = "service"\nphases = 3\nmax_current_a = 32\nfailsafe_current_a = 0\n'
        '[[chargers]]\nid = "B"\ncircuit = "service"\nphases = 1\nphase_rotation = "L2"\nmax_current_a = 32\n'
        "failsafe_current_a = 0\n"
    )
    r = _cli("check-config", str(f))
    assert r.returncode == 0, r.stderr
    assert "three-phase 400 V line-to-line, 231 V line-to-neutral (L1/L2/L3)" in r.stdout
    assert "* A AC OCPP 1.6 L1/L2/L3 three-phase 400 V" in r.stdout
    assert "* B AC OCPP 1.6 L2 line-to-neutral 231 V" in r.stdout


# ---- physics: a DC charger line-to-neutral ---------------------------------------------------------
def test_failsafe_budget_counts_a_line_to_neutral_dc_charger_at_the_line_to_neutral_voltage() -> None:
    # 11 kW DC on L1-N of a 400 V service: 11000 / 230.94 = 47.6 A (it was counted as 11000 / 400 = 27.5 A).
    # With 20 A of worst-case non-EV load on a 63 A panel: 47.6 + 20 = 67.6 A > 63 A (27.5 + 20 = 47.5 passed).
    d = site_dict(
        limit_a=100,
        circuits=[{"id": "p", "parent": "service", "limit_a": 63, "worst_case_non_ev_a": 20}],
        chargers=[dc("D", "p", phases=1, phase_rotation="L1", min_power_w=5_000, max_power_w=11_000,
                     failsafe_power_w=11_000)],
    )
    err = _refused(d)
    assert err.path == "circuits[0]" and "phase L1" in err.reason and "67.6 A > limit 63 A" in err.reason


# ---- check-config refusals from issue 11 ----------------------------------------------------------
def test_meter_measuring_fewer_phases_than_its_circuit_is_refused() -> None:
    d = site_dict(
        limit_a=200,
        circuits=[{"id": "panel", "parent": "service", "limit_a": 63}],
        meters=[{"id": "m-main", "circuit": "service"}, {"id": "m-p", "circuit": "panel", "phase_map": ["L1"]}],
        chargers=[ac("A", "panel", phases=3)],
    )
    err = _refused(d)
    assert err.path == "meters[1].phase_map"
    assert "measures L1 only" in err.reason and "L2, L3" in err.reason
    assert "circuits[0].worst_case_non_ev_a" in err.reason


def test_meter_measuring_fewer_phases_is_allowed_with_an_explicit_worst_case() -> None:
    d = site_dict(
        limit_a=200,
        circuits=[{"id": "panel", "parent": "service", "limit_a": 63, "worst_case_non_ev_a": 20}],
        meters=[{"id": "m-main", "circuit": "service"}, {"id": "m-p", "circuit": "panel", "phase_map": ["L1"]}],
        chargers=[ac("A", "panel", phases=3)],
    )
    site = site_from_dict(d)
    assert site.meters["m-p"].phase_map == (0,) and site.circuits["panel"].worst_case_non_ev_a == 20


def test_service_meter_on_one_leg_of_a_split_phase_service() -> None:
    d = _split([ac("A", phase_rotation="L1-L2")], meters=[{"id": "m", "circuit": "service", "phase_map": ["L1"]}],
               worst_case_non_ev_a=None)
    err = _refused(d)
    assert err.path == "meters[0].phase_map" and "service.worst_case_non_ev_a" in err.reason
    d["service"]["worst_case_non_ev_a"] = 30
    assert site_from_dict(d).service.wiring == "split-phase"


def test_ac_charger_phases_required_on_three_phase_only() -> None:
    no_phases = ac("A")
    del no_phases["phases"]
    err = _refused(site_dict(chargers=[copy.deepcopy(no_phases)]))
    assert err.path == "chargers[0].phases" and "required" in err.reason
    one = site_from_dict(site_dict(phases=1, voltage_ll_v=230, chargers=[copy.deepcopy(no_phases)]))
    assert one.chargers["A"].line_phases == (0,)
    # a DC charger on a three-phase service is three-phase unless told otherwise
    assert site_from_dict(site_dict(chargers=[dc("D")])).chargers["D"].line_phases == (0, 1, 2)


@pytest.mark.parametrize("explicit", [True, False])
def test_dc_minimum_of_zero_is_refused(explicit: bool) -> None:
    d = dc("D", min_power_w=0.0)
    if not explicit:
        del d["min_power_w"]
    err = _refused(site_dict(chargers=[d]))
    assert err.path == "chargers[0].min_power_w" and "above 0 W" in err.reason


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("ramp_up_w_per_s", "ramp_up_a_per_s"),
        ("hysteresis_w", "hysteresis_a"),
        ("draw_allowance_w", "draw_allowance_a"),
        ("noncompliance_tolerance_w", "noncompliance_tolerance_a"),
    ],
)
def test_removed_dc_control_keys_name_their_replacement(old: str, new: str) -> None:
    err = _refused(site_dict(control={old: 1000.0}))
    assert err.path == f"control.{old}" and "removed" in err.reason and new in err.reason


def test_dc_control_values_are_line_current() -> None:
    site = site_from_dict(site_dict(control={"ramp_up_a_per_s": 34, "draw_allowance_a": 34, "hysteresis_a": 2.7,
                                             "noncompliance_tolerance_a": 13.5}))
    ctl = site.control
    assert (ctl.ramp_up_a_per_s, ctl.draw_allowance_a, ctl.hysteresis_a, ctl.noncompliance_tolerance_a) == (
        34, 34, 2.7, 13.5)
    assert not hasattr(ctl, "ramp_up_w_per_s")
