"""The daemon with a demand target, through a real mosquitto: the demand window lowers the limits (reason
capped:demand-window), the budget topic shows the interval's figures, and the tariff command path answers."""

from __future__ import annotations

import json
from typing import Any

from sitesim.ev import EvSpec

from tests.daemon.conftest import Rig, wait_for
from tests.mosquitto import Mosquitto, MosquittoSub, mosquitto_pub

ROOT = "ems/test-site/"
TARGET_KW = 30.0  # 100 A service at 400 V (69 kW); base load 20 A (13.9 kW); four EVs want 22 kW each



async def test_demand_target_lowers_the_limits_and_telemetry_shows_it(rig_factory: Any, broker: Mosquitto) -> None:
    sub = MosquittoSub(broker, [ROOT + "#"]).start()
    try:
        rig: Rig = await rig_factory(extra={
            "mqtt": {"host": broker.host, "port": broker.port, "charger_min_interval_s": 0.5, "heartbeat_s": 5.0},
            "budget": {"timezone": "Europe/Berlin", "demand": {"target_kw": TARGET_KW, "interval_min": 15},
                       "tariff": {"periods": [{"name": "flat", "start": "00:00", "end": "24:00",
                                               "price_per_kwh": 0.31}]}},
        })
        for i, ch in enumerate(rig.sim.chargers.values()):
            ch.plug_in(EvSpec(capacity_kwh=500.0, soc_start=0.2, max_ac_a=32.0, ac_phases=3,
                              response_delay_s=0.5, id_tag=f"TAG{i}"))
        # the window binds: limits capped by it, in the limit reasons of the log and the charger topics
        assert await wait_for(lambda: any(e.get("event") == "limit_changed"
                                          and str(e.get("reason")) == "capped:demand-window/L1"
                                          for e in rig.daemon.logs), 30)
        assert await sub.until(lambda _m: any((sub.last_json(ROOT + f"charger/CP{i}") or {}).get("reason")
                                              == "capped:demand-window/L1" for i in range(1, 5)), 15)
        assert await wait_for(lambda: bool(rig.daemon.events("budget_binding", source="demand-window")), 10)
        # the budget topic: the interval's energy, projected average, target, the month's peak; the tariff
        assert await sub.until(lambda _m: "demand" in (sub.last_json(ROOT + "budget") or {}), 15)
        b = sub.last_json(ROOT + "budget")
        assert b is not None
        d = b["demand"]
        assert d["target_kw"] == TARGET_KW and d["month_peak_kw"] == 0.0 and d["energy_kwh"] > 0
        assert d["measurement"] == "register"  # the Janitza map has the imported-energy register
        assert d["projected_kw"] is not None and d["interval_start"].endswith("Z")
        assert b["binding"] == "demand-window" and "demand-window" in b["caps"]
        assert b["tariff"]["period"] == "flat" and b["tariff"]["price_per_kwh"] == 0.31
        site = sub.last_json(ROOT + "site")
        assert site is not None and site["limit_source"] in ("demand-window", "service")
        tariff = sub.last_json(ROOT + "tariff")
        assert tariff is not None and tariff["period"] == "flat" and tariff["schedule"]
        # what the EVs draw stays within the allowance: the service's power under the target's current
        cap_a = d["cap_a"]
        assert 0 < cap_a < 100

        # the tariff is replaced over MQTT; a bad one is refused with the key path
        mosquitto_pub(broker, ROOT + "cmd/tariff", json.dumps({"id": "t-bad", "tariff": {"periods": [
            {"name": "x", "start": "00:00", "end": "12:00", "price_per_kwh": 0.1}]}}))
        mosquitto_pub(broker, ROOT + "cmd/tariff", json.dumps({"id": "t-1", "tariff": {"periods": [
            {"name": "cheap", "start": "00:00", "end": "24:00", "price_per_kwh": 0.12, "cap_kw": 25}]}}))
        assert await sub.until(lambda _m: len(sub.on(ROOT + "cmd/tariff/reply")) >= 2, 15)
        bad, good = (json.loads(p) for p in sub.on(ROOT + "cmd/tariff/reply")[:2])
        assert bad["ok"] is False and "tariff.periods" in bad["reason"] and good["ok"] is True
        assert await sub.until(lambda _m: (sub.last_json(ROOT + "tariff") or {}).get("period") == "cheap", 15)
        # its 25 kW cap is below the window's allowance: the tariff's cap binds now
        assert await wait_for(lambda: any(e.get("event") == "limit_changed"
                                          and str(e.get("reason")) == "capped:tariff:cheap/L1"
                                          for e in rig.daemon.logs), 20)
    finally:
        sub.stop()
