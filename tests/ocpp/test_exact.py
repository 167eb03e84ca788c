"""What the CMS receives is what the charger sent: validation reads only, the queue keeps the raw text
and message id, replay sends it (the 1.6 transaction id spliced in, nothing else), an answered row is
never sent twice, and a frame with numbers at its schema's extremes is relayed or queued, never lost."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from gateway.ocpp_proxy.frames import CALL, set_member, splice, validate, value_span
from gateway.ocpp_proxy.store import QueueLimits, Store

from .conftest import Cms, wait_for

T0 = "2024-01-01T00:00:00Z"


class RawCharger:
    """A charger that sends exact bytes and answers every gateway CALL with Accepted."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.answers: dict[str, list[Any]] = {}
        self.calls: list[list[Any]] = []
        self.after_answer: Callable[[list[Any]], Awaitable[None]] | None = None  # a CALL of the gateway's answered
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, port: int, cid: str, version: str, password: str | None = None) -> RawCharger:
        import base64

        headers = []
        if password is not None:
            headers.append(("Authorization", "Basic " + base64.b64encode(f"{cid}:{password}".encode()).decode()))
        sub = "ocpp1.6" if version == "1.6" else "ocpp2.0.1"
        ws = await connect(
            f"ws://127.0.0.1:{port}/ocpp/{cid}",
            subprotocols=[sub],  # type: ignore[list-item]
            additional_headers=headers,
            open_timeout=10,
        )
        return cls(ws)

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            if msg[0] == CALL:
                self.calls.append(msg)
                await self.ws.send(json.dumps([3, msg[1], {"status": "Accepted"}]))
                if self.after_answer is not None:
                    await self.after_answer(msg)
            else:
                self.answers[msg[1]] = msg

    async def call(self, raw: str) -> list[Any]:
        mid = json.loads(raw)[1]
        await self.ws.send(raw)
        got: list[Any] = await wait_for(lambda: self.answers.get(mid), what=f"answer to {mid}")
        return got

    async def close(self) -> None:
        self._task.cancel()
        await self.ws.close()


def _cms_calls(cms: Cms, cid: str, action: str) -> list[str]:
    return [r for c, r in cms.raw if c == cid and json.loads(r)[0] == CALL and json.loads(r)[2] == action]


# ---------------------------------------------------------------- frames: pure functions
def test_validate_leaves_the_payload_as_it_was() -> None:
    p: dict[str, Any] = {
        "eventType": "Updated",
        "timestamp": T0,
        "triggerReason": "MeterValuePeriodic",
        "seqNo": 1,
        "transactionInfo": {"transactionId": "t1"},
        "meterValue": [{"timestamp": T0, "sampledValue": [{"value": 1.5, "unitOfMeasure": {"unit": "kWh"}}]}],
    }
    before = copy.deepcopy(p)
    assert validate("2.0.1", CALL, "TransactionEvent", p) is None
    assert p == before  # no "offline": false, no "multiplier": 0


def test_splice_changes_one_value_and_keeps_every_other_byte() -> None:
    raw = '[2, "m1", "StopTransaction", { "meterStop" : 10, "transaction\\u0049d" :  -3 , "timestamp":"x"}]'
    out = splice(raw, (3, "transactionId"), 1001)
    assert out == raw.replace("-3", "1001")
    assert value_span(raw, (3, "absent")) is None
    assert splice(raw, (3, "absent"), 1) == raw
    nested = '[2,"m","SetChargingProfile",{"connectorId":1,"csChargingProfiles":{"transactionId":5,"x":[1,{"a":2}]}}]'
    assert splice(nested, (3, "csChargingProfiles", "transactionId"), -1) == nested.replace(":5,", ":-1,")


def test_set_member_inserts_or_replaces() -> None:
    raw = '[2,"m","TransactionEvent",{"eventType":"Started","seqNo":0}]'
    assert (
        set_member(raw, (3,), "offline", True)
        == '[2,"m","TransactionEvent",{"offline":true,"eventType":"Started","seqNo":0}]'
    )
    had = '[2,"m","TransactionEvent",{"offline": false ,"seqNo":0}]'
    assert set_member(had, (3,), "offline", True) == '[2,"m","TransactionEvent",{"offline": true ,"seqNo":0}]'


