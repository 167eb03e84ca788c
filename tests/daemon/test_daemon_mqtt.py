"""The daemon's telemetry through a real mosquitto, read by mosquitto_sub; the remote site cap; the last will."""

from __future__ import annotations

import json
import signal
from typing import Any

from sitesim.ev import EvSpec

from tests.daemon.conftest import Rig, wait_for
from tests.mosquitto import Mosquitto, MosquittoSub, mosquitto_pub, read_retained

ROOT = "ems/test-site/"



async def test_daemon_publishes_takes_a_remote_cap_and_leaves_a_last_will(rig_factory: Any, broker: Mosquitto) -> None:
    sub = MosquittoSub(broker, [ROOT + "#"]).start()
    try:
        rig: Rig = await rig_factory(extra={"mqtt": {"host": broker.host, "port": broker.port,
                                                      "charger_min_interval_s": 0.5, "heartbeat_s": 5.0}})
        for i, ch in enumerate(rig.sim.chargers.values()):
            ch.plug_in(EvSpec(capacity_kwh=500.0, soc_start=0.2, max_ac_a=32.0, ac_phases=3,
                              response_delay_s=0.5, id_tag=f"TAG{i}"))
        assert read_retained(broker, ROOT + "status") == b"online"
        assert await sub.until(lambda _m: sub.last_json(ROOT + "site") is not None, 15)
        site = sub.last_json(ROOT + "site")
        assert site is not None and site["mode"] == "normal" and len(site["current_a"]) == 3 and "ts" in site
        assert await sub.until(lambda _m: (sub.last_json(ROOT + "charger/CP1") or {}).get("state") == "charging", 20)
        cp1 = sub.last_json(ROOT + "charger/CP1")
        assert cp1 is not None and cp1["reason"] and "limit_a" in cp1

        # a remote cap of 30 A per phase for 4 s: the limits come down, with the cap as the reason
        mosquitto_pub(broker, ROOT + "cmd/site_limit", json.dumps({"id": "dr-1", "limit_a": 30, "duration_s": 4}))
        assert await sub.until(lambda _m: bool(sub.on(ROOT + "cmd/site_limit/reply")), 10)
        reply = json.loads(sub.on(ROOT + "cmd/site_limit/reply")[-1])
        assert reply["id"] == "dr-1" and reply["ok"] is True
        # the cap becomes the binding constraint: limits are capped by it (or paused when minimums no longer fit)
        assert await wait_for(lambda: any(e.get("event") == "limit_changed"
                                          and str(e.get("reason")).endswith(":remote:dr-1/L1")
                                          for e in rig.daemon.logs), 10)
        # a malformed command is answered with the reason and changes nothing
        mosquitto_pub(broker, ROOT + "cmd/site_limit", "{not json")
        assert await sub.until(lambda _m: len(sub.on(ROOT + "cmd/site_limit/reply")) >= 2, 10)
        bad = json.loads(sub.on(ROOT + "cmd/site_limit/reply")[-1])
        assert bad["ok"] is False and bad["reason"]
        # the cap expires on time: limits rise again for another reason
        mark = len(rig.daemon.logs)
        assert await wait_for(
            lambda: any(e.get("event") == "limit_changed" and e.get("charger") == "CP4"
                        and not str(e.get("reason")).startswith("capped:remote:") for e in rig.daemon.logs[mark:]),
            15,
        )

        # the gateway is killed: the broker publishes its retained last will
        rig.daemon.signal(signal.SIGKILL)
        await rig.daemon.wait_exit()
        assert await wait_for(lambda: read_retained(broker, ROOT + "status", timeout=2) == b"offline", 30)
    finally:
        sub.stop()


async def test_sigterm_publishes_gateway_stopping_before_exit(rig_factory: Any, broker: Mosquitto) -> None:
    """Issue 13: `gateway_stopping` reaches the broker on SIGTERM (the event is flushed before the link closes)."""
    sub = MosquittoSub(broker, [ROOT + "event/#", ROOT + "status"]).start()
    try:
        rig: Rig = await rig_factory(extra={"mqtt": {"host": broker.host, "port": broker.port}})
        assert await sub.until(lambda _m: sub.on(ROOT + "status")[-1:] == [b"online"], 15)
        rig.daemon.signal(signal.SIGTERM)
        await rig.daemon.wait_exit()
        assert await sub.until(lambda _m: bool(sub.on(ROOT + "event/gateway_stopping")), 10), sub.snapshot()[-5:]
        ev = json.loads(sub.on(ROOT + "event/gateway_stopping")[-1])
        assert ev["reason"] == "signal"
        assert sub.on(ROOT + "status")[-1] == b"offline"
    finally:
        sub.stop()
