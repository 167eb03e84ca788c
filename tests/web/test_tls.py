"""The page over TLS: certificate and key from [web], HSTS, the Secure session cookie over https."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import aiohttp

from tests.ocpp.test_frames_security import Pki
from tests.web.conftest import Web, client


async def test_the_page_and_api_over_tls(web_site: Any, tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    cert, key = pki.issue("gateway", server=True)
    w: Web = await web_site(web={"tls_cert_file": cert, "tls_key_file": key})
    assert w.url.startswith("https://")
    ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    async with client(w.url) as http:
        r = await http.get(w.url + "/", ssl=ctx)
        assert r.status == 200 and "max-age=" in r.headers["Strict-Transport-Security"]
        r = await http.post(w.url + "/api/login", json={"user": "viewer", "password": "viewer-pass-1"}, ssl=ctx)
        assert r.status == 200 and "Secure" in r.headers["Set-Cookie"]
        live = await http.get(w.url + "/api/live", ssl=ctx)
        assert live.status == 200 and (await live.json())["site"]["id"] == "test-site"
    plain = w.url.replace("https://", "http://")
    async with aiohttp.ClientSession() as http:
        try:
            r = await http.get(plain + "/api/live")
            answered = r.status
        except aiohttp.ClientError:
            answered = 0
    assert answered in (0, 400)  # no plain HTTP on the TLS listener
