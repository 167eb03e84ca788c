"""The planner over MQTT (real mosquitto): ``cmd/session_needs`` reaches the planner and is answered, a retained
or malformed one is refused with its reason, and the plan's projections are published on ``plan``."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config import Site
from gateway.planner.config import PlannerSettings
from gateway.planner.service import PlannerService
from gateway.telemetry.mqtt import Telemetry
from tests.mosquitto import Mosquitto, MosquittoSub
from tests.telemetry.conftest import FakeClock, async_wait, mqtt_cfg, tick
from tests.telemetry.test_mqtt_cap import pub
from tests.telemetry.test_mqtt_link import running

ROOT = "ems/t-site/"
CMD = ROOT + "cmd/session_needs"
REPLY = CMD + "/reply"


class _Projections:
    """The planner's telemetry and events as a worker would leave them (the LP itself is tested in tests/planner)."""

    def __init__(self, svc: PlannerService) -> None:
        self.svc = svc
        self.events: list[tuple[str, Mapping[str, object]]] = [
            ("session_at_risk", {"charger": "AC-1", "short_kwh": 3.5})]

    def command(self, payload: bytes, *, require_ts: bool) -> dict[str, object]:
        return self.svc.command(payload, require_ts=require_ts)

    def telemetry(self) -> dict[str, Any]:
        return {"status": "optimal", "sessions": {"AC-1": {"projected_kwh": 26.5, "need_kwh": 30.0, "at_risk": True}}}

    def take_events(self) -> list[tuple[str, Mapping[str, object]]]:
        ev, self.events = self.events, []
        return ev


async def test_session_needs_reach_the_planner_and_the_plan_is_published(
    mosquitto: Mosquitto, site: Site, tmp_path: Path
) -> None:
    svc = PlannerService(site, PlannerSettings(enabled=True))
    sub = MosquittoSub(mosquitto, [ROOT + "#"]).start()
    clock = FakeClock(100.0)
    tel = Telemetry(mqtt_cfg(mosquitto), site, clock=clock, state_dir=tmp_path)
    tel.planner = _Projections(svc)
    try:
        async with running(tel):
            assert await async_wait(lambda: tel.connected)
            departure = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 6 * 3600))
            await pub(mosquitto, CMD, json.dumps({"id": "n-1", "charger": "AC-1", "energy_kwh": 30,
                                                  "departure": departure, "ts": _now_iso()}))
            assert await sub.until(lambda _m: len(sub.on(REPLY)) == 1)
            r = json.loads(sub.on(REPLY)[0])
            assert r["ok"] is True and r["id"] == "n-1" and r["charger"] == "AC-1"
            needs = svc.commanded["AC-1"]
            assert needs.energy_wh == 30_000.0 and needs.departure_wall is not None
            assert abs(needs.departure_wall - (time.time() + 6 * 3600)) < 5
            # refused with a reason, and nothing changes
            await pub(mosquitto, CMD, json.dumps({"id": "n-2", "charger": "nope", "energy_kwh": 5, "ts": _now_iso()}))
            await pub(mosquitto, CMD, json.dumps({"id": "n-3", "charger": "AC-1", "energy_kwh": 5}), retain=True)
            assert await sub.until(lambda _m: len(sub.on(REPLY)) == 3)
            bad = {json.loads(p)["id"]: json.loads(p) for p in sub.on(REPLY)[1:]}
            assert bad["n-2"]["ok"] is False and "configured charger" in bad["n-2"]["reason"]
            assert bad["n-3"]["ok"] is False and "retained" in bad["n-3"]["reason"]
            assert svc.commanded["AC-1"].energy_wh == 30_000.0
            # the plan's projections on `plan`, its events on event/...
            clock.t += 1
            snap, alloc = tick(clock.t)
            tel.publish_tick(snap, alloc)
            assert await sub.until(
                lambda _m: bool(sub.on(ROOT + "plan")) and bool(sub.on(ROOT + "event/session_at_risk"))
            )
            plan = json.loads(sub.on(ROOT + "plan")[-1])
            assert plan["sessions"]["AC-1"] == {"projected_kwh": 26.5, "need_kwh": 30.0, "at_risk": True}
            assert json.loads(sub.on(ROOT + "event/session_at_risk")[0])["short_kwh"] == 3.5
    finally:
        sub.stop()
        svc.close()


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
