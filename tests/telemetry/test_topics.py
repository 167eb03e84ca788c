"""Topic encoding and change detection as pure functions: the previous state and this tick in, the next
state and what to publish out (no telemetry object, no broker, no clock)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from gateway.model import Allocation, ChargerLimit, ChargerSnapshot, ChargerState, MeterReading
from gateway.telemetry import topics
from gateway.telemetry.topics import ChargerPub, ModePub, Rates, charger_step, meter_step, mode_step

RATES = Rates(heartbeat_s=60.0, min_interval_s=5.0)
ROOT = "ems/s/"
T = ROOT + "charger/AC-1"


def _ch(draw: float, state: ChargerState = ChargerState.CHARGING, noncompliant: bool = False) -> ChargerSnapshot:
    return ChargerSnapshot("AC-1", True, state, draw_a=(draw, 0.0, 0.0), noncompliant=noncompliant)


def test_a_charger_is_published_on_a_change_at_most_every_min_interval_then_on_the_heartbeat() -> None:
    lim = ChargerLimit(16.0, 16.0, "fair share")
    s0, v, ev = charger_step(None, ROOT, "AC-1", _ch(10.0), lim, None, "ts0", 0.0, RATES)
    assert v is not None and v[0] == T and json.loads(v[1])["limit_a"] == 16.0 and ev is None
    # the draw moves within the deadband: no change
    s1, v, _ = charger_step(s0, ROOT, "AC-1", _ch(10.0 + topics.DRAW_DEADBAND_A * 0.5), lim, None, "ts1", 1.0, RATES)
    assert v is None and not s1.dirty
    # a new limit 2 s after the last publication: waits for the minimum interval, then goes out
    lower = ChargerLimit(10.0, 10.0, "capped")
    s2, v, _ = charger_step(s1, ROOT, "AC-1", _ch(10.0), lower, None, "ts2", 2.0, RATES)
    assert v is None and s2.dirty
    s2b, v, _ = charger_step(s2, ROOT, "AC-1", _ch(10.0), lower, None, "ts2b", 4.0, RATES)
    assert v is None and s2b.dirty  # dirty stays while the interval has not passed
    s3, v, _ = charger_step(s2b, ROOT, "AC-1", _ch(10.0), lower, None, "ts3", 5.0, RATES)
    assert v is not None and json.loads(v[1])["limit_a"] == 10.0 and not s3.dirty
    # nothing new: the same state object back (the fast path), until the heartbeat
    same = _ch(10.0)
    s4, v, _ = charger_step(s3, ROOT, "AC-1", same, lower, None, "ts4", 6.0, RATES)
    s5, v, _ = charger_step(s4, ROOT, "AC-1", same, lower, None, "ts5", 7.0, RATES)
    assert s5 is s4 and v is None
    _, v, _ = charger_step(s5, ROOT, "AC-1", same, lower, None, "ts6", 5.0 + RATES.heartbeat_s, RATES)
    assert v is not None and json.loads(v[1])["ts"] == "ts6"


def test_noncompliance_raises_an_event_once_and_its_clearing_another() -> None:
    lim = ChargerLimit(16.0, 16.0, "fair share")
    s0, _, _ = charger_step(None, ROOT, "AC-1", _ch(10.0), lim, None, "ts", 0.0, RATES)
    s1, _, ev = charger_step(s0, ROOT, "AC-1", _ch(25.0, noncompliant=True), lim, None, "ts", 1.0, RATES)
    assert ev is not None and ev[0] == "noncompliance" and ev[1]["limit_a"] == 16.0
    assert ev[1]["current_a"] == [25.0, 0.0, 0.0]
    s2, _, ev = charger_step(s1, ROOT, "AC-1", _ch(25.5, noncompliant=True), lim, None, "ts", 2.0, RATES)
    assert ev is None
    _, _, ev = charger_step(s2, ROOT, "AC-1", _ch(10.0), lim, None, "ts", 3.0, RATES)
    assert ev == ("noncompliance_cleared", {"charger": "AC-1"})


def test_a_meter_going_stale_and_back() -> None:
    ok = MeterReading(current_a=(50.0, 50.0, 50.0), at=0.0)
    m0, v, ev = meter_step(None, ROOT, "m", ok, None, "ts", 0.0, 60.0)
    assert v is not None and json.loads(v[1])["valid"] is True and ev is None
    m1, v, ev = meter_step(m0, ROOT, "m", ok, None, "ts", 1.0, 60.0)
    assert m1 is m0 and v is None  # the same reading within the heartbeat
    bad = MeterReading(current_a=(0.0, 0.0, 0.0), at=2.0, valid=False, reason="timeout")
    m2, v, ev = meter_step(m1, ROOT, "m", bad, None, "ts", 2.0, 60.0)
    assert ev == ("meter_stale", {"meter": "m", "reason": "timeout"}) and m2.stale_since == 2.0 and v is not None
    back = MeterReading(current_a=(40.0, 40.0, 40.0), at=9.5)
    _, v, ev = meter_step(m2, ROOT, "m", back, None, "ts", 9.5, 60.0)
    assert ev == ("meter_back", {"meter": "m", "stale_for_s": 7.5})


def test_failsafe_entered_and_left_with_its_duration() -> None:
    p0, evs = mode_step(ModePub(), Allocation(0.0, {}, mode="normal"), 0.0)
    assert evs == () and p0.mode == "normal"
    p1, evs = mode_step(p0, Allocation(0.0, {}, mode="failsafe", failsafe_meters=("m",)), 10.0)
    assert evs == (("failsafe_entered", {"mode": "failsafe", "previous_mode": "normal", "meters": ["m"]}),)
    p2, evs = mode_step(p1, Allocation(0.0, {}, mode="failsafe", failsafe_meters=("m",)), 11.0)
    assert p2 is p1 and evs == ()
    _, evs = mode_step(p2, Allocation(0.0, {}, mode="normal"), 42.5)
    assert evs == (("failsafe_left", {"previous_mode": "failsafe", "duration_s": 32.5}),)


def test_states_are_frozen_values() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        ChargerPub().dirty = True  # type: ignore[misc]
    assert topics.event_name("Bad Name!") == "bad_name_" and topics.event_name("9lives") == "e_9lives"


def test_a_waiting_change_goes_out_after_the_interval_even_when_nothing_else_moved() -> None:
    lim, chs = ChargerLimit(16.0, 16.0, "fair share"), _ch(10.0)
    s0, _, _ = charger_step(None, ROOT, "AC-1", chs, lim, None, "ts", 0.0, RATES)
    lower = ChargerLimit(10.0, 10.0, "capped")
    s1, v, _ = charger_step(s0, ROOT, "AC-1", chs, lower, None, "ts", 1.0, RATES)
    assert v is None and s1.dirty
    s2, v, _ = charger_step(s1, ROOT, "AC-1", chs, lower, None, "ts", 4.9, RATES)  # the same objects, waiting
    assert s2 is s1 and v is None
    s3, v, _ = charger_step(s2, ROOT, "AC-1", chs, lower, None, "ts", 5.0, RATES)
    assert v is not None and json.loads(v[1])["limit_a"] == 10.0 and not s3.dirty
