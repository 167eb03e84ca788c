"""The HIL rig: scenario parsing, the static baseline, the ideal bound, and one short scenario end to end
against the real gateway process (mosquitto, Modbus RTU over socat, OCPP 1.6J and 2.0.1 chargers in a worker
process, the meters in one of their own, a CMS)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.config import site_from_dict
from gateway.errors import ConfigError
from hil.ideal import ideal_energy
from hil.rig import static_limits
from hil.scenario import load_scenario, scenario_from_dict
from hil.scorecard import jain

SCENARIOS = Path(__file__).resolve().parents[2] / "hil" / "scenarios"
GARAGE = Path(__file__).resolve().parents[2] / "etc" / "examples" / "garage-4xL2.toml"


def tiny(**extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "scenario": {"name": "tiny", "site_config": str(GARAGE), "duration_s": 3600, "time_scale": 60},
        "base_loads": [{"circuit": "service", "points": [[0, 10], [600, 40]]}],
        "arrivals": [{"at_s": 0, "charger": "garage-1", "departure_s": 3600, "capacity_kwh": 50,
                      "soc_start": 0.2, "soc_target": 0.8, "max_current_a": 40, "ac_phases": 1}],
    }
    d.update(extra)
    return d


def test_every_shipped_scenario_parses() -> None:
    files = sorted(SCENARIOS.glob("*.toml"))
    assert len(files) >= 4
    for f in files:
        sc = load_scenario(f)
        assert sc.arrivals, f
        assert sc.duration_s / sc.time_scale <= 400, f"{f.name}: more than a few minutes of wall time"
        site_from_dict(sc.site)


def test_scenario_refuses_unknown_keys_and_bad_references() -> None:
    with pytest.raises(ConfigError, match=r"scenario\.speed"):
        scenario_from_dict({**tiny(), "scenario": {**tiny()["scenario"], "speed": 2}})
    with pytest.raises(ConfigError, match="unknown charger"):
        scenario_from_dict(tiny(arrivals=[{"at_s": 0, "charger": "nope", "departure_s": 10}]))
    with pytest.raises(ConfigError, match="unknown meter"):
        scenario_from_dict(tiny(faults=[{"kind": "meter_silent", "at_s": 10, "target": "nope"}]))
    with pytest.raises(ConfigError, match="before the previous one leaves"):
        scenario_from_dict(tiny(arrivals=[
            {"at_s": 0, "charger": "garage-1", "departure_s": 100},
            {"at_s": 50, "charger": "garage-1", "departure_s": 200}]))


def test_load_steps_and_time_mapping() -> None:
    sc = scenario_from_dict(tiny())
    assert sc.load_steps() == [(600.0, "service", 30.0)]
    assert sc.wall(600) == pytest.approx(10.0)
    assert sc.wall_duration_s == pytest.approx(60.0)


def test_static_limits_split_what_is_left_after_the_worst_case() -> None:
    site = site_from_dict(load_scenario(SCENARIOS / "garage-4xL2.toml").site)
    lim = static_limits(site)
    # (100 A - 5 A margin - 50 A worst-case building load) / 4 chargers
    assert lim == {c: pytest.approx(11.25) for c in site.chargers}
    ref = load_scenario(SCENARIOS / "ref-20-dc.toml")
    rsite = site_from_dict(ref.site)
    rl = static_limits(rsite)
    # (4000 - 100 - 800) / 20 = 155 A of line current per charger, in W at the conservative voltage
    assert rl["DC-01"] == pytest.approx(rsite.from_line_a(rsite.chargers["DC-01"], 155.0))


def test_jain() -> None:
    assert jain([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert jain([1.0, 0.0]) == pytest.approx(0.5)
    assert jain([]) is None


def test_ideal_bound_respects_the_panel_and_the_battery() -> None:
    sc = scenario_from_dict(tiny())
    res = ideal_energy(sc, step_s=30)
    assert res["status"] == "optimal"
    # one car, alone: 40 A for 10 min then 95-40 = 55 A > 40 A cap: limited by the car (40 A x 240 V)
    # until it has its 30 kWh: 30 kWh / 9.6 kW = 3.1 h > 1 h, so 1 h at 9.6 kW minus the taper (none below 0.8)
    assert res["energy_kwh"] == pytest.approx(9.6, rel=0.01)
    # a tighter panel: base load 80 A leaves 15 A
    sc2 = scenario_from_dict(tiny(base_loads=[{"circuit": "service", "points": [[0, 80]]}]))
    assert ideal_energy(sc2, step_s=30)["energy_kwh"] == pytest.approx(15 * 240 / 1000, rel=0.01)
    # a small battery: capped by what it asked for
    small = tiny()
    small["arrivals"][0].update(capacity_kwh=5, soc_start=0.5, soc_target=0.9)
    assert ideal_energy(scenario_from_dict(small), step_s=30)["energy_kwh"] == pytest.approx(2.0, rel=0.01)


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")  # one at a time with the package build and the solar run (pytest-xdist)
def test_garage_scenario_end_to_end(tmp_path: Path) -> None:
    from hil.__main__ import check, main

    out = tmp_path / "garage"
    rc = main(["run", str(SCENARIOS / "garage-4xL2.toml"), "--out", str(out), "--check"])
    card = json.loads((out / "scorecard.json").read_text())
    assert check(card, out) == []  # no self-inflicted overload, external ones within their window
    assert rc == 0, card.get("episodes")
    assert card["self_inflicted_a_s"] == 0
    assert card["messages_lost"] == 0
    assert card["messages_duplicated"] == 0  # beyond the chargers' own retries
    # a message in flight to the CMS when the gateway was killed may be replayed by the next life, under its id
    assert card["messages_resent_after_kill"] <= card["chargers"]
    # the fail-safe time splits into the scripted faults' (the gateway restart) and any other
    assert card["failsafe_scripted_wall_s"] + card["failsafe_other_wall_s"] == pytest.approx(
        card["failsafe_wall_s"], abs=0.02)
    assert [w["kind"] for w in card["failsafe_windows"]] == ["gateway_restart"]
    # the simulators ran in processes of their own and the meters answered
    assert card["rig_process"]["workers"] >= 1 and card["rig_process"]["meters"]["requests"] > 0
    assert card["messages"]["tx_messages_sent"] > 50  # StartTransaction/TransactionEvent/MeterValues went through
    assert card["external_episodes_beyond_window"] == 0
    assert card["overload_longest_wall_s"] <= card["allowed_window_wall_s"]
    assert all(s["time_to_compliance_wall_s"] is not None
               and s["time_to_compliance_wall_s"] <= card["allowed_window_wall_s"] for s in card["load_steps"])
    assert card["gateway_process"]["starts"] == 2  # killed and restarted
    assert card["gateway_process"]["rss_peak_mb"] > 10
    assert card["sessions"] == 4 and card["energy_kwh"] > 0
    assert 0 < card["energy_pct_of_ideal"] <= 101
    for name in ("site_current.png", "chargers.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "garage-4xL2" in html
