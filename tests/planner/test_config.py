"""[planner] config: what is refused with which key path, and the needs it gives a session."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.confkit import Table
from gateway.errors import ConfigError
from gateway.planner.config import configured_needs, parse_planner

CHARGERS = {"VAN001": object(), "VAN002": object()}
CLASSES = {"fleet": object(), "guest": object()}


def _parse(d: dict[str, Any]) -> Any:
    return parse_planner(Table(d, "planner"), chargers=CHARGERS, priorities=CLASSES, timezone="UTC")


@pytest.mark.parametrize(("d", "path", "reason"), [
    ({"slot_s": 0.2}, "planner.slot_s", ""),
    ({"replan_s": 600, "max_plan_age_s": 60}, "planner.max_plan_age_s", "at least replan_s"),
    ({"defaults": {"trucks": {"energy_kwh": 5}}}, "planner.defaults.trucks", "unknown priority class"),
    ({"defaults": {"fleet": {"departure": "5am"}}}, "planner.defaults.fleet.departure", "HH:MM"),
    ({"defaults": {"fleet": {"energy_wh": 5}}}, "planner.defaults.fleet.energy_wh", ""),
    ({"chargers": {"NOPE": {"energy_kwh": 5}}}, "planner.chargers.NOPE", "unknown charger"),
    ({"vehicles": [{"id_token": "T", "target_soc_pct": 90}]}, "planner.vehicles[0].target_soc_pct", "capacity_kwh"),
    ({"vehicles": [{"id_token": "T"}, {"id_token": "T"}]}, "planner.vehicles[1].id_token", "duplicate"),
    ({"assumed_taper_kwh": -1}, "planner.assumed_taper_kwh", ""),
    ({"assumed_taper_end_pct": 0}, "planner.assumed_taper_end_pct", ""),
])
def test_refused_with_the_key_path(d: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as ei:
        _parse(d)
    assert ei.value.path == path and reason in str(ei.value)


def test_the_assumed_taper_is_configured_in_kwh_and_percent() -> None:
    assert _parse({}).solver.assumed_taper_wh == 15000.0
    s = _parse({"assumed_taper_kwh": 0, "assumed_taper_end_pct": 35})
    assert s.solver.assumed_taper_wh == 0.0 and s.solver.assumed_taper_end_fraction == 0.35


def test_vehicle_then_charger_then_class() -> None:
    s = _parse({"defaults": {"fleet": {"departure": "05:00", "energy_kwh": 60, "expect_vehicles": True}},
                "chargers": {"VAN002": {"energy_kwh": 70}},
                "vehicles": [{"id_token": "FLEET-7", "capacity_kwh": 75, "target_soc_pct": 100, "departure": "04:45"}]})
    arrive = datetime(2026, 1, 13, 18, 0, tzinfo=UTC).timestamp()
    five = datetime(2026, 1, 14, 5, 0, tzinfo=UTC).timestamp()
    n = configured_needs(s, charger="VAN001", priority="fleet", id_token=None, started_wall=arrive)
    assert n is not None and n.energy_wh == 60_000.0 and n.departure_wall == five and n.source == "class:fleet"
    n2 = configured_needs(s, charger="VAN002", priority="fleet", id_token=None, started_wall=arrive)
    assert n2 is not None and n2.energy_wh == 70_000.0 and n2.departure_wall == five
    n3 = configured_needs(s, charger="VAN001", priority="fleet", id_token="FLEET-7", started_wall=arrive)
    assert n3 is not None and n3.departure_wall == five - 900 and n3.target_soc == 1.0 and n3.capacity_wh == 75_000.0
    assert n3.energy_wh == 60_000.0  # the profile's target SoC needs the EV's SoC; until then the class default
    assert configured_needs(s, charger="VAN001", priority="guest", id_token=None, started_wall=arrive) is None
    assert s.classes["fleet"].expect_vehicles


def test_the_site_config_reads_planner_with_key_paths() -> None:
    from gateway.config import site_from_dict
    from tests.factories import ac, site_dict

    d = site_dict(chargers=[ac("VAN001", phases=3, priority="fleet")], priorities={"fleet": 1.0})
    d["planner"] = {"defaults": {"fleet": {"departure": "05:00", "energy_kwh": 60}}}
    site = site_from_dict(d)
    assert site.planner.enabled and site.planner.classes["fleet"].energy_wh == 60_000.0
    assert not site_from_dict(site_dict(chargers=[ac("A", phases=3)])).planner.enabled  # no [planner]: off
    d["planner"] = {"defaults": {"fleet": {"departure_s": 5}}}
    with pytest.raises(ConfigError) as ei:
        site_from_dict(d)
    assert ei.value.path == "planner.defaults.fleet.departure_s"
