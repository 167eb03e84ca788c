"""The JSON API and /metrics against the real daemon (in process) and a simulated site, over loopback."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.conftest import wait_for
from tests.web.conftest import Web, basic, client, plug_all


async def _get(http: Any, url: str) -> Any:
    r = await http.get(url)
    assert r.status == 200, (url, r.status, await r.text())
    return await r.json()


async def test_every_route_is_in_the_openapi_description(web_site: Any) -> None:
    w: Web = await web_site()
    async with client(w.url) as http:
        doc = await _get(http, w.url + "/api/openapi.json")
    assert doc["openapi"].startswith("3.")
    routes = {r.resource.canonical for r in w.app.web.build_app().router.routes() if r.resource is not None}
    api_routes = {p for p in routes if p.startswith("/api/") or p == "/metrics"}
    assert api_routes - set(doc["paths"]) == set(), "undocumented routes"
    assert set(doc["paths"]) - api_routes == set(), "documented routes that do not exist"
    for ref in ("Site", "Circuit", "Charger", "Meter", "Tick", "Event", "Budget"):
        assert ref in doc["components"]["schemas"]


async def test_site_circuits_chargers_and_meters_are_the_loops_latest_values(web_site: Any) -> None:
    w: Web = await web_site()
    plug_all(w.sim)
    ctl = w.app.control
    assert await wait_for(lambda: ctl.allocation is not None and any(
        lim.limit > 8 for lim in ctl.allocation.limits.values()), 20)
    async with client(w.url) as http:
        await w.login(http, "viewer")
        live = await _get(http, w.url + "/api/live")
        alloc, snap = ctl.allocation, ctl.snapshot
        assert alloc is not None and snap is not None
        # the document is built from one allocation: compare with the one that was current (or the next)
        root = alloc.circuits["service"]
        svc = live["site"]["service"]
        assert svc["limit_a"] == 100.0
        assert svc["effective_limit_a"] == root.limit_a
        assert live["site"]["mode"] == "normal"
        assert live["site"]["budget"]["source"] == "service"
        assert [c["id"] for c in live["circuits"]] == ["service", "p1"]
        assert {c["id"] for c in live["chargers"]} == {"CP1", "CP2", "CP3", "CP4"}
        assert all(c["online"] and c["controlled"] for c in live["chargers"])
        assert {m["id"]: m["health"] for m in live["meters"]} == {"m-main": "ok", "m-p1": "ok"}
        chargers = await _get(http, w.url + "/api/chargers")
        by_id = {c["id"]: c for c in chargers}
        cur = ctl.allocation
        assert cur is not None
        for cid, c in by_id.items():
            assert c["reason"] in {cur.limits[cid].reason, alloc.limits[cid].reason}
        # a change of the building load shows in the service current within two seconds
        before = (await _get(http, w.url + "/api/site"))["service"]["measured_a"][0]
        w.level[0] = 55.0

        async def measured() -> float:
            return float((await _get(http, w.url + "/api/site"))["service"]["measured_a"][0])

        deadline = asyncio.get_running_loop().time() + 3.0
        now_a = before
        while asyncio.get_running_loop().time() < deadline:
            now_a = await measured()
            if now_a >= before + 30:
                break
            await asyncio.sleep(0.1)
        assert now_a >= before + 30, (before, now_a)
        failsafe = await _get(http, w.url + "/api/failsafe")
        assert failsafe["mode"] == "normal" and set(failsafe["budget_a"]) == {"service", "p1"}
        ticks = await _get(http, w.url + "/api/ticks?n=2")
        assert len(ticks) == 2 and all(t["allocation_ms"] >= 0 for t in ticks)


async def test_metrics_in_the_prometheus_format_with_the_loops_tick_figures(web_site: Any) -> None:
    w: Web = await web_site()
    async with client(w.url) as http:
        r = await http.get(w.url + "/metrics")
        assert r.status == 401  # users exist: a scraper authenticates (HTTP Basic, GET only)
        await asyncio.sleep(1.5)
        r = await http.get(w.url + "/metrics", headers=basic("viewer"))
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain")
        text = await r.text()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    ticks = fams["ems_control_ticks"].samples[0].value
    assert ticks >= 2
    alloc = {s.labels["quantile"]: s.value for s in fams["ems_control_allocation_seconds"].samples}
    assert set(alloc) == {"0.5", "0.99", "1"} and 0 < alloc["0.5"] <= alloc["1"] < 1.0
    phases = {s.labels["phase"] for s in fams["ems_control_phase_seconds"].samples if s.name.endswith("_count")}
    assert phases == {"allocation", "actuation", "publish"}
    counts = [s.value for s in fams["ems_control_phase_seconds"].samples
              if s.name.endswith("_count") and s.labels["phase"] == "allocation"]
    assert counts == [ticks]  # every tick observed once
    limits = {(s.labels["circuit"], s.labels["phase"]): s.value for s in fams["ems_circuit_limit_amperes"].samples}
    assert limits[("service", "L1")] == 100.0 and limits[("p1", "L3")] == 63.0
    online = {s.labels["charger"]: s.value for s in fams["ems_charger_online"].samples}
    assert online == {"CP1": 1.0, "CP2": 1.0, "CP3": 1.0, "CP4": 1.0}
    mode = {s.labels["mode"]: s.value for s in fams["ems_failsafe_mode"].samples}
    assert mode["normal"] == 1.0 and mode["failsafe"] == 0.0
    healthy = {s.labels["meter"]: s.value for s in fams["ems_meter_healthy"].samples}
    assert healthy == {"m-main": 1.0, "m-p1": 1.0}


async def test_history_and_event_log_with_filters(web_site: Any) -> None:
    w: Web = await web_site()
    async with client(w.url) as http:
        await w.login(http, "viewer")
        assert await wait_for(lambda: True, 0)
        await asyncio.sleep(3.5)  # history_interval_s = 1 in the harness
        await w.app.web.store.flush()
        hist = await _get(http, w.url + "/api/history/site?hours=1")
        assert hist["phases"] == ["L1", "L2", "L3"] and len(hist["samples"]) >= 2
        s = hist["samples"][-1]
        assert s["limit_a"] == [100.0, 100.0, 100.0] and len(s["measured_a"]) == 3
        ch = await _get(http, w.url + "/api/history/charger/CP2?hours=1")
        assert ch["unit"] == "A" and len(ch["samples"]) >= 2
        assert (await http.get(w.url + "/api/history/charger/nope")).status == 404
        ev = await _get(http, w.url + "/api/events")
        names = [e["name"] for e in ev["events"]]
        assert "charger_connected" in names and "web_login" in names
        only = await _get(http, w.url + "/api/events?kind=charger")
        assert only["events"] and all(e["kind"] == "charger" for e in only["events"])
        text = await _get(http, w.url + "/api/events?q=CP3")
        assert text["events"] and all("CP3" in str(e["fields"]) for e in text["events"])


async def test_the_active_configuration_has_its_secrets_masked(web_site: Any) -> None:
    w: Web = await web_site()
    raw_pw = "mqtt-secret-pw"
    w.app.web.site = __import__("dataclasses").replace(
        w.app.site, mqtt=__import__("dataclasses").replace(w.app.site.mqtt, username="u", password=raw_pw))
    async with client(w.url) as http:
        await w.login(http, "viewer")
        r = await http.get(w.url + "/api/config")
        text = await r.text()
        cfg = await r.json()
    assert raw_pw not in text
    assert cfg["mqtt"]["password"] == "***" and cfg["mqtt"]["username"] == "u"
    assert cfg["service"]["limit_a"] == 100.0 and set(cfg["chargers"]) == {"CP1", "CP2", "CP3", "CP4"}


async def test_a_silent_meter_shows_as_failsafe_and_meter_events_and_its_return(web_site: Any) -> None:
    w: Web = await web_site()
    web = w.app.web

    def names() -> list[str]:
        return [e["name"] for e in web.recent_events]

    async with client(w.url) as http:
        await w.login(http, "viewer")
        w.sim.meters["m-main"].silence()
        assert await wait_for(lambda: "failsafe_entered" in names(), 10), names()
        site = await _get(http, w.url + "/api/site")
        assert site["mode"] in ("failsafe", "partial-failsafe") and "m-main" in site["failsafe_meters"]
        meters = {m["id"]: m for m in await _get(http, w.url + "/api/meters")}
        assert meters["m-main"]["health"] in ("stale", "invalid") and meters["m-p1"]["health"] == "ok"
        w.sim.meters["m-main"].clear_faults()
        assert await wait_for(lambda: "failsafe_left" in names() and "meter_ok" in names(), 15), names()
        await web.store.flush()
        events = (await _get(http, w.url + "/api/events?kind=failsafe,meter"))["events"]
        got = [e["name"] for e in reversed(events)]
        assert got[0] in ("meter_stale", "meter_invalid") and got[0] != "meter_ok"
        assert got.index("failsafe_entered") < got.index("failsafe_left")
        assert {e["kind"] for e in events} == {"failsafe", "meter"}
        stale = next(e for e in events if e["name"] == got[0])
        assert stale["fields"]["meter"] == "m-main" and stale["fields"]["previous"] == "ok"


async def test_the_stream_sends_the_live_document_every_second(web_site: Any) -> None:
    w: Web = await web_site()
    async with client(w.url) as http:
        await w.login(http, "viewer")
        docs: list[dict[str, Any]] = []
        async with http.get(w.url + "/api/stream") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            t0 = asyncio.get_running_loop().time()
            while len(docs) < 3:
                line = await r.content.readline()
                if line.startswith(b"data: "):
                    docs.append(json.loads(line[6:]))
            elapsed = asyncio.get_running_loop().time() - t0
        assert w.app.web.sse_clients == 0 or await wait_for(lambda: w.app.web.sse_clients == 0, 3)
    assert all(set(d) == {"site", "circuits", "chargers", "meters", "events"} for d in docs)
    assert 1.0 <= elapsed <= 4.0, elapsed  # three documents: the first at once, then one a second
    assert docs[-1]["site"]["tick_age_s"] is not None
