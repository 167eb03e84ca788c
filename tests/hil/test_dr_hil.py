"""Utility demand response on the HIL rig (issue 16): the real gateway's OpenADR 2.0b VEN against a real openleadr
VTN the rig runs on loopback, during a busy hour; the scenario's [openadr] parsing; the ideal bound under the
events' levels. The end-to-end test runs the short scenario with and without its events (``python -m hil dr``)
and checks the scorecard's demand-response figures against the bounds the scorecard derives from the config."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway import electrical
from gateway.config import site_from_dict
from gateway.errors import ConfigError
from hil.__main__ import check
from hil.dr import run_with_and_without, without_dr
from hil.ideal import ideal_energy
from hil.rig.runner import Recording
from hil.scenario import load_scenario, scenario_from_dict
from hil.scorecard import scorecard
from hil.scorecard_dr import level_caps

SCENARIOS = Path(__file__).resolve().parents[2] / "hil" / "scenarios"
SHORT = SCENARIOS / "dr-busy-hour-short.toml"


def _raw(path: Path) -> dict[str, Any]:
    import tomllib

    d = tomllib.loads(path.read_text())
    d["scenario"]["site_config"] = str(SCENARIOS / d["scenario"]["site_config"])
    return d


def test_openadr_events_parse_in_scenario_seconds_and_need_the_gateway_ven() -> None:
    sc = load_scenario(SHORT)
    assert sc.dr is not None and [e.id for e in sc.dr.events] == ["dr-1", "dr-2"]
    caps = level_caps(sc)
    # the levels by the gateway's own mapping: level 2 = 40 kW, a 30 kW setpoint, at 400 V three-phase
    assert caps[0][2] == pytest.approx(40_000 / (3 * 400 / 3**0.5), rel=1e-6)
    assert caps[1][2] == pytest.approx(30_000 / (3 * 400 / 3**0.5), rel=1e-6)
    plain = without_dr(sc)
    assert plain.dr is None and "openadr" not in plain.gateway.budget

    d = _raw(SHORT)
    del d["gateway"]["budget"]["openadr"]
    with pytest.raises(ConfigError, match=r"gateway\.budget\.openadr"):
        scenario_from_dict(d)
    d = _raw(SHORT)
    d["gateway"]["budget"]["openadr"]["vtn_url"] = "http://127.0.0.1:1/x"
    with pytest.raises(ConfigError, match="vtn_url"):
        scenario_from_dict(d)
    d = _raw(SHORT)
    d["openadr"]["events"][0]["duration_s"] = 470  # 23.5 wall s at 20x: OpenADR durations are whole seconds
    with pytest.raises(ConfigError, match=r"openadr\.events\[0\]\.duration_s|duration_s"):
        scenario_from_dict(d)
    d = _raw(SHORT)
    d["openadr"]["events"][0]["issue_at_s"] = 400  # after its start
    with pytest.raises(ConfigError, match="issue_at_s"):
        scenario_from_dict(d)


def test_the_ideal_bound_under_the_levels_loses_what_the_levels_take() -> None:
    sc = load_scenario(SHORT)
    sc = dataclasses.replace(sc, arrivals=tuple(dataclasses.replace(a, capacity_kwh=1000.0) for a in sc.arrivals))
    plain, capped = ideal_energy(sc), ideal_energy(sc, service_caps=level_caps(sc))
    service = site_from_dict(sc.site).service
    site_limit = service.limit_a
    v3 = 3 * electrical.line_to_neutral_v(service)  # W per line A of a three-phase EV
    lost = 0.0
    for start, end, level in level_caps(sc):
        others = [c for c in level_caps(sc) if c[2] < level and c[0] < end and c[1] > start]
        span = (end - start) - sum(min(end, c[1]) - max(start, c[0]) for c in others)
        # every EV saturated with and without: the room the level takes is what they lose (the margin, the base
        # load cancel out)
        lost += (site_limit - level) * v3 * span / 3600.0 / 1000.0
    assert plain["energy_kwh"] - capped["energy_kwh"] == pytest.approx(lost, rel=0.02)


@pytest.mark.slow
@pytest.mark.xdist_group("heavy")  # one at a time with the package build and the other HIL runs (pytest-xdist)
def test_dr_busy_hour_short_on_the_rig(tmp_path: Path) -> None:
    sc = load_scenario(SHORT)
    got = run_with_and_without(sc, tmp_path)
    with_, without = got["cards"]["with"], got["cards"]["without"]
    dr = with_["dr"]
    (tmp_path / "dr-card.json").write_text(json.dumps(dr, default=str))
    assert "dr" not in without
    assert not any(str(e.get("event", "")).startswith("openadr") for e in _logs(tmp_path / "without"))
    assert dr["vtn"]["ven_id"], "the gateway's VEN registered with the rig's VTN"
    for e in dr["events"]:
        g = e["gateway"]
        assert e["judged"], e
        # the VEN received the event after the VTN issued it, opted in, and its cap set the chargers' limits
        assert e["issued_wall_s"] <= g["received_wall_s"] <= g["applied_wall_s"], e
        assert g["opt"] == "optIn" and [o["opt"] for o in e["opts"]] == ["optIn"], e
        assert g["capped_limits"] > 0, e
        # under the level within the chargers' response (+ the poll, for an event without notice) ...
        assert e["within_bound"] and e["time_to_under_wall_s"] <= e["response_bound_wall_s"], e
        parts = e["response_bound_parts_wall_s"]
        if parts["known_from"] + parts["tick"] + parts["ev_response_wall_s"] + parts["ramp_wall_s"] <= 0:
            assert e["under_at_start"], e  # with notice: the cap applied lead_s ahead, under at the start
        # ... and never above it again, apart from the window after a base-load step
        assert e["above_after_other_wall_s"] == 0, e
        if e["under_at_start"] and e["above_after_external_wall_s"] == 0:
            assert e["peak_a"] <= e["level_a"], e
    notice = [e for e in dr["events"] if e["response_bound_parts_wall_s"]["known_from"] < 0]
    sudden = [e for e in dr["events"] if e["response_bound_parts_wall_s"]["known_from"] > 0]
    assert notice and sudden, "the scenario has an event with notice and one without"
    # the energy lost to the events: measured against the run without them, beside the ideal's
    assert dr["lost_kwh"] > 0 and dr["ideal_lost_kwh"] > 0
    assert 0.5 * dr["ideal_lost_kwh"] <= dr["lost_kwh"] <= 2.0 * dr["ideal_lost_kwh"], dr
    assert with_["self_inflicted_a_s"] == 0 and without["self_inflicted_a_s"] == 0
    assert with_["messages_lost"] == 0
    assert (tmp_path / "dr.json").is_file()


def _logs(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for line in (run_dir / "gateway.log").read_text().splitlines():
        try:
            d = json.loads(line)
        except ValueError:
            continue
        if isinstance(d, dict):
            out.append(d)
    return out


def _made_up(cur: np.ndarray, t: np.ndarray, sent: list[dict[str, Any]]) -> Recording:
    sc = load_scenario(SHORT)
    site = site_from_dict(sc.site)
    n, P = len(t), site.service.phases
    return Recording(scenario=sc, mode="gateway", site=site, times=t, circuit_ids=list(site.circuits),
                     circuit_a=np.repeat(cur.reshape(n, 1, 1), P, axis=2), charger_ids=list(site.chargers),
                     charger_limit_a=np.zeros((n, len(site.chargers))),
                     charger_draw_a=np.zeros((n, len(site.chargers))),
                     events=[], gateway_logs=[], sessions=[], messages={"lost": 0}, process={},
                     dr={"ven_id": "v", "events": sent})


def test_dr_figures_on_a_recording_made_up_by_hand() -> None:
    t = np.round(np.arange(0.0, 45.0, 0.05), 6)  # wall s at 20x: dr-1 15-39 s, dr-2 27-33 s, the step at 21 s
    cur = np.full(len(t), 140.0)
    cur[t >= 13.5] = 50.0  # the cap applied lead_s ahead: under dr-1's 57.7 A at its start
    cur[(t >= 21.0) & (t < 21.5)] = 60.0  # the base-load step, followed within the allowed window
    cur[(t >= 27.0) & (t < 28.4)] = 50.0  # dr-2 (43.3 A) comes without notice: under it 1.4 s after its start
    cur[(t >= 28.4) & (t < 33.0)] = 40.0
    cur[(t >= 36.0) & (t < 36.2)] = 59.0  # above dr-1's level again, no step to explain it
    sent = [{"id": "dr-1", "issued_wall_s": 6.0, "start_wall_s": 15.0, "end_wall_s": 39.0, "cancelled_wall_s": None},
            {"id": "dr-2", "issued_wall_s": 27.0, "start_wall_s": 27.0, "end_wall_s": 36.0, "cancelled_wall_s": 33.0}]
    card = scorecard(_made_up(cur, t, sent))
    d1, d2 = card["dr"]["events"]
    assert d1["level_a"] == pytest.approx(57.74, abs=0.01) and d1["peak_a"] == 60.0
    assert d1["under_at_start"] and d1["time_to_under_wall_s"] == 0.0 and d1["within_bound"]
    assert d1["above_after_external_wall_s"] == pytest.approx(0.5, abs=0.026)
    assert d1["above_after_other_wall_s"] == pytest.approx(0.2, abs=0.026) and d1["peak_after_under_other_a"] == 59.0
    assert d2["span_wall_s"] == [27.0, 33.0] and d2["peak_a"] == 50.0 and not d2["under_at_start"]
    assert d2["time_to_under_wall_s"] == pytest.approx(1.4, abs=0.026)
    # the bound: its issue + the VEN's poll (1 s) + a tick (0.2) + the EVs' response (0.6) + the ramp (32 A at
    # 20 A/s x 20) + a charger tick (0.05), + a sample
    assert d2["response_bound_wall_s"] == pytest.approx(1.0 + 0.2 + 0.6 + 0.08 + 0.05 + 0.05, abs=0.002)
    assert d2["within_bound"] and d2["above_after_other_wall_s"] == 0.0
    problems = [p for p in check(card, Path("/nonexistent")) if "not written" not in p]  # no report files here
    assert problems == ["DR event dr-1: 4.0 s above the level after it was under"]
    late = cur.copy()
    late[(t >= 27.0) & (t < 29.5)] = 50.0  # 2.5 s: beyond the bound
    card = scorecard(_made_up(late, t, sent))
    assert not card["dr"]["events"][1]["within_bound"]
    assert any(p.startswith("DR event dr-2: under the level after 50.0 s") for p in check(card, Path("/x")))
