"""`ems-gateway run` with [web]: the page and API served by the daemon process itself; reloads in the log."""

from __future__ import annotations

import asyncio
import signal
import tomllib
from pathlib import Path
from typing import Any

import aiohttp

from hil.tomlw import dumps
from tests.daemon.conftest import Rig, rig_factory, wait_for  # noqa: F401  (the fixture)
from tests.web.conftest import basic, write_users


async def test_the_daemon_serves_the_api_and_logs_reloads_as_events(
        rig_factory: Any, tmp_path: Path) -> None:  # noqa: F811
    users = write_users(tmp_path / "web-users")
    rig: Rig = await rig_factory(extra={"web": {"port": 0, "users_file": str(users)}})
    listening = await rig.daemon.wait_log("web_listening")
    assert listening["host"] == "127.0.0.1" and listening["tls"] is False and listening["auth"] is True
    url = f"http://127.0.0.1:{listening['port']}"
    auth = basic("viewer")
    async with aiohttp.ClientSession() as http:
        assert (await http.get(url + "/api/site")).status == 401
        site: dict[str, Any] = {}
        for _ in range(40):  # the daemon's next tick sees the chargers the simulator has connected
            site = await (await http.get(url + "/api/site", headers=auth)).json()
            if site["chargers"]["online"] == 4:
                break
            await asyncio.sleep(0.1)
        assert site["id"] == "test-site" and site["mode"] == "normal"
        assert site["chargers"]["online"] == 4
        raw = tomllib.loads(rig.config.read_text())
        raw["chargers"][3]["max_current_a"] = 10.0
        rig.config.write_text(dumps(raw))
        rig.daemon.signal(signal.SIGHUP)
        await rig.daemon.wait_log("config_reloaded")

        async def reloaded() -> bool:
            ev = await (await http.get(url + "/api/events?kind=reload", headers=auth)).json()
            return any(e["name"] == "config_reloaded" for e in ev["events"])

        ok = False
        for _ in range(40):
            if ok := await reloaded():
                break
            await asyncio.sleep(0.1)
        assert ok
        cfg = await (await http.get(url + "/api/config", headers=auth)).json()
        assert cfg["chargers"]["CP4"]["max_limit"] == 10.0
        # a POST with Basic credentials is refused: actions need a session (and its CSRF token)
        r = await http.post(url + "/api/site-cap", json={"clear": True}, headers=auth)
        assert r.status == 401
    rig.daemon.signal(signal.SIGTERM)
    assert await rig.daemon.wait_exit() == 0
