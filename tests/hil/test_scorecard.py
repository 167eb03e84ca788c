"""The HIL scorecard on a recording made up by hand: overload after a base-load step of the circuit (within
the allowed window) is external, any other is self-inflicted, and --check fails on the latter; fail-safe time
within a scripted fault (and its recovery) is told apart from any other; duplicated transaction messages at
the CMS are counted beside lost ones, a charger's own retries apart."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.config import site_from_dict
from hil.__main__ import check
from hil.rig.messages import TxMessage, accounting, tx_message
from hil.rig.runner import Recording
from hil.scenario import scenario_from_dict
from hil.scorecard import allowed_window_s, format_card, recovery_wall_s, scorecard

GARAGE = Path(__file__).resolve().parents[2] / "etc" / "examples" / "garage-4xL2.toml"


def recording(current: np.ndarray, times: np.ndarray, **scenario: Any) -> Recording:
    sc = scenario_from_dict({
        "scenario": {"name": "made-up", "site_config": str(GARAGE), "duration_s": 1200, "time_scale": 60},
        "base_loads": [{"circuit": "service", "points": [[0, 10], [600, 40]]}],
        "arrivals": [{"at_s": 0, "charger": "garage-1", "departure_s": 1200}],
        **scenario,
    })
    site = site_from_dict(sc.site)
    n = len(times)
    return Recording(scenario=sc, mode="gateway", site=site, times=times, circuit_ids=list(site.circuits),
                     # the current on L1, the other leg idle (the garage is 120/240 V split-phase)
                     circuit_a=np.concatenate([current.reshape(n, 1, 1), np.zeros((n, 1, site.service.phases - 1))],
                                              axis=2),
                     charger_ids=list(site.chargers),
                     charger_limit_a=np.zeros((n, len(site.chargers))),
                     charger_draw_a=np.zeros((n, len(site.chargers))), events=[], gateway_logs=[], sessions=[],
                     messages={"lost": 0}, process={})


def test_overload_after_a_step_is_external_any_other_self_inflicted() -> None:
    t = np.round(np.arange(0.0, 20.0, 0.1), 6)  # wall s; the step (600 s at 60x) is at 10 s wall
    cur = np.full(len(t), 90.0)
    rec = recording(cur, t)
    window = allowed_window_s(rec)
    cur[(t >= 10.0) & (t < 10.3)] = 105.0  # 5 A over for 3 samples, inside the window after the step
    cur[(t >= 15.0) & (t < 15.5)] = 102.0  # 2 A over for 5 samples, long after it
    assert 10.3 < 10.0 + window < 15.0
    card = scorecard(recording(cur, t))
    ph = card["overload"]["service"]["phases"]["L1"]
    assert ph["external_a_s"] == pytest.approx(5.0 * 3 * 0.1 * 60, rel=1e-6)
    assert ph["external_peak_a"] == 105.0 and ph["external_peak_over_a"] == 5.0
    assert ph["self_inflicted_a_s"] == pytest.approx(2.0 * 5 * 0.1 * 60, rel=1e-6)
    assert ph["self_inflicted_peak_a"] == 102.0
    assert [e["kind"] for e in card["episodes"]] == ["external", "self-inflicted"]
    assert card["external_episodes_beyond_window"] == 0 and card["self_inflicted_episodes"] == 1
    step = card["load_steps"][0]
    assert step["time_to_compliance_s"] == pytest.approx(0.3 * 60)
    # the self-inflicted one 5 s wall (300 s) later still follows it within LASTING_S: not yet lasting
    assert step["time_to_lasting_compliance_s"] == pytest.approx(5.5 * 60)
    problems = check(card, Path("/nonexistent"))
    assert any(p.startswith("self-inflicted overload: 60.0 A*s in 1 episode(s)") for p in problems), problems


def test_an_external_overload_that_outlasts_the_window_fails_the_check() -> None:
    t = np.round(np.arange(0.0, 20.0, 0.1), 6)
    cur = np.full(len(t), 90.0)
    cur[(t >= 10.0) & (t < 13.0)] = 104.0
    card = scorecard(recording(cur, t))
    assert card["external_episodes_beyond_window"] == 1
    assert card["self_inflicted_a_s"] > 0  # the part beyond the window is the loop's own
    assert any("beyond the window" in p for p in check(card, Path("/nonexistent")))
    clean = scorecard(recording(np.full(len(t), 90.0), t))
    assert clean["self_inflicted_a_s"] == clean["external_a_s"] == 0.0
    assert clean["load_steps"][0]["time_to_lasting_compliance_s"] == 0.0
    assert not [p for p in check(clean, Path("/nonexistent")) if "overload" in p]


def test_meter_interval_from_the_scenario_and_the_override() -> None:
    rec = recording(np.zeros(2), np.array([0.0, 0.1]), chargers={"meter_interval_s": 60})
    assert rec.scenario.meter_interval_wall_of("garage-1") == pytest.approx(1.0)
    assert scorecard(rec)["meter_interval_s"] == 60.0
    none = rec.scenario.with_meter_interval(0)
    assert none.meter_interval_wall_of("garage-2") == 0.0


def test_failsafe_in_a_scripted_fault_is_told_apart_from_any_other() -> None:
    # meter-panel silent from 300 s to 420 s of scenario time: 5 s to 7 s wall at 60x
    t = np.round(np.arange(0.0, 40.0, 0.1), 6)
    rec = recording(np.full(len(t), 50.0), t,
                    faults=[{"kind": "meter_silent", "target": "meter-panel", "at_s": 300, "duration_s": 120}])
    recovery = recovery_wall_s(rec)  # the garage's meter: stale after 3 s, polled every 1 s, 1 s timeout, 1 retry
    assert 0 < recovery < 20
    late = 7.0 + recovery / 2  # within the recovery the fault legitimately needs

    def stay(a: float, b: float, *meters: str) -> list[dict[str, Any]]:
        return [{"event": "failsafe_entered", "_t": a, "meters": list(meters)}, {"event": "failsafe_left", "_t": b}]

    rec.gateway_logs = (stay(-3.0, -2.5, "meter-panel")  # the gateway's start, before scenario time 0: left out
                        + stay(1.0, 1.5, "meter-panel")  # no fault then: other
                        + stay(5.5, late, "meter-panel")  # the scripted fault and its recovery
                        + stay(7.0 + recovery + 1.5, 30.0, "meter-panel")  # overlaps nothing: other
                        + [{"event": "failsafe_entered", "_t": 35.0, "meters": ["meter-panel"]}])  # open at the end
    card = scorecard(rec)
    assert card["failsafe_scripted_wall_s"] == pytest.approx(late - 5.5, abs=0.01)
    other = 0.5 + (30.0 - (7.0 + recovery + 1.5)) + (t[-1] - 35.0)
    assert card["failsafe_other_wall_s"] == pytest.approx(other, abs=0.01)
    assert card["failsafe_other_entries"] == 3
    assert card["failsafe_wall_s"] == pytest.approx(card["failsafe_scripted_wall_s"] + other, abs=0.02)
    assert card["failsafe_windows"][0]["end_wall_s"] == pytest.approx(7.0 + recovery, abs=1e-3)
    assert card["failsafe_other_causes"] == {"unknown": 3}
    # a stay that names another meter is not explained by the silent one, even within its window; the meters
    # went stale without a failed read: the gateway polled too late
    rec.gateway_logs = [{"event": "meter_stale", "_t": 5.4, "meter": "meter-other", "error": ""},
                        *stay(5.5, 6.5, "meter-other"),
                        {"event": "meter_stale", "_t": 9.9, "meter": "meter-other", "error": "no answer to input 0+68"},
                        *stay(10.0, 10.5, "meter-other")]
    card = scorecard(rec)
    assert card["failsafe_scripted_wall_s"] == 0.0
    assert card["failsafe_other_wall_s"] == pytest.approx(1.5) and card["failsafe_other_entries"] == 2
    assert card["failsafe_other_causes"] == {"no_poll": 1, "read_failed": 1}
    assert [s["cause"] for s in card["failsafe_stays"]] == ["no_poll", "read_failed"]


def test_duplicates_at_the_cms_beyond_the_chargers_own_retries() -> None:
    start = {"connectorId": 1, "idTag": "A", "meterStart": 0, "timestamp": "2026-01-01T00:00:00.000Z"}
    mv = {"connectorId": 1, "transactionId": 1, "meterValue": [{"timestamp": "2026-01-01T00:00:10.000Z"}]}
    ev = {"eventType": "Updated", "seqNo": 3, "transactionInfo": {"transactionId": "T1"},
          "timestamp": "2026-01-01T00:00:20.000Z"}
    stop = {"transactionId": 1, "meterStop": 100, "timestamp": "2026-01-01T00:01:00.000Z"}

    def msg(charger: str, uid: str, action: str, payload: dict[str, Any], outcome: str = "received") -> TxMessage:
        m = tx_message(charger, uid, action, payload, outcome)
        assert m is not None
        return m

    assert tx_message("c1", "h", "Heartbeat", {}) is None
    sent = [
        msg("c1", "s1", "StartTransaction", start, "timeout"),  # the charger's own retry: not a duplicate
        msg("c1", "s2", "StartTransaction", start, "ok"),
        msg("c1", "m1", "MeterValues", mv, "ok"),
        msg("c2", "e1", "TransactionEvent", ev, "ok"),
        msg("c1", "x1", "StopTransaction", stop, "ok"),  # never reaches the CMS: lost
    ]
    received = [
        msg("c1", "s1", "StartTransaction", start), msg("c1", "s2", "StartTransaction", start),
        msg("c1", "m1", "MeterValues", mv), msg("c1", "m1", "MeterValues", mv),  # the same message id twice
        msg("c2", "e1", "TransactionEvent", ev),
        msg("c2", "g7", "TransactionEvent", {**ev, "offline": True}),  # the same event under a new id
    ]
    acc = accounting(sent, received)
    assert acc["lost"] == 1 and acc["lost_examples"][0]["unique_id"] == "x1"
    assert acc["duplicates_same_id"] == 1 and acc["duplicates_same_event"] == 1 and acc["duplicates"] == 2
    assert acc["tx_messages_sent"] == 4 and acc["tx_messages_received_by_cms"] == 6
    t = np.array([0.0, 0.1])
    rec = recording(np.zeros(2), t)
    rec.messages = acc
    card = scorecard(rec)
    assert card["messages_duplicated"] == 2 and card["messages_lost"] == 1
    assert card["messages_duplicated_same_id"] == 1 and card["messages_duplicated_same_event"] == 1
    assert "duplicated 2 (same id 1, same event 1)" in format_card(card)
    # the same id again after a gateway kill (in flight when it died, replayed by the next life): counted apart
    def at(m: TxMessage, t: float) -> TxMessage:
        return replace(m, at=t)

    resent = [at(received[2], 10.0), at(received[3], 30.0), at(received[2], 50.0)]  # m1 three times
    acc = accounting(sent, resent, kills=[20.0])
    assert acc["resent_after_kill"] == 1 and acc["duplicates_same_id"] == 1, "one copy per kill in between"
    assert accounting(sent, resent[:2], kills=[20.0])["duplicates"] == 0
    assert accounting(sent, resent[:2], kills=[40.0])["duplicates_same_id"] == 1, "no kill between the copies"


def test_overload_explained_by_an_ev_late_to_follow_is_the_rigs_not_self_inflicted() -> None:
    t = np.round(np.arange(0.0, 20.0, 0.1), 6)  # no base-load step before 10 s wall
    lim, draw = np.full(len(t), 30.0), np.full(len(t), 30.0)
    lim[t >= 2.0] = 10.0  # lowered at 2 s wall; its EV's response is a sim tick and a sample: long overdue
    draw[t >= 3.5] = 10.0

    def card_of(over_a: float, **scenario: Any) -> dict[str, Any]:
        cur = np.full(len(t), 90.0)
        cur[(t >= 3.0) & (t < 3.5)] = 100.0 + over_a  # over for 5 samples
        rec = recording(cur, t, **scenario)
        j = rec.charger_ids.index("garage-1")
        rec.charger_limit_a[:, j], rec.charger_draw_a[:, j] = lim, draw
        return scorecard(rec)

    card = card_of(2.0)
    ph = card["overload"]["service"]["phases"]["L1"]  # the charger loads both legs; the current is on L1
    assert ph["self_inflicted_a_s"] == 0.0 and card["self_inflicted_episodes"] == 0
    assert ph["rig_late_a_s"] == pytest.approx(2.0 * 5 * 0.1 * 60, rel=1e-6) == card["rig_late_a_s"]
    assert [e["kind"] for e in card["episodes"]] == ["rig-late"]
    assert not [p for p in check(card, Path("/nonexistent")) if "overload" in p]
    assert "late EVs" in format_card(card)

    # more over than the late EV's excess: the rest is the gateway's
    card = card_of(25.0)  # the EV is 20 A above its limit
    assert card["self_inflicted_a_s"] == pytest.approx(5.0 * 5 * 0.1 * 60, rel=1e-6)
    assert card["rig_late_a_s"] == pytest.approx(20.0 * 5 * 0.1 * 60, rel=1e-6)
    assert [e["kind"] for e in card["episodes"]] == ["self-inflicted"]

    # a charger scripted to ignore its limit is never an excuse
    card = card_of(2.0, faults=[{"kind": "noncompliant", "at_s": 0, "target": "garage-1"}])
    assert card["self_inflicted_a_s"] == pytest.approx(2.0 * 5 * 0.1 * 60, rel=1e-6) and card["rig_late_a_s"] == 0.0

    # the EV followed within its response: the overload stays self-inflicted, all of it
    draw[t >= 2.1] = 10.0
    card = card_of(2.0)
    assert card["self_inflicted_a_s"] == pytest.approx(2.0 * 5 * 0.1 * 60, rel=1e-6) and card["rig_late_a_s"] == 0.0
