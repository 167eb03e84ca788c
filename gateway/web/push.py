"""Optional HTTP(S) push of the site's figures to a configured URL ([web.push]), with the MQTT outbox's guarantees.

* figures (the service per phase, budget source, mode, chargers): the newest document only; one that could
  not be sent is replaced by the next (like an MQTT value topic: latest value wins), at most every interval_s;
* events: persisted first (``gateway.telemetry.store.EventStore``, the MQTT outbox's store, in its own file),
  POSTed in order in batches, deleted only once the URL answered 2xx, so none is lost across an outage of the
  receiver or a gateway restart (at least once; each has an ``id`` for de-duplication); at most ``queue_max``
  wait (the oldest are dropped, logged);
* a failing URL is retried with backoff from 1 s up to retry_max_s.

Every POST is ``application/json``: ``{"type": "figures"|"events", "site": ..., "ts": ..., ...}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from gateway.errors import StoreError
from gateway.telemetry.store import EventStore
from gateway.web.config import WebPushConfig

log = structlog.get_logger(__name__)

PUSH_EVENTS_FILE = "web-push-events.sqlite"
BATCH = 100


def iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class HttpPush:
    def __init__(self, cfg: WebPushConfig, site_id: str, state_dir: str | Path, *,
                 figures: Callable[[], dict[str, Any] | None], wall: Callable[[], float]) -> None:
        self.cfg = cfg
        self.site_id = site_id
        self.figures = figures
        self.wall = wall
        self.store = EventStore(Path(state_dir) / PUSH_EVENTS_FILE)
        self.sent_figures = 0
        self.sent_events = 0
        self.dropped_events = 0
        self.failures = 0
        self._wake = asyncio.Event()
        self.up: bool | None = None

    def event(self, name: str, kind: str, fields: dict[str, Any], ts: float) -> None:
        """Persist an event for the URL (one SQLite insert, no network). Never raises."""
        if not self.cfg.events:
            return
        try:
            body = {"id": uuid.uuid4().hex, "ts": iso(ts), "name": name, "kind": kind, "fields": fields}
            self.store.add("event/" + name, json.dumps(body, default=str).encode())
            excess = self.store.count() - self.cfg.queue_max
            if excess > 0:
                old = self.store.load(0, excess)
                self.store.delete(k for k, _, _ in old)
                self.dropped_events += len(old)
                log.warning("web_push_events_dropped", dropped=len(old), queue_max=self.cfg.queue_max)
        except (StoreError, OSError) as exc:
            log.error("web_push_event_not_persisted", event_name=name, error=str(exc))
        self._wake.set()

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.cfg.url.startswith("https:"):
            return False
        ctx = ssl.create_default_context(cafile=self.cfg.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    async def _post(self, http: aiohttp.ClientSession, body: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/json"}
        if self.cfg.token:
            headers["Authorization"] = f"Bearer {self.cfg.token}"
        data = json.dumps(body, separators=(",", ":"), default=str).encode()
        async with http.post(self.cfg.url, data=data, headers=headers, ssl=self._ssl()) as r:
            if not 200 <= r.status < 300:
                raise aiohttp.ClientResponseError(r.request_info, r.history, status=r.status, message=r.reason or "")

    async def _send_events(self, http: aiohttp.ClientSession) -> None:
        while True:
            batch = self.store.load(0, BATCH)
            if not batch:
                return
            events = [json.loads(p) for _, _, p in batch]
            await self._post(http, {"type": "events", "site": self.site_id, "ts": iso(self.wall()), "events": events})
            self.store.delete(k for k, _, _ in batch)
            self.sent_events += len(batch)

    async def run(self) -> None:
        """Push until cancelled; never raises for the receiver's faults (logged, retried with backoff)."""
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        loop = asyncio.get_running_loop()
        delay = 1.0
        last_figures = -float("inf")
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                try:
                    await self._send_events(http)
                    if loop.time() - last_figures >= self.cfg.interval_s:
                        doc = await asyncio.to_thread(self.figures)  # frozen values: built off the loop
                        if doc is not None:
                            await self._post(http, {"type": "figures", "site": self.site_id, "ts": iso(self.wall()),
                                                    "figures": doc})
                            self.sent_figures += 1
                        last_figures = loop.time()
                    if self.up is not True:
                        log.info("web_push_up", url=self.cfg.url)
                    self.up, delay = True, 1.0
                    wait = max(0.0, last_figures + self.cfg.interval_s - loop.time())
                except (aiohttp.ClientError, TimeoutError, OSError, StoreError) as exc:
                    self.failures += 1
                    if self.up is not False:
                        log.warning("web_push_failed", url=self.cfg.url, error=repr(exc)[:300], retry_in_s=delay)
                    self.up = False
                    wait, delay = delay, min(delay * 2, self.cfg.retry_max_s)
                self._wake.clear()
                if not self.up:  # the URL is down: wait out the backoff (new events wait on disk)
                    await asyncio.sleep(wait)
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
                        await asyncio.sleep(1.0)  # an event while the URL is up: batched for a second, then sent

    def close(self) -> None:
        self.store.close()
