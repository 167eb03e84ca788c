"""Telemetry against a real mosquitto, observed by mosquitto_sub (an independent client)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.config import Site
from gateway.model import MeterReading
from gateway.telemetry.mqtt import Telemetry
from hil.support import running_task
from tests.mosquitto import Mosquitto, MosquittoSub, read_retained
from tests.telemetry.conftest import async_wait, mqtt_cfg, tick

ROOT = "ems/t-site/"


@contextlib.asynccontextmanager
async def running(tel: Telemetry) -> AsyncIterator[asyncio.Task[None]]:
    """``tel`` running for the block, closed after it."""
    try:
        async with running_task(tel.run()) as task:
            yield task
    finally:
        tel.close()


def last_json(sub: MosquittoSub, topic: str) -> dict[str, object]:
    msgs = sub.on(topic)
    assert msgs, f"nothing on {topic}"
    out = json.loads(msgs[-1])
    assert isinstance(out, dict)
    return out


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_topics_and_payloads(mosquitto: Mosquitto, site: Site, tmp_path: Path, protocol: str) -> None:
    sub = MosquittoSub(mosquitto, [ROOT + "#"]).start()
    try:
        tel = Telemetry(mqtt_cfg(mosquitto, protocol=protocol), site, state_dir=tmp_path)
        async with running(tel):
            assert await async_wait(lambda: tel.connected)
            snap, alloc = tick(1.0)
            tel.publish_tick(snap, alloc)
            tel.event("cms_link_down", url="wss://cms.example/ocpp", reason="timeout")
            want = {ROOT + t for t in ("status", "site", "circuit/service", "circuit/panel-1", "meter/m-main",
                                       "charger/AC-1", "charger/DC-1", "event/cms_link_down")}
            assert await sub.until(lambda ms: want <= {t for t, _, _ in ms}), sorted({t for t, _, _ in sub.snapshot()})
            assert sub.on(ROOT + "status")[-1] == b"online"

            s = last_json(sub, ROOT + "site")
            assert s["mode"] == "normal"
            assert s["current_a"] == [52.0, 52.0, 52.0]
            assert s["limit_a"] == 200.0 and s["service_limit_a"] == 200.0
            assert s["headroom_a"] == [185.0, 185.0, 185.0]
            assert s["chargers_online"] == 2 and s["chargers_charging"] == 2
            assert isinstance(s["ts"], str) and s["ts"].endswith("Z")

            c = last_json(sub, ROOT + "circuit/panel-1")
            assert c["limit_a"] == 150.0 and c["current_a"] == [45.0, 45.0, 45.0] and c["state"] == "ok"

            m = last_json(sub, ROOT + "meter/m-main")
            assert m["valid"] is True and m["current_a"] == [50.0, 51.0, 52.0] and m["circuit"] == "service"
            assert m["voltage_v"] == [230.0, 231.0, 229.5]

            ac = last_json(sub, ROOT + "charger/AC-1")
            assert ac["state"] == "charging" and ac["limit_a"] == 16.0 and ac["reason"] == "fair-share"
            assert ac["current_a"] == [15.0, 0.0, 0.0] and "limit_w" not in ac
            dc = last_json(sub, ROOT + "charger/DC-1")
            assert dc["limit_w"] == 20000 and dc["power_w"] == 19000 and "limit_a" not in dc

            ev = last_json(sub, ROOT + "event/cms_link_down")
            assert ev["event"] == "cms_link_down" and ev["reason"] == "timeout" and ev["site"] == "t-site"
            assert isinstance(ev["id"], str) and len(ev["id"]) == 32

            # what a late subscriber gets: retained status and values; events are not retained
            retained = {t for t, _, r in sub.snapshot() if r}
            assert not retained  # the subscriber was there first: live messages
            assert await asyncio.to_thread(read_retained, mosquitto, ROOT + "status") == b"online"
            raw = await asyncio.to_thread(read_retained, mosquitto, ROOT + "charger/DC-1")
            late = json.loads(raw or b"{}")
            assert late["limit_w"] == 20000
            assert await asyncio.to_thread(read_retained, mosquitto, ROOT + "event/cms_link_down", timeout=1) is None

            # derived events: fail-safe, meter stale and back, non-compliance
            tel.publish_tick(*tick(2.0, mode="failsafe",
                                   meter=MeterReading(current_a=(0.0,) * 3, at=2.0, valid=False, reason="frozen"),
                                   noncompliant=True))
            tel.publish_tick(*tick(3.0))
            evs = [ROOT + "event/" + n for n in ("failsafe_entered", "failsafe_left", "meter_stale", "meter_back",
                                                  "noncompliance", "noncompliance_cleared")]
            assert await sub.until(lambda ms: set(evs) <= {t for t, _, _ in ms})
            fe = last_json(sub, ROOT + "event/failsafe_entered")
            assert fe["mode"] == "failsafe" and fe["meters"] == ["m-main"]
            assert last_json(sub, ROOT + "event/meter_stale")["reason"] == "frozen"
        # cancelled: status offline, retained
        assert await sub.until(lambda ms: (ROOT + "status", b"offline", False) in ms)
        assert await asyncio.to_thread(read_retained, mosquitto, ROOT + "status") == b"offline"
    finally:
        sub.stop()


def seqs(sub: MosquittoSub) -> list[int]:
    out = []
    for p in sub.on(ROOT + "event/test_seq"):
        n = json.loads(p)["n"]
        assert isinstance(n, int)
        out.append(n)
    return out


async def test_broker_restart_loses_no_event(tmp_path: Path, site: Site) -> None:
    broker = Mosquitto(tmp_path / "broker", persistence=True)
    broker.start()
    # a persistent-session subscriber: it reconnects by itself and the broker keeps its queue
    sub = MosquittoSub(broker, [ROOT + "event/#", ROOT + "charger/#"], client_id="t-evsub", persistent=True).start()
    tel = Telemetry(mqtt_cfg(broker), site, state_dir=tmp_path / "state")
    try:
        async with running(tel):
            assert await async_wait(lambda: tel.connected)
            for i in range(5):
                tel.event("test_seq", n=i)
            assert await sub.until(lambda ms: len(seqs(sub)) == 5)
            assert await async_wait(lambda: tel.stats().inflight == 0)

            await asyncio.to_thread(broker.stop)
            assert await async_wait(lambda: not tel.connected)
            for i in range(5, 15):
                tel.event("test_seq", n=i)
            n_ac = len(sub.on(ROOT + "charger/AC-1"))
            for k in range(5):  # values during the outage: only the latest is sent afterwards
                tel.publish_tick(*tick(float(k), ac_limit=10.0 + k))
            assert tel.stats().queued_events == 10

            await asyncio.to_thread(broker.start)
            assert await sub.until(lambda ms: len(seqs(sub)) >= 15 and bool(sub.on(ROOT + "event/mqtt_reconnected")),
                                   timeout=30), (seqs(sub), tel.stats(), broker.log.read_text()[-2000:])
            # every event, each under one id: QoS 1 lets the broker deliver a message to the subscriber again when
            # it stopped before it had the subscriber's PUBACK (that copy has the same id; de-duplicate by id)
            by_id = {json.loads(p)["id"]: json.loads(p)["n"] for p in sub.on(ROOT + "event/test_seq")}
            assert sorted(by_id.values()) == list(range(15)) and set(seqs(sub)) == set(range(15))
            rec = json.loads(sub.on(ROOT + "event/mqtt_reconnected")[-1])
            assert isinstance(rec["gap_s"], float) and rec["gap_s"] > 0
            assert await sub.until(lambda ms: len(sub.on(ROOT + "charger/AC-1")) > n_ac)
            assert await async_wait(lambda: tel.stats().queued_events == 0 and tel.stats().inflight == 0)
            after = [json.loads(p)["limit_a"] for p in sub.on(ROOT + "charger/AC-1")[n_ac:]]
            # the latest only; twice when the gateway published it before the subscriber was back: once queued in
            # the subscriber's persistent session, once more as the retained value when it subscribes again
            assert after in ([14.0], [14.0, 14.0]), after
    finally:
        sub.stop()
        broker.stop()


async def test_events_survive_gateway_restart(tmp_path: Path, site: Site) -> None:
    broker = Mosquitto(tmp_path / "broker")  # configured, not started: the broker is away
    state = tmp_path / "state"
    tel = Telemetry(mqtt_cfg(broker), site, state_dir=state)
    async with running(tel):
        await asyncio.sleep(0.3)
        for i in range(3):
            tel.event("test_seq", n=i)
        assert not tel.connected
    ids = [json.loads(p)["id"] for p in _stored_payloads(state)]
    assert len(ids) == 3  # on disk, waiting

    broker.start()
    sub = MosquittoSub(broker, [ROOT + "event/#"]).start()
    try:
        tel2 = Telemetry(mqtt_cfg(broker), site, state_dir=state)
        async with running(tel2):
            tel2.event("test_seq", n=3)
            assert await sub.until(lambda ms: len(seqs(sub)) == 4)
            assert seqs(sub) == [0, 1, 2, 3]  # in order: the older run's first
            assert [json.loads(p)["id"] for p in sub.on(ROOT + "event/test_seq")][:3] == ids
            assert await async_wait(lambda: tel2.stats().queued_events == 0)
        assert _stored_payloads(state) == []
    finally:
        sub.stop()
        broker.stop()


def _stored_payloads(state: Path) -> list[bytes]:
    import sqlite3

    db = sqlite3.connect(state / "events.sqlite")
    try:
        return [bytes(r[0]) for r in db.execute("SELECT payload FROM events ORDER BY id")]
    finally:
        db.close()


async def test_reconnects_within_seconds_of_the_brokers_return(tmp_path: Path, site: Site) -> None:
    """Issue 13: after a short broker outage the link took up to 31 s to come back (paho's backoff doubling to
    reconnect_max_s). A young outage is retried every 2 s at most, whatever reconnect_max_s is."""
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    tel = Telemetry(mqtt_cfg(broker, reconnect_max_s=30), site, state_dir=tmp_path / "state")
    try:
        async with running(tel):
            assert await async_wait(lambda: tel.connected)
            await asyncio.to_thread(broker.stop)
            assert await async_wait(lambda: not tel.connected)
            await asyncio.sleep(7.5)  # old backoff: attempts 1, 3, 7, 15 s after the loss: back 7.5 s late
            await asyncio.to_thread(broker.start)
            back = asyncio.get_running_loop().time()
            assert await async_wait(lambda: tel.connected, timeout=15)
            gap = asyncio.get_running_loop().time() - back
            print(f"reconnected {gap:.2f} s after the broker's return")
            assert gap < 3.5
    finally:
        broker.stop()
