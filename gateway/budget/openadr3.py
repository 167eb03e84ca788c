"""An OpenADR 3.0 client (the published 3.0.1 OpenAPI description): programs and events over REST with aiohttp.

Each poll takes a bearer token by OAuth2 client credentials (``POST <token_url>``, ``grant_type=
client_credentials``; kept until shortly before ``expires_in``), lists ``GET /programs`` and ``GET /events``
(paged with ``skip`` / ``limit`` = 50), keeps the events of the configured programs (by ``programName``; all
when none is configured) and hands them to the `OpenADRStore` as `DREvent`s:

* ``intervalPeriod`` (the event's, or an interval's own) gives the start and duration; intervals without their
  own follow each other from the event's start; a duration of PT0S (or 9999 years) is open-ended, confirmed by
  each poll; ``randomizeStart`` draws the start's randomisation once;
* payloads: ``SIMPLE`` (levels 0-3), ``IMPORT_CAPACITY_LIMIT`` and ``DISPATCH_SETPOINT`` (kW, or W by the
  payload descriptor's units), ``DISPATCH_SETPOINT_RELATIVE`` below zero (a reduction in kW); others (prices)
  are not followed;
* an event the VTN no longer lists (deleted) is cancelled; the opt policy decides locally (3.0 has no opt
  message; the decision is logged and shown in the status).

The `oadr30-ven-ud` package (PyPI) was looked at: its VTN client uses blocking ``requests`` calls, which would
stall the daemon's event loop, so this small client on aiohttp is used instead.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from gateway.budget.openadr import DREvent, Interval, Kind, OpenADRStore
from gateway.budget.openadr_config import OpenADRConfig

log = structlog.get_logger(__name__)

PAGE = 50
MAX_PAGES = 20
TIMEOUT = aiohttp.ClientTimeout(total=20, sock_connect=5)
_DURATION_RE = re.compile(
    r"(-?)P(?=\d|T\d)(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)([DW]))?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")
OPEN_ENDED_S = 100 * 365 * 86400.0  # "P9999Y" and the like: until further notice


class Oadr3Error(Exception):
    pass


def duration_s(text: object) -> float:
    """An ISO 8601 duration (the schema's pattern) in seconds; months as 30 days, years as 365."""
    m = _DURATION_RE.fullmatch(str(text)) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"not an ISO 8601 duration: {str(text)[:40]!r}")
    sign, y, mo, d, dw, h, mi, s = m.groups()
    days = float(y or 0) * 365 + float(mo or 0) * 30 + float(d or 0) * (7 if dw == "W" else 1)
    total = days * 86400 + float(h or 0) * 3600 + float(mi or 0) * 60 + float(s or 0)
    return -total if sign else total


def wall_of(text: object) -> float:
    if not isinstance(text, str):
        raise ValueError(f"not a date-time: {text!r}")
    d = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if d.tzinfo is None:
        raise ValueError(f"a date-time without its offset: {text[:40]!r}")
    return d.timestamp()


def _units_factor(units: object) -> float:
    return {"KW": 1.0, "W": 0.001, "MW": 1000.0}.get(str(units).upper() if units else "KW", 1.0)


def payload_kind(ptype: str, value: float, units: object) -> tuple[Kind, float] | None:
    if ptype == "SIMPLE":
        return "level", value
    if ptype in ("IMPORT_CAPACITY_LIMIT", "DISPATCH_SETPOINT"):
        return "kw", value * _units_factor(units)
    if ptype == "DISPATCH_SETPOINT_RELATIVE" and value < 0:
        return "delta_kw", -value * _units_factor(units)
    return None


def event_of(raw: Mapping[str, Any], program: str, now_wall: float, rng: random.Random | None) -> DREvent:
    """A 3.0 event object as a `DREvent` (``rng``: draws the start randomisation; None: none)."""
    eid = str(raw["id"])
    period = raw.get("intervalPeriod") or {}
    units = {str(d.get("payloadType")): d.get("units") for d in raw.get("payloadDescriptors") or []
             if isinstance(d, Mapping)}
    intervals: list[Interval] = []
    names: set[str] = set()
    cursor = wall_of(period["start"]) if period.get("start") else None
    for iv in raw.get("intervals") or []:
        own = iv.get("intervalPeriod") or {}
        start = wall_of(own["start"]) if own.get("start") else cursor
        if start is None:
            raise ValueError(f"event {eid}: an interval without a start")
        d = duration_s(own.get("duration") or period.get("duration") or "PT0S")
        end = math.inf if d <= 0 or d >= OPEN_ENDED_S else start + d
        cursor = end if math.isfinite(end) else None
        for p in iv.get("payloads") or []:
            values = p.get("values") or []
            if not values or isinstance(values[0], bool) or not isinstance(values[0], int | float):
                continue
            mapped = payload_kind(str(p.get("type")), float(values[0]), units.get(str(p.get("type"))))
            if mapped is not None and math.isfinite(mapped[1]):
                names.add(str(p.get("type")))
                intervals.append(Interval(start, end, mapped[0], mapped[1]))
    if not intervals and cursor is None and not period.get("start"):
        raise ValueError(f"event {eid}: no interval period")
    start = min((iv.start for iv in intervals), default=wall_of(period["start"]) if period.get("start") else now_wall)
    end = max((iv.end for iv in intervals), default=start)
    rand = duration_s(period["randomizeStart"]) if period.get("randomizeStart") else 0.0
    return DREvent(
        event_id=eid, source="oadr3", start=start, end=end, intervals=tuple(intervals), received_wall=now_wall,
        offset_s=rng.uniform(0.0, max(rand, 0.0)) if rng is not None and rand > 0 else 0.0, program=program,
        signal=",".join(sorted(names)),
    )


