"""[web.push]: the site's figures and the event log POSTed to a URL, with the MQTT outbox's guarantees: events
persisted first and delivered at least once across an outage of the receiver and a restart of the gateway."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gateway.allocation import allocate
from gateway.config import site_from_dict
from gateway.errors import ConfigError
from gateway.web.config import WebConfig, WebPushConfig
from gateway.web.server import WebService
from hil.bench.bench_web import Holder
from hil.bench.sites import busy_snapshot, tree_site
from hil.support import running_task
from tests.daemon.conftest import small_site, wait_for


class Receiver:
    """A CMS-side HTTP endpoint on loopback: answers ``status``, records every POST."""

    def __init__(self) -> None:
        self.status = 503
        self.posts: list[dict[str, Any]] = []
        self.auth: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization", ""))
        if self.status == 200:
            self.posts.append(await request.json())
        return web.Response(status=self.status)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/ingest", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/ingest"

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [p for p in self.posts if p["type"] == kind]


@contextlib.asynccontextmanager
async def running(svc: WebService) -> Any:
    try:
        async with running_task(svc.run()):
            async with asyncio.timeout(10):
                await svc.started.wait()
            yield svc
    finally:
        svc.close()


def service(tmp_path: Path, url: str, **push: Any) -> WebService:
    site = tree_site(20)
    snap = busy_snapshot(site, 1000.0, random.Random(2))
    alloc, _ = allocate(snap, site, None, 1000.0)
    h = Holder()
    h.snapshot, h.allocation = snap, alloc
    cfg = WebConfig(port=0, users_file=str(tmp_path / "none"),
                    push=WebPushConfig(url=url, interval_s=1.0, retry_max_s=1.0, token="s3cret-token", **push))
    return WebService(cfg, site, h, state_dir=tmp_path / "state", clock=lambda: 1000.5)


async def test_events_survive_an_outage_and_a_restart_and_figures_are_the_newest(tmp_path: Path) -> None:
    rx = Receiver()
    await rx.start()
    async with running(service(tmp_path, rx.url)) as a:
        for k in range(3):
            a.event("site_cap_set", cap_a=50 + k, via="test")
        assert await wait_for(lambda: len(rx.auth) >= 2, 10)  # tried, refused (503): nothing delivered
        assert a.push is not None and a.push.up is False and a.push.sent_events == 0
    rx.status = 200
    async with running(service(tmp_path, rx.url)) as b:  # a restart: the outbox is read back from disk
        assert await wait_for(lambda: len(rx.of("events")) >= 1 and len(rx.of("figures")) >= 1, 10), rx.posts
        b.event("failsafe_entered", mode="failsafe", meters=["m-main"])
        assert await wait_for(lambda: sum(len(p["events"]) for p in rx.of("events")) >= 4, 10)
    events = [e for p in rx.of("events") for e in p["events"]]
    caps = [e for e in events if e["name"] == "site_cap_set"]
    assert sorted(e["fields"]["cap_a"] for e in caps) == [50, 51, 52]
    assert len({e["id"] for e in events}) == len(events)  # every event its id (for de-duplication)
    assert [e["name"] for e in events][-1] == "failsafe_entered"
    fig = rx.of("figures")[-1]
    assert fig["site"] == "bench-20" and fig["figures"]["service"]["limit_a"] > 0
    assert len(fig["figures"]["charger_figures"]) == 20
    assert {"id", "limit", "draw_a", "reason"} <= set(fig["figures"]["charger_figures"][0])
    assert set(rx.auth) == {"Bearer s3cret-token"}
    await rx.runner.cleanup()  # type: ignore[union-attr]


async def test_the_outbox_is_bounded_the_oldest_dropped(tmp_path: Path) -> None:
    rx = Receiver()
    await rx.start()
    async with running(service(tmp_path, rx.url, queue_max=10)) as a:
        for k in range(15):
            a.event("meter_stale", meter=f"m{k}")
        assert a.push is not None and a.push.store.count() == 10 and a.push.dropped_events == 5
        rx.status = 200
        assert await wait_for(lambda: sum(len(p["events"]) for p in rx.of("events")) == 10, 10)
    got = [e["fields"]["meter"] for p in rx.of("events") for e in p["events"]]
    assert got == [f"m{k}" for k in range(5, 15)]
    assert json.dumps(rx.posts)  # plain JSON documents
    await rx.runner.cleanup()  # type: ignore[union-attr]


@pytest.mark.parametrize(("push", "key"), [
    ({}, "web.push.url"),
    ({"url": "ftp://x/"}, "web.push.url"),
    ({"url": "http://cms.example.com/in", "token": "t"}, "web.push.token"),
    ({"url": "https://cms.example.com/in", "interval_s": 0}, "web.push.interval_s"),
    ({"url": "https://cms.example.com/in", "ca_file": "/nonexistent/ca.pem"}, "web.push.ca_file"),
])
def test_push_config_is_checked(push: dict[str, Any], key: str) -> None:
    raw = small_site()
    raw["web"] = {"push": push}
    with pytest.raises(ConfigError) as ei:
        site_from_dict(raw)
    assert ei.value.path == key


def test_push_config_parses() -> None:
    raw = small_site()
    raw["web"] = {"push": {"url": "https://cms.example.com/in", "token": "t0k3n", "interval_s": 30}}
    w = site_from_dict(raw).web
    assert w is not None and w.push is not None
    assert w.push.url == "https://cms.example.com/in" and w.push.interval_s == 30 and w.push.events is True
