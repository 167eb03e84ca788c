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
EXAMPLES = [ROOT / "etc" / "gateway.toml", *sorted((ROOT / "etc" / "examples").glob("*.toml"))]


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
    site = load_site(ROOT / "etc" / "gateway.toml")
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


def test_garage_is_single_phase_100a() -> None:
    site = load_site(ROOT / "etc" / "examples" / "garage-4xL2.toml")
    assert site.service.phases == 1 and site.service.limit_a == 100 and len(site.chargers) == 4


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
    r = _cli("check-config", str(ROOT / "etc" / "gateway.toml"))
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
