"""The web server (aiohttp, in the daemon's own event loop, one task under the root TaskGroup).

Reads the control loop's latest frozen snapshot and allocation; JSON is built on request or, for the live
page, once a second in the server-sent-events path (shared by every client), never on the tick. The sampler
(once a second, off the tick) records history and derives events from successive allocations; SQLite work
runs in the history store's own thread.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.commission.background import REPORT_FILES, Background, Refused, list_reports, parse_steps, report_file
from gateway.config import Site
from gateway.model import Allocation, Snapshot
from gateway.web import views
from gateway.web.actions import CapSetter
from gateway.web.auth import ANONYMOUS, SESSION_COOKIE, RateLimit, Session, Sessions
from gateway.web.config import WebConfig
from gateway.web.metrics import LoopCollector, TickHistograms
from gateway.web.openapi import openapi_document
from gateway.web.push import HttpPush
from gateway.web.store import HistoryStore
from gateway.web.users import User, UsersFileError, dummy_hash, load_users, verify_password

log = structlog.get_logger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}
EVENT_KINDS: dict[str, str] = {
    "failsafe_entered": "failsafe", "failsafe_left": "failsafe",
    "meter_ok": "meter", "meter_invalid": "meter", "meter_stale": "meter", "meter_missing": "meter",
    "charger_noncompliant": "compliance", "charger_compliant_again": "compliance",
    "transaction_stopped": "compliance",
    "cms_link_down": "cms", "cms_link_up": "cms",
    "charger_connected": "charger", "charger_disconnected": "charger", "profile_rejected": "charger",
    "config_reloaded": "reload", "config_reload_failed": "reload",
    "site_cap_set": "cap", "site_cap_cleared": "cap", "budget_changed": "cap",
    "web_login": "web", "web_login_failed": "web",
    "commissioning_started": "commissioning", "commissioning_ended": "commissioning",
    "commission_change": "commissioning",
}
_PUBLIC = ("/", "/index.html", "/static/", "/api/login", "/api/session", "/api/openapi.json")
_MAX_BODY = 16 * 1024
SESSION_KEY = web.RequestKey("session", Session)


class LoopView(Protocol):
    """What the web side reads of the control loop (ControlLoop has these)."""

    snapshot: Snapshot | None
    allocation: Allocation | None

    @property
    def records(self) -> Sequence[Any]: ...


def kind_of(name: str) -> str:
    return EVENT_KINDS.get(name, "other")


class WebService:
    def __init__(
        self,
        cfg: WebConfig,
        site: Site,
        loop_view: LoopView,
        *,
        state_dir: str | Path,
        cap_setter: CapSetter | None = None,
        commissioning: Background | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.site = site
        self.loop_view = loop_view
        self.cap_setter = cap_setter
        self.commissioning = commissioning  # None: no control handler (the page alone, benchmarks)
        self.state_dir = Path(state_dir)
        self.clock = clock
        self.wall = wall
        self.store = HistoryStore(Path(state_dir) / "web-history.sqlite", retention_s=cfg.history_hours * 3600)
        self.sessions = Sessions(cfg.session_lifetime_s)
        self.limiter = RateLimit(cfg.login_attempts_per_min)
        self._users: dict[str, User] = {}
        self._users_mtime: float | None = None
        self._users_checked_at = -math.inf
        self._reload_users()
        self.port: int | None = None
        self.started = asyncio.Event()
        self.ticks_total = 0
        self._last_record_at: float | None = None
        self._live_key: tuple[int, int] | None = None
        self._live_bytes = b"{}"
        self._live_build: tuple[tuple[int, int], asyncio.Future[bytes]] | None = None
        self._seen: tuple[Snapshot | None, Allocation | None] = (None, None)
        self._prev: dict[str, Any] = {}
        self._next_site_at = 0.0
        self._next_chargers_at = 0.0
        self.recent_events: deque[dict[str, Any]] = deque(maxlen=200)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(LoopCollector(self._metric_state))
        self.histograms = TickHistograms(self.registry)
        self.sse_clients = 0
        self.push: HttpPush | None = None
        if cfg.push is not None:
            self.push = HttpPush(cfg.push, site.id, state_dir, figures=self.push_figures, wall=wall)

    # -- inputs from the daemon ---------------------------------------------------------------
    def update_site(self, site: Site) -> None:
        self.site = site
        if site.web != self.cfg:
            log.warning("web_config_changed", note="the [web] section takes effect on restart")

    def event(self, name: str, **fields: object) -> None:
        """Record an event (from the daemon: OCPP link, reloads; or derived here). Never blocks or raises."""
        try:
            ts = self.wall()
            kind = kind_of(name)
            clean = {k: v for k, v in fields.items() if k != "event_name"}
            self.recent_events.append({"ts": ts, "kind": kind, "name": name, "fields": clean})
            self.store.add_event(ts, kind, name, clean)
            if self.push is not None:
                self.push.event(name, kind, clean, ts)
        except Exception:
            log.exception("web_event_failed", event_name=name)

    # -- users ----------------------------------------------------------------------------------
    def _reload_users(self) -> None:
        p = Path(self.cfg.users_file)
        try:
            mtime = p.stat().st_mtime
        except OSError:
            mtime = None
        if mtime == self._users_mtime and (mtime is not None or not self._users):
            return
        try:
            users = load_users(p)
        except (UsersFileError, OSError) as exc:
            log.error("web_users_file_unreadable", file=str(p), error=str(exc))
            return  # keep the users we had
        for name, old in self._users.items():  # a user removed, or given another role, is logged out
            new = users.get(name)
            if new is None or new.role != old.role or new.hash != old.hash:
                self.sessions.drop_user(name)
        self._users, self._users_mtime = users, mtime

    @property
    def auth_required(self) -> bool:
        """Without users (allowed on loopback only) the page is open read-only: everyone is a viewer."""
        return bool(self._users) or self.cfg.exposed

    # -- frozen state ---------------------------------------------------------------------------
    def _state(self) -> tuple[Site, Snapshot | None, Allocation | None, float]:
        return self.site, self.loop_view.snapshot, self.loop_view.allocation, self.clock()

    def _metric_state(self) -> tuple[Site, Snapshot | None, Allocation | None, Sequence[Any], int, float]:
        site, snap, alloc, now = self._state()
        return site, snap, alloc, tuple(self.loop_view.records), self.ticks_total, now

    def _count_ticks(self) -> None:
        recs = self.loop_view.records
        last = self._last_record_at
        new = []
        for r in reversed(recs):
            if last is not None and r.at <= last:
                break
            new.append(r)
        if recs:
            self._last_record_at = recs[-1].at
        for r in reversed(new):
            self.histograms.observe(r)
        self.ticks_total += len(new)

    async def live_bytes(self) -> bytes:
        """The live document, encoded once per allocation and second whoever asks, in a worker thread.

        The views read frozen values only, so building them in a thread is safe; the GIL is handed back every
        few milliseconds, so at 1000 chargers the event loop (and the control tick in it) is never held for
        the whole build.
        """
        site, snap, alloc, now = self._state()
        key = (id(alloc), int(now))
        if key == self._live_key:
            return self._live_bytes
        if self._live_build is None or self._live_build[0] != key:
            events = list(self.recent_events)[-20:]
            self._live_build = (key, asyncio.ensure_future(asyncio.to_thread(_encode_live, site, snap, alloc, now,
                                                                             events)))
        build_key, fut = self._live_build
        data = await asyncio.shield(fut)
        if self._live_build is not None and self._live_build[0] == build_key:
            self._live_key, self._live_bytes, self._live_build = build_key, data, None
        return data

    async def _off(self, fn: Callable[..., Any], *args: Any) -> web.Response:
        """A JSON answer built and encoded in a worker thread (from frozen values)."""
        text = await asyncio.to_thread(lambda: json.dumps(fn(*args), separators=(",", ":"), default=str))
        return web.Response(text=text, content_type="application/json")

    # -- sampler: history and derived events (once a second, off the tick) ------------------------
    def sample(self) -> None:
        site, snap, alloc, now = self._state()
        self._count_ticks()
        if alloc is None or (snap is self._seen[0] and alloc is self._seen[1]):
            return
        self._seen = (snap, alloc)
        self._derive_events(site, snap, alloc, now)
        wall = self.wall()
        if now >= self._next_site_at:
            self._next_site_at = now + self.cfg.history_interval_s
            root = alloc.circuits.get(site.root)
            if root is not None:
                p = site.service.phases
                meas: Sequence[float | None] = root.measured_a if root.measured_a is not None else (None,) * p
                self.store.add_site(wall, p, [*meas, *root.allocated_a, *(root.limit_a,) * p])
        if now >= self._next_chargers_at:
            self._next_chargers_at = now + self.cfg.charger_history_interval_s
            ids = tuple(site.chargers)
            vals: list[float | None] = []
            snaps = snap.chargers if snap is not None else {}
            for cid in ids:
                lim = alloc.limits.get(cid)
                cs = snaps.get(cid)
                vals.append(lim.limit if lim is not None else None)
                if cs is None:
                    vals.append(None)
                elif site.chargers[cid].unit == "W":
                    vals.append(cs.draw_w)
                else:
                    vals.append(max(cs.draw_a) if cs.draw_a else None)
            self.store.add_chargers(wall, ids, vals)

    def _derive_events(self, site: Site, snap: Snapshot | None, alloc: Allocation, now: float) -> None:
        # before the first sample: normal mode, no caps, nobody flagged (a start in fail-safe or under a cap shows);
        # the cause before the effect: a meter's change, then the mode it leads to
        prev = self._prev
        mode = alloc.mode
        health = {mid: views.meter_health(site, mid, snap, now) for mid in site.polled_meters}
        old_health: dict[str, str] = prev.get("health", {})
        for mid, h in health.items():
            o = old_health.get(mid)
            if o is not None and o != h:
                r = snap.meters.get(mid) if snap is not None else None
                self.event(f"meter_{h}", meter=mid, previous=o, reason=r.reason if r is not None else "")
        if mode != prev.get("mode", "normal"):
            if mode == "normal":
                self.event("failsafe_left", mode=mode)
            else:
                self.event("failsafe_entered", mode=mode, meters=list(alloc.failsafe_meters))
        flagged = {cid for cid, c in (snap.chargers if snap is not None else {}).items() if c.noncompliant}
        old_flagged: set[str] = prev.get("flagged", set())
        for cid in sorted(flagged - old_flagged):
            lim = alloc.limits.get(cid)
            self.event("charger_noncompliant", charger=cid, limit=lim.limit if lim is not None else None)
        for cid in sorted(old_flagged - flagged):
            self.event("charger_compliant_again", charger=cid)
        budget = views.budget_source(snap, site)
        caps = budget["caps"]
        if caps != prev.get("caps", []):
            self.event("budget_changed", source=budget["source"], caps=caps)
        self._prev = {"mode": mode, "health": health, "flagged": flagged, "caps": caps}

    async def _sampler(self) -> None:
        while True:
            try:
                self.sample()
            except Exception:
                log.exception("web_sample_failed")
            await asyncio.sleep(1.0)

    # -- the server -----------------------------------------------------------------------------
    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._security_mw, self._auth_mw], client_max_size=_MAX_BODY)
        r = app.router
        r.add_get("/", self.h_index)
        r.add_get("/index.html", self.h_index)
        r.add_get("/static/{name}", self.h_static)
        r.add_get("/metrics", self.h_metrics)
        r.add_get("/api/openapi.json", self.h_openapi)
        r.add_get("/api/session", self.h_session)
        r.add_post("/api/login", self.h_login)
        r.add_post("/api/logout", self.h_logout)
        r.add_get("/api/live", self.h_live)
        r.add_get("/api/stream", self.h_stream)
        r.add_get("/api/site", self.h_site)
        r.add_get("/api/circuits", self.h_circuits)
        r.add_get("/api/chargers", self.h_chargers)
        r.add_get("/api/meters", self.h_meters)
        r.add_get("/api/failsafe", self.h_failsafe)
        r.add_get("/api/ticks", self.h_ticks)
        r.add_get("/api/history/site", self.h_hist_site)
        r.add_get("/api/history/charger/{id}", self.h_hist_charger)
        r.add_get("/api/events", self.h_events)
        r.add_get("/api/config", self.h_config)
        r.add_post("/api/site-cap", self.h_site_cap)
        r.add_get("/api/commissioning", self.h_commission_status)
        r.add_post("/api/commissioning/start", self.h_commission)
        r.add_post("/api/commissioning/cancel", self.h_commission_cancel)
        r.add_get("/api/commissioning/reports", self.h_reports)
        r.add_get("/api/commissioning/reports/{id}/{name}", self.h_report_file)
        return app

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.cfg.tls:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        assert self.cfg.tls_cert_file is not None and self.cfg.tls_key_file is not None
        ctx.load_cert_chain(self.cfg.tls_cert_file, self.cfg.tls_key_file)
        return ctx

    async def run(self) -> None:
        """Serve until cancelled (a failure to bind raises: the daemon's supervisor restarts the task)."""
        runner = web.AppRunner(self.build_app(), access_log=None, shutdown_timeout=1.0, handle_signals=False)
        await runner.setup()
        helpers: list[asyncio.Task[None]] = []
        try:
            site = web.TCPSite(runner, self.cfg.listen_host, self.cfg.port, ssl_context=self._ssl())
            await site.start()
            server = site._server
            socks = getattr(server, "sockets", None) or []
            self.port = int(socks[0].getsockname()[1]) if socks else self.cfg.port
            log.info("web_listening", host=self.cfg.listen_host, port=self.port, tls=self.cfg.tls,
                     auth=self.auth_required)
            self.started.set()
            loop = asyncio.get_running_loop()
            helpers = [loop.create_task(self._sampler(), name="web-sampler")]
            if self.push is not None:
                helpers.append(loop.create_task(self.push.run(), name="web-push"))
            await asyncio.gather(*helpers)  # neither ends but by a cancel: a failure restarts the web task
        finally:
            for h in helpers:
                h.cancel()
            for h in helpers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await h
            self.started.clear()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(3):
                    await runner.cleanup()

    def close(self) -> None:
        self.store.close()
        if self.push is not None:
            self.push.close()

    def push_figures(self) -> dict[str, Any] | None:
        """The document pushed to [web.push] url: the site and every charger, compact (frozen values)."""
        site, snap, alloc, now = self._state()
        if alloc is None:
            return None
        doc = views.site_view(site, snap, alloc, now)
        meter = site.circuits[site.root].meter
        r = snap.meters.get(meter) if snap is not None and meter else None
        doc["service"]["power_kw"] = round(r.total_power_w / 1000, 3) if r is not None and r.valid and \
            r.total_power_w is not None else None
        doc["charger_figures"] = [
            {k: c[k] for k in ("id", "state", "online", "limit", "unit", "line_a", "draw_a", "draw_w", "reason")}
            for c in views.chargers_view(site, snap, alloc)
        ]
        return doc

    # -- middlewares ------------------------------------------------------------------------
    @web.middleware
    async def _security_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resp = await handler(request)
        h = resp.headers
        h.setdefault("X-Content-Type-Options", "nosniff")
        h.setdefault("X-Frame-Options", "DENY")
        h.setdefault("Referrer-Policy", "no-referrer")
        h.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
        h.setdefault("Cache-Control", "no-store")
        if self.cfg.tls:
            h.setdefault("Strict-Transport-Security", "max-age=31536000")
        return resp

    def _session_of(self, request: web.Request) -> Session | None:
        now = self.clock()
        if now - self._users_checked_at >= 2.0:  # one stat() every 2 s at most: users file edits take effect
            self._users_checked_at = now
            self._reload_users()
        if not self.auth_required:
            return ANONYMOUS
        return self.sessions.get(request.cookies.get(SESSION_COOKIE), self.clock())

    @web.middleware
    async def _auth_mw(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path in _PUBLIC or path.startswith("/static/"):
            return await handler(request)
        session = self._session_of(request)
        basic = request.headers.get("Authorization", "").startswith("Basic ")
        if session is None and basic and request.method == "GET":  # reads only: a POST needs a session
            session = await self._basic(request)
        if session is None:
            return _json({"error": "login required"}, 401)
        csrf_ok = _same(request.headers.get("X-CSRF-Token", ""), session.csrf)
        if request.method == "POST" and session is not ANONYMOUS and not csrf_ok:
            return _json({"error": "missing or wrong CSRF token (X-CSRF-Token)"}, 403)
        request[SESSION_KEY] = session
        return await handler(request)

    async def _basic(self, request: web.Request) -> Session | None:
        """HTTP Basic for scrapers and scripts, GET only (rate-limited like the login)."""
        try:
            raw = base64.b64decode(request.headers["Authorization"][6:], validate=True).decode()
            name, _, password = raw.partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        user = await self._check_login(request, name, password)
        if user is None:
            return None
        return Session(user.name, user.role, "", math.inf)

    async def _check_login(self, request: web.Request, name: str, password: str) -> User | None:
        now = self.clock()
        keys = (f"ip:{request.remote}", f"user:{name[:64]}")
        if self.limiter.retry_after(keys, now) > 0:
            return None
        self._reload_users()
        user = self._users.get(name)
        ok = await asyncio.to_thread(verify_password, password, user.hash if user is not None else dummy_hash())
        if not ok or user is None:
            self.limiter.failed(keys, self.clock())
            self.event("web_login_failed", user=name[:64], remote=request.remote)
            return None
        return user

    # -- handlers: page ---------------------------------------------------------------------
    async def h_index(self, request: web.Request) -> web.StreamResponse:
        return _static("index.html")

    async def h_static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return _static(name)

    async def h_openapi(self, request: web.Request) -> web.StreamResponse:
        return _json(openapi_document())

    async def h_metrics(self, request: web.Request) -> web.StreamResponse:
        self._count_ticks()
        body = await asyncio.to_thread(generate_latest, self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    # -- handlers: session ------------------------------------------------------------------
    async def h_session(self, request: web.Request) -> web.StreamResponse:
        s = self._session_of(request)
        if s is None:
            return _json({"authenticated": False, "auth_required": True}, 401)
        return _json({"authenticated": True, "auth_required": self.auth_required, "user": s.user, "role": s.role,
                      "csrf": s.csrf, "site": self.site.id})

    async def h_login(self, request: web.Request) -> web.StreamResponse:
        if request.content_type != "application/json":  # a cross-site form cannot post JSON without CORS
            return _json({"error": "send application/json"}, 415)
        body = await _body(request)
        if body is None:
            return _json({"error": "expected a JSON object with user and password"}, 400)
        name, password = body.get("user"), body.get("password")
        if not isinstance(name, str) or not isinstance(password, str) or len(password) > 1024:
            return _json({"error": "user and password must be strings"}, 400)
        keys = (f"ip:{request.remote}", f"user:{name[:64]}")
        wait = self.limiter.retry_after(keys, self.clock())
        if wait > 0:
            return _json({"error": "too many failed logins: wait"}, 429, {"Retry-After": str(math.ceil(wait))})
        user = await self._check_login(request, name, password)
        if user is None:
            return _json({"error": "wrong user or password"}, 401)
        token, s = self.sessions.create(user.name, user.role, self.clock())
        self.event("web_login", user=user.name, role=user.role, remote=request.remote)
        resp = _json({"user": s.user, "role": s.role, "csrf": s.csrf})
        resp.set_cookie(SESSION_COOKIE, token, max_age=int(self.cfg.session_lifetime_s), httponly=True,
                        secure=True, samesite="Strict", path="/")
        return resp

    async def h_logout(self, request: web.Request) -> web.StreamResponse:
        self.sessions.drop(request.cookies.get(SESSION_COOKIE))
        resp = _json({"ok": True})
        resp.del_cookie(SESSION_COOKIE, path="/")
        return resp

    # -- handlers: data -----------------------------------------------------------------------
    async def h_live(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=await self.live_bytes(), content_type="application/json")

    async def h_stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the live document once a second (encoded once for every client)."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)
        self.sse_clients += 1
        try:
            await resp.write(b"retry: 2000\n\n")
            while True:
                await resp.write(b"data: " + await self.live_bytes() + b"\n\n")
                await asyncio.sleep(1.0 - (self.clock() % 1.0) + 0.05)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.sse_clients -= 1
        return resp

    async def h_site(self, request: web.Request) -> web.StreamResponse:
        site, snap, alloc, now = self._state()
        return await self._off(views.site_view, site, snap, alloc, now)

    async def h_circuits(self, request: web.Request) -> web.StreamResponse:
        site, _, alloc, _ = self._state()
        return await self._off(views.circuits_view, site, alloc)

    async def h_chargers(self, request: web.Request) -> web.StreamResponse:
        site, snap, alloc, _ = self._state()
        return await self._off(views.chargers_view, site, snap, alloc)

    async def h_meters(self, request: web.Request) -> web.StreamResponse:
        site, snap, _, now = self._state()
        return await self._off(views.meters_view, site, snap, now)

    async def h_failsafe(self, request: web.Request) -> web.StreamResponse:
        site, _, alloc, _ = self._state()
        return _json(views.failsafe_view(site, alloc))

    async def h_ticks(self, request: web.Request) -> web.StreamResponse:
        n = _int_q(request, "n", 60, 1, 3600)
        return _json(views.ticks_view(self.loop_view.records, self.clock(), n))

    async def h_hist_site(self, request: web.Request) -> web.StreamResponse:
        hours = _float_q(request, "hours", 24.0, 0.01, self.cfg.history_hours)
        rows = await self.store.site_history(self.wall() - hours * 3600)
        return _json({"phases": self._phases(), "interval_s": self.cfg.history_interval_s, "samples": rows})

    async def h_hist_charger(self, request: web.Request) -> web.StreamResponse:
        cid = request.match_info["id"]
        if cid not in self.site.chargers:
            return _json({"error": f"no charger {cid!r}"}, 404)
        hours = _float_q(request, "hours", 24.0, 0.01, self.cfg.history_hours)
        rows = await self.store.charger_history(cid, self.wall() - hours * 3600)
        return _json({"charger": cid, "unit": self.site.chargers[cid].unit,
                      "interval_s": self.cfg.charger_history_interval_s, "samples": rows})

    async def h_events(self, request: web.Request) -> web.StreamResponse:
        kinds = tuple(k for k in request.query.get("kind", "").split(",") if k)
        text = request.query.get("q", "")[:100]
        since = _float_q(request, "since", 0.0, 0.0, math.inf)
        limit = _int_q(request, "limit", 200, 1, 2000)
        rows = await self.store.events(since=since, kinds=kinds, text=text, limit=limit)
        return _json({"kinds": sorted(set(EVENT_KINDS.values())), "events": rows})

    async def h_config(self, request: web.Request) -> web.StreamResponse:
        return await self._off(views.config_view, self.site)

    def _phases(self) -> list[str]:
        from gateway.config import PHASES

        return list(PHASES[: self.site.service.phases])

    # -- handlers: technician actions -----------------------------------------------------------
    async def h_site_cap(self, request: web.Request) -> web.StreamResponse:
        s = request[SESSION_KEY]
        if s.role != "technician":
            return _json({"error": "a technician's action: your role is " + s.role}, 403)
        if self.cap_setter is None:
            return _json({"error": "no remote cap mechanism on this site "}, 503)
        body = await _body(request)
        if body is None:
            return _json({"error": "expected a JSON object"}, 400)
        ok, answer = self.cap_setter(body, s.user)
        if ok:
            self.event("site_cap_cleared" if answer.get("cleared") else "site_cap_set", user=s.user, via="web",
                       **{k: v for k, v in answer.items() if k != "cleared"})
        log.info("web_site_cap", user=s.user, ok=ok, **{k: v for k, v in answer.items() if k != "error"},
                 error=answer.get("error"))
        return _json(answer, 200 if ok else 400)

    async def h_commission(self, request: web.Request) -> web.StreamResponse:
        """Start a commissioning run in the daemon (off the request); its progress at GET /api/commissioning."""
        s = request[SESSION_KEY]
        if s.role != "technician":
            return _json({"error": "a technician's action: your role is " + s.role}, 403)
        if self.commissioning is None:
            return _json({"error": "commissioning is not available here (no control handler)"}, 503)
        body = await _body(request)
        if body is None:
            return _json({"error": "expected a JSON object"}, 400)
        pdf = body.get("pdf", True)
        try:
            if not isinstance(pdf, bool):
                raise Refused(400, "pdf: true or false")
            steps = parse_steps(body)
            doc = await self.commissioning.start(steps, s.user, self.event, pdf=pdf)
        except Refused as exc:
            return _json({"error": str(exc)}, exc.status)
        return _json(doc, 202)

    async def h_commission_cancel(self, request: web.Request) -> web.StreamResponse:
        s = request[SESSION_KEY]
        if s.role != "technician":
            return _json({"error": "a technician's action: your role is " + s.role}, 403)
        if self.commissioning is None or not self.commissioning.running:
            return _json({"error": "no commissioning run in progress"}, 409)
        log.warning("commissioning_cancel", user=s.user, via="web")
        await self.commissioning.cancel()
        return _json(self.commissioning.status())

    async def h_commission_status(self, request: web.Request) -> web.StreamResponse:
        if self.commissioning is None:
            return _json({"state": "unavailable"})
        return _json(self.commissioning.status())

    async def h_reports(self, request: web.Request) -> web.StreamResponse:
        return await self._off(lambda: {"reports": list_reports(self.state_dir)})

    async def h_report_file(self, request: web.Request) -> web.StreamResponse:
        """One report's HTML, PDF or JSON, read-only; only ids and names of the report layout (no traversal)."""
        rid, name = request.match_info["id"], request.match_info["name"]
        path = await asyncio.to_thread(report_file, self.state_dir, rid, name)
        if path is None:
            return _json({"error": "no such report file"}, 404)
        data = await asyncio.to_thread(path.read_bytes)
        return web.Response(body=data, headers={
            "Content-Type": REPORT_FILES[name] + ("; charset=utf-8" if name.endswith((".html", ".json")) else ""),
            "Content-Disposition": f'inline; filename="{rid}-{name}"',
            # the report is self-contained: inline styles and SVG, nothing fetched, no script
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
                                       "frame-ancestors 'none'"})


def _encode_live(site: Site, snap: Snapshot | None, alloc: Allocation | None, now: float,
                 events: list[dict[str, Any]]) -> bytes:
    doc = views.live_view(site, snap, alloc, now)
    doc["events"] = events
    return json.dumps(doc, separators=(",", ":"), allow_nan=False, default=str).encode()


def _same(a: str, b: str) -> bool:
    import hmac

    return bool(b) and hmac.compare_digest(a.encode(), b.encode())


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(doc, separators=(",", ":"), default=str), status=status,
                        content_type="application/json", headers=headers)


def _static(name: str) -> web.Response:
    data = resources.files("gateway.web").joinpath("static", name).read_bytes()
    return web.Response(body=data, content_type=STATIC_FILES[name])


async def _body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


def _float_q(request: web.Request, key: str, default: float, lo: float, hi: float) -> float:
    try:
        v = float(request.query.get(key, default))
    except ValueError:
        return default
    return default if not math.isfinite(v) and hi != math.inf else min(max(v, lo), hi)


def _int_q(request: web.Request, key: str, default: int, lo: int, hi: int) -> int:
    try:
        v = int(request.query.get(key, default))
    except ValueError:
        return default
    return min(max(v, lo), hi)
