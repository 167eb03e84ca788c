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
from gateway.telemetry.config import MqttConfig
from gateway.telemetry.mqtt import Telemetry
from tests.mosquitto import Mosquitto, MosquittoSub, read_retained
from tests.telemetry.conftest import async_wait, mqtt_cfg, tick

ROOT = "ems/t-site/"


@contextlib.asynccontextmanager
async def running(tel: Telemetry) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(tel.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
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
            late = json.loads((await asyncio.to_thread(read_retained, mosquitto, ROOT + "charger/DC-1")) or b"{}")
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
