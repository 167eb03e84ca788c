"""The remote site cap over MQTT: applied, converted, expiring on time, and malformed commands refused."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.budget.remote import CommandRejected, kw_to_a, parse_cap_command
from gateway.config import Site
from gateway.telemetry.mqtt import Telemetry
from tests.mosquitto import Mosquitto, MosquittoSub, mosquitto_pub, read_retained
from tests.telemetry.conftest import FakeClock, async_wait, mqtt_cfg
from tests.telemetry.test_mqtt_link import running

ROOT = "ems/t-site/"
CMD = ROOT + "cmd/site_limit"
REPLY = CMD + "/reply"


async def pub(broker: Mosquitto, topic: str, payload: bytes | str, retain: bool = False) -> None:
    await asyncio.to_thread(mosquitto_pub, broker, topic, payload, retain=retain)


def replies(sub: MosquittoSub, topic: str = REPLY) -> list[dict[str, object]]:
    return [json.loads(p) for p in sub.on(topic)]


async def test_cap_applied_and_expires_on_its_own(mosquitto: Mosquitto, site: Site, tmp_path: Path) -> None:
    sub = MosquittoSub(mosquitto, [ROOT + "#"]).start()
    tel = Telemetry(mqtt_cfg(mosquitto), site, state_dir=tmp_path)
    try:
        async with running(tel):
            assert await async_wait(lambda: tel.connected)
            assert tel.budget.remote_cap_a(tel_now()) is None
            await pub(mosquitto, CMD, json.dumps({"id": "dr-1", "limit_a": 120, "duration_s": 2.0}))
            assert await sub.until(lambda ms: len(sub.on(REPLY)) == 1)
            r = replies(sub)[0]
            assert r["ok"] is True and r["id"] == "dr-1" and r["cap_a"] == 120.0
            assert tel.budget.remote_cap_a(tel_now()) == 120.0
            assert await sub.until(lambda ms: bool(sub.on(ROOT + "event/site_cap_set")))
            # the state topic is published after the event: wait for it, then read it back as retained
            assert await sub.until(lambda ms: any(json.loads(p).get("active") for p in sub.on(ROOT + "site_cap")))
            raw = await asyncio.to_thread(read_retained, mosquitto, ROOT + "site_cap")
            state = json.loads(raw or b"{}")
            assert state["active"] is True and state["cap_a"] == 120.0 and state["request_id"] == "dr-1"
            # nobody calls site_cap_a and the cloud stays silent: the cap still expires on time
            assert await sub.until(lambda ms: bool(sub.on(ROOT + "event/site_cap_expired")), timeout=20)
            assert tel.budget.remote_cap_a(tel_now()) is None
            assert await sub.until(lambda ms: json.loads(sub.on(ROOT + "site_cap")[-1])["active"] is False)

            # in kW with an absolute expiry; then cleared
            until = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 600, UTC).isoformat()
            await pub(mosquitto, CMD, json.dumps({"id": "dr-2", "limit_kw": 69.282, "until": until}))
            assert await sub.until(lambda ms: len(sub.on(REPLY)) == 2)
            cap = tel.budget.remote_cap_a(tel_now())
            assert cap is not None and cap == pytest.approx(100.0, abs=0.01)  # 69.282 kW / (sqrt(3) * 400 V)
            await pub(mosquitto, CMD, json.dumps({"id": "dr-3", "clear": True}))
            assert await sub.until(lambda ms: len(sub.on(REPLY)) == 3)
            assert replies(sub)[2] == {**replies(sub)[2], "ok": True, "cleared": True}
            assert tel.budget.remote_cap_a(tel_now()) is None
    finally:
        sub.stop()


def tel_now() -> float:
    import time

    return time.monotonic()


async def test_cap_expires_with_the_cloud_gone(mosquitto: Mosquitto, site: Site, tmp_path: Path) -> None:
    clock = FakeClock(500.0)
    wall = FakeClock(1_700_000_000.0)
    tel = Telemetry(mqtt_cfg(mosquitto), site, clock=clock, wall_clock=wall, state_dir=tmp_path)
    async with running(tel):
        assert await async_wait(lambda: tel.connected)
        await pub(mosquitto, CMD, json.dumps({"limit_a": 150, "duration_s": 600}))
        assert await async_wait(lambda: tel.budget.remote_cap_a(clock()) == 150.0)
        await asyncio.to_thread(mosquitto.stop)  # the cloud goes silent
        assert await async_wait(lambda: not tel.connected)
        clock.t += 599.9
        assert tel.budget.remote_cap_a(clock()) == 150.0
        clock.t += 0.1
        assert tel.budget.remote_cap_a(clock()) is None
    # a cap survives a gateway restart with its remaining time (and not a second more)
    tel2 = Telemetry(mqtt_cfg(mosquitto), site, clock=clock, wall_clock=wall, state_dir=tmp_path)
    assert tel2.budget.remote_cap_a(clock()) is None
    tel2.link.command(CMD, json.dumps({"limit_a": 90, "duration_s": 100}).encode(), False)
    assert tel2.budget.remote_cap_a(clock()) == 90.0
    tel2.close()
    wall.t += 40
    clock.t = 10.0  # a reboot restarts the monotonic clock
    tel3 = Telemetry(mqtt_cfg(mosquitto), site, clock=clock, wall_clock=wall, state_dir=tmp_path)
    assert tel3.budget.remote_cap_a(clock.t + 59.9) == 90.0
    assert tel3.budget.remote_cap_a(clock.t + 60.0) is None
    tel3.close()


BAD: list[tuple[bytes, str]] = [
    (b"not json", "not a JSON document"),
    (b"[1, 2]", "expected a JSON object"),
    (b'{"id": "b1", "duration_s": 60}', "exactly one of limit_a or limit_kw"),
    (b'{"id": "b2", "limit_a": 100, "limit_kw": 50, "duration_s": 60}', "exactly one of limit_a or limit_kw"),
    (b'{"id": "b3", "limit_a": -1, "duration_s": 60}', "limit_a must be >= 0"),
    (b'{"id": "b4", "limit_a": 500, "duration_s": 60}', "exceeds the service limit"),
    (b'{"id": "b5", "limit_kw": 1000, "duration_s": 60}', "exceeds the service limit"),
    (b'{"id": "b6", "limit_a": "100", "duration_s": 60}', "limit_a must be a number"),
    (b'{"id": "b7", "limit_a": NaN, "duration_s": 60}', "not a JSON document"),
    (b'{"id": "b8", "limit_a": 100}', "exactly one of duration_s or until"),
    (b'{"id": "b9", "limit_a": 100, "duration_s": 0}', "already have expired"),
    (b'{"id": "b10", "limit_a": 100, "duration_s": 1e9}', "at most"),
    (b'{"id": "b11", "limit_a": 100, "until": "2020-01-01T00:00:00Z"}', "already have expired"),
    (b'{"id": "b12", "limit_a": 100, "until": "tomorrow"}', "not an ISO 8601"),
    (b'{"id": "b13", "limit_a": 100, "duration_s": 60, "priority": 1}', "unknown key(s): priority"),
    (b'{"id": "b14", "clear": true, "limit_a": 5}', "clear takes no other keys"),
    (b'{"id": 7, "limit_a": 100, "duration_s": 60}', "id must be a string"),
    (b"\xff\xfe", "not a JSON document"),
]


async def test_malformed_commands_answered_and_ignored(mosquitto: Mosquitto, site: Site, tmp_path: Path) -> None:
    sub = MosquittoSub(mosquitto, [ROOT + "cmd/#", ROOT + "site_cap"]).start()
    # a retained command would be replayed on every reconnect and restart: refused
    await pub(mosquitto, CMD, json.dumps({"id": "r1", "limit_a": 50, "duration_s": 60}), retain=True)
    tel = Telemetry(mqtt_cfg(mosquitto), site, state_dir=tmp_path)
    try:
        async with running(tel):
            assert await async_wait(lambda: tel.connected)
            assert await sub.until(lambda ms: len(sub.on(REPLY)) == 1)
            assert replies(sub)[0]["id"] == "r1" and "retained" in str(replies(sub)[0]["reason"])
            assert tel.budget.remote_cap_a(tel_now()) is None
            await pub(mosquitto, CMD, b"", retain=True)  # remove it from the broker again
            await pub(mosquitto, CMD, json.dumps({"id": "good", "limit_a": 150, "duration_s": 300}))
            assert await sub.until(lambda ms: len(sub.on(REPLY)) == 2)
            for i, (payload, reason) in enumerate(BAD):
                await pub(mosquitto, CMD, payload)
                assert await sub.until(lambda ms, n=i + 3: len(sub.on(REPLY)) == n), payload
                r = replies(sub)[-1]
                assert r["ok"] is False and reason in str(r["reason"]), (payload, r)
                assert tel.budget.remote_cap_a(tel_now()) == 150.0  # the good cap stands
            # an unknown command gets an answer on its own reply topic
            await pub(mosquitto, ROOT + "cmd/reboot", b"{}")
            assert await sub.until(lambda ms: bool(sub.on(ROOT + "cmd/reboot/reply")))
            assert "unknown command" in str(json.loads(sub.on(ROOT + "cmd/reboot/reply")[0])["reason"])
            assert tel.budget.remote_cap_a(tel_now()) == 150.0
    finally:
        sub.stop()


def test_kw_to_a(site: Site) -> None:
    assert kw_to_a(69.282, site.service) == pytest.approx(100.0, abs=0.001)
    one = type(site.service)(**{**site.service.__dict__, "wiring": "single-phase", "voltage_ll_v": 240.0})
    assert kw_to_a(24.0, one) == pytest.approx(100.0)
    # 120/240 V split-phase: 24 kW over both legs = 24000 W / 240 V = 100 A in each leg
    split = type(site.service)(**{**site.service.__dict__, "wiring": "split-phase", "voltage_ll_v": 240.0})
    assert kw_to_a(24.0, split) == pytest.approx(100.0)
    req = parse_cap_command(b'{"limit_kw": 24, "duration_s": 5}', service=one, now_wall=0.0)
    assert req.limit_kw == 24.0 and req.duration_s == 5.0
    with pytest.raises(CommandRejected, match="exceeds the service limit"):
        parse_cap_command(b'{"limit_kw": 60, "duration_s": 5}', service=one, now_wall=0.0)