# ---------------------------------------------------------------- replay byte for byte
def _te(mid: str, seq: int, event: str, extra: str = "") -> str:
    # odd spacing and key order on purpose: a re-serialisation would show
    return (
        f'[2, "{mid}", "TransactionEvent", {{"seqNo": {seq}, "eventType": "{event}", "timestamp": "{T0}",'
        f' "triggerReason": "MeterValuePeriodic", "transactionInfo": {{"transactionId": "tx-9"}},'
        f' "evse": {{"id": 1, "connectorId": 1}}{extra},'
        f' "meterValue": [{{"timestamp": "{T0}", "sampledValue": [{{"value": 1200.5,'
        f' "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {{"unit": "Wh"}}}}]}}]}}]'
    )


@pytest.mark.parametrize("mark", [False, True])
async def test_201_replay_is_byte_exact_or_marks_offline(cms: Cms, make_gateway: Any, mark: bool) -> None:
    gw = await make_gateway(cms.port, ocpp_extra=f"offline_mark_events = {'true' if mark else 'false'}")
    ch = await RawCharger.open(gw.ctrl.port, "CP201", "2.0.1")
    try:
        await wait_for(lambda: gw.ctrl.cms_online("CP201"), what="CMS link")
        await cms.stop()
        await wait_for(lambda: not gw.ctrl.cms_online("CP201"), what="CMS link down")
        sent = [
            _te("a-1", 0, "Started"),
            _te("a-2", 1, "Updated", ', "offline": true'),
            _te("a-3", 2, "Ended"),
        ]
        for raw in sent:
            assert (await ch.call(raw))[0] == 3
        assert gw.ctrl.store.count_pending("CP201") == 3
        await cms.start()
        await wait_for(lambda: gw.ctrl.store.count_pending("CP201") == 0, what="queue drained")
        await wait_for(lambda: len(_cms_calls(cms, "CP201", "TransactionEvent")) == 3, what="replayed at the CMS")
        got = _cms_calls(cms, "CP201", "TransactionEvent")
        if mark:
            assert got == [set_member(r, (3,), "offline", True) for r in sent]
            assert all(json.loads(r)[3]["offline"] is True for r in got)
        else:
            assert got == sent  # exactly the bytes, message ids included
        await asyncio.sleep(0.2)
        assert len(_cms_calls(cms, "CP201", "TransactionEvent")) == 3
        assert gw.ctrl.store.count_rows() == 0, "answered rows are deleted"
    finally:
        await ch.close()


