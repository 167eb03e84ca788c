"""The daemon with [budget.openadr], against a real openleadr VTN on loopback: the VEN task registers, an event
lowers the chargers' limits (capped:openadr:<id>/L1), its cancellation releases them; `ems-gateway
openadr-status` reads the registration and the last event from the state directory."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sitesim.ev import EvSpec

from tests.daemon.conftest import Rig, broker, rig_factory, wait_for  # noqa: F401  (the fixtures)
from tests.mosquitto import Mosquitto, MosquittoSub
from tests.openadr.vtn import PREFIX, VTN, free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.filterwarnings("ignore::aiohttp.web.NotAppKeyWarning")
TOPICS = "ems/test-site/"



def _limited(rig: Rig, reason: str) -> bool:
    return any(e.get("event") == "limit_changed" and str(e.get("reason")) == reason for e in rig.daemon.logs)


async def test_daemon_follows_an_event_and_reports_its_status(rig_factory: Any, broker: Mosquitto) -> None:  # noqa: F811
    port = free_port()
    vtn = VTN(port)
    await vtn.start()
    sub = MosquittoSub(broker, [TOPICS + "#"]).start()
    try:
        rig: Rig = await rig_factory(extra={
            "mqtt": {"host": broker.host, "port": broker.port, "charger_min_interval_s": 0.5, "heartbeat_s": 5.0},
            "budget": {"openadr": {
            "vtn_url": f"http://127.0.0.1:{port}{PREFIX}", "ven_name": "depot-daemon", "poll_interval_s": 1,
            "confirm_s": 30, "level1_kw": 40, "level2_kw": 25, "level3_kw": 10, "lead_s": 5}}})
        for i, ch in enumerate(rig.sim.chargers.values()):
            ch.plug_in(EvSpec(capacity_kwh=500.0, soc_start=0.2, max_ac_a=32.0, ac_phases=3,
                              response_delay_s=0.5, id_tag=f"TAG{i}"))
        assert await wait_for(lambda: bool(rig.daemon.events("openadr_registered")), 20)
        ven_id = rig.daemon.events("openadr_registered")[0]["ven_id"]
        eid = vtn.event(ven_id, time.time() + 3, 10, value=1)
        assert await wait_for(lambda: vtn.opts.get(eid) == "optIn", 15)
        assert await wait_for(lambda: _limited(rig, f"capped:openadr:{eid}/L1"), 30)
        assert rig.daemon.events("openadr_event_applied", event_id=eid)
        # telemetry: the cap by its name on the budget topic, the event on event/openadr_event
        assert await sub.until(lambda _m: f"openadr:{eid}" in ((sub.last_json(TOPICS + "budget") or {}).get("caps")
                                                                or {}), 15)
        assert await sub.until(lambda _m: bool(sub.on(TOPICS + "event/openadr_event")), 15)
        ev = sub.last_json(TOPICS + "event/openadr_event")
        assert ev is not None and ev["event_id"] == eid and ev["opt"] == "optIn"

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", "openadr-status", str(rig.config), cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        assert proc.returncode == 0, out.decode() + err.decode()
        st = json.loads(out)
        assert st["registered"] is True and st["ven_id"] == ven_id and st["last_event"]["event_id"] == eid
        assert [e["event_id"] for e in st["events"]] == [eid] and st["events"][0]["opt"] == "optIn"

        vtn.cancel(ven_id, eid)
        assert await wait_for(lambda: bool(rig.daemon.events("openadr_event_released", event_id=eid)), 20)
        assert rig.daemon.events("openadr_event_ended", event_id=eid, reason="cancelled")
    finally:
        sub.stop()
        await vtn.stop()
