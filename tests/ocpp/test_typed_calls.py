"""The gateway's own CALLs and answers (profiles, composite schedules, offline answers), built as the ``ocpp``
library's dataclasses, are valid OCPP frames."""

from __future__ import annotations

import itertools
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog

from gateway.config import load_site
from gateway.ocpp_proxy import policy
from gateway.ocpp_proxy.frames import CALL, CALLRESULT, call_text, new_message_id, parse_frame, validate
from gateway.ocpp_proxy.offline import Backlog, OfflineResponder
from gateway.ocpp_proxy.ports import EventHooks
from gateway.ocpp_proxy.state import ChargerTracker, draw_bounds
from gateway.ocpp_proxy.store import QueueLimits, Store
from gateway.ocpp_proxy.typed import action_of, library_payload_of, payload_of

from .conftest import site_text

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
        # the one-pass serialiser writes what the library's own would, byte for byte
        assert json.dumps(payload) == json.dumps(library_payload_of(call))
        # the cached shape (a limit pass's frames) is the same JSON, with the start put in
        cached = policy.set_profile_json(version, mode, profile_id=9, stack_level=4, unit=unit, limit=limit,
                                         start_iso=policy.iso(START), duration_s=duration, connectors=connectors)
        assert cached == ("SetChargingProfile", json.dumps(library_payload_of(call), separators=(",", ":")))
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


def test_iso_now_is_the_wall_clock_to_the_millisecond() -> None:
    before = time.time()
    got = policy.parse_iso(policy.iso_now())
    after = time.time()
    assert got is not None and before - 0.001 <= got.timestamp() <= after
    assert policy.iso_now().endswith("Z") and len(policy.iso_now()) == len("2026-03-01T12:00:00.250Z")


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_composite_schedule_answers_pass_the_schema(version: str) -> None:
    build = policy.composite_16 if version == "1.6" else policy.composite_201
    for unit, limit in itertools.product(["A", "W"], [None, 0.0, 16.0, 11000.0]):
        answer = build(2, 300, unit, limit, START)
        payload = payload_of(answer)
        assert json.dumps(payload) == json.dumps(library_payload_of(answer))
        assert validate(version, CALLRESULT, "GetCompositeSchedule", payload) is None, payload
        assert payload["status"] == ("Rejected" if limit is None else "Accepted")
        if limit is not None:
            sched = payload["chargingSchedule"] if version == "1.6" else payload["schedule"]
            assert sched["chargingSchedulePeriod"][0]["limit"] == policy.round_limit(limit)
            assert sched["duration"] == 300 and sched["chargingRateUnit"] == unit
        assert json.loads(json.dumps(payload)) == payload  # serialisable as it is


TS = "2026-03-01T12:00:00.000Z"
TOKEN_16 = "T-unknown"
TOKEN_201 = {"idToken": "T-unknown", "type": "ISO14443"}
CALLS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "1.6": [
        ("BootNotification", {"chargePointVendor": "v", "chargePointModel": "m"}),
        ("Heartbeat", {}),
        ("Authorize", {"idTag": TOKEN_16}),
        ("StartTransaction", {"connectorId": 1, "idTag": TOKEN_16, "meterStart": 0, "timestamp": TS}),
        ("MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": TS, "sampledValue": [{"value": "1"}]}]}),
        ("StopTransaction", {"transactionId": -1, "idTag": TOKEN_16, "meterStop": 10, "timestamp": TS}),
        ("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Available"}),
        ("DataTransfer", {"vendorId": "x"}),
        ("FirmwareStatusNotification", {"status": "Idle"}),
    ],
    "2.0.1": [
        ("BootNotification", {"chargingStation": {"model": "m", "vendorName": "v"}, "reason": "PowerUp"}),
        ("Heartbeat", {}),
        ("Authorize", {"idToken": TOKEN_201}),
        ("TransactionEvent", {"eventType": "Started", "timestamp": TS, "triggerReason": "Authorized", "seqNo": 0,
                              "transactionInfo": {"transactionId": "t1"}, "idToken": TOKEN_201}),
        ("StatusNotification", {"timestamp": TS, "connectorStatus": "Available", "evseId": 1, "connectorId": 1}),
        ("DataTransfer", {"vendorId": "x"}),
        ("SignCertificate", {"csr": "x"}),
    ],
}


@pytest.mark.parametrize(("cid", "version"), [("CP16", "1.6"), ("CP201", "2.0.1")])
async def test_offline_answers_pass_the_schema(tmp_path: Path, cid: str, version: str) -> None:
    """While the CMS is away the gateway answers the charger itself: each answer is a valid CALLRESULT."""
    path = tmp_path / "site.toml"
    path.write_text(site_text(tmp_path / "state", 1))
    site = load_site(path)
    cfg = site.chargers[cid]
    store = Store(str(tmp_path / "ocpp.sqlite"), QueueLimits())
    events: list[tuple[str, dict[str, object]]] = []
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    tracker = ChargerTracker(cfg, site.service.phases, time.monotonic, bounds=draw_bounds(site, cfg))
    hooks = EventHooks(lambda n, f: events.append((n, f)), lambda _c: None, lambda _c, _p: None)
    responder = OfflineResponder(cid, version, site.ocpp, store, tracker, hooks, structlog.get_logger(),
                                 send=send, keep=True, backlog=Backlog())
    try:
        for i, (action, payload) in enumerate(CALLS[version]):
            assert validate(version, CALL, action, payload) is None, (action, "the test's own CALL")
            await responder.answer(parse_frame(call_text(f"m{i}", action, payload), version, 65536))
            answer = parse_frame(sent[-1], version, 65536)
            assert answer.kind == CALLRESULT and answer.message_id == f"m{i}", sent[-1]
            assert validate(version, CALLRESULT, action, answer.payload) is None, (action, answer.payload)
            info = answer.payload.get("idTagInfo") or answer.payload.get("idTokenInfo")
            if action in ("Authorize", "StartTransaction"):
                assert info == {"status": "Invalid"}, "an unknown token offline (offline_accept_unknown is off)"
        assert store.pending(cid), "the transaction messages were queued for replay"
        assert not events, "no queue refused anything"
    finally:
        store.close()


def test_message_ids_are_unique_uuid_strings() -> None:
    import uuid

    ids = [new_message_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 36 and str(uuid.UUID(i)) == i for i in ids[:100] + ids[-100:])
