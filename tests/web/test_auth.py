"""Roles, sessions, CSRF and the login rate limit; the technician's site cap reaches the allocator."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from gateway.web.users import load_users, save_users
from tests.daemon.conftest import wait_for
from tests.web.conftest import Web, client, remote_cap_a


async def test_nothing_but_the_page_and_the_login_without_a_session(web_site: Any) -> None:
    w: Web = await web_site()
    async with client(w.url) as http:
        for path in ("/api/live", "/api/site", "/api/chargers", "/api/events", "/api/config", "/api/stream"):
            r = await http.get(w.url + path)
            assert r.status == 401, path
        assert (await http.post(w.url + "/api/site-cap", json={"clear": True})).status == 401
        assert (await http.get(w.url + "/")).status == 200
        assert (await http.get(w.url + "/api/openapi.json")).status == 200
        r = await http.post(w.url + "/api/login", json={"user": "viewer", "password": "viewer-pass-1"})
        assert r.status == 200
        cookie = r.headers["Set-Cookie"]
        for attr in ("HttpOnly", "Secure", "SameSite=Strict", "Path=/"):
            assert attr in cookie, cookie
        assert r.headers["X-Frame-Options"] == "DENY" and "default-src 'self'" in r.headers["Content-Security-Policy"]
        assert (await http.get(w.url + "/api/live")).status == 200
        # a login form posted cross-site is not JSON: refused
        r = await http.post(w.url + "/api/login", data={"user": "viewer", "password": "viewer-pass-1"})
        assert r.status == 415


async def test_a_viewer_is_refused_a_technicians_action(web_site: Any) -> None:
    w: Web = await web_site()
    async with client(w.url) as http:
        csrf = await w.login(http, "viewer")
        r = await http.post(w.url + "/api/site-cap", json={"limit_a": 50, "duration_s": 60},
                            headers={"X-CSRF-Token": csrf})
        assert r.status == 403 and "technician" in (await r.json())["error"]
        r = await http.post(w.url + "/api/commissioning/start", json={}, headers={"X-CSRF-Token": csrf})
        assert r.status == 403
    await asyncio.sleep(1.0)
    assert w.app.control.snapshot is not None and remote_cap_a(w.app.control.snapshot) is None


async def test_a_post_without_the_sessions_csrf_token_is_refused(web_site: Any) -> None:
    w: Web = await web_site()
    async with client(w.url) as http:
        csrf = await w.login(http, "tech")
        r = await http.post(w.url + "/api/site-cap", json={"limit_a": 50, "duration_s": 60})
        assert r.status == 403 and "CSRF" in (await r.json())["error"]
        r = await http.post(w.url + "/api/site-cap", json={"limit_a": 50, "duration_s": 60},
                            headers={"X-CSRF-Token": csrf[:-1] + ("A" if csrf[-1] != "A" else "B")})
        assert r.status == 403
    assert w.app.control.snapshot is not None and remote_cap_a(w.app.control.snapshot) is None


async def test_a_technicians_site_cap_goes_through_the_remote_cap_to_the_allocator(web_site: Any) -> None:
    w: Web = await web_site()
    ctl = w.app.control
    async with client(w.url) as http:
        csrf = await w.login(http, "tech")
        h = {"X-CSRF-Token": csrf}
        r = await http.post(w.url + "/api/site-cap", json={"limit_a": 500, "duration_s": 60}, headers=h)
        assert r.status == 400 and "only lower" in (await r.json())["error"]
        r = await http.post(w.url + "/api/site-cap", json={"limit_a": 60, "duration_s": 120}, headers=h)
        assert r.status == 200, await r.text()
        assert (await r.json())["cap_a"] == 60.0
        assert await wait_for(lambda: ctl.snapshot is not None and remote_cap_a(ctl.snapshot) == 60.0, 5)
        assert await wait_for(
            lambda: ctl.allocation is not None and ctl.allocation.circuits["service"].limit_a == 60.0, 5)
        site = await (await http.get(w.url + "/api/site")).json()
        assert site["budget"]["source"].startswith("remote:web:tech:")
        assert site["service"]["effective_limit_a"] == 60.0
        assert await wait_for(lambda: any(e["name"] == "budget_changed" for e in w.app.web.recent_events), 3), list(
            w.app.web.recent_events)
        await w.app.web.store.flush()
        events = (await (await http.get(w.url + "/api/events?kind=cap")).json())["events"]
        assert {"site_cap_set", "budget_changed"} <= {e["name"] for e in events}
        r = await http.post(w.url + "/api/site-cap", json={"clear": True}, headers=h)
        assert r.status == 200
        assert await wait_for(lambda: ctl.snapshot is not None and remote_cap_a(ctl.snapshot) is None, 5)
        r = await http.post(w.url + "/api/commissioning/start", json={"steps": ["nope"]}, headers=h)
        assert r.status == 400 and "unknown nope" in (await r.json())["error"]
        r = await http.post(w.url + "/api/logout", headers=h)
        assert r.status == 200
        assert (await http.get(w.url + "/api/live")).status == 401


async def test_without_mqtt_the_cap_still_reaches_the_allocator(web_site: Any) -> None:
    w: Web = await web_site(mqtt=False)
    async with client(w.url) as http:
        csrf = await w.login(http, "tech")
        r = await http.post(w.url + "/api/site-cap", json={"limit_a": 60, "duration_s": 60},
                            headers={"X-CSRF-Token": csrf})
        assert r.status == 200, await r.text()
        assert await wait_for(lambda: remote_cap_a(w.app.control.snapshot) == 60.0, 5)


async def test_failed_logins_are_rate_limited_per_user_and_address(web_site: Any) -> None:
    w: Web = await web_site(web={"login_attempts_per_min": 3})
    async with client(w.url) as http:
        for _ in range(3):
            r = await http.post(w.url + "/api/login", json={"user": "tech", "password": "wrong-password"})
            assert r.status == 401
        r = await http.post(w.url + "/api/login", json={"user": "tech", "password": "tech-pass-12"})
        assert r.status == 429 and int(r.headers["Retry-After"]) > 0  # even the right password, for now
        r = await http.post(w.url + "/api/login", json={"user": "viewer", "password": "viewer-pass-1"})
        assert r.status == 429  # the address is limited too
        events = [e for e in w.app.web.recent_events if e["name"] == "web_login_failed"]
        assert len(events) == 3


async def test_loopback_without_users_is_open_read_only(web_site: Any) -> None:
    w: Web = await web_site(users=False)
    async with client(w.url) as http:
        s = await (await http.get(w.url + "/api/session")).json()
        assert s["role"] == "viewer" and s["auth_required"] is False
        assert (await http.get(w.url + "/api/live")).status == 200
        assert (await http.get(w.url + "/metrics")).status == 200
        r = await http.post(w.url + "/api/site-cap", json={"limit_a": 60, "duration_s": 60})
        assert r.status == 403


async def test_a_user_removed_from_the_users_file_is_logged_out(web_site: Any) -> None:
    w: Web = await web_site()
    async with client(w.url) as http:
        await w.login(http, "tech")
        assert (await http.get(w.url + "/api/live")).status == 200
        users_file = Path(w.app.web.cfg.users_file)
        users = load_users(users_file)
        del users["tech"]
        save_users(users_file, users)
        os.utime(users_file, (time.time() + 5, time.time() + 5))  # a new mtime even within the same tick
        assert await wait_for_status(http, w.url + "/api/live", 401, 5)
        assert (await http.post(w.url + "/api/login", json={"user": "tech", "password": "tech-pass-12"})).status == 401


async def wait_for_status(http: Any, url: str, status: int, timeout: float) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if (await http.get(url)).status == status:
            return True
        await asyncio.sleep(0.2)
    return False
