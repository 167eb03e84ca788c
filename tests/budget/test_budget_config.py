"""[budget] configuration: what is refused, with which key path; check-config shows the target in A."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gateway.config import site_from_dict
from gateway.errors import ConfigError
from tests.factories import ac, site_dict

ROOT = Path(__file__).resolve().parents[2]
WEEK = {"name": "flat", "start": "00:00", "end": "24:00", "price_per_kwh": 0.25}


def _base(budget: dict[str, Any] | None = None, *, meter_map: str = "eastron_sdm630") -> dict[str, Any]:
    d = site_dict(limit_a=100, chargers=[ac("A", phases=3)],
                  meters=[{"id": "m-main", "circuit": "service", "map": meter_map}])
    if budget is not None:
        d["budget"] = budget
    return d


def _refused(d: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        site_from_dict(d)
    return ei.value


def test_a_full_budget_is_accepted() -> None:
    site = site_from_dict(_base({
        "timezone": "Europe/Berlin",
        "demand": {"target_kw": 40, "interval_min": 30, "raise_to_month_peak": True},
        "tariff": {"seasons": [
            {"name": "summer", "start_month": 4, "end_month": 9, "periods": [
                {"name": "peak", "days": ["mon-fri"], "start": "08:00", "end": "20:00", "price_per_kwh": 0.4,
                 "cap_kw": 30},
                # past midnight: Sunday to Thursday nights run into Monday to Friday mornings
                {"name": "night", "days": ["sun-thu"], "start": "20:00", "end": "08:00", "price_per_kwh": 0.2},
                {"name": "weekend", "days": ["fri"], "start": "20:00", "end": "24:00", "price_per_kwh": 0.2},
                {"name": "weekend", "days": ["sat"], "start": "00:00", "end": "24:00", "price_per_kwh": 0.2},
                {"name": "weekend", "days": ["sun"], "start": "00:00", "end": "20:00", "price_per_kwh": 0.2},
            ]},
            {"name": "winter", "start_month": 10, "end_month": 3, "periods": [WEEK]},
        ]},
    }))
    b = site.budget
    assert b.timezone == "Europe/Berlin" and b.demand is not None and b.demand.interval_s == 1800
    assert b.tariff is not None and [s.name for s in b.tariff.seasons] == ["summer", "winter"]
    assert b.tariff.seasons[1].months == frozenset({10, 11, 12, 1, 2, 3})
    # a night overlapping the weekend is refused with both periods named
    d = _base({"tariff": {"periods": [
        {"name": "day", "days": ["mon-fri"], "start": "08:00", "end": "20:00", "price_per_kwh": 0.4},
        {"name": "night", "days": ["mon-fri"], "start": "20:00", "end": "08:00", "price_per_kwh": 0.2},
        {"name": "weekend", "days": ["sat-sun"], "start": "00:00", "end": "24:00", "price_per_kwh": 0.2},
    ]}})
    err = _refused(d)
    assert err.path == "budget.tariff.periods[2]" and "overlaps period 'night'" in err.reason
    assert "sat 00:00" in err.reason


REFUSED: list[tuple[dict[str, Any], str, str]] = [
    ({"demand": {"target_w": 40000}}, "budget.demand.target_w", "wrong unit"),
    ({"demand": {"target_kw": 40, "interval_s": 900}}, "budget.demand.interval_s", "interval_min"),
    ({"demand": {"target_kw": 40, "interval_min": 20}}, "budget.demand.interval_min", "15, 30, 60"),
    ({"demand": {"target_kw": 70}}, "budget.demand.target_kw", "above the service's capacity"),
    ({"demand": {"target_kw": 0}}, "budget.demand.target_kw", "must be > 0"),
    ({"demand": {"target_kw": 40, "forecast_min": 5}}, "budget.demand.forecast_min", "unknown key"),
    ({"timezone": "Mars/Olympus", "demand": {"target_kw": 40}}, "budget.timezone", "unknown timezone"),
    ({"tariff": {"timezone": "Europe/Berln", "periods": [WEEK]}}, "budget.tariff.timezone", "unknown timezone"),
    ({"tariff": {"periods": [{**WEEK, "end": "12:00"}]}}, "budget.tariff.periods", "no period covers mon 12:00"),
    ({"tariff": {"periods": [WEEK, {**WEEK, "name": "x", "start": "10:00", "end": "11:00", "days": ["tue"]}]}},
     "budget.tariff.periods[1]", "overlaps period 'flat'"),
    ({"tariff": {"periods": [{**WEEK, "price_per_wh": 0.1}]}}, "budget.tariff.periods[0].price_per_wh",
     "price_per_kwh"),
    ({"tariff": {"periods": [{**WEEK, "cap_w": 1000}]}}, "budget.tariff.periods[0].cap_w", "cap_kw"),
    ({"tariff": {"periods": [{**WEEK, "start": "8am"}]}}, "budget.tariff.periods[0].start", "HH:MM"),
    ({"tariff": {"periods": [{**WEEK, "days": ["monday"]}]}}, "budget.tariff.periods[0].days", "unknown day"),
    ({"tariff": {"periods": [{**WEEK, "start": "10:00", "end": "10:00"}]}}, "budget.tariff.periods[0].end",
     "equals start"),
    ({"tariff": {"seasons": [{"name": "s", "start_month": 1, "end_month": 6, "periods": [WEEK]}]}},
     "budget.tariff.seasons", "months 7, 8, 9, 10, 11, 12 are in no season"),
    ({"tariff": {"seasons": [{"name": "a", "start_month": 1, "end_month": 6, "periods": [WEEK]},
                             {"name": "b", "start_month": 6, "end_month": 12, "periods": [WEEK]}]}},
     "budget.tariff.seasons[1].start_month", "overlaps season 'a'"),
    ({"tariff": {"periods": [WEEK], "seasons": [{"name": "a", "start_month": 1, "end_month": 12,
                                                 "periods": [WEEK]}]}}, "budget.tariff.periods", "not both"),
    ({"tariff": {}}, "budget.tariff.periods", "at least one period"),
    ({"solr": {}}, "budget.solr", "unknown key"),
]


@pytest.mark.parametrize(("budget", "key", "words"), REFUSED, ids=[r[1] + ":" + r[2] for r in REFUSED])
def test_refused_with_key_path_and_reason(budget: dict[str, Any], key: str, words: str) -> None:
    err = _refused(_base(copy.deepcopy(budget)))
    assert err.path == key and words in err.reason, (err.path, err.reason)


def test_gaps_are_allowed_when_said_so() -> None:
    site = site_from_dict(_base({"tariff": {"allow_gaps": True, "periods": [{**WEEK, "end": "12:00"}]}}))
    assert site.budget.tariff is not None and -1 in site.budget.tariff.seasons[0].week


def test_demand_needs_a_service_meter() -> None:
    d = _base({"demand": {"target_kw": 40}})
    d["meters"] = []
    err = _refused(d)
    assert err.path == "budget.demand" and "meter on the service" in err.reason


def test_register_measurement_needs_the_register() -> None:
    d = _base({"demand": {"target_kw": 40, "measurement": "register"}})
    d["meters"][0]["invert"] = True  # an inverted CT: that register is export
    err = _refused(d)
    assert err.path == "budget.demand.measurement" and "energy_import_wh" in err.reason


def test_timezone_falls_back_to_the_tariffs() -> None:
    site = site_from_dict(_base({"tariff": {"timezone": "America/Los_Angeles", "periods": [WEEK]},
                                 "demand": {"target_kw": 40}}))
    assert site.budget.timezone == "America/Los_Angeles"


def _toml(budget: str) -> str:
    return f"""