async def test_16_replay_changes_only_the_transaction_id(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port, ocpp_extra='offline_allow_list = ["FLEET-1"]')
    ch = await RawCharger.open(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
    try:
        await wait_for(lambda: gw.ctrl.cms_online("CP16"), what="CMS link")
        await cms.stop()
        await wait_for(lambda: not gw.ctrl.cms_online("CP16"), what="CMS link down")
        start = f'[2,"s-1","StartTransaction",{{"connectorId":1,"idTag":"FLEET-1","meterStart":0,"timestamp":"{T0}"}}]'
        local = (await ch.call(start))[2]["transactionId"]
        assert local < 0
        mv = (
            f'[2, "s-2", "MeterValues", {{"connectorId": 1, "transactionId": {local}, "meterValue":'
            f' [{{"timestamp": "{T0}", "sampledValue": [{{"value": "16.0", "measurand": "Current.Import"}}]}}]}}]'
        )
        stop = f'[2,"s-3","StopTransaction",{{"meterStop":900,"timestamp":"{T0}","transactionId":{local}}}]'
        await ch.call(mv)
        await ch.call(stop)
        await cms.start()
        await wait_for(lambda: gw.ctrl.store.count_pending("CP16") == 0, what="queue drained")
        await wait_for(lambda: _cms_calls(cms, "CP16", "StopTransaction"), what="stop replayed")
        cms_tx = cms.of("CP16", "StartTransaction")[0]["assigned"]
        assert _cms_calls(cms, "CP16", "StartTransaction") == [start]
        assert _cms_calls(cms, "CP16", "MeterValues") == [mv.replace(f": {local},", f": {cms_tx},")]
        assert _cms_calls(cms, "CP16", "StopTransaction") == [stop.replace(f":{local}}}", f":{cms_tx}}}")]
    finally:
        await ch.close()


# ---------------------------------------------------------------- numbers at the schema's extremes
def _extreme_te(mid: str, seq: int, mult: int) -> str:
    return (
        f'[2,"{mid}","TransactionEvent",{{"eventType":"Updated","timestamp":"{T0}","triggerReason":"MeterValuePeriodic",'
        f'"seqNo":{seq},"transactionInfo":{{"transactionId":"tx-x"}},"evse":{{"id":0}},'
        f'"numberOfPhasesUsed":2147483647,"cableMaxCurrent":-2147483648,"reservationId":2147483647,'
        f'"meterValue":[{{"timestamp":"{T0}","sampledValue":['
        f'{{"value":1.7976931348623157e308,"measurand":"Current.Import","phase":"L1",'
        f'"unitOfMeasure":{{"unit":"A","multiplier":{mult}}}}},'
        f'{{"value":-1.7976931348623157e308,"measurand":"Power.Active.Import","unitOfMeasure":{{"multiplier":{mult}}}}},'
        f'{{"value":0,"measurand":"Energy.Active.Import.Register","unitOfMeasure":{{"multiplier":{mult}}}}}]}}]}}]'
    )


def _extreme_mv(mid: str, mult: int) -> str:
    return (
        f'[2,"{mid}","MeterValues",{{"evseId":0,"meterValue":[{{"timestamp":"{T0}","sampledValue":['
        f'{{"value":5e-324,"measurand":"Current.Import","unitOfMeasure":{{"unit":"A","multiplier":{mult}}}}}]}}]}}]'
    )


async def test_201_extreme_numbers_relayed_live_and_queued_offline(cms: Cms, make_gateway: Any) -> None:
    gw = await make_gateway(cms.port)
    ch = await RawCharger.open(gw.ctrl.port, "CP201", "2.0.1")
    try:
        await wait_for(lambda: gw.ctrl.cms_online("CP201"), what="CMS link")
        live = [_extreme_te("x-1", 1, 400), _extreme_te("x-2", 2, -400), _extreme_mv("x-3", 400)]
        for raw in live:
            assert (await ch.call(raw))[0] == 3, raw
        assert [r for c, r in cms.raw if c == "CP201" and r.startswith('[2,"x-')] == live
        assert gw.ctrl.snapshot()["CP201"].online
        await cms.stop()
        await wait_for(lambda: not gw.ctrl.cms_online("CP201"), what="CMS link down")
        offline = [_extreme_te("y-1", 3, 2147483647), _extreme_mv("y-2", -2147483648)]
        for raw in offline:
            assert (await ch.call(raw))[0] == 3, raw
        assert gw.ctrl.store.count_pending("CP201") == 2
        await cms.start()
        await wait_for(lambda: gw.ctrl.store.count_pending("CP201") == 0, what="queue drained")
        await wait_for(lambda: [r for c, r in cms.raw if c == "CP201" and r.startswith('[2,"y-')] == offline)
    finally:
        await ch.close()


# ---------------------------------------------------------------- answered rows are never sent again
async def test_crash_between_answer_and_delete_sends_nothing_twice(cms: Cms, make_gateway: Any, tmp_path: Path) -> None:
    store = Store(tmp_path / "state" / "ocpp.sqlite")
    seqs = []
    for i in range(4):
        raw = _te(f"c-{i}", i, "Updated")
        seqs.append(await store.enqueue("CP201", "TransactionEvent", f"c-{i}", raw, essential=False))
    # the CMS answered the first two and the answers are on disk; the gateway died before the delete
    for seq in seqs[:2]:
        await asyncio.wrap_future(store.answered(seq, '[3,"x",{}]'))
    store.close()  # nothing after this point: the process is gone
    gw = await make_gateway(cms.port)
    ch = await RawCharger.open(gw.ctrl.port, "CP201", "2.0.1")
    try:
        await wait_for(lambda: gw.ctrl.store.count_rows() == 0, what="queue drained and answered rows deleted")
        ids = [json.loads(r)[1] for r in _cms_calls(cms, "CP201", "TransactionEvent")]
        assert ids == ["c-2", "c-3"]
    finally:
        await ch.close()


# ---------------------------------------------------------------- store: bound, tokens, migration
async def test_queue_bound_drops_periodic_keeps_transaction_ends_within_reserve(tmp_path: Path) -> None:
    from gateway.ocpp_proxy.store import QueueFull

    store = Store(tmp_path / "s.sqlite", QueueLimits(max_messages=10))
    try:
        for i in range(10):
            await store.enqueue("A", "MeterValues", f"m{i}", "[]", essential=False)
        with pytest.raises(QueueFull):
            await store.enqueue("A", "MeterValues", "m10", "[]", essential=False)
        await store.enqueue("A", "StopTransaction", "s0", "[]", essential=True)  # the reserve (a tenth)
        with pytest.raises(QueueFull):
            await store.enqueue("A", "StopTransaction", "s1", "[]", essential=True)
        assert store.count_pending() == 11
    finally:
        store.close()


def test_token_cache_expiry_age_and_size(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.sqlite")
    try:
        store.remember_token("past", "Accepted", expires=1000.0)
        store.remember_token("future", "Accepted", expires=4e9)
        for i in range(5):
            store.remember_token(f"t{i}", "Accepted", max_entries=6)
        store.flush()
        assert store.token_status("past") is None  # the CMS's expiryDate has passed
        assert store.token_status("future") == "Accepted"
        assert store.token_status("t4", max_age_s=3600) == "Accepted"
        import time

        assert store.token_status("t4", now=time.time() + 7200, max_age_s=3600) is None  # too old to trust
        kept = [t for t in ["past", "future", *[f"t{i}" for i in range(5)]] if store.token_status(t, now=0) is not None]
        assert len(kept) == 6 and "past" not in kept  # the least recently confirmed one was forgotten
    finally:
        store.close()


def test_store_migrates_a_queue_of_payload_rows(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, charger TEXT NOT NULL, action TEXT NOT NULL,"
        " payload TEXT NOT NULL, created REAL NOT NULL);"
        "CREATE TABLE tokens (token TEXT PRIMARY KEY, status TEXT NOT NULL, updated REAL NOT NULL);"
    )
    db.execute(
        "INSERT INTO queue (charger, action, payload, created) VALUES ('A', 'StartTransaction', ?, 0)",
        (json.dumps({"connectorId": 1, "__local_tx": -4}),),
    )
    db.commit()
    db.close()
    store = Store(path)
    try:
        (m,) = store.pending("A")
        assert (m.raw, m.message_id, m.local_tx, m.payload) == (None, None, -4, {"connectorId": 1})
    finally:
        store.close()


def test_ocpp_keys_of_the_queue_cache_and_report(tmp_path: Path) -> None:
    from gateway.config import site_from_text
    from gateway.errors import ConfigError

    from .conftest import site_text

    keys = ["queue_max_messages = 1000", "token_cache_max_age_s = 60", "offline_mark_events = true"]
    extra = "\n".join([*keys, 'gateway_profiles_report = "ems"'])
    o = site_from_text(site_text(tmp_path, 1, ocpp_extra=extra)).ocpp
    assert (o.queue_max_messages, o.token_cache_max_age_s, o.offline_mark_events) == (1000, 60.0, True)
    assert o.gateway_profiles_report == "ems"
    for bad, key in (
        ('gateway_profiles_report = "show"', "gateway_profiles_report"),
        ("queue_max_messages = 0", "queue_max_messages"),
    ):
        with pytest.raises(ConfigError) as err:
            site_from_text(site_text(tmp_path, 1, ocpp_extra=bad))
        assert f"ocpp.{key}" in str(err.value)
