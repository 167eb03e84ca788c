"""The gateway's own CALLs and answers, built as the ``ocpp`` library's dataclasses, are valid OCPP frames."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime

import pytest

from gateway.ocpp_proxy import policy
from gateway.ocpp_proxy.frames import CALL, CALLRESULT, call_text, parse_frame, validate
from gateway.ocpp_proxy.typed import action_of, payload_of

START = datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=UTC)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_limit_and_failsafe_profiles_pass_the_schema_and_carry_their_values(version: str) -> None:
    for mode, unit, duration, connectors, limit in itertools.product(
        policy.MODES, ["A", "W"], [None, 1, 900], [1, 2, 3], [0.0, 6.04, 32.0, 22000.0]
    ):
        call = policy.set_profile(version, mode, profile_id=9, stack_level=4, unit=unit, limit=limit, start=START,
                                  duration_s=duration, connectors=connectors)
        assert action_of(call) == "SetChargingProfile"
        payload = payload_of(call)
        assert validate(version, CALL, "SetChargingProfile", payload) is None, payload
        # what the charger parses from the frame on the wire
        frame = parse_frame(call_text("m1", "SetChargingProfile", payload), version, 65536)
        conn, prof = policy.profile_of(version, frame.payload)
        assert conn == 0 and policy.profile_id(version, prof) == 9 and prof["stackLevel"] == 4
        assert prof["chargingProfilePurpose"] == policy.purpose(version, mode)
        sched = policy.schedule_of(version, prof)
        assert sched["chargingRateUnit"] == unit and sched.get("duration") == duration
        assert policy.parse_iso(sched["startSchedule"]) == START
        share = limit / connectors if mode == "txdefault" else limit
        assert sched["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": policy.round_limit(share)}]


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_composite_schedule_answers_pass_the_schema(version: str) -> None:
    build = policy.composite_16 if version == "1.6" else policy.composite_201
    for unit, limit in itertools.product(["A", "W"], [None, 0.0, 16.0, 11000.0]):
        payload = payload_of(build(2, 300, unit, limit, START))
        assert validate(version, CALLRESULT, "GetCompositeSchedule", payload) is None, payload
        assert payload["status"] == ("Rejected" if limit is None else "Accepted")
        if limit is not None:
            sched = payload["chargingSchedule"] if version == "1.6" else payload["schedule"]
            assert sched["chargingSchedulePeriod"][0]["limit"] == policy.round_limit(limit)
            assert sched["duration"] == 300 and sched["chargingRateUnit"] == unit
        assert json.loads(json.dumps(payload)) == payload  # serialisable as it is
