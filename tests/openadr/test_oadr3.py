"""The OpenADR 3.0 client against a loopback HTTP server answering as a 3.0.1 VTN does: OAuth2 client credentials
at /auth/token, GET /programs and /events with the bearer token, paged by skip/limit. No OpenADR 3 VTN runs
here (the reference implementation is a Java service), so the server answers with programs and events written
after the published 3.0.1 OpenAPI schema (components.schemas program, event, interval, intervalPeriod,
valuesMap, eventPayloadDescriptor, clientCredentialResponse)."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway.budget.openadr3 import Oadr3Client, duration_s, event_of
from gateway.budget.service import BudgetService
from gateway.config import Site, site_from_dict
from gateway.electrical import service_line_current_a
from gateway.model import MeterReading
from tests.factories import ac, alloc, charging, site_dict, snap
from tests.openadr.vtn import free_port

TOKEN = "MTQ0NjJkZmQ5OTM2NDE1ZTZjNGZmZjI3"


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def program(pid: str, name: str) -> dict[str, Any]:
    return {"id": pid, "objectType": "PROGRAM", "programName": name, "programLongName": f"{name} program",
            "retailerName": "ACME", "programType": "DEMAND_RESPONSE", "country": "US",
            "createdDateTime": "2026-01-01T00:00:00Z", "modificationDateTime": "2026-01-01T00:00:00Z",
            "intervalPeriod": {"start": "2026-01-01T00:00:00Z", "duration": "P1Y"},
            "payloadDescriptors": [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "SIMPLE"}]}


def event(eid: str, pid: str, start: float, duration: str, payloads: list[dict[str, Any]],
          descriptors: list[dict[str, Any]] | None = None, **period: str) -> dict[str, Any]:
    return {"id": eid, "objectType": "EVENT", "programID": pid, "eventName": f"event {eid}", "priority": 0,
            "createdDateTime": iso(start - 3600), "modificationDateTime": iso(start - 3600), "targets": None,
            "payloadDescriptors": descriptors, "reportDescriptors": None,
            "intervalPeriod": {"start": iso(start), "duration": duration, **period},
            "intervals": [{"id": 0, "payloads": payloads}]}


class FakeVTN:
    """Programs and events in memory, served over HTTP on loopback with the 3.0.1 paths and auth."""

    def __init__(self) -> None:
        self.programs = [program("prog-1", "DR-EV"), program("prog-2", "TOU-RES")]
        self.events: list[dict[str, Any]] = []
        self.tokens = 0
        self.pages: list[tuple[str, int]] = []
        self.runner: web.AppRunner | None = None
        self.port = free_port()

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials" or (form.get("client_id"), form.get("client_secret")) != (
                "ven-1", "s3cret"):
            return web.json_response({"error": "invalid_client"}, status=400)
        self.tokens += 1
        return web.json_response({"access_token": TOKEN, "token_type": "Bearer", "expires_in": 3600})

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"title": "Forbidden", "status": 403}, status=403)
        skip, limit = int(request.query.get("skip", 0)), int(request.query.get("limit", 50))
        self.pages.append((request.path, skip))
        return web.json_response(items[skip:skip + limit])

    async def get_programs(self, request: web.Request) -> web.Response:
        return self._page(request, self.programs)

    async def get_events(self, request: web.Request) -> web.Response:
        return self._page(request, self.events)

    async def start(self) -> None:
        app = web.Application()
        app.add_routes([web.post("/openadr3/3.0.1/auth/token", self.token),
                        web.get("/openadr3/3.0.1/programs", self.get_programs),
                        web.get("/openadr3/3.0.1/events", self.get_events)])
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def make_site(tmp_path: Path, port: int, **openadr: Any) -> Site:
    secret = tmp_path / "oadr3.secret"
    secret.write_text("s3cret\n")
    d = site_dict(limit_a=100, margin_a=2, chargers=[ac("A", phases=3), ac("B", phases=3)])
    d["budget"] = {"openadr": {
        "protocol": "3.0", "vtn_url": f"http://127.0.0.1:{port}/openadr3/3.0.1", "ven_name": "depot",
        "client_id": "ven-1", "client_secret_file": str(secret), "programs": ["DR-EV"], "poll_interval_s": 1,
        "confirm_s": 10, "level1_kw": 40, "level2_kw": 20, "level3_kw": 10, **openadr}}
    return site_from_dict(d)


@contextlib.asynccontextmanager
async def setup(tmp_path: Path) -> AsyncIterator[tuple[FakeVTN, BudgetService, Oadr3Client, aiohttp.ClientSession]]:
    vtn = FakeVTN()
    await vtn.start()
    s = make_site(tmp_path, vtn.port)
    assert s.budget.openadr is not None
    svc = BudgetService(s, state_dir=tmp_path / "state")
    client = Oadr3Client(s.budget.openadr, svc.openadr)
    try:
        async with aiohttp.ClientSession() as session:
            yield vtn, svc, client, session
    finally:
        svc.close()
        await vtn.stop()


def caps_now(svc: BudgetService) -> dict[str, float]:
    now = time.monotonic()
    rd = MeterReading(current_a=(64.0,) * 3, at=now, total_power_w=44_340.0)
    b = svc.tick({"m-main": rd}, {c: charging(c, (32.0,) * 3) for c in ("A", "B")}, now)
    return {c.name: min(c.limit_a) for c in b.caps if c.name.startswith("openadr:")}


async def test_simple_event_of_the_configured_program_caps_the_site(tmp_path: Path) -> None:
    async with setup(tmp_path) as (vtn, svc, client, session):
        now = time.time()
        vtn.events = [
            event("ev-1", "prog-1", now - 5, "PT1H", [{"type": "SIMPLE", "values": [2]}]),
            event("ev-2", "prog-2", now - 5, "PT1H", [{"type": "SIMPLE", "values": [3]}]),  # another program
        ]
        await client.poll_once(session)
        await client.poll_once(session)
        assert vtn.tokens == 1  # one token for both polls (expires_in 3600)
        level2 = service_line_current_a(svc._site.service, 20e3)
        assert caps_now(svc) == {"openadr:ev-1": pytest.approx(level2)}
        st = svc.openadr.status(time.time(), svc._site.service)
        assert st["registered"] is True and st["protocol"] == "3.0" and st["last_event"] is not None
        chargers = [charging(c, (32.0,) * 3) for c in ("A", "B")]
        b = svc.last
        assert b is not None
        t = time.monotonic()
        a = alloc(snap(t, chargers, {"m-main": (64.0,) * 3}, caps=b.caps), svc._site, None, t)
        assert {lim.reason for lim in a.limits.values()} == {"capped:openadr:ev-1/L1"}


async def test_capacity_limit_in_watts_and_deletion(tmp_path: Path) -> None:
    async with setup(tmp_path) as (vtn, svc, client, session):
        now = time.time()
        vtn.events = [event("ev-3", "prog-1", now - 5, "PT30M", [{"type": "IMPORT_CAPACITY_LIMIT", "values": [30000]}],
                            [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": "IMPORT_CAPACITY_LIMIT",
                              "units": "W"}])]
        await client.poll_once(session)
        assert caps_now(svc) == {"openadr:ev-3": pytest.approx(service_line_current_a(svc._site.service, 30e3))}
        vtn.events = []  # the utility deleted it
        await client.poll_once(session)
        assert caps_now(svc) == {} and svc.openadr.events == {}


async def test_paging_and_a_modified_event(tmp_path: Path) -> None:
    async with setup(tmp_path) as (vtn, svc, client, session):
        now = time.time()
        filler = [event(f"tou-{i}", "prog-2", now, "PT1H", [{"type": "PRICE", "values": [0.2]}]) for i in range(55)]
        vtn.events = [*filler, event("ev-4", "prog-1", now - 5, "PT1H", [{"type": "SIMPLE", "values": [1]}])]
        await client.poll_once(session)
        assert ("/openadr3/3.0.1/events", 50) in vtn.pages
        assert set(caps_now(svc)) == {"openadr:ev-4"}
        changed = copy.deepcopy(vtn.events[-1])
        changed["intervals"][0]["payloads"][0]["values"] = [3]
        vtn.events[-1] = changed
        await client.poll_once(session)
        assert caps_now(svc)["openadr:ev-4"] == pytest.approx(service_line_current_a(svc._site.service, 10e3))


async def test_a_wrong_secret_is_an_error_in_the_status(tmp_path: Path) -> None:
    async with setup(tmp_path) as (vtn, svc, client, session):
        client._secret = "wrong"
        task_err = None
        try:
            await client.poll_once(session)
        except Exception as exc:
            task_err = exc
        assert task_err is not None and "token refused: HTTP 400" in str(task_err)
        assert vtn.tokens == 0 and svc.openadr.status(time.time())["registered"] is False


async def test_vtn_going_away_ends_an_open_ended_event(tmp_path: Path) -> None:
    async with setup(tmp_path) as (vtn, svc, client, session):
        now = time.time()
        vtn.events = [event("ev-5", "prog-1", now - 5, "PT0S", [{"type": "SIMPLE", "values": [3]}])]
        await client.poll_once(session)
        assert svc.openadr.events["ev-5"].end == math.inf
        await vtn.stop()
        with pytest.raises(aiohttp.ClientError):
            await client.poll_once(session)
        last = svc.openadr.ven.last_contact
        assert last is not None
        st = svc.openadr.status(last + 9)
        assert st["events"] and st["events"][0]["ends"] == iso(max(last, now - 5) + 10)  # type: ignore[index]


def test_durations_and_interval_sequences() -> None:
    assert duration_s("PT1H") == 3600 and duration_s("P1DT30M") == 88200 and duration_s("PT0.5S") == 0.5
    assert duration_s("P2W") == 14 * 86400
    with pytest.raises(ValueError):
        duration_s("1 hour")
    t0 = 1_800_000_000.0
    raw = event("e", "p", t0, "PT15M", [{"type": "SIMPLE", "values": [1]}], randomizeStart="PT5M")
    raw["intervals"].append({"id": 1, "payloads": [{"type": "SIMPLE", "values": [3]}]})
    raw["intervals"].append({"id": 2, "payloads": [{"type": "PRICE", "values": [0.4]}]})
    ev = event_of(raw, "DR-EV", t0 - 60, None)
    assert [(iv.start - t0, iv.end - t0, iv.value) for iv in ev.intervals] == [(0, 900, 1), (900, 1800, 3)]
    assert ev.end == t0 + 1800 and ev.offset_s == 0 and ev.signal == "SIMPLE"
    import random
    assert 0 <= event_of(raw, "DR-EV", t0, random.Random(1)).offset_s <= 300
    forever = event("f", "p", t0, "P9999Y", [{"type": "SIMPLE", "values": [2]}])
    assert event_of(forever, "", t0, None).end == math.inf