[site]
id = "t"
[service]
voltage_ll_v = 400
phases = 3
limit_a = 100
[[meters]]
id = "m"
circuit = "service"
host = "127.0.0.1"
[[chargers]]
id = "A"
circuit = "service"
phases = 3
max_current_a = 32
failsafe_current_a = 6
{budget}
"""


def _check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "site.toml"
    f.write_text(text)
    return subprocess.run([sys.executable, "-m", "gateway", "check-config", str(f)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60)


def test_check_config_shows_the_target_in_amperes(tmp_path: Path) -> None:
    r = _check(tmp_path, _toml('[budget]\ntimezone = "Europe/Berlin"\n[budget.demand]\ntarget_kw = 41.569\n'
                               '[budget.tariff]\n[[budget.tariff.periods]]\nname = "flat"\nstart = "00:00"\n'
                               'end = "24:00"\nprice_per_kwh = 0.3\ncap_kw = 20\n'))
    assert r.returncode == 0, r.stderr
    assert "demand target 41.569 kW per 15-minute interval = 60.0 A per line at the service" in r.stdout
    assert "flat: mon,tue,wed,thu,fri,sat,sun 00:00-24:00 at 0.3/kWh, cap 20 kW = 28.9 A" in r.stdout


def test_check_config_exit_2_names_the_key(tmp_path: Path) -> None:
    r = _check(tmp_path, _toml('[budget]\ntimezone = "Nowhere/Atlantis"\n'))
    assert r.returncode == 2
    assert "budget.timezone" in r.stderr and "unknown timezone" in r.stderr


def test_the_reference_sites_commented_budget_is_valid(tmp_path: Path) -> None:
    text = (ROOT / "gateway" / "data" / "reference-site.toml").read_text()
    head, _, tail = text.partition("# [budget]\n")
    assert tail, "the reference site has a commented [budget] example"
    lines = ["[budget]", *(ln[2:] if ln.startswith("# ") else ln for ln in tail.splitlines())]
    f = tmp_path / "ref.toml"
    f.write_text(head + "\n".join(lines) + "\n")
    r = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(f)], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "demand target 1500 kW per 15-minute interval = 1804.2 A per line at the service" in r.stdout
    assert "on-peak: mon,tue,wed,thu,fri 13:00-19:00 at 0.21/kWh, cap 1200 kW = 1443.4 A" in r.stdout