class Oadr3Client:
    """Polls the VTN every ``poll_interval_s``; `run` returns only when cancelled (failures are retried)."""

    def __init__(self, cfg: OpenADRConfig, store: OpenADRStore, *, wall_clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._token: str | None = None
        self._token_until = -math.inf
        self._secret = Path(cfg.client_secret_file).read_text().strip() if cfg.client_secret_file else None

    async def _bearer(self, session: aiohttp.ClientSession) -> str | None:
        if self.cfg.client_id is None:
            return None
        if self._token is not None and time.monotonic() < self._token_until:
            return self._token
        url = self.cfg.token_url or f"{self.cfg.vtn_url}/auth/token"
        form = {"grant_type": "client_credentials", "client_id": self.cfg.client_id,
                "client_secret": self._secret or ""}
        async with session.post(url, data=form) as r:
            body = await r.json(content_type=None)
            if r.status != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
                raise Oadr3Error(f"token refused: HTTP {r.status} {str(body)[:160]}")
        self._token = body["access_token"]
        expires = body.get("expires_in")
        life = float(expires) if isinstance(expires, int | float) and expires > 0 else 3600.0
        self._token_until = time.monotonic() + max(life - 30.0, life / 2)
        return self._token

    async def _list(self, session: aiohttp.ClientSession, path: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in range(MAX_PAGES):
            token = await self._bearer(session)
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with session.get(f"{self.cfg.vtn_url}{path}", params={"skip": page * PAGE, "limit": PAGE},
                                   headers=headers) as r:
                if r.status in (401, 403):
                    self._token = None
                body = await r.json(content_type=None)
                if r.status != 200 or not isinstance(body, list):
                    raise Oadr3Error(f"GET {path}: HTTP {r.status} {str(body)[:160]}")
            out.extend(x for x in body if isinstance(x, dict))
            if len(body) < PAGE:
                break
        return out

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        programs = await self._list(session, "/programs")
        names = {str(p.get("id")): str(p.get("programName", "")) for p in programs}
        wanted = {pid for pid, name in names.items() if not self.cfg.programs or name in self.cfg.programs}
        raws = await self._list(session, "/events")
        now = self._wall()
        seen: set[str] = set()
        for raw in raws:
            if str(raw.get("programID")) not in wanted or raw.get("id") is None:
                continue
            eid = str(raw["id"])
            seen.add(eid)
            held = self.store.events.get(eid)
            try:
                ev = event_of(raw, names.get(str(raw.get("programID")), ""), now,
                              self._rng if self.cfg.randomize_start and held is None else None)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("openadr3_event_unreadable", event_id=eid, error=str(exc)[:200])
                continue
            if held is not None and (held.start, held.end, held.intervals) == (ev.start, ev.end, ev.intervals):
                continue
            self.store.offer(ev)
        for eid, held in list(self.store.events.items()):
            if held.source == "oadr3" and eid not in seen and not held.cancelled:
                self.store.cancel(eid)  # the VTN deleted it
        self.store.reconsider(now)  # 3.0 has no opt message: the decision is the store's (logged, in the status)
        self.store.contact(now)
        if not self.store.ven.registered:
            self.store.registration(registered=True, ven_id=self.cfg.client_id or self.cfg.ven_name,
                                    vtn_url=self.cfg.vtn_url, poll_interval_s=self.cfg.poll_interval_s,
                                    last_error=None)

    async def run(self) -> None:
        connector = None
        if self.cfg.ca_file or self.cfg.cert_file:
            import ssl

            ctx = ssl.create_default_context(cafile=self.cfg.ca_file)
            if self.cfg.cert_file and self.cfg.key_file:
                ctx.load_cert_chain(self.cfg.cert_file, self.cfg.key_file)
            ctx.check_hostname = self.cfg.check_hostname
            connector = aiohttp.TCPConnector(ssl=ctx)
        async with aiohttp.ClientSession(timeout=TIMEOUT, connector=connector) as session:
            try:
                while True:
                    try:
                        await self.poll_once(session)
                    except (aiohttp.ClientError, TimeoutError, Oadr3Error, ValueError) as exc:
                        self.store.ven.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
                        log.warning("openadr3_poll_failed", error=self.store.ven.last_error)
                    await asyncio.sleep(self.cfg.poll_interval_s)
            finally:
                self.store.registration(registered=False)


__all__ = ["Oadr3Client", "duration_s", "event_of", "payload_kind", "wall_of"]
