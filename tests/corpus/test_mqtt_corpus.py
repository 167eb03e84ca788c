"""The MQTT command corpus (tests/corpus/mqtt/commands.json) against a real mosquitto: every command answered on
its reply topic with the expected outcome and reason, and the command's id whenever it has a readable one; the
link stays up and a refused command leaves the active cap as it was. Plus freshness: retained commands (MQTT 5
retain-as-published) and timestamps (required with MQTT 3.1.1)."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import Site
from gateway.telemetry.mqtt import Telemetry
from tests.mosquitto import Mosquitto, MosquittoSub, mosquitto_pub
from tests.telemetry.conftest import async_wait, mqtt_cfg
from tests.telemetry.test_mqtt_link import running

ROOT = "ems/t-site/"
CASES: list[dict[str, Any]] = json.loads((Path(__file__).resolve().parent / "mqtt" / "commands.json").read_text())


def _iso(offset_s: float) -> str:
    return datetime.fromtimestamp(time.time() + offset_s, UTC).isoformat().replace("+00:00", "Z")


def payload_of(case: dict[str, Any]) -> bytes:
    """'@+600' / '@-3600' stand for the wall clock now plus / minus that many seconds; 'hex:' raw bytes."""
    text = str(case["payload"])
    if text.startswith("hex:"):
        return bytes.fromhex(text[4:])
    for token in [t for t in text.split('"') if t.startswith("@") and t[1:2] in "+-"]:
        text = text.replace(f'"{token}"', f'"{_iso(float(token[1:]))}"')
    return text.encode()


async def pub(broker: Mosquitto, topic: str, payload: bytes, retain: bool = False) -> None:
    await asyncio.to_thread(mosquitto_pub, broker, topic, payload, retain=retain)


def replies(sub: MosquittoSub, topic: str) -> list[dict[str, Any]]:
    return [json.loads(p) for p in sub.on(topic)]


async def test_command_corpus(mosquitto: Mosquitto, site: Site, tmp_path: Path) -> None:
    sub = MosquittoSub(mosquitto, [ROOT + "cmd/#"]).start()
    tel = Telemetry(mqtt_cfg(mosquitto), site, state_dir=tmp_path)
    results: list[tuple[str, bool]] = []
    try:
        async with running(tel) as task:
            assert await async_wait(lambda: tel.connected)
            for case in CASES:
                reply_topic = f"{ROOT}cmd/{case['topic']}/reply"
                before_n = len(sub.on(reply_topic))
                cap_before = tel.budget.remote_cap_a(time.monotonic())
                await pub(mosquitto, f"{ROOT}cmd/{case['topic']}", payload_of(case))
                assert await sub.until(lambda ms, t=reply_topic, n=before_n: len(sub.on(t)) > n), case["name"]
                r = replies(sub, reply_topic)[-1]
                assert r["ok"] is case["ok"], (case["name"], r)
                assert r["id"] == case["id"], (case["name"], r)
                if not case["ok"]:
                    assert case["reason"] in r["reason"], (case["name"], r)
                    assert r["reason"] != "internal error"
                    assert tel.budget.remote_cap_a(time.monotonic()) == cap_before, case["name"]
                results.append((case["name"], True))
            assert tel.connected and not task.done()
    finally:
        sub.stop()
    assert len(results) == len(CASES)


async def test_a_retained_command_is_refused_live_and_at_subscribe(mosquitto: Mosquitto, site: Site,
                                                                    tmp_path: Path) -> None:
    """Issue 13 finding 6: the broker clears the retain flag on live delivery; MQTT 5 retain-as-published keeps it."""
    cmd, reply = ROOT + "cmd/site_limit", ROOT + "cmd/site_limit/reply"
    sub = MosquittoSub(mosquitto, [ROOT + "cmd/#"]).start()
    tel = Telemetry(mqtt_cfg(mosquitto), site, state_dir=tmp_path)
    try:
        async with running(tel):
            assert await async_wait(lambda: tel.connected)
            await pub(mosquitto, cmd, json.dumps({"id": "live-r", "limit_a": 10, "duration_s": 600}).encode(),
                      retain=True)
            assert await sub.until(lambda ms: len(sub.on(reply)) == 1)
            r = replies(sub, reply)[0]
            assert r["ok"] is False and r["id"] == "live-r" and "retained" in r["reason"], r
            assert tel.budget.remote_cap_a(time.monotonic()) is None
            await pub(mosquitto, cmd, b"", retain=True)  # clear it from the broker
            await pub(mosquitto, cmd, json.dumps({"id": "fresh", "limit_a": 100, "duration_s": 600}).encode())
            assert await sub.until(lambda ms: len(sub.on(reply)) == 2)
            assert replies(sub, reply)[1]["ok"] is True and tel.budget.remote_cap_a(time.monotonic()) == 100.0
    finally:
        sub.stop()


async def test_mqtt_311_commands_need_a_fresh_timestamp(mosquitto: Mosquitto, site: Site, tmp_path: Path) -> None:
    cmd, reply = ROOT + "cmd/site_limit", ROOT + "cmd/site_limit/reply"
    sub = MosquittoSub(mosquitto, [ROOT + "cmd/#"]).start()
    tel = Telemetry(mqtt_cfg(mosquitto, protocol="3.1.1"), site, state_dir=tmp_path)
    try:
        async with running(tel):
            assert await async_wait(lambda: tel.connected)
            await pub(mosquitto, cmd, json.dumps({"id": "no-ts", "limit_a": 10, "duration_s": 600}).encode())
            assert await sub.until(lambda ms: len(sub.on(reply)) == 1)
            r = replies(sub, reply)[0]
            assert r["ok"] is False and r["id"] == "no-ts" and "ts is required" in r["reason"], r
            old = {"id": "old", "limit_a": 10, "duration_s": 600, "ts": _iso(-600)}
            await pub(mosquitto, cmd, json.dumps(old).encode())
            assert await sub.until(lambda ms: len(sub.on(reply)) == 2)
            assert "stale" in replies(sub, reply)[1]["reason"]
            fresh = {"id": "ok", "limit_a": 100, "duration_s": 600, "ts": _iso(0)}
            await pub(mosquitto, cmd, json.dumps(fresh).encode())
            assert await sub.until(lambda ms: len(sub.on(reply)) == 3)
            assert replies(sub, reply)[2]["ok"] is True and tel.budget.remote_cap_a(time.monotonic()) == 100.0
    finally:
        sub.stop()
