"""Reconnecting to the CMS: quick first retry, capped jittered backoff, and a CMS that refuses is not
hammered."""

from __future__ import annotations

import asyncio
import random
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from gateway.backoff import Backoff
from gateway.ocpp_proxy.cms_link import refusal
from gateway.ocpp_proxy.config import OcppConfig

from .conftest import connect_charger, free_port, wait_for


def test_default_backoff_first_retry_within_1s_capped_at_15s_with_jitter() -> None:
    cfg = OcppConfig()
    delays: list[float] = []
    for seed in range(20):
        b = Backoff(cfg.reconnect_min_s, cfg.reconnect_max_s, rng=random.Random(seed))
        first = b.next_delay()
        assert 0 < first <= 1.0
        delays.extend(b.next_delay() for _ in range(30))
    assert max(delays) <= 15.0
    assert len({round(d, 3) for d in delays}) > 100, "jittered, not a fixed schedule"
    assert cfg.reconnect_refused_s >= 30


@pytest.mark.parametrize("how", ["401", "404", "only-2.0.1", "no-subprotocol"])
async def test_refusing_cms_is_logged_as_such_and_not_retried_at_full_speed(make_gateway: Any, how: str) -> None:
    port = free_port()
    attempts: list[str] = []

    def process_request(conn: ServerConnection, req: Request) -> Response | None:
        attempts.append(req.path)
        if how in ("401", "404"):
            return conn.respond(HTTPStatus(int(how)), "no\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    # "only-2.0.1": the CMS speaks only 2.0.1 and the charger is 1.6 (answered 400 Bad Request);
    # "no-subprotocol": a lax CMS accepts the connection without choosing a subprotocol
    subs = None if how == "no-subprotocol" else ["ocpp2.0.1"]
    server = await serve(handler, "127.0.0.1", port, process_request=process_request, subprotocols=subs)  # type: ignore[arg-type]
    try:
        # fast retries for network failures (0.05..0.3 s), but a refusal waits reconnect_refused_s
        gw = await make_gateway(port, ocpp_extra="reconnect_refused_s = 30")
        ch = await connect_charger(gw.ctrl.port, "CP16", "1.6", password="secret-cp16")
        try:
            ev = await wait_for(lambda: [f for n, f in gw.events if n == "cms_refused"], what="refusal event")
            expected = {
                "401": "HTTP 401",
                "404": "HTTP 404",
                "only-2.0.1": "HTTP 400",
                "no-subprotocol": "subprotocol",
            }[how]
            assert ev[0]["reason"] == expected
            await asyncio.sleep(1.0)  # a network failure would have been retried about 5 times by now
            assert len(attempts) == 1
            assert not gw.ctrl.cms_online("CP16")
        finally:
            await ch.close()
    finally:
        server.close()
        await server.wait_closed()


def test_network_failures_are_not_refusals() -> None:
    assert refusal(ConnectionRefusedError(111, "refused")) is None
    assert refusal(TimeoutError()) is None
