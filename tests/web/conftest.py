"""Harness for the web tests: the real App in process (meters, OCPP, control loop, web server) against a
simulated site on loopback, with a users file of one viewer and one technician."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sitesim.ev import EvSpec
from sitesim.site import SiteSim

from gateway.app import App
from gateway.config import site_from_dict
from gateway.model import Snapshot
from gateway.systemd import Notifier
from gateway.web.users import User, hash_password, save_users
from hil.support import free_port
from tests.daemon.conftest import small_site, wait_for

dead_port = free_port  # a port nothing listens on (free right now)

PASSWORDS = {"viewer": "viewer-pass-1", "tech": "tech-pass-12"}


def basic(user: str) -> dict[str, str]:
    """HTTP Basic credentials for ``user`` (for GETs by scrapers and scripts)."""
    token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def write_users(path: Path) -> Path:
    save_users(path, {
        "viewer": User("viewer", "viewer", hash_password(PASSWORDS["viewer"])),
        "tech": User("tech", "technician", hash_password(PASSWORDS["tech"])),
    })
    return path


def plug_all(sim: SiteSim) -> None:
    for i, ch in enumerate(sim.chargers.values()):
        ch.plug_in(EvSpec(capacity_kwh=500.0, soc_start=0.2, max_ac_a=32.0, ac_phases=3, response_delay_s=1.0,
                          id_tag=f"TAG{i}"))


class Web:
    def __init__(self, app: App, sim: SiteSim, level: list[float]) -> None:
        self.app, self.sim, self.level = app, sim, level

    @property
    def url(self) -> str:
        scheme = "https" if self.app.web.cfg.tls else "http"
        return f"{scheme}://127.0.0.1:{self.app.web.port}"

    async def login(self, http: aiohttp.ClientSession, user: str) -> str:
        """Log ``user`` in on ``http`` (its cookie jar keeps the session); returns the CSRF token."""
        r = await http.post(self.url + "/api/login", json={"user": user, "password": PASSWORDS[user]})
        assert r.status == 200, await r.text()
        return str((await r.json())["csrf"])


def remote_cap_a(snapshot: Snapshot | None) -> float | None:
    """The remote cap's limit on L1 in a snapshot (None without one)."""
    caps = [c.limit_a[0] for c in (snapshot.caps if snapshot is not None else ()) if c.name.startswith("remote")]
    return min(caps) if caps else None


def client(url: str) -> aiohttp.ClientSession:
    # the session cookie is Secure: the jar must treat the loopback origin as secure to send it back
    jar = aiohttp.CookieJar(unsafe=True, treat_as_secure_origin=[url])
    return aiohttp.ClientSession(cookie_jar=jar)


@pytest.fixture
async def web_site(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    stack = contextlib.AsyncExitStack()

    async def make(*, mqtt: bool = True, users: bool = True, web: dict[str, Any] | None = None,
                   raw: dict[str, Any] | None = None) -> Web:
        level = [20.0]
        sim = SiteSim(raw or small_site(), base_loads={"service": lambda t: (level[0],) * 3}, meter_interval_s=0.5)
        await sim.start()
        stack.push_async_callback(sim.stop)
        extra: dict[str, Any] = {"web": {"port": 0, "history_interval_s": 1, "charger_history_interval_s": 1,
                                         "users_file": str(tmp_path / "web-users"), **(web or {})}}
        if users:
            write_users(tmp_path / "web-users")
        if mqtt:  # the remote cap lives in the MQTT telemetry: a broker that is not there is fine for it
            extra["mqtt"] = {"host": "127.0.0.1", "port": dead_port(), "reconnect_max_s": 1}
        cfg = sim.gateway_config(extra=extra)
        cfg["site"]["state_dir"] = str(tmp_path / "state")
        app = App(site_from_dict(cfg), notifier=Notifier(address=""), hard_exit_after_s=None)
        task = asyncio.create_task(app.run())

        async def stop() -> None:
            app.request_stop()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(30):
                    await task

        stack.push_async_callback(stop)
        await app.ocpp.wait_started()
        sim.start_chargers(app.ocpp.port)
        assert await wait_for(lambda: app.web.started.is_set() and app.control.allocation is not None, 20)
        assert await wait_for(lambda: all(c.online for c in sim.chargers.values()), 20), "chargers not online"
        return Web(app, sim, level)

    yield make
    await stack.aclose()
